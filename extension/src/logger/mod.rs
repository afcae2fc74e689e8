//! The logger plugin `log_sensor` (`--logger_plugin=log_sensor`).
//!
//! Request dispatch follows osquery's `LoggerPlugin::call` (osquery
//! `osquery/core/plugins/logger.cpp`): `string` (with `category`), `string_batch`, `snapshot`,
//! `init` (+ optional buffered `log`), `status` + `log`, `event`, and `{"action":"features"}`
//! whose answer is the feature bitmask in `status.code` (`logger.h`: LOGSTATUS=1, LOGEVENT=2).
//! `string` and `snapshot` always answer success once the record is in the outbox (or held in
//! memory): osquery shuts down on a failed one (`scheduler.cpp`, osquery issue #7100).

pub mod calendar;
pub mod heartbeat;
pub mod outbox;

use std::sync::{Arc, Mutex};

use serde_json::Value;

use crate::plugin::{failure, success, Plugin};
use crate::thrift::wire::{ExtensionResponse, ExtensionStatus, StringMap};
use heartbeat::Activity;
use outbox::{Kind, Outbox, Record, SnapshotDigest};

/// `LOGGER_FEATURE_LOGSTATUS` in osquery `osquery/core/plugins/logger.h`.
pub const FEATURE_LOGSTATUS: i32 = 1;
/// Stream name for status logs.
pub const STATUS_STREAM: &str = "osquery_status";
/// Stream name for event-subscriber rows.
pub const EVENT_STREAM: &str = "osquery_events";
/// Stream name for results whose JSON carries no query name.
pub const UNNAMED_STREAM: &str = "osquery_unnamed";

pub struct Logger {
    /// Where every record goes first.
    pub outbox: Arc<Mutex<Outbox>>,
    /// Last logger call per query name, for heartbeats.
    pub activity: Arc<Activity>,
    /// Host id for the records the extension builds itself (status lines carry osquery's).
    pub host_id: String,
}

impl Logger {
    fn queue(&self, rec: Record) {
        self.outbox
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(rec);
    }

    fn log_string(&self, text: &str, category: Option<&str>) {
        let name = query_name(text);
        self.activity.touch(&name, calendar::unix_now());
        self.queue(Record {
            time: calendar::unix_now(),
            kind: Kind::Result,
            name,
            category: category.map(str::to_string),
            record: text.to_string(),
        });
    }

    fn log_snapshot(&self, text: &str) {
        let now = calendar::unix_now();
        let name = query_name(text);
        self.activity.touch(&name, now);
        let rec = Record {
            time: now,
            kind: Kind::Snapshot,
            name,
            category: None,
            record: text.to_string(),
        };
        match snapshot_digest(text) {
            Some(d) => {
                let outcome = self
                    .outbox
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push_snapshot(rec, &d);
                tracing::debug!("snapshot {outcome:?}");
            }
            // One row per call (--logger_snapshot_event_type): nothing to compare, queue it.
            None => self.queue(rec),
        }
    }

    fn log_status(&self, log: Option<&String>) -> Result<(), String> {
        let Some(log) = log else { return Ok(()) };
        let lines: Vec<Value> = serde_json::from_str(log)
            .map_err(|e| format!("status log is not a JSON array: {e}"))?;
        for line in &lines {
            self.queue(Record {
                time: calendar::unix_now(),
                kind: Kind::Status,
                name: STATUS_STREAM.to_string(),
                category: None,
                record: status_record(line),
            });
        }
        Ok(())
    }
}

