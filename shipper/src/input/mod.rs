//! Inputs: where records come from before they enter a batch.
//!
//! - [`syslog`]: the syslog server (UDP, TCP, TLS) and its spool.

pub mod syslog;
