//! The durable, bounded outbox: `<state_dir>/osquery-outbox.db` (schema in `sql/outbox.sql`).
//!
//! Every logger call lands here before osqueryd gets its answer. Nothing in here may make a
//! `string` or `snapshot` call fail (osquery issue #7100: a failed logger call shuts osqueryd
//! down and the rows are lost), so when the database cannot be written — a missing or unusable
//! state dir, a full disk, a lock held too long — records wait in a bounded memory queue and
//! go in at the next successful write.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rusqlite::{params, Connection, OptionalExtension, Transaction, TransactionBehavior};

/// The outbox schema, shared with the agent that ships it.
pub const OUTBOX_SQL: &str = include_str!("../../../sql/outbox.sql");
/// `PRAGMA user_version` of the schema above.
pub const SCHEMA_VERSION: i64 = 1;
/// Default cap on pending rows; the oldest are dropped past it.
pub const DEFAULT_MAX_ROWS: u64 = 100_000;
/// Records held in memory while the database cannot be written.
const MEMORY_MAX: usize = 10_000;
/// How often a broken database is retried.
const REOPEN_EVERY: Duration = Duration::from_secs(1);
/// Repeated drops within this many seconds extend one alert instead of adding rows.
const ALERT_EPISODE_SECS: i64 = 60;

/// What a record is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Result,
    Snapshot,
    Status,
    Event,
    Heartbeat,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Result => "result",
            Kind::Snapshot => "snapshot",
            Kind::Status => "status",
            Kind::Event => "event",
            Kind::Heartbeat => "heartbeat",
        }
    }
}

/// One record on its way to the outbox.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub time: i64,
    pub kind: Kind,
    pub name: String,
    pub category: Option<String>,
    pub record: String,
}

/// A snapshot's identity for the unchanged check.
#[derive(Debug, Clone)]
pub struct SnapshotDigest {
    pub digest: String,
    pub rows: i64,
}

/// What happened to a snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnapshotOutcome {
    Queued,
    Unchanged,
    /// The database was unavailable: queued in memory without the check (a duplicate is better
    /// than a loss).
    Held,
}

pub struct Outbox {
    /// The database file.
    path: PathBuf,
    /// Cap on pending rows.
    max_rows: u64,
    /// Open connection, or `None` after a failure (reopened lazily).
    conn: Option<Connection>,
    /// Records waiting for the database to become writable again.
    memory: VecDeque<Record>,
    /// Records dropped from `memory` because it was full; written to counters later.
    memory_dropped: u64,
    /// When opening last failed, to pace retries.
    last_failure: Option<Instant>,
}

