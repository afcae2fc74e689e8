//! The SQLite store: the only code that touches the database.
//!
//! One row per stream and an alerts table (schema in `sql/schema.sql`). WAL lets the osquery
//! extension and `log-sensor query` read while the agent writes. Offsets only move in
//! [`Store::commit`], which the shipping thread calls after the sink acknowledged a batch; a
//! commit or stream row the database refused (a full disk) is owed, not dropped (`pending.rs`).
//! `create.rs` decides whether a state dir starts afresh.

mod create;
mod pending;
pub mod query;
pub mod report;

use pending::Pending;
use rusqlite::{params, Connection, OpenFlags, OptionalExtension};
use std::path::{Path, PathBuf};
use std::time::Duration;

pub const SCHEMA: &str = include_str!("../../../sql/schema.sql");
pub const VIEWS: &str = include_str!("../../../sql/views.sql");
/// The schema version this build writes; a store with a higher one is refused, never touched.
pub const SCHEMA_VERSION: i64 = 1;
/// Alerts kept; older ones are pruned so the table stays bounded.
const MAX_ALERTS: i64 = 10_000;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store {path} is not a log-sensor database or is corrupt ({detail}); refusing to start. Move it aside to start afresh (its offsets would be lost)")]
    Corrupt { path: PathBuf, detail: String },
    #[error("store {path} has schema version {found}, newer than this log-sensor understands ({SCHEMA_VERSION}); refusing to start so nothing is overwritten")]
    TooNew { path: PathBuf, found: i64 },
    #[error(
        "store {path} has no schema yet (an agent is creating it, or it is not a log-sensor store)"
    )]
    NotReady { path: PathBuf },
    #[error("store {path} is {what}; refusing to start afresh over it, which would ship every file again from its start. Restore it from a backup, or move it (and its -wal) aside to start afresh (its offsets would be lost)")]
    Lost { path: PathBuf, what: String },
    #[error("store {path} cannot be written: its disk is full ({detail})")]
    Full { path: PathBuf, detail: String },
    #[error("cannot inspect store {path}: {source}")]
    Inspect {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot create store {path}: {source}")]
    Create {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot create state directory {path}: {source}")]
    StateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("store {path}: {source}")]
    Sqlite {
        path: PathBuf,
        source: rusqlite::Error,
    },
}

/// Lifecycle of a stream's current file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamState {
    /// Open and followed.
    Active,
    /// Its file was renamed away or deleted, drained and closed; a later file with the same
    /// head (a `.gz` of it) continues it.
    Released,
    /// Its file was truncated in place (copytruncate); the file now belongs to a new stream.
    Truncated,
    /// A compressed archive read to its end.
    Done,
    /// Matched but could not be opened (permission denied); retried every scan.
    Unreadable,
}

impl StreamState {
    pub fn as_str(self) -> &'static str {
        match self {
            StreamState::Active => "active",
            StreamState::Released => "released",
            StreamState::Truncated => "truncated",
            StreamState::Done => "done",
            StreamState::Unreadable => "unreadable",
        }
    }
    pub fn parse(s: &str) -> StreamState {
        match s {
            "released" => StreamState::Released,
            "truncated" => StreamState::Truncated,
            "done" => StreamState::Done,
            "unreadable" => StreamState::Unreadable,
            _ => StreamState::Active,
        }
    }
}

/// A stream as the store keeps it.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamRow {
    pub stream: String,
    pub source: String,
    pub fingerprint: Option<u64>,
    pub fp_bytes: u64,
    pub path: String,
    pub device: u64,
    pub inode: u64,
    pub compressed: bool,
    pub size: u64,
    pub read_offset: u64,
    pub committed_offset: u64,
    pub committed_hash: Option<u64>,
    pub first_seen: i64,
    pub state: StreamState,
    pub alerted_too_large: bool,
}

/// What one acknowledged batch did to one stream.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Checkpoint {
    pub stream: String,
    pub committed_offset: u64,
    pub committed_hash: Option<u64>,
    pub read_offset: u64,
    pub size: u64,
    pub records: u64,
    pub bytes: u64,
    pub overlong: u64,
}

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

