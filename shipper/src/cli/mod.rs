//! Pieces of the `log-sensor` command line that are more than argument handling.
//!
//! - [`check`]: `log-sensor check`, the config and the sinks checked as `run` would;
//! - [`reach`]: finding the running agent (even when the config file is invalid), asking it,
//!   and the exit code each way of failing gives;
//! - [`status`]: `log-sensor status`, the running agent's state printed.

pub mod check;
pub mod reach;
pub mod status;
