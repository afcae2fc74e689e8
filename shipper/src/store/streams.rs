//! The stream rows: where each stream's file is and how far it was read and committed. Offsets
//! only move in [`Store::commit`], after the sink acknowledged; a row or commit the database
//! refused is owed (`pending.rs`), not dropped.

use super::{classify, now_secs, Pending, Store, StoreError};
use rusqlite::{params, Connection, OptionalExtension};

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
    /// A syslog listener no longer configured (removed or moved by a reload): its spool and
    /// committed offset wait for it to come back, so it is never forgotten as a let-go file is.
    Stopped,
}

impl StreamState {
    pub fn as_str(self) -> &'static str {
        match self {
            StreamState::Active => "active",
            StreamState::Released => "released",
            StreamState::Truncated => "truncated",
            StreamState::Done => "done",
            StreamState::Unreadable => "unreadable",
            StreamState::Stopped => "stopped",
        }
    }
    pub fn parse(s: &str) -> StreamState {
        match s {
            "released" => StreamState::Released,
            "truncated" => StreamState::Truncated,
            "done" => StreamState::Done,
            "unreadable" => StreamState::Unreadable,
            "stopped" => StreamState::Stopped,
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

fn hex(v: Option<u64>) -> Option<String> {
    v.map(|v| format!("{v:016x}"))
}

fn unhex(v: Option<String>) -> Option<u64> {
    v.and_then(|s| u64::from_str_radix(&s, 16).ok())
}

impl Store {
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

    /// The `(stream, source)` of every active stream whose id starts with `prefix`, read by the
    /// primary key's order (a range, not a scan of every file's row: a store may hold 100,000).
    pub fn active_streams_under(&self, prefix: &str) -> Result<Vec<(String, String)>, StoreError> {
        // Every id that starts with `prefix` sorts in [prefix, prefix with its last byte + 1).
        let mut end = prefix.as_bytes().to_vec();
        if let Some(last) = end.last_mut() {
            *last += 1;
        }
        let end = String::from_utf8(end).unwrap_or_default();
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT stream, source FROM streams WHERE stream >= ?1 AND stream < ?2 AND state = 'active'",
            )
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map(params![prefix, end], |r| Ok((r.get(0)?, r.get(1)?)))
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<Vec<_>, _>>().map_err(|e| self.err(e))
    }

    /// Sets a stream's state alone (a syslog listener stopped or back).
    pub fn set_stream_state(&self, stream: &str, state: StreamState) -> Result<(), StoreError> {
        self.conn
            .prepare_cached("UPDATE streams SET state = ?2 WHERE stream = ?1")
            .and_then(|mut s| s.execute(params![stream, state.as_str()]))
            .map(drop)
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

    /// Records how large streams' files have grown while nothing commits (a sink outage), in
    /// one transaction: the lag the tables show keeps growing with the files. A size only
    /// grows here, so a size noted earlier than the last commit's cannot lower it.
    pub fn note_sizes(&mut self, sizes: &[(String, u64)]) -> Result<(), StoreError> {
        if sizes.is_empty() {
            return Ok(());
        }
        let write = |conn: &mut Connection| -> rusqlite::Result<()> {
            let tx = conn.transaction()?;
            {
                let mut st =
                    tx.prepare_cached("UPDATE streams SET size = MAX(size, ?2) WHERE stream = ?1")?;
                for (stream, size) in sizes {
                    st.execute(params![stream, *size as i64])?;
                }
            }
            tx.commit()
        };
        write(&mut self.conn).map_err(|e| self.err(e))
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
                read_offset = MAX(read_offset, ?4), size = MAX(size, ?5), records = records + ?6, bytes = bytes + ?7,
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

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    pub(in crate::store) fn row(id: &str) -> StreamRow {
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
    fn active_streams_under_a_prefix_and_a_state_set_alone() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Store::open(dir.path()).unwrap();
        for id in [
            "syslog:net:udp://a",
            "syslog:net:tcp://b",
            "syslogx",
            "syslog;",
            "f00d",
        ] {
            s.upsert_stream(&row(id)).unwrap();
        }
        let ids = |s: &Store| {
            let mut v: Vec<String> = s
                .active_streams_under("syslog:")
                .unwrap()
                .into_iter()
                .map(|(id, _)| id)
                .collect();
            v.sort();
            v
        };
        assert_eq!(ids(&s), ["syslog:net:tcp://b", "syslog:net:udp://a"]);
        s.set_stream_state("syslog:net:tcp://b", StreamState::Stopped)
            .unwrap();
        assert_eq!(ids(&s), ["syslog:net:udp://a"]);
        let st = s.load_streams().unwrap();
        let b = st
            .iter()
            .find(|r| r.stream == "syslog:net:tcp://b")
            .unwrap();
        assert_eq!(b.state, StreamState::Stopped, "read back as it was written");
        // Never forgotten as a let-go file is.
        assert_eq!(s.prune_streams(-10).unwrap(), 0);
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
}