impl Outbox {
    pub fn new(path: PathBuf, max_rows: u64) -> Outbox {
        Outbox {
            path,
            max_rows: max_rows.max(1),
            conn: None,
            memory: VecDeque::new(),
            memory_dropped: 0,
            last_failure: None,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Queues a record; never fails.
    pub fn push(&mut self, rec: Record) {
        self.write(
            |tx, max, path| insert(tx, &rec, max, path).map(|_| ()),
            Some(rec.clone()),
        );
    }

    /// Queues a snapshot unless it equals the previous one of the same query; never fails.
    pub fn push_snapshot(&mut self, rec: Record, digest: &SnapshotDigest) -> SnapshotOutcome {
        let mut outcome = SnapshotOutcome::Held;
        let ok = self.write(
            |tx, max, path| {
                outcome = snapshot(tx, &rec, digest, max, path)?;
                Ok(())
            },
            Some(rec.clone()),
        );
        if ok {
            outcome
        } else {
            SnapshotOutcome::Held
        }
    }

    /// Adds `n` to a counter; best effort (a counter is not worth a memory record).
    pub fn count(&mut self, counter: &str, n: i64) {
        self.write(|tx, _, _| bump(tx, counter, n), None);
    }

    /// Runs `f` in a write transaction after flushing what memory holds. On failure `fallback`
    /// is held in memory. Returns whether `f` committed.
    fn write(
        &mut self,
        f: impl FnOnce(&Transaction<'_>, u64, &Path) -> rusqlite::Result<()>,
        fallback: Option<Record>,
    ) -> bool {
        if self.connection().is_none() {
            // Not open, and `connection` paces the retries: hold the record.
            if let Some(rec) = fallback {
                self.hold(rec);
            }
            return false;
        }
        match self.try_write(f) {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(
                    "cannot write the osquery outbox {}: {e}; holding records in memory",
                    self.path.display()
                );
                self.conn = None;
                self.last_failure = Some(Instant::now());
                if let Some(rec) = fallback {
                    self.hold(rec);
                }
                false
            }
        }
    }

    fn try_write(
        &mut self,
        f: impl FnOnce(&Transaction<'_>, u64, &Path) -> rusqlite::Result<()>,
    ) -> Result<(), String> {
        let (max, path) = (self.max_rows, self.path.clone());
        let memory: Vec<Record> = self.memory.iter().cloned().collect();
        let memory_dropped = self.memory_dropped;
        let conn = self
            .conn
            .as_mut()
            .ok_or("the outbox database is not open")?;
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| e.to_string())?;
        for rec in &memory {
            insert(&tx, rec, max, &path).map_err(|e| e.to_string())?;
        }
        if memory_dropped > 0 {
            bump(&tx, "dropped_unwritable", memory_dropped as i64).map_err(|e| e.to_string())?;
            raise(
                &tx,
                "outbox_unwritable",
                memory_dropped as i64,
                &format!(
                    "the osquery outbox {} could not be written and its memory queue ({MEMORY_MAX} \
                     records) overflowed: {{count}} oldest records were lost",
                    path.display()
                ),
            )
            .map_err(|e| e.to_string())?;
        }
        f(&tx, max, &path).map_err(|e| e.to_string())?;
        tx.commit().map_err(|e| e.to_string())?;
        self.memory.clear();
        self.memory_dropped = 0;
        Ok(())
    }

    fn hold(&mut self, rec: Record) {
        if self.memory.len() >= MEMORY_MAX {
            self.memory.pop_front();
            self.memory_dropped += 1;
        }
        self.memory.push_back(rec);
    }

    /// Records held in memory, not yet in the database.
    pub fn held(&self) -> usize {
        self.memory.len()
    }

    /// The open connection, opening it (creating the state dir) when due.
    fn connection(&mut self) -> Option<&mut Connection> {
        if self.conn.is_none() {
            if let Some(t) = self.last_failure {
                if t.elapsed() < REOPEN_EVERY {
                    return None;
                }
            }
            match open(&self.path) {
                Ok(c) => {
                    if self.last_failure.take().is_some() {
                        tracing::info!(
                            "the osquery outbox {} is writable again",
                            self.path.display()
                        );
                    }
                    self.conn = Some(c);
                }
                Err(e) => {
                    if self.last_failure.is_none() {
                        tracing::warn!("{e}; holding osquery records in memory");
                    }
                    self.last_failure = Some(Instant::now());
                    return None;
                }
            }
        }
        self.conn.as_mut()
    }
}

impl Drop for Outbox {
    /// At shutdown, one more try for what memory holds (the pacing of retries does not apply:
    /// there is no later), and an error naming how many records are lost if that fails too;
    /// they went unsaid before.
    fn drop(&mut self) {
        if self.memory.is_empty() && self.memory_dropped == 0 {
            return;
        }
        self.last_failure = None;
        self.write(|_, _, _| Ok(()), None);
        if !self.memory.is_empty() {
            tracing::error!(
                "{} osquery records held in memory are lost: the osquery outbox {} could not be \
                 written before the extension stopped",
                self.memory.len(),
                self.path.display()
            );
        }
    }
}

/// Opens (creating the state dir, the file and the schema) the outbox database.
pub fn open(path: &Path) -> Result<Connection, String> {
    let err = |e: &dyn std::fmt::Display| {
        format!("cannot open the osquery outbox {}: {e}", path.display())
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| err(&e))?;
    }
    let mut conn = Connection::open(path).map_err(|e| err(&e))?;
    share_with_group(path);
    conn.busy_timeout(Duration::from_secs(5))
        .map_err(|e| err(&e))?;
    let mode: String = conn
        .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
        .map_err(|e| err(&e))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(err(&format!("journal mode is {mode}, not WAL")));
    }
    // FULL, not NORMAL: osqueryd gives a result to its logger once, so a commit lost to a power
    // cut would be lost for good (sql/outbox.sql says the same to other writers).
    conn.pragma_update(None, "synchronous", "FULL")
        .map_err(|e| err(&e))?;
    // One write transaction: the schema's outbox_size count and its triggers must come into
    // being with no delete of the agent's in between, or the count would drift.
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(|e| err(&e))?;
    let version: i64 = tx
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(|e| err(&e))?;
    if version > SCHEMA_VERSION {
        return Err(err(&format!(
            "schema version {version} is newer than this extension's {SCHEMA_VERSION}"
        )));
    }
    tx.execute_batch(OUTBOX_SQL).map_err(|e| err(&e))?;
    tx.pragma_update(None, "user_version", SCHEMA_VERSION)
        .map_err(|e| err(&e))?;
    tx.commit().map_err(|e| err(&e))?;
    Ok(conn)
}

