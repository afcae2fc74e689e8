//! Open slots: how many files are held open at once, and which.
//!
//! Every followed file holds one descriptor, and the process has a limit (`RLIMIT_NOFILE`, whose
//! soft value is raised to the hard one at start, as most agents do). The tailer keeps at most
//! `max_open` files open, below the limit with headroom for the store, the sink's sockets and
//! the control socket. A file found while every slot is taken waits in a queue, oldest first;
//! room is made by *parking* open files: closing the descriptor and keeping the stream, to be
//! reopened when the file changes and identified again by device+inode and fingerprint (the
//! same decision as after a restart, [`Tailer::identify`]).
//!
//! Which files give up their slot: first those caught up and quiet (least recently written
//! first); if every open file still has bytes to read, those that have held their slot longest,
//! after at least [`FAIR_SLICE`] — a round robin, so no file starves. A file with no new bytes
//! for `close_inactive` is parked whether or not anything waits (Filebeat's `close_inactive`
//! and `harvester_limit` are the model).
//!
//! A parked stream resumes at its last record boundary, so a partial last line or a multiline
//! record in the making is read again from the file rather than kept in memory.

use super::*;
use std::collections::VecDeque;

/// An open file with unread bytes keeps its slot at least this long before it yields it.
const FAIR_SLICE: Duration = Duration::from_secs(1);
/// Descriptors kept free for everything but followed files: the store (database, WAL and
/// shared memory), the sink's connections, inotify, the control and monitor sockets, the
/// osquery outbox, and files opened briefly while identifying.
const RESERVED_FDS: u64 = 128;
/// Without `max_open_files`, at most this many open at once however high the limit: each open
/// stream also holds read buffers, and 16,384 covers the busiest hosts seen.
const DEFAULT_MAX_OPEN: u64 = 16_384;
/// Passes over the open files to make room, per round.
const MAX_ROOM_PASSES: usize = 4;
/// The same alert at most this often while work stays held back.
const ALERT_GAP: Duration = Duration::from_secs(600);

pub(super) struct Slots {
    /// Files held open at most.
    pub(super) max_open: usize,
    /// A caught-up file with no new bytes for this long is parked (`None`: never).
    pub(super) close_inactive: Option<Duration>,
    /// Followed files whose descriptor was closed, with the (size, mtime) they had then.
    parked: HashMap<FileKey, Parked>,
    /// Parked files by path, so an inotify event on one reopens it.
    parked_paths: PathMap,
    /// Files waiting for a slot.
    waiting: Waiting,
    /// Since when files wait with every slot taken.
    held_back_since: Option<Instant>,
    last_alert: Option<Instant>,
    /// What open streams' framers hold in total, and the most they may ([`memory`]).
    pub(super) held_total: usize,
    pub(super) held_budget: usize,
    pub(super) last_partial_log: Option<Instant>,
}

/// Files waiting for a slot, in two queues taken from in turn, oldest first in each: files that
/// grew while parked (a line just written, waiting to ship), and files not read yet (found by a
/// scan, or yielding their turn). Neither then starves the other: a file written while 100,000
/// new files queue is reopened within a round or two, not behind them.
#[derive(Default)]
struct Waiting {
    grown: VecDeque<Found>,
    fresh: VecDeque<Found>,
    /// One entry per file across both queues.
    queued: HashSet<FileKey>,
    grown_next: bool,
}

impl Waiting {
    fn len(&self) -> usize {
        self.grown.len() + self.fresh.len()
    }

    fn push(&mut self, f: Found, grown: bool) {
        if !self.queued.insert((f.device, f.inode)) {
            return;
        }
        if grown {
            self.grown.push_back(f);
        } else {
            self.fresh.push_back(f);
        }
    }

    fn take_grown(&self) -> bool {
        !self.grown.is_empty() && (self.grown_next || self.fresh.is_empty())
    }

    fn front(&self) -> Option<&Found> {
        if self.take_grown() {
            self.grown.front()
        } else {
            self.fresh.front()
        }
    }

    fn pop(&mut self) -> Option<Found> {
        let grown = self.take_grown();
        let f = if grown {
            self.grown.pop_front()
        } else {
            self.fresh.pop_front()
        }?;
        self.grown_next = !grown;
        self.queued.remove(&(f.device, f.inode));
        Some(f)
    }
}

struct Parked {
    source: usize,
    path: PathBuf,
    version: (u64, i64),
}

/// The descriptor limit after raising the soft limit to the hard one.
pub fn raise_fd_limit() -> Option<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return None;
    }
    if lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: setrlimit reads the struct we own.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            tracing::debug!(
                from = lim.rlim_cur,
                to = lim.rlim_max,
                "raised the open files limit"
            );
            lim.rlim_cur = lim.rlim_max;
        }
    }
    Some(lim.rlim_cur as u64)
}