pub struct Store {
    conn: Connection,
    path: PathBuf,
    /// Rows and checkpoints the database refused, written with the next commit.
    pending: Pending,
}

pub fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn hex(v: Option<u64>) -> Option<String> {
    v.map(|v| format!("{v:016x}"))
}

fn unhex(v: Option<String>) -> Option<u64> {
    v.and_then(|s| u64::from_str_radix(&s, 16).ok())
}

impl Store {
    /// Opens the store in `state_dir`, creating it only when there is none, checks it and
    /// migrates it.
    pub fn open(state_dir: &Path) -> Result<Store, StoreError> {
        std::fs::create_dir_all(state_dir).map_err(|source| StoreError::StateDir {
            path: state_dir.to_path_buf(),
            source,
        })?;
        let path = state_dir.join("store.db");
        match create::inspect(&path)? {
            create::Found::Nothing => create::create(&path)?,
            create::Found::Database => {}
        }
        // Without CREATE: a store that vanished since is an error, not a new empty database.
        let conn = Connection::open_with_flags(
            &path,
            OpenFlags::SQLITE_OPEN_READ_WRITE
                | OpenFlags::SQLITE_OPEN_URI
                | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| classify(&path, e))?;
        let mut store = Store {
            conn,
            path,
            pending: Pending::default(),
        };
        store.prepare()?;
        Ok(store)
    }

    /// Opens an existing store for reading only (`log-sensor query`, the extension).
    pub fn open_read_only(path: &Path) -> Result<Connection, StoreError> {
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| classify(path, e))?;
        conn.busy_timeout(Duration::from_secs(5))
            .map_err(|e| classify(path, e))?;
        conn.execute_batch("PRAGMA query_only = 1;")
            .map_err(|e| classify(path, e))?;
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(|e| classify(path, e))?;
        if version > SCHEMA_VERSION {
            return Err(StoreError::TooNew {
                path: path.to_path_buf(),
                found: version,
            });
        }
        Ok(conn)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn err(&self, source: rusqlite::Error) -> StoreError {
        classify(&self.path, source)
    }

    fn prepare(&mut self) -> Result<(), StoreError> {
        self.conn
            .busy_timeout(Duration::from_secs(10))
            .map_err(|e| self.err(e))?;
        // Reading the header is where a non-database file shows itself; do it before any write.
        let version: i64 = self
            .conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(|e| self.err(e))?;
        if version > SCHEMA_VERSION {
            return Err(StoreError::TooNew {
                path: self.path.clone(),
                found: version,
            });
        }
        let check: String = self
            .conn
            .query_row("PRAGMA quick_check", [], |r| r.get(0))
            .map_err(|e| self.err(e))?;
        if check != "ok" {
            return Err(StoreError::Corrupt {
                path: self.path.clone(),
                detail: check,
            });
        }
        if version > 0 {
            // A version-1 store must have our tables; anything else is someone else's database.
            let tables: i64 = self
                .conn
                .query_row(
                    "SELECT count(*) FROM sqlite_master WHERE type='table' AND name IN ('streams','alerts','meta')",
                    [],
                    |r| r.get(0),
                )
                .map_err(|e| self.err(e))?;
            if tables != 3 {
                return Err(StoreError::Corrupt {
                    path: self.path.clone(),
                    detail: "expected tables streams, alerts and meta".into(),
                });
            }
        } else {
            let foreign: i64 = self
                .conn
                .query_row("SELECT count(*) FROM sqlite_master WHERE type='table' AND name NOT IN ('streams','alerts','meta')", [], |r| r.get(0))
                .map_err(|e| self.err(e))?;
            if foreign > 0 {
                return Err(StoreError::Corrupt {
                    path: self.path.clone(),
                    detail: "it holds tables that are not log-sensor's".into(),
                });
            }
        }
        self.conn
            .execute_batch(
                "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON;",
            )
            .map_err(|e| self.err(e))?;
        // Migrations run in one transaction each; version 0 -> 1 creates the schema (in a
        // store made by an older log-sensor that stopped before writing it).
        if version < 1 {
            create::migrate(&mut self.conn).map_err(|e| classify(&self.path, e))?;
        }
        self.conn.execute_batch(VIEWS).map_err(|e| self.err(e))?;
        Ok(())
    }

