//! `log_sensor_streams`: a row per stream in the agent's store.

use rusqlite::params_from_iter;

use super::{col, push_down, Column, ColumnType::*, QueryContext, Row, Table};
use crate::agent_config::AgentConfig;
use crate::store;

pub const NAME: &str = "log_sensor_streams";
/// What the table is, for `--spec` and the README.
pub const DESCRIPTION: &str = "A row per stream in the agent's store (read-only). EQUALS, LIKE and GLOB on `path` and `source` are applied by the extension.";

pub const COLUMNS: &[Column] = &[
    col(
        "host_id",
        Text,
        "The agent's host id (store meta, else the config)",
    ),
    col("source", Text, "The [sources.NAME] that matched the stream"),
    col(
        "path",
        Text,
        "Where the stream's current file was last seen",
    ),
    col("stream", Text, "Stable stream id carried by every record"),
    col(
        "fingerprint",
        Text,
        "Hex xxh3-64 of the first bytes; NULL while shorter",
    ),
    col(
        "state",
        Text,
        "active | released | truncated | done | unreadable | stopped (a syslog listener no longer configured; its spool and offset wait for it)",
    ),
    col("compressed", Integer, "1 when the current file is gzip"),
    col("size", BigInt, "File size last seen"),
    col("read_offset", BigInt, "Bytes framed so far"),
    col("committed_offset", BigInt, "Bytes acknowledged by the sink"),
    col(
        "lag_bytes",
        BigInt,
        "Bytes not yet acknowledged (as the store's stream_lag view)",
    ),
    col("records", BigInt, "Records acknowledged by the sink"),
    col("overlong_records", BigInt, "Records cut into head and tail"),
    col("first_seen", BigInt, "Unix time the stream was first seen"),
    col("last_read", BigInt, "Unix time of the last read"),
    col("device", BigInt, "Device of the current file"),
    col("inode", BigInt, "Inode of the current file"),
];

/// From the `stream_lag` view (`sql/views.sql`), which the agent creates when it opens its store:
/// the lag formula lives there only.
const SELECT: &str = "SELECT source, path, stream, fingerprint, state, compressed, size, \
    read_offset, committed_offset, lag_bytes, \
    records, overlong_records, first_seen, last_read, device, inode \
    FROM stream_lag WHERE 1 = 1";

pub struct Streams {
    /// Where the store and the fallback host id come from.
    pub config: AgentConfig,
}

impl Table for Streams {
    fn name(&self) -> &'static str {
        NAME
    }

    fn columns(&self) -> &'static [Column] {
        COLUMNS
    }

    fn generate(&self, ctx: &QueryContext) -> Result<Vec<Row>, String> {
        let path = self.config.store_path();
        let Some(conn) = store::open_read_only(&path).map_err(|e| e.to_string())? else {
            return Ok(Vec::new());
        };
        let host = store::host_id(&conn).unwrap_or_else(|| self.config.host_id.clone());
        let mut sql = SELECT.to_string();
        let mut params = Vec::new();
        push_down(ctx, "path", "path", false, &mut sql, &mut params);
        push_down(ctx, "source", "source", false, &mut sql, &mut params);
        sql.push_str(" ORDER BY source, path, stream");
        let fail = |e: rusqlite::Error| format!("reading streams from {}: {e}", path.display());
        let mut stmt = conn.prepare(&sql).map_err(fail)?;
        let names: Vec<String> = stmt.column_names().map(|s| s.to_string()).collect();
        let mut rows = stmt.query(params_from_iter(params.iter())).map_err(fail)?;
        let mut out = Vec::new();
        while let Some(r) = rows.next().map_err(fail)? {
            let mut row = Row::new();
            row.insert("host_id".into(), host.clone());
            for (i, name) in names.iter().enumerate() {
                if let Some(v) = store::text(r.get_ref(i).map_err(fail)?) {
                    row.insert(name.clone(), v);
                }
            }
            out.push(row);
        }
        Ok(out)
    }
}
