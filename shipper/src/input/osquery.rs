//! The osquery outbox as an input: the extension's logger plugin writes every result,
//! snapshot, status line and heartbeat into `<state_dir>/osquery-outbox.db` (schema in
//! `sql/outbox.sql`) before it answers osqueryd; this input reads that outbox into the batch as
//! records of source `osquery`, one stream per query name, and its acknowledgement deletes the
//! rows once the sink has them. A crash re-sends what was not acknowledged. (The extension's
//! `logger/outbox.rs` is the writing side of the same table.)

use super::{Input, Turn};
use crate::batch::{Ack, AckError, Acknowledge, Intake, StreamMeta};
use crate::frame::{Part, Rec};
use crate::record::now_ms;
use crate::status::TailStats;
use crate::store::{Alert, Store};
use rusqlite::{params, Connection, OpenFlags, OptionalExtension};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const FILE: &str = log_sensor_common::state_dir::OSQUERY_OUTBOX;
pub const SOURCE: &str = "osquery";
/// How often the outbox is looked at (osquery logs every few seconds at most).
const POLL: Duration = Duration::from_millis(500);

#[derive(Debug, thiserror::Error)]
#[error("osquery outbox {path}: {source}")]
pub struct OutboxError {
    pub path: PathBuf,
    pub source: rusqlite::Error,
}

/// The outbox read by the pipeline: polled, never waited on (the extension's writes are rows).
pub struct OsqueryInput {
    state_dir: PathBuf,
    outbox: Option<Outbox>,
    last_poll: Option<Instant>,
    /// The outbox could not be opened and that is alerted: once, not every poll.
    alerted: bool,
    /// Where alerts go.
    store: Arc<Mutex<Store>>,
    /// Rows taken count as records read, as status shows them.
    stats: Arc<TailStats>,
    /// The shipping thread's connection, shared by this input's acknowledgements.
    deleter: Arc<Deleter>,
}

impl OsqueryInput {
    pub fn new(state_dir: &Path, store: Arc<Mutex<Store>>, stats: Arc<TailStats>) -> Self {
        OsqueryInput {
            state_dir: state_dir.to_path_buf(),
            outbox: None,
            last_poll: None,
            alerted: false,
            store,
            stats,
            deleter: Arc::new(Deleter {
                path: path(state_dir),
                conn: Mutex::new(None),
            }),
        }
    }

    fn alert_unopenable(&mut self, e: &OutboxError) {
        if std::mem::replace(&mut self.alerted, true) {
            return;
        }
        tracing::warn!(error = %e, "cannot open the osquery outbox");
        let a = Alert {
            kind: "read_error",
            source: Some(SOURCE.to_string()),
            stream: None,
            path: Some(e.path.display().to_string()),
            detail: e.to_string(),
        };
        if let Err(e) = self.store.lock().expect("store lock").add_alert(&a) {
            tracing::error!(error = %e, "cannot record alert");
        }
    }
}

impl Input for OsqueryInput {
    fn name(&self) -> &str {
        "osquery outbox"
    }

    fn turn(&mut self, out: &mut Intake<'_>) -> Turn {
        if self.last_poll.is_some_and(|t| t.elapsed() < POLL) {
            return Turn::Idle;
        }
        self.last_poll = Some(Instant::now());
        if self.outbox.is_none() {
            match Outbox::open(&self.state_dir) {
                Ok(o) => self.outbox = o,
                Err(e) => self.alert_unopenable(&e),
            }
        }
        let room = out.room();
        let Some(ob) = self.outbox.as_mut() else {
            return Turn::Idle;
        };
        if room == 0 {
            return Turn::Idle;
        }
        match ob.fill(out, room, now_ms(), &self.deleter) {
            Ok(n) => {
                self.stats
                    .records_read
                    .fetch_add(n as u64, Ordering::Relaxed);
                if n == room {
                    // More may wait: the next turn comes without the poll interval.
                    self.last_poll = None;
                    return Turn::Busy;
                }
            }
            Err(e) => {
                // Reopened at the next poll; rows not acknowledged stay in the outbox.
                tracing::warn!(error = %e, "cannot read the osquery outbox");
                self.outbox = None;
            }
        }
        Turn::Idle
    }