/// How many files may be open: the configured number, within what the descriptor limit
/// leaves after the reserve.
pub fn max_open(configured: Option<u64>, fd_limit: Option<u64>) -> usize {
    let room = fd_limit.map(|l| {
        let reserve = RESERVED_FDS.max(l / 16);
        l.saturating_sub(reserve).max(16)
    });
    let n = match (configured, room) {
        (Some(c), Some(r)) if c > r => {
            tracing::warn!(
                max_open_files = c,
                limit = fd_limit.unwrap_or(0),
                using = r,
                "discovery.max_open_files is more than the open files limit leaves; using less"
            );
            r
        }
        (Some(c), _) => c,
        (None, Some(r)) => r.min(DEFAULT_MAX_OPEN),
        (None, None) => DEFAULT_MAX_OPEN,
    };
    n.max(1) as usize
}

impl Slots {
    pub(super) fn new(cfg: &Config) -> Slots {
        let max_open = max_open(cfg.discovery.max_open_files, raise_fd_limit());
        tracing::info!(max_open_files = max_open, "open files budget");
        Slots {
            max_open,
            close_inactive: cfg.discovery.close_inactive,
            parked: HashMap::new(),
            parked_paths: PathMap::default(),
            waiting: Waiting::default(),
            held_back_since: None,
            last_alert: None,
            held_total: 0,
            held_budget: super::memory::held_budget(cfg),
            last_partial_log: None,
        }
    }

    pub(super) fn configure(&mut self, cfg: &Config) {
        self.close_inactive = cfg.discovery.close_inactive;
        self.held_budget = super::memory::held_budget(cfg);
        if let Some(n) = cfg.discovery.max_open_files {
            self.max_open = max_open(Some(n), raise_fd_limit());
        }
    }

    pub(super) fn waiting_len(&self) -> usize {
        self.waiting.len()
    }

    pub(super) fn is_parked(&self, key: FileKey) -> bool {
        self.parked.contains_key(&key)
    }
}

impl Tailer {
    /// The open stream `id`, found through its file's identity (no pass over open files).
    pub(super) fn open_stream(&self, id: &str) -> Option<&Tracked> {
        let k = self.registry.get(id)?;
        self.open
            .get(&(k.row.device, k.row.inode))
            .map(|t| &**t)
            .filter(|t| t.id == id)
    }

    /// A file to open once a slot is free.
    pub(super) fn queue_adoption(&mut self, f: Found) {
        self.queue(f, false);
    }

    /// `grown`: a parked file that changed, taken in turn with files not read yet.
    fn queue(&mut self, f: Found, grown: bool) {
        if self.open.contains_key(&(f.device, f.inode)) {
            return;
        }
        self.slots.waiting.push(f, grown);
    }

    /// A scan found `f`: if it is parked, reopen it when it changed. Returns whether it was.
    pub(super) fn parked_found(&mut self, f: &Found) -> bool {
        let key = (f.device, f.inode);
        let Some(p) = self.slots.parked.get(&key) else {
            return false;
        };
        if p.version != (f.size, f.mtime_ns) || p.path != f.path {
            self.queue(f.clone(), true);
        }
        true
    }

    /// A scan did not find these parked files: they are gone or renamed out of the globs.
    pub(super) fn parked_missing(&mut self, present: &HashSet<FileKey>) {
        let slots = &mut self.slots;
        slots.parked.retain(|k, p| {
            let keep = present.contains(k);
            if !keep && slots.parked_paths.get(p.path.as_os_str()) == Some(k) {
                slots.parked_paths.remove(p.path.as_os_str());
            }
            keep
        });
        self.count_parked();
    }

    /// inotify says `path` changed: if a parked file is there, reopen it.
    pub(super) fn parked_woken(&mut self, path: &Path) -> bool {
        let Some(&key) = self.slots.parked_paths.get(path.as_os_str()) else {
            return false;
        };
        let Some(p) = self.slots.parked.get(&key) else {
            return false;
        };
        let f = Found {
            source: p.source,
            path: p.path.clone(),
            device: key.0,
            inode: key.1,
            size: 0,
            mtime_ns: 0,
            symlink: false,
        };
        self.queue(f, true);
        true
    }

