//! The record wire format: one JSON object per line.
//!
//! `{"host":…,"source":…,"stream":…,"fingerprint":…,"path":…,"offset":…,"len":…,"part":…,"ts":…,"msg":…,"fields":{…}}`
//! with `msg_b64` (standard base64) in place of `msg` when the bytes are not UTF-8, and
//! `fields` only when the record has any. Written by hand rather than through serde: this is
//! the hot path (millions of records a second). The format is shared with the collector, which
//! reads it, so its writers live in `log_sensor_common::record`.

use std::sync::Arc;

pub use log_sensor_common::clock::now_ms;
pub use log_sensor_common::record::{base64_into, escape_into, msg_field, rfc3339_ms};

/// What every record of a stream carries besides its own fields.
#[derive(Debug, Clone)]
pub struct StreamMeta {
    pub id: Arc<str>,
    pub source: Arc<str>,
    pub fingerprint: Option<u64>,
    pub path: Arc<str>,
}
