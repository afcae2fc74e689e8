//! `log_sensor_alerts`: the store's alerts, plus the extension's own (outbox overflow), which
//! carry source `osquery`.

use rusqlite::params_from_iter;

use super::{col, push_down, Column, ColumnType::*, QueryContext, Row, Table};
use crate::agent_config::AgentConfig;
use crate::logger::outbox;
use crate::store;

pub const NAME: &str = "log_sensor_alerts";
/// What the table is, for `--spec` and the README.
pub const DESCRIPTION: &str = "The agent's alerts and the extension's own (source `osquery`). EQUALS, LIKE and GLOB on `path` and `source`, comparisons on `time`, are applied by the extension.";

pub const COLUMNS: &[Column] = &[
    col("host_id", Text, "The agent's host id"),
    col("id", BigInt, "Alert id within its database"),
    col("time", BigInt, "Unix time the alert was raised"),
    col(
        "kind",
        Text,
        "file_too_large | permission_denied | read_error | outbox_full | ...",
    ),
    col(
        "source",
        Text,
        "The source concerned; osquery for the extension's own alerts",
    ),
    col("stream", Text, "The stream concerned, if any"),
    col("path", Text, "The file concerned, if any"),
    col("detail", Text, "What happened, in words"),
];

pub struct Alerts {
    /// Where the store and the outbox are.
    pub config: AgentConfig,
}

impl Table for Alerts {
    fn name(&self) -> &'static str {
        NAME
    }

    fn columns(&self) -> &'static [Column] {
        COLUMNS
    }

    fn generate(&self, ctx: &QueryContext) -> Result<Vec<Row>, String> {
        let mut out = Vec::new();
        let path = self.config.store_path();
        let store = store::open_read_only(&path).map_err(|e| e.to_string())?;
        let host = store
            .as_ref()
            .and_then(store::host_id)
            .unwrap_or_else(|| self.config.host_id.clone());
        if let Some(conn) = &store {
            let mut sql =
                "SELECT id, time, kind, source, stream, path, detail FROM alerts WHERE 1 = 1"
                    .to_string();
            let mut params = Vec::new();
            push_down(ctx, "path", "path", false, &mut sql, &mut params);
            push_down(ctx, "source", "source", false, &mut sql, &mut params);
            push_down(ctx, "time", "time", true, &mut sql, &mut params);
            sql.push_str(" ORDER BY time, id");
            read_rows(conn, &sql, &params, &host, &mut out)
                .map_err(|e| format!("reading alerts from {}: {e}", path.display()))?;
        }
        let outbox_path = self.config.outbox_path();
        if let Some(conn) = store::open_read_only(&outbox_path).map_err(|e| e.to_string())? {
            let mut sql =
                "SELECT id, time, kind, 'osquery' AS source, NULL AS stream, NULL AS path, \
                 detail FROM alerts WHERE 1 = 1"
                    .to_string();
            let mut params = Vec::new();
            push_down(ctx, "path", "NULL", false, &mut sql, &mut params);
            push_down(ctx, "source", "'osquery'", false, &mut sql, &mut params);
            push_down(ctx, "time", "time", true, &mut sql, &mut params);
            sql.push_str(" ORDER BY time, id");
            // An outbox created by an older extension may lack the table: nothing to show.
            if outbox::has_table(&conn, "alerts") {
                read_rows(&conn, &sql, &params, &host, &mut out)
                    .map_err(|e| format!("reading alerts from {}: {e}", outbox_path.display()))?;
            }
        }
        Ok(out)
    }
}

fn read_rows(
    conn: &rusqlite::Connection,
    sql: &str,
    params: &[String],
    host: &str,
    out: &mut Vec<Row>,
) -> rusqlite::Result<()> {
    let mut stmt = conn.prepare(sql)?;
    let names: Vec<String> = stmt.column_names().map(|s| s.to_string()).collect();
    let mut rows = stmt.query(params_from_iter(params.iter()))?;
    while let Some(r) = rows.next()? {
        let mut row = Row::new();
        row.insert("host_id".into(), host.to_string());
        for (i, name) in names.iter().enumerate() {
            if let Some(v) = store::text(r.get_ref(i)?) {
                row.insert(name.clone(), v);
            }
        }
        out.push(row);
    }
    Ok(())
}
