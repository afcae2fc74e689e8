//! The only code that touches SQLite: users, issued certificates,
//! enrolments, the per-stream high-water index and alerts.
//!
//! The database runs in WAL mode with `synchronous = FULL`, so `revoke` (a
//! separate process) can write while `serve` reads, and a committed user,
//! certificate or revocation survives power loss. The stream index alone is
//! written with `synchronous = NORMAL` (one fsync less per batch): it only
//! caches what the data files hold, and after a power loss storage rebuilds
//! any mark the index lost from the lines past the indexed length.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use rusqlite::{params, Connection, OpenFlags, OptionalExtension};

/// Every statement, named, in one place.
mod sql {
    pub const SCHEMA: &str = "
        CREATE TABLE IF NOT EXISTS users (
            name          TEXT PRIMARY KEY,
            password_hash TEXT NOT NULL,   -- argon2id PHC string
            created_at    INTEGER NOT NULL -- unix seconds
        );
        CREATE TABLE IF NOT EXISTS certs (
            serial     TEXT PRIMARY KEY, -- lower-case hex of the DER serial
            host_id    TEXT NOT NULL,
            username   TEXT NOT NULL,    -- who enrolled the host
            issued_at  INTEGER NOT NULL,
            not_after  INTEGER NOT NULL,
            revoked_at INTEGER
        );
        CREATE INDEX IF NOT EXISTS certs_by_host ON certs(host_id);
        CREATE TABLE IF NOT EXISTS enrolments (
            id          INTEGER PRIMARY KEY,
            at          INTEGER NOT NULL,
            kind        TEXT NOT NULL,   -- enroll | renew
            username    TEXT NOT NULL,
            host_id     TEXT NOT NULL,
            serial      TEXT NOT NULL,
            source_addr TEXT NOT NULL
        );
        CREATE TABLE IF NOT EXISTS streams (
            host_id        TEXT NOT NULL,
            stream         TEXT NOT NULL,
            high_water     INTEGER NOT NULL, -- offset of the last stored record
            file_len       INTEGER NOT NULL, -- data file length after that record
            streak         INTEGER NOT NULL, -- consecutive head/tail records so far
            streak_alerted INTEGER NOT NULL, -- 1 once this streak raised its alert
            updated_at     INTEGER NOT NULL,
            PRIMARY KEY (host_id, stream)
        );
        CREATE TABLE IF NOT EXISTS alerts (
            id           INTEGER PRIMARY KEY,
            at           INTEGER NOT NULL,
            kind         TEXT NOT NULL,
            host_id      TEXT NOT NULL,
            stream       TEXT NOT NULL,
            path         TEXT,
            at_offset INTEGER NOT NULL,
            count        INTEGER NOT NULL
        );
    ";
    pub const INSERT_USER: &str =
        "INSERT INTO users (name, password_hash, created_at) VALUES (?1, ?2, ?3)";
    pub const DELETE_USER: &str = "DELETE FROM users WHERE name = ?1";
    pub const USER_HASH: &str = "SELECT password_hash FROM users WHERE name = ?1";
    pub const INSERT_CERT: &str =
        "INSERT INTO certs (serial, host_id, username, issued_at, not_after)
         VALUES (?1, ?2, ?3, ?4, ?5)";
    pub const INSERT_ENROLMENT: &str =
        "INSERT INTO enrolments (at, kind, username, host_id, serial, source_addr)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)";
    pub const CERT_STATE: &str = "SELECT revoked_at, username FROM certs WHERE serial = ?1";
    pub const LIVE_CERT_FOR_HOST: &str = "SELECT serial FROM certs
         WHERE host_id = ?1 AND revoked_at IS NULL AND not_after > ?2
         ORDER BY issued_at DESC LIMIT 1";
    pub const REVOKED_SERIALS: &str = "SELECT serial FROM certs WHERE revoked_at IS NOT NULL";
    pub const REVOKE_SERIAL: &str =
        "UPDATE certs SET revoked_at = ?2 WHERE serial = ?1 AND revoked_at IS NULL";
    pub const REVOKE_HOST: &str =
        "UPDATE certs SET revoked_at = ?2 WHERE host_id = ?1 AND revoked_at IS NULL";
    pub const CERTS_MATCHING: &str =
        "SELECT serial, host_id, username, issued_at, not_after, revoked_at
         FROM certs WHERE serial = ?1 OR host_id = ?1 ORDER BY issued_at, serial";
    pub const LIST_CERTS: &str =
        "SELECT serial, host_id, username, issued_at, not_after, revoked_at
         FROM certs ORDER BY host_id, issued_at, serial";
    pub const STREAM_INDEX: &str =
        "SELECT high_water, file_len, streak, streak_alerted FROM streams
         WHERE host_id = ?1 AND stream = ?2";
    pub const UPSERT_STREAM: &str = "INSERT INTO streams
            (host_id, stream, high_water, file_len, streak, streak_alerted, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
         ON CONFLICT (host_id, stream) DO UPDATE SET
            high_water = excluded.high_water, file_len = excluded.file_len,
            streak = excluded.streak, streak_alerted = excluded.streak_alerted,
            updated_at = excluded.updated_at";
    pub const INSERT_ALERT: &str =
        "INSERT INTO alerts (at, kind, host_id, stream, path, at_offset, count)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)";
}

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("database {path}: {op}: {source}")]
    Sqlite {
        path: PathBuf,
        op: &'static str,
        source: rusqlite::Error,
    },
    #[error("database {path}: creating it: {source}")]
    Create {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("database {path} does not exist; run `log-sensor-collector init` first")]
    Missing { path: PathBuf },
    #[error("user {name:?} already exists; `user del` it first")]
    UserExists { name: String },
    #[error("no user {name:?}")]
    NoSuchUser { name: String },
    #[error("no certificate with serial or host id {target:?}")]
    NothingToRevoke { target: String },
}