/// A state dir shared through its group (`chmod 2770`) means the agent runs as another user of
/// that group: make the outbox group-writable too (SQLite gives `-wal`/`-shm` the same mode).
fn share_with_group(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let Some(dir) = path.parent() else { return };
    let dir_shared = std::fs::metadata(dir)
        .map(|m| m.permissions().mode() & 0o020 != 0)
        .unwrap_or(false);
    if let (true, Ok(meta)) = (dir_shared, std::fs::metadata(path)) {
        let mode = meta.permissions().mode();
        if mode & 0o060 != 0o060 {
            let _ = std::fs::set_permissions(
                path,
                std::fs::Permissions::from_mode((mode | 0o660) & 0o7777),
            );
        }
    }
}

/// Whether a table exists (a read-only reader's check).
pub fn has_table(conn: &Connection, name: &str) -> bool {
    conn.query_row(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?1",
        [name],
        |_| Ok(()),
    )
    .optional()
    .ok()
    .flatten()
    .is_some()
}

fn insert(tx: &Transaction<'_>, rec: &Record, max_rows: u64, path: &Path) -> rusqlite::Result<()> {
    tx.execute(
        "INSERT INTO outbox (time, kind, name, category, record) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![
            rec.time,
            rec.kind.as_str(),
            rec.name,
            rec.category,
            rec.record
        ],
    )?;
    bump(tx, "queued", 1)?;
    // Kept by the schema's triggers in this same transaction: one row read, whatever the
    // outbox holds and whoever deleted from it (issue #10 item 7).
    let pending: i64 = tx.query_row("SELECT rows FROM outbox_size WHERE id = 1", [], |r| {
        r.get(0)
    })?;
    let excess = pending - max_rows as i64;
    if excess > 0 {
        tx.execute(
            "DELETE FROM outbox WHERE id IN (SELECT id FROM outbox ORDER BY id LIMIT ?1)",
            [excess],
        )?;
        bump(tx, "dropped_full", excess)?;
        raise(
            tx,
            "outbox_full",
            excess,
            &format!(
                "the osquery outbox {} is full ({max_rows} records): {{count}} oldest records \
                 dropped; is the log-sensor agent running and shipping?",
                path.display()
            ),
        )?;
    }
    Ok(())
}

fn snapshot(
    tx: &Transaction<'_>,
    rec: &Record,
    d: &SnapshotDigest,
    max_rows: u64,
    path: &Path,
) -> rusqlite::Result<SnapshotOutcome> {
    let previous: Option<String> = tx
        .query_row(
            "SELECT digest FROM snapshot_digests WHERE name = ?1",
            [&rec.name],
            |r| r.get(0),
        )
        .optional()?;
    if previous.as_deref() == Some(d.digest.as_str()) {
        tx.execute(
            "UPDATE snapshot_digests SET seen_at = ?2, unchanged = unchanged + 1 WHERE name = ?1",
            params![rec.name, rec.time],
        )?;
        bump(tx, "unchanged_snapshots", 1)?;
        return Ok(SnapshotOutcome::Unchanged);
    }
    insert(tx, rec, max_rows, path)?;
    tx.execute(
        "INSERT INTO snapshot_digests (name, digest, rows, changed_at, seen_at, unchanged) \
         VALUES (?1, ?2, ?3, ?4, ?4, 0) \
         ON CONFLICT(name) DO UPDATE SET digest = ?2, rows = ?3, changed_at = ?4, seen_at = ?4, unchanged = 0",
        params![rec.name, d.digest, d.rows, rec.time],
    )?;
    Ok(SnapshotOutcome::Queued)
}

fn bump(tx: &Transaction<'_>, counter: &str, n: i64) -> rusqlite::Result<()> {
    tx.execute(
        "INSERT INTO counters (name, value) VALUES (?1, ?2) \
         ON CONFLICT(name) DO UPDATE SET value = value + ?2",
        params![counter, n],
    )?;
    Ok(())
}

