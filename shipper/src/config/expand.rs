//! `${hostname}` and `${env:NAME}` in string values, expanded as the osquery extension expands
//! them when it reads the same file (`log_sensor_common::expand`).

pub use log_sensor_common::expand::{expand, hostname};