    pub fn set_meta(&self, key: &str, value: &str) -> Result<(), StoreError> {
        self.conn
            .execute(
                "INSERT OR REPLACE INTO meta(key, value) VALUES (?1, ?2)",
                params![key, value],
            )
            .map(|_| ())
            .map_err(|e| self.err(e))
    }

    /// Forgets streams whose file was let go (rotated away, truncated, archived) and that saw
    /// nothing for `older_than_secs`: without this the table grows by every rotation forever.
    /// A live stream is never forgotten, however quiet.
    pub fn prune_streams(&self, older_than_secs: i64) -> Result<usize, StoreError> {
        let cutoff = now_secs() - older_than_secs;
        self.conn
            .execute(
                "DELETE FROM streams WHERE state IN ('released', 'truncated', 'done')
                   AND MAX(COALESCE(last_commit, 0), COALESCE(last_read, 0), first_seen) < ?1",
                params![cutoff],
            )
            .map_err(|e| self.err(e))
    }

    pub fn load_streams(&self) -> Result<Vec<StreamRow>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT stream, source, fingerprint, fp_bytes, path, device, inode, compressed, size, read_offset,
                        committed_offset, committed_hash, first_seen, state, alerted_too_large FROM streams",
            )
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([], |r| {
                Ok(StreamRow {
                    stream: r.get(0)?,
                    source: r.get(1)?,
                    fingerprint: unhex(r.get(2)?),
                    fp_bytes: r.get::<_, i64>(3)? as u64,
                    path: r.get(4)?,
                    device: r.get::<_, i64>(5)? as u64,
                    inode: r.get::<_, i64>(6)? as u64,
                    compressed: r.get(7)?,
                    size: r.get::<_, i64>(8)? as u64,
                    read_offset: r.get::<_, i64>(9)? as u64,
                    committed_offset: r.get::<_, i64>(10)? as u64,
                    committed_hash: unhex(r.get(11)?),
                    first_seen: r.get(12)?,
                    state: StreamState::parse(&r.get::<_, String>(13)?),
                    alerted_too_large: r.get(14)?,
                })
            })
            .map_err(|e| self.err(e))?;
        let mut rows = rows
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| self.err(e))?;
        // What the agent knows of a stream, also when the database refused to take it yet.
        for owed in self.pending.rows.values() {
            match rows.iter_mut().find(|r| r.stream == owed.stream) {
                Some(r) => *r = owed.clone(),
                None => rows.push(owed.clone()),
            }
        }
        Ok(rows)
    }

    /// Inserts a new stream or rewrites its identity columns (never its committed offset). A
    /// row the database refuses is kept and written with the next commit, before the offsets
    /// that need it.
    pub fn upsert_stream(&mut self, s: &StreamRow) -> Result<(), StoreError> {
        match upsert(&self.conn, s) {
            Ok(()) => {
                self.pending.rows.remove(&s.stream);
                Ok(())
            }
            Err(e) => {
                self.pending.rows.insert(s.stream.clone(), s.clone());
                Err(self.err(e))
            }
        }
    }

    /// Moves offsets and counters for an acknowledged batch, in one transaction with whatever
    /// earlier writes the database refused. When it fails nothing is lost: the checkpoints are
    /// owed and go with the next commit (or [`Store::commit_owed`]).
    pub fn commit(&mut self, checkpoints: &[Checkpoint]) -> Result<(), StoreError> {
        for c in checkpoints {
            self.pending.add_checkpoint(c);
        }
        write_owed(&mut self.conn, &self.pending).map_err(|e| classify(&self.path, e))?;
        self.pending.clear();
        Ok(())
    }

    /// Retries the writes the database refused, with no new batch to commit.
    pub fn commit_owed(&mut self) -> Result<(), StoreError> {
        self.commit(&[])
    }

    /// Some acknowledged offset or stream row is not in the database yet.
    pub fn owes_writes(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Records how far reading got, without moving the committed offset (lag shows in the tables).
    pub fn note_read(&self, stream: &str, read_offset: u64, size: u64) -> Result<(), StoreError> {
        self.conn
            .prepare_cached(
                "UPDATE streams SET read_offset = ?2, size = ?3, last_read = ?4 WHERE stream = ?1",
            )
            .and_then(|mut st| {
                st.execute(params![stream, read_offset as i64, size as i64, now_secs()])
            })
            .map(|_| ())
            .map_err(|e| self.err(e))
    }

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

    pub fn stream_offsets(&self, stream: &str) -> Result<Option<(u64, u64)>, StoreError> {
        self.conn
            .query_row(
                "SELECT committed_offset, records FROM streams WHERE stream = ?1",
                params![stream],
                |r| Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64)),
            )
            .optional()
            .map_err(|e| self.err(e))
    }
}

