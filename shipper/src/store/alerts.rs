//! The alerts table: what the agent reported that a user should see, bounded.

use super::{now_secs, Store, StoreError};
use rusqlite::params;

/// Alerts kept; older ones are pruned so the table stays bounded.
const MAX_ALERTS: i64 = 10_000;

#[derive(Debug, Clone, PartialEq)]
pub struct Alert {
    pub kind: &'static str,
    pub source: Option<String>,
    pub stream: Option<String>,
    pub path: Option<String>,
    pub detail: String,
}

/// An alert as stored: time, kind, path, detail.
pub type AlertRow = (i64, String, Option<String>, String);

impl Store {
    pub fn add_alert(&self, a: &Alert) -> Result<(), StoreError> {
        self.conn
            .prepare_cached("INSERT INTO alerts(time, kind, source, stream, path, detail) VALUES (?1, ?2, ?3, ?4, ?5, ?6)")
            .and_then(|mut st| st.execute(params![now_secs(), a.kind, a.source, a.stream, a.path, a.detail]))
            .map_err(|e| self.err(e))?;
        let id = self.conn.last_insert_rowid();
        if id % 100 == 0 {
            self.conn
                .execute(
                    "DELETE FROM alerts WHERE id <= ?1",
                    params![id - MAX_ALERTS],
                )
                .map_err(|e| self.err(e))?;
        }
        Ok(())
    }

    pub fn alerts(&self) -> Result<Vec<AlertRow>, StoreError> {
        let mut st = self
            .conn
            .prepare("SELECT time, kind, path, detail FROM alerts ORDER BY id")
            .map_err(|e| self.err(e))?;
        let rows = st
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<Vec<_>, _>>().map_err(|e| self.err(e))
    }
}