    /// Opens waiting files while slots are free (making room by parking), until `deadline`.
    pub(super) fn admit(&mut self, deadline: Option<Instant>) {
        // Each pass to make room looks at every open file: a few per round, not one per file.
        let mut passes = 0;
        while let Some(f) = self.slots.waiting.front() {
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return;
            }
            let key = (f.device, f.inode);
            if self.open.contains_key(&key) {
                self.slots.waiting.pop();
                continue;
            }
            if self.open.len() >= self.slots.max_open {
                if passes == MAX_ROOM_PASSES {
                    return;
                }
                passes += 1;
                if self.make_room() == 0 {
                    self.held_back();
                    return;
                }
                continue;
            }
            let f = self.slots.waiting.pop().expect("front exists");
            if let Some(p) = self.slots.parked.remove(&key) {
                if self.slots.parked_paths.get(p.path.as_os_str()) == Some(&key) {
                    self.slots.parked_paths.remove(p.path.as_os_str());
                }
                self.count_parked();
            }
            self.adopt(f);
        }
        if let Some(since) = self.slots.held_back_since.take() {
            tracing::info!(
                waited_ms = since.elapsed().as_millis() as u64,
                "every file waiting for an open slot has one again"
            );
        }
    }

    /// Parks open files so waiting ones get a slot; returns how many were parked.
    fn make_room(&mut self) -> usize {
        let want = self.slots.waiting.len().max(1);
        let yieldable = |t: &Tracked| !t.compressed && t.released_at.is_none();
        let mut idle: Vec<(Instant, FileKey)> = self
            .open
            .values()
            .filter(|t| yieldable(t) && t.at_eof && !t.dirty)
            .map(|t| (t.last_data, t.key))
            .collect();
        let requeue = idle.is_empty();
        if requeue {
            // Only files with a backlog: one at its end but marked to be looked at (every
            // scan marks all) is caught up once read, and then parks without a reopen.
            idle = self
                .open
                .values()
                .filter(|t| yieldable(t) && !t.at_eof && t.opened_at.elapsed() >= FAIR_SLICE)
                .map(|t| (t.opened_at, t.key))
                .collect();
        }
        if idle.len() > want {
            idle.select_nth_unstable(want - 1);
            idle.truncate(want);
        }
        let n = idle.len();
        for (_, key) in idle {
            self.park(key, requeue);
        }
        n
    }

    /// Closes an open file's descriptor and keeps its stream; `requeue` when it has bytes
    /// left to read, so it takes its turn again behind the files waiting now.
    pub(super) fn park(&mut self, key: FileKey, requeue: bool) {
        let Some(t) = self.open.remove(&key) else {
            return;
        };
        let version = file_version(t.file());
        let f = Found {
            source: t.source,
            path: t.path.clone(),
            device: key.0,
            inode: key.1,
            size: version.0,
            mtime_ns: version.1,
            symlink: false,
        };
        tracing::debug!(stream = %t.id, path = %t.path.display(), requeue, "parked: descriptor closed");
        self.close_quietly(*t);
        if requeue {
            self.queue_adoption(f);
        } else {
            self.slots
                .parked_paths
                .insert(f.path.clone().into_os_string(), key);
            self.slots.parked.insert(
                key,
                Parked {
                    source: f.source,
                    path: f.path,
                    version,
                },
            );
        }
        self.count_parked();
    }

    /// The parked-files gauge, after the parked set changed.
    fn count_parked(&self) {
        self.stats
            .parked_files
            .store(self.slots.parked.len() as u64, Ordering::Relaxed);
    }

    fn held_back(&mut self) {
        if self.slots.held_back_since.is_some() {
            return;
        }
        self.slots.held_back_since = Some(Instant::now());
        self.stats.held_back.fetch_add(1, Ordering::Relaxed);
        let detail = format!(
            "{} files wait for a slot: all {} open slots (discovery.max_open_files) hold files \
             with unread data or files being drained; waiting files are opened in turn",
            self.slots.waiting.len(),
            self.slots.max_open
        );
        if self
            .slots
            .last_alert
            .is_none_or(|t| t.elapsed() >= ALERT_GAP)
        {
            self.slots.last_alert = Some(Instant::now());
            self.alert("open_files_limit", None, None, None, detail);
        } else {
            tracing::warn!("{detail}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn found(inode: u64) -> Found {
        Found {
            source: 0,
            path: PathBuf::from(format!("/logs/{inode}.log")),
            device: 1,
            inode,
            size: 0,
            mtime_ns: 0,
            symlink: false,
        }
    }

    /// A file that grew while parked is reopened within a turn or two, however many new files
    /// queue ahead of it; new files still get every other turn.
    #[test]
    fn grown_files_take_turns_with_new_ones() {
        let mut w = Waiting::default();
        for i in 0..1000 {
            w.push(found(i), false);
        }
        w.push(found(5000), true);
        w.push(found(5001), true);
        w.push(found(5001), true);
        w.push(found(3), false);
        assert_eq!(w.len(), 1002);
        let order: Vec<u64> = (0..5).map(|_| w.pop().unwrap().inode).collect();
        assert_eq!(order, vec![0, 5000, 1, 5001, 2]);
        assert_eq!(w.len(), 997);
        while w.pop().is_some() {}
        assert!(w.queued.is_empty());
    }

    #[test]
    fn budget_leaves_headroom_below_the_limit() {
        // The limit of the report: 20,000 descriptors, a sixteenth kept back.
        assert_eq!(max_open(None, Some(20_000)), 16_384);
        assert_eq!(max_open(Some(19_000), Some(20_000)), 20_000 - 1_250);
        assert_eq!(max_open(None, Some(4096)), 4096 - 256);
        assert_eq!(max_open(None, Some(1024)), 1024 - 128);
        assert_eq!(max_open(None, Some(1 << 20)), 16_384);
        assert_eq!(max_open(Some(64), Some(1024)), 64);
        assert_eq!(max_open(Some(5_000), Some(1024)), 1024 - 128);
        assert_eq!(max_open(Some(100_000), None), 100_000);
    }
}
