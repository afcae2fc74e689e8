//! `log_sensor_config`: the agent's effective config as dotted keys, writable through
//! osquery's writable-table protocol (osquery `osquery/sql/virtual_table.cpp`, `xUpdate`).
//!
//! Rowids are derived from the key (a hash), so an `UPDATE`/`DELETE` that osquery resolves
//! through `generate` names the same key even if other keys appear or vanish meanwhile.

use serde_json::Value;

use super::{col, Column, ColumnType::*, QueryContext, Row, Table, WriteReply, WriteRequest};
use crate::agent_config::AgentConfig;
use crate::agent_socket::Timeouts;
use crate::config_source::{self, ConfigSource};

pub const NAME: &str = "log_sensor_config";
/// What the table is, for `--spec` and the README.
pub const DESCRIPTION: &str = "The agent's effective config as dotted keys. Writable: `UPDATE … SET value=… WHERE key=…`, `INSERT`, `DELETE` set or drop temporary overrides in the running agent.";

pub const COLUMNS: &[Column] = &[
    col(
        "key",
        Text,
        "Dotted path in the config tree (defaults.max_record_bytes)",
    ),
    col("value", Text, "Effective value; arrays and tables as JSON"),
    col("origin", Text, "default | file | pack | temporary"),
    col(
        "writable",
        Integer,
        "1 when a temporary override may be set at runtime",
    ),
    col(
        "read_from",
        Text,
        "agent (the running agent) or config_file (no agent answered)",
    ),
    col("config_path", Text, "The agent config file"),
];

/// Keys the agent cannot change while running: writes to them answer `readonly`.
pub const RUNTIME_FIXED_KEYS: &[&str] = &["host_id", "state_dir"];

pub struct ConfigTable {
    /// Which config file to read, and where the control socket would be.
    pub config: AgentConfig,
    /// How long a table call waits for the agent before showing the file instead.
    pub agent_timeouts: Timeouts,
}

/// The rowid osquery sees for a key: 63 bits of its xxh3 hash.
pub fn rowid(key: &str) -> i64 {
    (xxhash_rust::xxh3::xxh3_64(key.as_bytes()) & (i64::MAX as u64)) as i64
}

impl ConfigTable {
    fn source(&self) -> Box<dyn ConfigSource> {
        config_source::select(&self.config, self.agent_timeouts)
    }

    fn key_of(&self, source: &dyn ConfigSource, id: i64) -> Result<Option<String>, String> {
        Ok(source
            .entries()?
            .into_iter()
            .map(|e| e.key)
            .find(|k| rowid(k) == id))
    }
}

/// The key and value columns of a `json_value_array` (columns in `COLUMNS` order).
fn key_value(values: &[Value]) -> (Option<&str>, Option<&Value>) {
    let key = values.first().and_then(Value::as_str);
    let value = values.get(1).filter(|v| !v.is_null());
    (key, value)
}

fn value_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

impl Table for ConfigTable {
    fn name(&self) -> &'static str {
        NAME
    }

    fn columns(&self) -> &'static [Column] {
        COLUMNS
    }

    fn generate(&self, _ctx: &QueryContext) -> Result<Vec<Row>, String> {
        let source = self.source();
        let entries = source.entries()?;
        Ok(entries
            .into_iter()
            .map(|e| {
                Row::from([
                    ("rowid".to_string(), rowid(&e.key).to_string()),
                    (
                        "writable".to_string(),
                        (!RUNTIME_FIXED_KEYS.contains(&e.key.as_str()) as u8).to_string(),
                    ),
                    ("key".to_string(), e.key),
                    ("value".to_string(), e.value),
                    ("origin".to_string(), e.origin),
                    ("read_from".to_string(), source.read_from().to_string()),
                    (
                        "config_path".to_string(),
                        self.config.path.display().to_string(),
                    ),
                ])
            })
            .collect())
    }

    fn write(&self, req: WriteRequest) -> WriteReply {
        let source = self.source();
        match req {
            WriteRequest::Insert { values, .. } => {
                let (Some(key), Some(value)) = key_value(&values) else {
                    return WriteReply::Constraint;
                };
                if RUNTIME_FIXED_KEYS.contains(&key) {
                    return WriteReply::Readonly;
                }
                match source.set_override(key, &value_text(value)) {
                    Ok(()) => WriteReply::SuccessWithId(rowid(key)),
                    Err(e) => WriteReply::Failure(e.0),
                }
            }
            WriteRequest::Update { id, new_id, values } => {
                let current = match self.key_of(source.as_ref(), id) {
                    Ok(Some(k)) => k,
                    Ok(None) => {
                        return WriteReply::Failure(format!("no config key has rowid {id}"))
                    }
                    Err(e) => return WriteReply::Failure(e),
                };
                let (key, value) = key_value(&values);
                // Renaming a key (SET key=..., or a new rowid) is not an override: refuse it.
                if new_id.is_some() || key != Some(current.as_str()) {
                    return WriteReply::Constraint;
                }
                let Some(value) = value else {
                    return WriteReply::Constraint;
                };
                if RUNTIME_FIXED_KEYS.contains(&current.as_str()) {
                    return WriteReply::Readonly;
                }
                match source.set_override(&current, &value_text(value)) {
                    Ok(()) => WriteReply::Success,
                    Err(e) => WriteReply::Failure(e.0),
                }
            }
            WriteRequest::Delete { id } => {
                let current = match self.key_of(source.as_ref(), id) {
                    Ok(Some(k)) => k,
                    Ok(None) => {
                        return WriteReply::Failure(format!("no config key has rowid {id}"))
                    }
                    Err(e) => return WriteReply::Failure(e),
                };
                if RUNTIME_FIXED_KEYS.contains(&current.as_str()) {
                    return WriteReply::Readonly;
                }
                match source.drop_override(&current) {
                    Ok(()) => WriteReply::Success,
                    Err(e) => WriteReply::Failure(e.0),
                }
            }
        }
    }
}
