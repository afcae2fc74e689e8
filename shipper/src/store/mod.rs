//! The SQLite store: the only code that touches the database.
//!
//! One row per stream and an alerts table (schema in `sql/schema.sql`). WAL lets the osquery
//! extension and `log-sensor query` read while the agent writes. Offsets only move in
//! [`Store::commit`], which the shipping thread calls after the sink acknowledged a batch; a
//! commit or stream row the database refused (a full disk) is owed, not dropped (`pending.rs`).
//! Here: opening, checking and migrating the database, the meta table, and classifying its
//! errors. `streams.rs` owns the stream rows and their commits, `alerts.rs` the alerts table,
//! `create.rs` decides whether a state dir starts afresh.

mod alerts;
mod create;
mod pending;
pub mod query;
pub mod report;
mod streams;

pub use alerts::{Alert, AlertRow};
pub use streams::{Checkpoint, StreamRow, StreamState};

use pending::Pending;
use rusqlite::{params, Connection, OpenFlags};
use std::path::{Path, PathBuf};
use std::time::Duration;

pub const SCHEMA: &str = include_str!("../../../sql/schema.sql");
pub const VIEWS: &str = include_str!("../../../sql/views.sql");
/// The schema version this build writes; a store with a higher one is refused, never touched.
pub const SCHEMA_VERSION: i64 = 1;

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

pub struct Store {
    conn: Connection,
    path: PathBuf,
    /// Rows and checkpoints the database refused, written with the next commit.
    pending: Pending,
}

pub use log_sensor_common::clock::now_secs;

impl Store {
    /// Opens the store in `state_dir`, creating it only when there is none, checks it and
    /// migrates it.
    pub fn open(state_dir: &Path) -> Result<Store, StoreError> {
        std::fs::create_dir_all(state_dir).map_err(|source| StoreError::StateDir {
            path: state_dir.to_path_buf(),
            source,
        })?;
        let path = log_sensor_common::state_dir::store(state_dir);
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
        // Each commit touches a row per stream shipped since the last; with SQLite's default
        // cache (2 MiB, about 8,000 streams' rows) 10,000 streams growing at once had every
        // commit read its pages back from the kernel. 8 MiB holds about 30,000 streams' rows
        // and is only taken as pages are used.
        self.conn
            .execute_batch(
                "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON;
                 PRAGMA cache_size = -8192;",
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
    use super::streams::tests::row;
    use super::*;

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
