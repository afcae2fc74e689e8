//! Read-only access to the agent's store (`<state_dir>/store.db`, schema in `sql/schema.sql`).
//!
//! The agent is the only writer and keeps the store in WAL mode, so a reader never blocks it:
//! we open read-only, set `query_only`, and wait briefly on a busy lock instead of failing.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

/// The store's schema, compiled in so tests build fixture stores from the same text.
pub const SCHEMA_SQL: &str = include_str!("../../sql/schema.sql");

/// How long a read waits for a lock held by the agent (a WAL checkpoint, a schema change).
const BUSY_TIMEOUT: Duration = Duration::from_secs(2);

/// Why the store could not be read.
#[derive(Debug, thiserror::Error)]
#[error("cannot read the log-sensor store {path}: {source}")]
pub struct StoreError {
    pub path: PathBuf,
    pub source: rusqlite::Error,
}

/// Opens a read-only connection, or `None` when there is no store yet (no agent has run).
pub fn open_read_only(path: &Path) -> Result<Option<Connection>, StoreError> {
    if !path.exists() {
        return Ok(None);
    }
    let err = |source| StoreError {
        path: path.to_path_buf(),
        source,
    };
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(err)?;
    conn.busy_timeout(BUSY_TIMEOUT).map_err(err)?;
    conn.pragma_update(None, "query_only", true).map_err(err)?;
    Ok(Some(conn))
}

/// `meta.host_id`, when the agent has recorded one.
pub fn host_id(conn: &Connection) -> Option<String> {
    conn.query_row("SELECT value FROM meta WHERE key = 'host_id'", [], |r| {
        r.get(0)
    })
    .ok()
}

/// A column value as osquery wants it: text, or `None` for NULL.
pub fn text(v: rusqlite::types::ValueRef<'_>) -> Option<String> {
    use rusqlite::types::ValueRef;
    match v {
        ValueRef::Null => None,
        ValueRef::Integer(i) => Some(i.to_string()),
        ValueRef::Real(f) => Some(f.to_string()),
        ValueRef::Text(t) | ValueRef::Blob(t) => Some(String::from_utf8_lossy(t).into_owned()),
    }
}
