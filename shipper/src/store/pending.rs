//! What the store owes the database: writes that failed (the disk was full) and go with the
//! next commit's transaction, so an acknowledged offset is never dropped and is never committed
//! without its stream's row.

use super::{Checkpoint, StreamRow};
use std::collections::HashMap;

#[derive(Debug, Default)]
pub(super) struct Pending {
    /// Stream rows whose insert or update failed, the latest version of each: a stream found
    /// while the store cannot grow has no row, and its commits would update nothing.
    pub rows: HashMap<String, StreamRow>,
    /// Acknowledged checkpoints not yet committed, one per stream with the counters summed.
    pub checkpoints: HashMap<String, Checkpoint>,
}

impl Pending {
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty() && self.checkpoints.is_empty()
    }

    /// Adds a later batch's checkpoint: its position replaces the owed one, its counts add up.
    pub fn add_checkpoint(&mut self, c: &Checkpoint) {
        match self.checkpoints.get_mut(&c.stream) {
            None => {
                self.checkpoints.insert(c.stream.clone(), c.clone());
            }
            Some(owed) => {
                owed.committed_offset = c.committed_offset;
                owed.committed_hash = c.committed_hash;
                owed.read_offset = owed.read_offset.max(c.read_offset);
                owed.size = c.size;
                owed.records += c.records;
                owed.bytes += c.bytes;
                owed.overlong += c.overlong;
            }
        }
    }

    pub fn clear(&mut self) {
        self.rows.clear();
        self.checkpoints.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{streams::tests::row, Store};
    use rusqlite::Connection;
    use std::time::Duration;

    #[test]
    fn writes_the_database_refused_go_with_the_next_commit() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Store::open(dir.path()).unwrap();
        s.conn.busy_timeout(Duration::from_millis(10)).unwrap();
        // Another writer holds the database: every write of ours is refused, as on a full disk.
        let other = Connection::open(dir.path().join("store.db")).unwrap();
        other.execute_batch("BEGIN IMMEDIATE").unwrap();
        assert!(s.upsert_stream(&row("new")).is_err());
        assert_eq!(
            s.load_streams().unwrap()[0].stream,
            "new",
            "known, if not stored"
        );
        let cp = |off, records| Checkpoint {
            stream: "new".into(),
            committed_offset: off,
            read_offset: off,
            size: off,
            records,
            ..Checkpoint::default()
        };
        assert!(s.commit(&[cp(10, 1)]).is_err());
        assert!(s.commit(&[cp(30, 2)]).is_err());
        assert!(s.owes_writes());
        other.execute_batch("COMMIT").unwrap();
        s.commit_owed().unwrap();
        assert!(!s.owes_writes());
        let reader = Store::open_read_only(&dir.path().join("store.db")).unwrap();
        let (off, records): (i64, i64) = reader
            .query_row(
                "SELECT committed_offset, records FROM streams WHERE stream = 'new'",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        assert_eq!(
            (off, records),
            (30, 3),
            "the row, the last offset, every record counted"
        );
    }

    #[test]
    fn a_later_checkpoint_moves_the_position_and_adds_its_counts() {
        let mut p = Pending::default();
        let cp = |off, read, records| Checkpoint {
            stream: "s".into(),
            committed_offset: off,
            committed_hash: Some(off),
            read_offset: read,
            size: off,
            records,
            bytes: records * 10,
            overlong: 1,
        };
        p.add_checkpoint(&cp(10, 30, 2));
        p.add_checkpoint(&cp(25, 28, 3));
        assert_eq!(
            p.checkpoints["s"],
            Checkpoint {
                stream: "s".into(),
                committed_offset: 25,
                committed_hash: Some(25),
                read_offset: 30,
                size: 25,
                records: 5,
                bytes: 50,
                overlong: 2,
            }
        );
        assert!(!p.is_empty());
        p.clear();
        assert!(p.is_empty());
    }
}