fn upsert(conn: &Connection, s: &StreamRow) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT INTO streams(stream, source, fingerprint, fp_bytes, path, device, inode, compressed, size,
                             read_offset, committed_offset, committed_hash, first_seen, state, alerted_too_large)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)
         ON CONFLICT(stream) DO UPDATE SET fingerprint = excluded.fingerprint, fp_bytes = excluded.fp_bytes,
             path = excluded.path, device = excluded.device, inode = excluded.inode,
             compressed = excluded.compressed, size = excluded.size, state = excluded.state,
             read_offset = MAX(read_offset, excluded.read_offset),
             alerted_too_large = excluded.alerted_too_large",
    )?
    .execute(params![
        s.stream,
        s.source,
        hex(s.fingerprint),
        s.fp_bytes as i64,
        s.path,
        s.device as i64,
        s.inode as i64,
        s.compressed,
        s.size as i64,
        s.read_offset as i64,
        s.committed_offset as i64,
        hex(s.committed_hash),
        s.first_seen,
        s.state.as_str(),
        s.alerted_too_large,
    ])
    .map(|_| ())
}

/// The owed stream rows first, then the checkpoints (an osquery result name has no row; its
/// update changes nothing). Whatever failed before is in `owed`, so no commit can succeed while
/// an earlier one is still refused: health cannot flap to ok on a commit with less to write.
fn write_owed(conn: &mut Connection, owed: &Pending) -> rusqlite::Result<()> {
    let now = now_secs();
    let tx = conn.transaction()?;
    for row in owed.rows.values() {
        upsert(&tx, row)?;
    }
    {
        let mut st = tx.prepare_cached(
            "UPDATE streams SET committed_offset = ?2, committed_hash = ?3,
                read_offset = MAX(read_offset, ?4), size = ?5, records = records + ?6, bytes = bytes + ?7,
                overlong_records = overlong_records + ?8, last_commit = ?9, last_read = ?9
             WHERE stream = ?1",
        )?;
        for c in owed.checkpoints.values() {
            st.execute(params![
                c.stream,
                c.committed_offset as i64,
                hex(c.committed_hash),
                c.read_offset as i64,
                c.size as i64,
                c.records as i64,
                c.bytes as i64,
                c.overlong as i64,
                now
            ])?;
        }
    }
    tx.commit()
}