/// One row of `certs`, for `certs list` and `revoke`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertRow {
    pub serial: String,
    pub host_id: String,
    pub username: String,
    pub issued_at: i64,
    pub not_after: i64,
    pub revoked_at: Option<i64>,
}

/// What the handshake needs to know about a presented serial.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CertState {
    Unknown,
    Revoked,
    Valid { username: String },
}

/// A newly signed certificate and the enrolment that produced it.
#[derive(Debug, Clone)]
pub struct Issued<'a> {
    pub serial: &'a str,
    pub host_id: &'a str,
    pub username: &'a str,
    pub issued_at: i64,
    pub not_after: i64,
    /// `enroll` or `renew`.
    pub kind: &'static str,
    pub source_addr: &'a str,
}

/// A stream's row in the high-water index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamIndex {
    pub high_water: u64,
    pub file_len: u64,
    pub streak: u64,
    pub streak_alerted: bool,
}

/// An over-length alert as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlertRow {
    pub at: i64,
    pub kind: &'static str,
    pub host_id: String,
    pub stream: String,
    pub path: Option<String>,
    pub at_offset: u64,
    pub count: u64,
}

/// A connection to `collector.db`. One mutex-guarded connection is enough:
/// every statement is short, and the slow work (argon2, fsync of data
/// files) happens outside it.
pub struct Db {
    /// The file, kept for error messages.
    path: PathBuf,
    /// The connection; rusqlite connections are not `Sync`.
    conn: Mutex<Connection>,
    /// The stream index's own connection (`synchronous = NORMAL`, see above).
    index: Mutex<Connection>,
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Db")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl Db {
    /// Creates the database and its schema (used by `init`).
    ///
    /// The file holds password hashes and every host's certificates, so it is
    /// made 0600 before SQLite opens it (SQLite left to itself creates it
    /// 0644, readable by all once the directory is, for example one a package
    /// made 0755). SQLite gives its `-wal` and `-shm` files the database
    /// file's mode, so those follow.
    pub fn create(path: &Path) -> Result<Db, DbError> {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path)
            .map_err(|source| DbError::Create {
                path: path.to_owned(),
                source,
            })?;
        Self::open_with(path, OpenFlags::default())
    }

    /// Opens an existing database; a missing file is an error so that a
    /// mistyped `--dir` is not silently turned into an empty collector.
    pub fn open(path: &Path) -> Result<Db, DbError> {
        if !path.exists() {
            return Err(DbError::Missing {
                path: path.to_owned(),
            });
        }
        Self::open_with(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
    }

    fn open_with(path: &Path, flags: OpenFlags) -> Result<Db, DbError> {
        let err = |op| {
            let path = path.to_owned();
            move |source| DbError::Sqlite { path, op, source }
        };
        let open = |synchronous: &str| -> Result<Connection, DbError> {
            let conn = Connection::open_with_flags(path, flags).map_err(err("open"))?;
            conn.busy_timeout(Duration::from_secs(10))
                .map_err(err("busy_timeout"))?;
            conn.pragma_update(None, "journal_mode", "WAL")
                .map_err(err("journal_mode"))?;
            conn.pragma_update(None, "synchronous", synchronous)
                .map_err(err("synchronous"))?;
            Ok(conn)
        };
        let conn = open("FULL")?;
        conn.execute_batch(sql::SCHEMA).map_err(err("schema"))?;
        Ok(Db {
            path: path.to_owned(),
            conn: Mutex::new(conn),
            index: Mutex::new(open("NORMAL")?),
        })
    }

    fn index(&self) -> MutexGuard<'_, Connection> {
        self.index.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn conn(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave SQLite half-written
        // (statements are atomic), so a poisoned lock is still usable.
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn err(&self, op: &'static str) -> impl FnOnce(rusqlite::Error) -> DbError + '_ {
        move |source| DbError::Sqlite {
            path: self.path.clone(),
            op,
            source,
        }
    }

    pub fn add_user(&self, name: &str, password_hash: &str, now: i64) -> Result<(), DbError> {
        match self
            .conn()
            .execute(sql::INSERT_USER, params![name, password_hash, now])
        {
            Ok(_) => Ok(()),
            Err(rusqlite::Error::SqliteFailure(e, _))
                if e.code == rusqlite::ErrorCode::ConstraintViolation =>
            {
                Err(DbError::UserExists {
                    name: name.to_owned(),
                })
            }
            Err(e) => Err(self.err("add user")(e)),
        }
    }

    pub fn delete_user(&self, name: &str) -> Result<(), DbError> {
        let n = self
            .conn()
            .execute(sql::DELETE_USER, params![name])
            .map_err(self.err("delete user"))?;
        if n == 0 {
            return Err(DbError::NoSuchUser {
                name: name.to_owned(),
            });
        }
        Ok(())
    }

    pub fn user_hash(&self, name: &str) -> Result<Option<String>, DbError> {
        self.conn()
            .query_row(sql::USER_HASH, params![name], |r| r.get(0))
            .optional()
            .map_err(self.err("look up user"))
    }

    /// Records a certificate and the enrolment that produced it, together.
    pub fn record_issued(&self, issued: &Issued<'_>) -> Result<(), DbError> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(self.err("begin"))?;
        self.insert_issued(&tx, issued)?;
        tx.commit().map_err(self.err("commit"))
    }

    /// Records a first enrolment of its host, unless the host already has
    /// a live certificate: then nothing is written and that certificate's
    /// serial is returned. The check and the insert are one `IMMEDIATE`
    /// transaction, so of two enrolments of one host at once (here or in
    /// another process) exactly one is recorded.
    pub fn record_enrolment(&self, issued: &Issued<'_>) -> Result<Option<String>, DbError> {
        let mut conn = self.conn();
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(self.err("begin"))?;
        let live: Option<String> = tx
            .query_row(
                sql::LIVE_CERT_FOR_HOST,
                params![issued.host_id, log_sensor_common::clock::now_secs()],
                |r| r.get(0),
            )
            .optional()
            .map_err(self.err("look up host certificate"))?;
        if live.is_some() {
            return Ok(live);
        }
        self.insert_issued(&tx, issued)?;
        tx.commit().map_err(self.err("commit"))?;
        Ok(None)
    }

    fn insert_issued(&self, tx: &Connection, issued: &Issued<'_>) -> Result<(), DbError> {
        tx.execute(
            sql::INSERT_CERT,
            params![
                issued.serial,
                issued.host_id,
                issued.username,
                issued.issued_at,
                issued.not_after
            ],
        )
        .map_err(self.err("insert certificate"))?;
        tx.execute(
            sql::INSERT_ENROLMENT,
            params![
                issued.issued_at,
                issued.kind,
                issued.username,
                issued.host_id,
                issued.serial,
                issued.source_addr
            ],
        )
        .map_err(self.err("insert enrolment"))?;
        Ok(())
    }

    pub fn cert_state(&self, serial: &str) -> Result<CertState, DbError> {
        let row: Option<(Option<i64>, String)> = self
            .conn()
            .query_row(sql::CERT_STATE, params![serial], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .optional()
            .map_err(self.err("look up certificate"))?;
        Ok(match row {
            None => CertState::Unknown,
            Some((Some(_), _)) => CertState::Revoked,
            Some((None, username)) => CertState::Valid { username },
        })
    }

    /// A certificate of `host_id` that is neither revoked nor expired at
    /// `now`, if any.
    pub fn live_cert_for_host(&self, host_id: &str, now: i64) -> Result<Option<String>, DbError> {
        self.conn()
            .query_row(sql::LIVE_CERT_FOR_HOST, params![host_id, now], |r| r.get(0))
            .optional()
            .map_err(self.err("look up host certificate"))
    }

    pub fn revoked_serials(&self) -> Result<HashSet<String>, DbError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare_cached(sql::REVOKED_SERIALS)
            .map_err(self.err("list revoked"))?;
        let rows = stmt
            .query_map([], |r| r.get(0))
            .map_err(self.err("list revoked"))?;
        rows.collect::<Result<_, _>>()
            .map_err(self.err("list revoked"))
    }

    /// Revokes the certificate with serial `target`, or else every
    /// certificate of host `target`; returns the matching rows after the
    /// update (already-revoked ones included, so a repeat is not an error).
    pub fn revoke(&self, target: &str, now: i64) -> Result<Vec<CertRow>, DbError> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(self.err("begin"))?;
        let serial = target.to_ascii_lowercase().replace(':', "");
        let n = tx
            .execute(sql::REVOKE_SERIAL, params![serial, now])
            .map_err(self.err("revoke serial"))?;
        let key = if n > 0 || exists_serial(&tx, &serial).map_err(self.err("revoke"))? {
            serial
        } else {
            tx.execute(sql::REVOKE_HOST, params![target, now])
                .map_err(self.err("revoke host"))?;
            target.to_owned()
        };
        let rows = {
            let mut stmt = tx
                .prepare(sql::CERTS_MATCHING)
                .map_err(self.err("read back"))?;
            let rows = stmt
                .query_map(params![key], cert_row)
                .map_err(self.err("read back"))?;
            rows.collect::<Result<Vec<_>, _>>()
                .map_err(self.err("read back"))?
        };
        if rows.is_empty() {
            return Err(DbError::NothingToRevoke {
                target: target.to_owned(),
            });
        }
        tx.commit().map_err(self.err("commit"))?;
        Ok(rows)
    }

    pub fn list_certs(&self) -> Result<Vec<CertRow>, DbError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare(sql::LIST_CERTS)
            .map_err(self.err("list certificates"))?;
        let rows = stmt
            .query_map([], cert_row)
            .map_err(self.err("list certificates"))?;
        rows.collect::<Result<_, _>>()
            .map_err(self.err("list certificates"))
    }

    pub fn stream_index(
        &self,
        host_id: &str,
        stream: &str,
    ) -> Result<Option<StreamIndex>, DbError> {
        self.index()
            .query_row(sql::STREAM_INDEX, params![host_id, stream], |r| {
                Ok(StreamIndex {
                    high_water: r.get::<_, i64>(0)? as u64,
                    file_len: r.get::<_, i64>(1)? as u64,
                    streak: r.get::<_, i64>(2)? as u64,
                    streak_alerted: r.get::<_, i64>(3)? != 0,
                })
            })
            .optional()
            .map_err(self.err("read stream index"))
    }

    /// Moves the high-water marks of one batch and stores its alerts, in
    /// one transaction; called only after the data files are synced.
    pub fn commit_batch(
        &self,
        host_id: &str,
        marks: &[(&str, StreamIndex)],
        alerts: &[AlertRow],
        now: i64,
    ) -> Result<(), DbError> {
        let mut conn = self.index();
        let tx = conn.transaction().map_err(self.err("begin"))?;
        {
            let mut upsert = tx
                .prepare_cached(sql::UPSERT_STREAM)
                .map_err(self.err("update stream index"))?;
            for (stream, m) in marks {
                upsert
                    .execute(params![
                        host_id,
                        stream,
                        m.high_water as i64,
                        m.file_len as i64,
                        m.streak as i64,
                        m.streak_alerted as i64,
                        now
                    ])
                    .map_err(self.err("update stream index"))?;
            }
            let mut insert = tx
                .prepare_cached(sql::INSERT_ALERT)
                .map_err(self.err("insert alert"))?;
            for a in alerts {
                insert
                    .execute(params![
                        a.at,
                        a.kind,
                        a.host_id,
                        a.stream,
                        a.path,
                        a.at_offset as i64,
                        a.count as i64
                    ])
                    .map_err(self.err("insert alert"))?;
            }
        }
        tx.commit().map_err(self.err("commit"))
    }
}

