//! Read-only looks at `store.db` for status pages: every stream's row and the alerts. The
//! status module shapes them; the SQL stays here with the rest of the store's.

use rusqlite::Connection;
use std::collections::BTreeMap;

const STREAMS: &str = "SELECT stream, source, path, state, compressed, size, read_offset, \
    committed_offset, records, overlong_records, last_read FROM streams ORDER BY source, path";
const RECENT_ALERTS: &str =
    "SELECT time, kind, source, stream, path, detail FROM alerts ORDER BY id DESC LIMIT ?1";
const ALERTS_BY_KIND: &str = "SELECT kind, count(*) FROM alerts GROUP BY kind";

/// One stream as the store has it.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamReport {
    pub stream: String,
    pub source: String,
    pub path: String,
    pub state: String,
    pub compressed: bool,
    pub size: u64,
    pub read_offset: u64,
    pub committed_offset: u64,
    pub records: u64,
    pub overlong_records: u64,
    pub last_read: Option<i64>,
}

/// One stored alert.
#[derive(Debug, Clone, PartialEq)]
pub struct AlertReport {
    pub time: i64,
    pub kind: String,
    pub source: Option<String>,
    pub stream: Option<String>,
    pub path: Option<String>,
    pub detail: String,
}

/// Every stream, by source and path.
pub fn streams(conn: &Connection) -> rusqlite::Result<Vec<StreamReport>> {
    let mut st = conn.prepare(STREAMS)?;
    let rows = st.query_map([], |r| {
        Ok(StreamReport {
            stream: r.get(0)?,
            source: r.get(1)?,
            path: r.get(2)?,
            state: r.get(3)?,
            compressed: r.get(4)?,
            size: r.get::<_, i64>(5)? as u64,
            read_offset: r.get::<_, i64>(6)? as u64,
            committed_offset: r.get::<_, i64>(7)? as u64,
            records: r.get::<_, i64>(8)? as u64,
            overlong_records: r.get::<_, i64>(9)? as u64,
            last_read: r.get(10)?,
        })
    })?;
    rows.collect()
}

/// The newest `n` alerts, newest first; unreadable rows are skipped.
pub fn recent_alerts(conn: &Connection, n: usize) -> rusqlite::Result<Vec<AlertReport>> {
    let mut st = conn.prepare(RECENT_ALERTS)?;
    let rows = st.query_map([n as i64], |r| {
        Ok(AlertReport {
            time: r.get(0)?,
            kind: r.get(1)?,
            source: r.get(2)?,
            stream: r.get(3)?,
            path: r.get(4)?,
            detail: r.get(5)?,
        })
    })?;
    Ok(rows.flatten().collect())
}

/// How many alerts of each kind were ever stored (older ones are pruned in hundreds).
pub fn alerts_by_kind(conn: &Connection) -> rusqlite::Result<BTreeMap<String, u64>> {
    let mut st = conn.prepare(ALERTS_BY_KIND)?;
    let rows = st.query_map([], |r| {
        Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64))
    })?;
    Ok(rows.flatten().collect())
}