fn classify(path: &Path, e: rusqlite::Error) -> StoreError {
    use rusqlite::ErrorCode;
    if let rusqlite::Error::SqliteFailure(f, msg) = &e {
        if matches!(f.code, ErrorCode::NotADatabase | ErrorCode::DatabaseCorrupt) {
            return StoreError::Corrupt {
                path: path.to_path_buf(),
                detail: msg.clone().unwrap_or_else(|| f.to_string()),
            };
        }
        // SQLite says "disk I/O error (4874)" when it cannot give store.db-shm its pages.
        if f.code == ErrorCode::DiskFull || f.extended_code == rusqlite::ffi::SQLITE_IOERR_SHMSIZE {
            return StoreError::Full {
                path: path.to_path_buf(),
                detail: msg.clone().unwrap_or_else(|| f.to_string()),
            };
        }
    }
    StoreError::Sqlite {
        path: path.to_path_buf(),
        source: e,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn row(id: &str) -> StreamRow {
        StreamRow {
            stream: id.into(),
            source: "app".into(),
            fingerprint: Some(0xabc),
            fp_bytes: 1024,
            path: "/x".into(),
            device: 1,
            inode: 2,
            compressed: false,
            size: 10,
            read_offset: 0,
            committed_offset: 0,
            committed_hash: None,
            first_seen: 1,
            state: StreamState::Active,
            alerted_too_large: false,
        }
    }

    #[test]
    fn commit_moves_offsets_and_counters() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Store::open(dir.path()).unwrap();
        s.upsert_stream(&row("a")).unwrap();
        s.commit(&[Checkpoint {
            stream: "a".into(),
            committed_offset: 50,
            committed_hash: Some(7),
            read_offset: 60,
            size: 70,
            records: 3,
            bytes: 47,
            overlong: 1,
        }])
        .unwrap();
        let r = &s.load_streams().unwrap()[0];
        assert_eq!(
            (r.committed_offset, r.committed_hash, r.read_offset, r.size),
            (50, Some(7), 60, 70)
        );
        assert_eq!(s.stream_offsets("a").unwrap(), Some((50, 3)));
        // An identity rewrite never moves the committed offset back.
        s.upsert_stream(&row("a")).unwrap();
        assert_eq!(s.load_streams().unwrap()[0].committed_offset, 50);
    }

    #[test]
    fn refuses_a_file_that_is_not_a_database_and_leaves_it_alone() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("store.db");
        let garbage = vec![0x5au8; 8192];
        std::fs::write(&p, &garbage).unwrap();
        let err = Store::open(dir.path()).err().expect("must refuse");
        assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
        assert!(err.to_string().contains("store.db"));
        assert_eq!(std::fs::read(&p).unwrap(), garbage);
    }

    #[test]
    fn pruning_forgets_only_old_streams_that_were_let_go() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Store::open(dir.path()).unwrap();
        for (id, state) in [
            ("live", StreamState::Active),
            ("gone", StreamState::Released),
            ("archived", StreamState::Done),
        ] {
            let mut r = row(id);
            r.state = state;
            s.upsert_stream(&r).unwrap();
        }
        assert_eq!(
            s.prune_streams(3600).unwrap(),
            2,
            "first_seen = 1 is long ago"
        );
        let left: Vec<String> = s
            .load_streams()
            .unwrap()
            .into_iter()
            .map(|r| r.stream)
            .collect();
        assert_eq!(left, vec!["live".to_string()]);
        let mut fresh = row("fresh");
        fresh.state = StreamState::Released;
        fresh.first_seen = now_secs();
        s.upsert_stream(&fresh).unwrap();
        assert_eq!(s.prune_streams(3600).unwrap(), 0);
    }

    #[test]
    fn refuses_a_newer_schema() {
        let dir = tempfile::tempdir().unwrap();
        drop(Store::open(dir.path()).unwrap());
        let c = Connection::open(dir.path().join("store.db")).unwrap();
        c.execute_batch("PRAGMA user_version = 99;").unwrap();
        drop(c);
        let err = Store::open(dir.path()).err().expect("must refuse");
        assert!(matches!(err, StoreError::TooNew { found: 99, .. }), "{err}");
    }

    #[test]
    fn refuses_someone_elses_database() {
        let dir = tempfile::tempdir().unwrap();
        let c = Connection::open(dir.path().join("store.db")).unwrap();
        c.execute_batch("CREATE TABLE payroll(x);").unwrap();
        drop(c);
        assert!(matches!(
            Store::open(dir.path()),
            Err(StoreError::Corrupt { .. })
        ));
    }

    #[test]
    fn readers_see_commits_while_the_writer_holds_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Store::open(dir.path()).unwrap();
        s.upsert_stream(&row("a")).unwrap();
        let reader = Store::open_read_only(&dir.path().join("store.db")).unwrap();
        s.commit(&[Checkpoint {
            stream: "a".into(),
            committed_offset: 9,
            committed_hash: None,
            read_offset: 9,
            size: 9,
            records: 1,
            bytes: 8,
            overlong: 0,
        }])
        .unwrap();
        let off: i64 = reader
            .query_row("SELECT committed_offset FROM streams", [], |r| r.get(0))
            .unwrap();
        assert_eq!(off, 9);
        assert!(
            reader.execute("DELETE FROM streams", []).is_err(),
            "read-only connection must refuse writes"
        );
    }
}