    fn idle_wait(&self) -> Duration {
        match self.last_poll {
            Some(t) => POLL.saturating_sub(t.elapsed()),
            None => Duration::ZERO,
        }
    }
}

struct Outbox {
    conn: Connection,
    path: PathBuf,
    /// The highest row id handed to a batch: rows are read once while the agent runs.
    last_read: i64,
    metas: HashMap<String, StreamMeta>,
}

pub fn path(state_dir: &Path) -> PathBuf {
    state_dir.join(FILE)
}

fn open(path: &Path, flags: OpenFlags) -> Result<Option<Connection>, OutboxError> {
    let err = |source| OutboxError {
        path: path.to_path_buf(),
        source,
    };
    if !path.exists() {
        return Ok(None);
    }
    let conn = Connection::open_with_flags(path, flags).map_err(err)?;
    conn.busy_timeout(Duration::from_secs(5)).map_err(err)?;
    // The extension creates the table; until it has, there is nothing to ship.
    let has: Option<i64> = conn
        .query_row(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'outbox'",
            [],
            |r| r.get(0),
        )
        .optional()
        .map_err(err)?;
    Ok(has.map(|_| conn))
}

impl Outbox {
    /// The outbox, once the extension has made one.
    fn open(state_dir: &Path) -> Result<Option<Outbox>, OutboxError> {
        let path = path(state_dir);
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        Ok(open(&path, flags)?.map(|conn| Outbox {
            conn,
            path,
            last_read: 0,
            metas: HashMap::new(),
        }))
    }

    /// Moves up to `max_records` waiting rows into the batch; returns how many.
    fn fill(
        &mut self,
        out: &mut Intake<'_>,
        max_records: usize,
        ts_ms: i64,
        deleter: &Arc<Deleter>,
    ) -> Result<usize, OutboxError> {
        let err = |source| OutboxError {
            path: self.path.clone(),
            source,
        };
        let mut st = self
            .conn
            .prepare_cached(
                "SELECT id, name, record FROM outbox WHERE id > ?1 ORDER BY id LIMIT ?2",
            )
            .map_err(err)?;
        let rows: Vec<(i64, String, String)> = st
            .query_map(params![self.last_read, max_records as i64], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })
            .map_err(err)?
            .collect::<Result<_, _>>()
            .map_err(err)?;
        drop(st);
        // Each stream's slot acknowledges up to its last row: rows are read in id order, so
        // every row below that is in this batch or an earlier one, acknowledged before it.
        let mut upto: HashMap<&str, i64> = HashMap::new();
        for (id, name, _) in &rows {
            upto.insert(name, *id);
        }
        let path: Arc<str> = self.path.display().to_string().into();
        let mut slots: HashMap<&str, u32> = HashMap::new();
        for (id, name, record) in &rows {
            let slot = match slots.get(name.as_str()) {
                Some(&s) => s,
                None => {
                    let meta = self
                        .metas
                        .entry(name.clone())
                        .or_insert_with(|| StreamMeta {
                            id: name.as_str().into(),
                            source: SOURCE.into(),
                            fingerprint: None,
                            path: path.clone(),
                        })
                        .clone();
                    let ack = RowsAck {
                        deleter: deleter.clone(),
                        upto: upto[name.as_str()],
                    };
                    let s = out.open_stream(meta, Ack::Input(Box::new(ack)));
                    slots.insert(name, s);
                    s
                }
            };
            let bytes = record.as_bytes();
            let rec = Rec {
                offset: *id as u64,
                len: bytes.len() as u64,
                part: Part::Whole,
                bytes,
            };
            out.push(slot, &rec, ts_ms, None);
            self.last_read = *id;
        }
        Ok(rows.len())
    }
}

/// Deletes acknowledged rows, on the shipping thread, through one connection of its own.
#[derive(Debug)]
struct Deleter {
    path: PathBuf,
    conn: Mutex<Option<Connection>>,
}

