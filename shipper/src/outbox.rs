//! Ships what osquery logged: the extension's logger plugin writes every result, snapshot,
//! status line and heartbeat into `<state_dir>/osquery-outbox.db` (schema in `sql/outbox.sql`)
//! before it answers osqueryd; the agent reads that outbox into its batches as records of
//! source `osquery`, one stream per query name, and deletes rows only once the sink has
//! acknowledged them. A crash re-sends what was not acknowledged.

use crate::batch::{Batch, StreamMeta};
use crate::frame::{Part, Rec};
use crate::store::Checkpoint;
use rusqlite::{params, Connection, OpenFlags, OptionalExtension};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

pub const FILE: &str = log_sensor_common::state_dir::OSQUERY_OUTBOX;
pub const SOURCE: &str = "osquery";

#[derive(Debug, thiserror::Error)]
#[error("osquery outbox {path}: {source}")]
pub struct OutboxError {
    pub path: PathBuf,
    pub source: rusqlite::Error,
}

pub struct Outbox {
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
    pub fn open(state_dir: &Path) -> Result<Option<Outbox>, OutboxError> {
        let path = path(state_dir);
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        Ok(open(&path, flags)?.map(|conn| Outbox {
            conn,
            path,
            last_read: 0,
            metas: HashMap::new(),
        }))
    }

    /// Moves up to `max_records` waiting rows into `batch`; returns how many.
    pub fn fill(
        &mut self,
        batch: &mut Batch,
        max_records: usize,
        ts_ms: i64,
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
        let path: Arc<str> = self.path.display().to_string().into();
        let mut slots: HashMap<String, u32> = HashMap::new();
        for (id, name, record) in &rows {
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
            let slot = *slots.entry(name.clone()).or_insert_with(|| {
                let cp = Checkpoint {
                    stream: name.clone(),
                    ..Checkpoint::default()
                };
                batch.add_stream(meta, cp)
            });
            let bytes = record.as_bytes();
            batch.push(
                slot,
                &Rec {
                    offset: *id as u64,
                    len: bytes.len() as u64,
                    part: Part::Whole,
                    bytes,
                },
                ts_ms,
            );
            self.last_read = *id;
        }
        if let Some((id, _, _)) = rows.last() {
            batch.outbox_upto = Some(batch.outbox_upto.unwrap_or(0).max(*id));
        }
        Ok(rows.len())
    }
}

/// Deletes the rows a sink acknowledged (on the shipping thread, with a connection of its own).
pub fn ack(state_dir: &Path, upto: i64) -> Result<(), OutboxError> {
    let path = path(state_dir);
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let Some(conn) = open(&path, flags)? else {
        return Ok(());
    };
    conn.execute("DELETE FROM outbox WHERE id <= ?1", params![upto])
        .map(|_| ())
        .map_err(|source| OutboxError { path, source })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCHEMA: &str = include_str!("../../sql/outbox.sql");

    #[test]
    fn rows_become_records_and_go_only_once_acknowledged() {
        let dir = tempfile::tempdir().unwrap();
        assert!(
            Outbox::open(dir.path()).unwrap().is_none(),
            "no outbox until the extension makes one"
        );
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
        let mut ob = Outbox::open(dir.path()).unwrap().unwrap();
        let mut b = Batch::new("h".into(), 0);
        assert_eq!(ob.fill(&mut b, 10, 0).unwrap(), 3);
        assert_eq!(
            ob.fill(&mut b, 10, 0).unwrap(),
            0,
            "rows are read once while running"
        );
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
        assert_eq!(b.outbox_upto, Some(3));
        ack(dir.path(), 2).unwrap();
        let left: i64 = c
            .query_row("SELECT count(*) FROM outbox", [], |r| r.get(0))
            .unwrap();
        assert_eq!(left, 1);
        // After a restart what was not acknowledged comes again.
        let mut again = Outbox::open(dir.path()).unwrap().unwrap();
        let mut b2 = Batch::new("h".into(), 1);
        assert_eq!(again.fill(&mut b2, 10, 0).unwrap(), 1);
    }
}
