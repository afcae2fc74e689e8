//! The syslog server input: network listeners → a spool per listener → records with `fields`.
//!
//! The data flow, one module each: [`listen`] accepts datagrams and connections, [`framing`]
//! cuts a connection's bytes into frames, [`parse`] reads a frame's header into fields, and
//! [`spool`] makes the result durable; the input then reads the spool back into batches and
//! commits spool offsets once the sink has acknowledged.

mod alerts;
pub mod framing;
pub mod listen;
pub use crate::transform::syslog_parse as parse;
pub mod records;
pub mod spool;
pub mod stream;

pub use stream::SyslogInput;

#[cfg(test)]
mod tests;