impl Deleter {
    fn delete_upto(&self, upto: i64) -> Result<(), OutboxError> {
        let mut conn = self.conn.lock().expect("outbox deleter lock");
        if conn.is_none() {
            let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
            *conn = open(&self.path, flags)?;
        }
        let Some(c) = conn.as_ref() else {
            return Ok(());
        };
        let result = c
            .prepare_cached("DELETE FROM outbox WHERE id <= ?1")
            .and_then(|mut st| st.execute(params![upto]));
        result.map(|_| ()).map_err(|source| {
            // A fresh connection next time: this one may be what is broken.
            *conn = None;
            OutboxError {
                path: self.path.clone(),
                source,
            }
        })
    }
}

/// One stream slot's rows: up to `upto`, deleted once delivered.
#[derive(Debug)]
struct RowsAck {
    deleter: Arc<Deleter>,
    upto: i64,
}

impl Acknowledge for RowsAck {
    fn acknowledged(&mut self) -> Result<(), AckError> {
        // If the delete fails the rows are sent again later: at least once.
        self.deleter.delete_upto(self.upto).map_err(|e| AckError {
            what: format!("osquery outbox {}", self.deleter.path.display()),
            message: e.source.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::{Batch, Limits};
    use crate::transform::Transforms;

    const SCHEMA: &str = include_str!("../../../sql/outbox.sql");
    const LIMITS: Limits = Limits {
        max_records: 10,
        max_bytes: 1 << 20,
    };

    fn input(dir: &Path) -> OsqueryInput {
        let store = Arc::new(Mutex::new(Store::open(dir).unwrap()));
        OsqueryInput::new(dir, store, Arc::new(TailStats::default()))
    }

    fn turn(i: &mut OsqueryInput, b: &mut Batch) -> Turn {
        let mut none = Transforms::none();
        // Polled, not waited on: the test's turns come without the interval.
        i.last_poll = None;
        let turn = i.turn(&mut Intake::new(b, &mut none, LIMITS));
        turn
    }

    #[test]
    fn rows_become_records_and_go_only_once_acknowledged() {
        let dir = tempfile::tempdir().unwrap();
        let mut ob = input(dir.path());
        let mut b = Batch::new("h".into(), 0);
        assert_eq!(turn(&mut ob, &mut b), Turn::Idle);
        assert!(b.is_idle(), "no outbox until the extension makes one");
        let c = Connection::open(path(dir.path())).unwrap();
        c.execute_batch(SCHEMA).unwrap();
        for (name, rec) in [
            ("pack_a_q", r#"{"name":"pack_a_q","action":"added"}"#),
            ("osquery_status", r#"{"s":0}"#),
            ("pack_a_q", r#"{"x":1}"#),
        ] {
            c.execute(
                "INSERT INTO outbox(time, kind, name, record) VALUES (1, 'result', ?1, ?2)",
                params![name, rec],
            )
            .unwrap();
        }
        turn(&mut ob, &mut b);
        assert_eq!(b.len(), 3);
        turn(&mut ob, &mut b);
        assert_eq!(b.len(), 3, "rows are read once while running");
        let recs: Vec<(String, u64, String)> = b
            .records()
            .map(|r| {
                (
                    r.stream.id.to_string(),
                    r.offset,
                    String::from_utf8(r.bytes.to_vec()).unwrap(),
                )
            })
            .collect();
        assert_eq!(
            recs[0],
            (
                "pack_a_q".to_string(),
                1,
                r#"{"name":"pack_a_q","action":"added"}"#.to_string()
            )
        );
        assert_eq!(recs[2].1, 3);
        assert!(b.records().all(|r| r.stream.source.as_ref() == SOURCE));
        assert!(b.checkpoints().is_empty(), "nothing for store.db to commit");
        // The osquery_status slot acknowledges up to its row, 2: rows 1 and 2 go.
        let status_slot = b
            .streams
            .iter()
            .position(|s| s.meta.id.as_ref() == "osquery_status")
            .unwrap();
        let Ack::Input(a) = &mut b.streams[status_slot].ack else {
            panic!("the outbox's slots carry its own acknowledgement");
        };
        a.acknowledged().unwrap();
        let left: i64 = c
            .query_row("SELECT count(*) FROM outbox", [], |r| r.get(0))
            .unwrap();
        assert_eq!(left, 1);
        // After a restart what was not acknowledged comes again.
        let mut again = input(dir.path());
        let mut b2 = Batch::new("h".into(), 1);
        turn(&mut again, &mut b2);
        assert_eq!(b2.len(), 1);
    }
}