impl Plugin for Logger {
    fn registry(&self) -> &'static str {
        "logger"
    }

    fn name(&self) -> &str {
        "log_sensor"
    }

    fn routes(&self) -> Vec<StringMap> {
        Vec::new()
    }

    fn call(&self, r: &StringMap) -> ExtensionResponse {
        if let Some(s) = r.get("string") {
            self.log_string(s, r.get("category").map(String::as_str));
            success(Vec::new())
        } else if let Some(batch) = r.get("string_batch") {
            match serde_json::from_str::<Vec<String>>(batch) {
                Ok(items) => items
                    .iter()
                    .for_each(|s| self.log_string(s, r.get("category").map(String::as_str))),
                // Keep what osquery sent rather than fail it.
                Err(_) => self.log_string(batch, r.get("category").map(String::as_str)),
            }
            success(Vec::new())
        } else if let Some(s) = r.get("snapshot") {
            self.log_snapshot(s);
            success(Vec::new())
        } else if let Some(process) = r.get("init") {
            tracing::info!("osquery logger init from {process}");
            if let Err(e) = self.log_status(r.get("log")) {
                tracing::warn!("{e}");
            }
            success(Vec::new())
        } else if r.contains_key("status") {
            match self.log_status(r.get("log")) {
                Ok(()) => success(Vec::new()),
                Err(e) => failure(e),
            }
        } else if let Some(ev) = r.get("event") {
            self.queue(Record {
                time: calendar::unix_now(),
                kind: Kind::Event,
                name: EVENT_STREAM.to_string(),
                category: None,
                record: ev.clone(),
            });
            success(Vec::new())
        } else if r.get("action").map(String::as_str) == Some("features") {
            ExtensionResponse {
                status: ExtensionStatus {
                    code: FEATURE_LOGSTATUS,
                    message: "OK".into(),
                    uuid: 0,
                },
                response: Vec::new(),
            }
        } else if r.contains_key("health") {
            success(Vec::new())
        } else {
            failure("Unsupported call to logger plugin log_sensor")
        }
    }
}

/// The query name of a result or snapshot document (`"name"`), or a fixed stream.
fn query_name(json: &str) -> String {
    match serde_json::from_str::<Value>(json) {
        Ok(Value::Object(m)) => match m.get("name") {
            Some(Value::String(s)) if !s.is_empty() => s.clone(),
            _ => UNNAMED_STREAM.to_string(),
        },
        _ => UNNAMED_STREAM.to_string(),
    }
}

/// The digest of a batch snapshot's rows (`{"snapshot":[...],"action":"snapshot",...}`),
/// independent of row order and of the time fields; `None` for a one-row event-format call.
pub fn snapshot_digest(json: &str) -> Option<SnapshotDigest> {
    let Ok(Value::Object(m)) = serde_json::from_str::<Value>(json) else {
        return None;
    };
    let Some(Value::Array(rows)) = m.get("snapshot") else {
        return None;
    };
    // serde_json sorts object keys, so equal rows serialise equally.
    let mut lines: Vec<String> = rows.iter().map(|r| r.to_string()).collect();
    lines.sort();
    let digest = xxhash_rust::xxh3::xxh3_128(lines.join("\n").as_bytes());
    Some(SnapshotDigest {
        digest: format!("{digest:032x}"),
        rows: rows.len() as i64,
    })
}

/// One status line as a record: osquery's seven fields with readable names (the names of
/// osquery's filesystem logger for status logs).
fn status_record(line: &Value) -> String {
    let get = |k: &str| line.get(k).cloned().unwrap_or(Value::Null);
    let fields = [
        ("hostIdentifier", get("h")),
        ("calendarTime", get("c")),
        ("unixTime", get("u")),
        ("severity", get("s")),
        ("filename", get("f")),
        ("line", get("i")),
        ("message", get("m")),
    ];
    ordered_json(&fields)
}

/// A JSON object with keys in the given order.
pub fn ordered_json(fields: &[(&str, Value)]) -> String {
    let body: Vec<String> = fields
        .iter()
        .map(|(k, v)| format!("{}:{}", Value::String((*k).to_string()), v))
        .collect();
    format!("{{{}}}", body.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_ignores_time_fields_and_row_order() {
        let a = r#"{"snapshot":[{"a":"1"},{"a":"2"}],"action":"snapshot","name":"q","unixTime":1}"#;
        let b = r#"{"snapshot":[{"a":"2"},{"a":"1"}],"action":"snapshot","name":"q","unixTime":9}"#;
        let c = r#"{"snapshot":[{"a":"3"}],"action":"snapshot","name":"q","unixTime":9}"#;
        assert_eq!(
            snapshot_digest(a).unwrap().digest,
            snapshot_digest(b).unwrap().digest
        );
        assert_ne!(
            snapshot_digest(a).unwrap().digest,
            snapshot_digest(c).unwrap().digest
        );
        assert!(
            snapshot_digest(r#"{"columns":{"a":"1"},"action":"snapshot","name":"q"}"#).is_none()
        );
    }

    #[test]
    fn status_record_keeps_all_seven_fields() {
        let line: Value = serde_json::from_str(
            r#"{"s":1,"f":"x.cpp","i":7,"m":"hi","h":"host","c":"Thu","u":5}"#,
        )
        .unwrap();
        assert_eq!(
            status_record(&line),
            r#"{"hostIdentifier":"host","calendarTime":"Thu","unixTime":5,"severity":1,"filename":"x.cpp","line":7,"message":"hi"}"#
        );
    }
}