fn exists_serial(conn: &Connection, serial: &str) -> rusqlite::Result<bool> {
    conn.query_row(sql::CERT_STATE, params![serial], |_| Ok(()))
        .optional()
        .map(|r| r.is_some())
}

fn cert_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<CertRow> {
    Ok(CertRow {
        serial: r.get(0)?,
        host_id: r.get(1)?,
        username: r.get(2)?,
        issued_at: r.get(3)?,
        not_after: r.get(4)?,
        revoked_at: r.get(5)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn issued<'a>(serial: &'a str, host: &'a str) -> Issued<'a> {
        Issued {
            serial,
            host_id: host,
            username: "alice",
            issued_at: 100,
            not_after: 200,
            kind: "enroll",
            source_addr: "127.0.0.1",
        }
    }

    #[test]
    fn revoke_by_serial_or_host() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::create(&dir.path().join("c.db")).unwrap();
        db.record_issued(&issued("aa01", "web")).unwrap();
        db.record_issued(&issued("aa02", "web")).unwrap();
        db.record_issued(&issued("bb01", "db")).unwrap();
        assert_eq!(db.revoke("AA:01", 5).unwrap().len(), 1);
        assert_eq!(db.cert_state("aa01").unwrap(), CertState::Revoked);
        assert!(matches!(
            db.cert_state("aa02").unwrap(),
            CertState::Valid { .. }
        ));
        assert_eq!(db.revoke("web", 6).unwrap().len(), 2);
        assert_eq!(db.cert_state("aa02").unwrap(), CertState::Revoked);
        assert_eq!(db.cert_state("zz").unwrap(), CertState::Unknown);
        assert_eq!(
            db.revoked_serials().unwrap(),
            ["aa01", "aa02"].iter().map(|s| s.to_string()).collect()
        );
        assert!(matches!(
            db.revoke("nope", 7),
            Err(DbError::NothingToRevoke { .. })
        ));
    }

    #[test]
    fn a_host_with_a_live_certificate_is_not_enrolled_again() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::create(&dir.path().join("c.db")).unwrap();
        let now = log_sensor_common::clock::now_secs();
        let live = |serial| Issued {
            not_after: now + 100,
            ..issued(serial, "web")
        };
        assert_eq!(db.record_enrolment(&live("aa01")).unwrap(), None);
        assert_eq!(
            db.record_enrolment(&live("aa02")).unwrap().as_deref(),
            Some("aa01")
        );
        assert_eq!(db.cert_state("aa02").unwrap(), CertState::Unknown);
        db.revoke("web", now).unwrap();
        assert_eq!(db.record_enrolment(&live("aa03")).unwrap(), None);
    }

    #[test]
    fn the_database_and_its_wal_are_readable_by_the_collector_only() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.db");
        let db = Db::create(&path).unwrap();
        db.add_user("alice", "h", 1).unwrap();
        for name in ["c.db", "c.db-wal", "c.db-shm"] {
            let mode = std::fs::metadata(dir.path().join(name))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{name}");
        }
    }

    #[test]
    fn users_are_unique() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::create(&dir.path().join("c.db")).unwrap();
        db.add_user("alice", "h", 1).unwrap();
        assert!(matches!(
            db.add_user("alice", "h", 1),
            Err(DbError::UserExists { .. })
        ));
        db.delete_user("alice").unwrap();
        assert!(matches!(
            db.delete_user("alice"),
            Err(DbError::NoSuchUser { .. })
        ));
    }
}
