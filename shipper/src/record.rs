//! The record wire format: one JSON object per line.
//!
//! `{"host":…,"source":…,"stream":…,"fingerprint":…,"path":…,"offset":…,"len":…,"part":…,"ts":…,"msg":…}`
//! with `msg_b64` (standard base64) in place of `msg` when the bytes are not UTF-8. The format is
//! shared with the collector, which reads it, so it lives in `log_sensor_common::record`.

pub use log_sensor_common::clock::now_ms;
pub use log_sensor_common::record::{base64_into, escape_into, msg_field, rfc3339_ms};