/// Raises an alert, or extends the current episode of the same kind. `{count}` in `detail` is
/// replaced by the episode's total.
fn raise(tx: &Transaction<'_>, kind: &str, n: i64, detail: &str) -> rusqlite::Result<()> {
    let now = crate::logger::calendar::unix_now();
    let current: Option<(i64, i64, i64)> = tx
        .query_row(
            "SELECT id, count, time FROM alerts WHERE kind = ?1 AND last_time >= ?2 ORDER BY id DESC LIMIT 1",
            params![kind, now - ALERT_EPISODE_SECS],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .optional()?;
    match current {
        Some((id, count, _)) => {
            let total = count + n;
            tx.execute(
                "UPDATE alerts SET count = ?2, last_time = ?3, detail = ?4 WHERE id = ?1",
                params![
                    id,
                    total,
                    now,
                    detail.replace("{count}", &total.to_string())
                ],
            )?;
        }
        None => {
            tracing::warn!("{}", detail.replace("{count}", &n.to_string()));
            tx.execute(
                "INSERT INTO alerts (time, last_time, kind, count, detail) VALUES (?1, ?1, ?2, ?3, ?4)",
                params![now, kind, n, detail.replace("{count}", &n.to_string())],
            )?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod size_tests;

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(i: i64) -> Record {
        Record {
            time: i,
            kind: Kind::Result,
            name: "q".into(),
            category: None,
            record: format!("{{\"i\":{i}}}"),
        }
    }

    #[test]
    fn drops_oldest_past_the_cap_and_counts() {
        let dir = tempfile::tempdir().unwrap();
        let mut o = Outbox::new(dir.path().join("state/outbox.db"), 3);
        for i in 0..5 {
            o.push(rec(i));
        }
        let c = open(o.path()).unwrap();
        let times: Vec<i64> = c
            .prepare("SELECT time FROM outbox ORDER BY id")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert_eq!(times, vec![2, 3, 4]);
        let dropped: i64 = c
            .query_row(
                "SELECT value FROM counters WHERE name='dropped_full'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(dropped, 2);
        let (alerts, count): (i64, i64) = c
            .query_row(
                "SELECT COUNT(*), SUM(count) FROM alerts WHERE kind='outbox_full'",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        assert_eq!((alerts, count), (1, 2));
    }

    #[test]
    fn gaps_left_by_the_agent_do_not_count_as_pending() {
        let dir = tempfile::tempdir().unwrap();
        let mut o = Outbox::new(dir.path().join("outbox.db"), 3);
        for i in 0..3 {
            o.push(rec(i));
        }
        // The agent shipped the middle record first.
        open(o.path())
            .unwrap()
            .execute("DELETE FROM outbox WHERE time = 1", [])
            .unwrap();
        o.push(rec(3));
        let c = open(o.path()).unwrap();
        assert_eq!(rows(&c), 3);
        let dropped: Option<i64> = c
            .query_row(
                "SELECT value FROM counters WHERE name='dropped_full'",
                [],
                |r| r.get(0),
            )
            .optional()
            .unwrap();
        assert_eq!(dropped, None);
    }

    #[test]
    fn a_group_shared_state_dir_gets_a_group_writable_outbox() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        std::fs::create_dir(&state).unwrap();
        std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o2770)).unwrap();
        let mut o = Outbox::new(state.join("outbox.db"), 10);
        o.push(rec(1));
        let mode = std::fs::metadata(state.join("outbox.db"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o060, 0o060);
    }

    /// Rows waiting in the outbox.
    fn rows(c: &Connection) -> i64 {
        c.query_row("SELECT COUNT(*) FROM outbox", [], |r| r.get(0))
            .unwrap()
    }

    #[test]
    fn what_memory_holds_is_written_when_the_outbox_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        std::fs::write(&state, "not a dir").unwrap();
        let mut o = Outbox::new(state.join("outbox.db"), 100);
        o.push(rec(1));
        o.push(rec(2));
        assert_eq!(o.held(), 2);
        std::fs::remove_file(&state).unwrap();
        // No wait for the pacing of retries: a stopping extension has no later.
        let path = o.path().to_path_buf();
        drop(o);
        assert_eq!(rows(&open(&path).unwrap()), 2);
    }

    #[test]
    fn holds_in_memory_while_unwritable_then_flushes_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        std::fs::write(&state, "not a dir").unwrap();
        let mut o = Outbox::new(state.join("outbox.db"), 100);
        o.push(rec(1));
        o.push(rec(2));
        std::fs::remove_file(&state).unwrap();
        std::thread::sleep(REOPEN_EVERY);
        o.push(rec(3));
        assert_eq!(rows(&open(o.path()).unwrap()), 3);
    }
}
