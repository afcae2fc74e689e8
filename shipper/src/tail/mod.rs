//! The tailer: the input that follows every file stream through growth, rotation,
//! truncation, compression and deletion, framing what it reads into the batch the pipeline
//! lends it for its turn. Each stream's slot carries a store checkpoint: acknowledged, it
//! commits how far the stream was consumed.
//!
//! Where a newly seen file starts being read is decided in one place, [`Tailer::identify`]; a
//! stream's file found again outside the globs by its inode is confirmed in `reclaim`.

mod identify;
mod lifecycle;
mod memory;
mod provisional;
mod reading;
mod reclaim;
mod registry;
mod scanning;
mod slots;
mod stalled;
mod timers;

use crate::batch::{Ack, Intake, StreamMeta};
use crate::config::{Config, Source};
use crate::discover::{self, watch::Wake, watch::Watch, Found};
use crate::file::head::{self, Fingerprint, HeadError};
use crate::file::open::{self, OpenAtError, Reader};
use crate::frame::{Framer, Rec};
use crate::input::{Bell, Input, Turn};
use crate::record::now_ms;
pub use crate::status::TailStats;
use crate::store::{now_secs, Alert, Checkpoint, Store, StreamRow, StreamState};
use registry::{Known, Registry};
use slots::Slots;
use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

type FileKey = (u64, u64);
/// Files by path, keyed by the path's bytes: `Path`'s own hash and equality walk components,
/// which cost more than the rest of an inotify event's handling. The paths compared are all
/// built the same way (the walk's joins, and a watched folder joined with an event's name).
type PathMap = HashMap<std::ffi::OsString, FileKey>;

const READ_CHUNK: usize = 256 << 10;
/// Reads per stream per turn, so one busy file cannot starve the others.
const READS_PER_TURN: usize = 16;
/// Streams whose file was let go are forgotten this long after they last moved.
const FORGET_AFTER_SECS: i64 = 14 * 86_400;
/// A file resumed at or below this position is read again from its head: the one pread then
/// also brings the head its rewrite check hashes (a few KiB copied cost less than a syscall).
const RESUME_FROM_HEAD: u64 = 4096;
/// The longest an idle tailer waits for its next turn with no wake-up: a missed inotify
/// event costs at most this, besides the rescans.
const IDLE_WAIT: Duration = Duration::from_millis(250);
/// Events arriving faster than this cause at most one scan per interval.
const MIN_SCAN_GAP: Duration = Duration::from_millis(100);
/// Opening newly found files takes at most this long per round, so reading goes on while
/// 100,000 files are adopted.
const ADMIT_SLICE: Duration = Duration::from_millis(50);
/// How often a running background scan is looked for while idle.
const SCAN_POLL: Duration = Duration::from_millis(20);

/// A stream whose file is open.
struct Tracked {
    id: String,
    source: usize,
    key: FileKey,
    path: PathBuf,
    compressed: bool,
    /// The stream's one descriptor; fstat and pread (markers, promotion) go through
    /// [`Tracked::file`].
    reader: Reader,
    framer: Framer,
    meta: StreamMeta,
    fingerprint: Option<u64>,
    size: u64,
    /// The size last written to the store while the pipeline was held ([`stalled`]).
    noted_size: u64,
    at_eof: bool,
    dirty: bool,
    last_data: Instant,
    /// When a scan first failed to find its path (renamed away or deleted): drain, then close.
    released_at: Option<Instant>,
    /// Hash of the bytes before the read position: if they change, the file was rewritten under us.
    pos_marker: Option<u64>,
    /// Hash of the file's first bytes (up to N) as read: with `pos_marker`, a file truncated and
    /// written again to the same size is seen even when its last bytes repeat (`ping` lines).
    head_check: Option<(u64, u64)>,
    /// Hash of the bytes before `framer.consumed()`.
    consumed_marker: Option<u64>,
    /// This stream's entry in the batch being built: (batch generation, slot).
    slot: Option<(u64, u32)>,
    alerted_too_large: bool,
    /// When it took its open slot: with many files waiting, the longest held slot goes first.
    opened_at: Instant,
    /// Bytes its framer held at the last count ([`memory`]).
    held: usize,
    /// The deadline armed for it in [`timers`], if any.
    timer_at: Option<Instant>,
}

impl Tracked {
    fn file(&self) -> &File {
        self.reader.file()
    }
}

enum Outcome {
    Progress,
    Eof,
    Truncated,
    Failed(io::Error),
}

pub struct Tailer {
    cfg: Arc<Config>,
    store: Arc<Mutex<Store>>,
    registry: Registry,
    /// Boxed: a read takes its stream out of the map and puts it back, and moves a pointer
    /// rather than the stream's several hundred bytes.
    open: HashMap<FileKey, Box<Tracked>>,
    /// Open streams by the path their file was found at: an inotify event names a path.
    by_path: PathMap,
    /// Files whose identity must wait (a same-head file is still open): since when.
    deferred: HashMap<FileKey, Instant>,
    /// Archives read to their end, with the (size, mtime) they had: skipped while the same file
    /// stays (a new file reusing the inode differs in size or mtime).
    finished: HashMap<FileKey, (u64, i64)>,
    /// gzip archives found still being written, with the size they had then: looked at again
    /// once their size stops changing. Each look decompresses from the start, so looking at every
    /// write (`logrotate` compressing a 1 GiB log) would cost time quadratic in its size.
    gzip_pending: HashMap<FileKey, u64>,
    /// Files that are not what they say (named `.gz` but not gzip, or corrupt gzip), with the
    /// (size, mtime) they had: alerted once, and looked at again only when they change.
    refused: HashMap<FileKey, (u64, i64)>,
    /// Streams left behind (see `reclaim`) already looked for since they were last open: one
    /// folder listing per stream, not one a scan.
    looked_for: HashSet<String>,
    /// Paths already alerted as unreadable, so a permanent denial is one alert, not one a scan.
    alerted_paths: HashSet<PathBuf>,
    /// inotify's queue overflowed: events were lost, so the next scan starts at once.
    overflow: bool,
    watch: Option<Watch>,
    /// Rung by the inotify thread to end the pipeline's idle sleep.
    bell: Bell,
    stop: Arc<AtomicBool>,
    buf: Vec<u8>,
    /// Open files with bytes to read (or to check): reading touches only these, so 1,000 quiet
    /// files cost nothing between their own writes.
    dirty: HashSet<FileKey>,
    /// What is left of the current pass over `dirty` after a full batch ended a turn.
    pass: Vec<FileKey>,
    /// Multiline, rotate_wait and close_inactive deadlines of the open streams.
    timers: timers::Timers,
    last_prune: Instant,
    last_scan: Option<Instant>,
    /// When sizes were last noted while a sink outage held the pipeline ([`stalled`]).
    last_stall_note: Option<Instant>,
    scan_requested: bool,
    /// Scans off this thread once the pipeline starts the input (tests stepping turns scan
    /// in line).
    scanner: Option<discover::background::Scanner>,
    /// The folders the last scan walked, for inotify to watch.
    scan_dirs: Vec<PathBuf>,
    /// Which files hold the open slots, and those waiting for one.
    slots: Slots,
    stats: Arc<TailStats>,
}

impl Tailer {
    pub fn new(
        cfg: Arc<Config>,
        store: Arc<Mutex<Store>>,
        stop: Arc<AtomicBool>,
        stats: Arc<TailStats>,
        bell: Bell,
    ) -> Result<Tailer, crate::store::StoreError> {
        let rows = {
            let st = store.lock().expect("store lock");
            let pruned = st.prune_streams(FORGET_AFTER_SECS)?;
            if pruned > 0 {
                tracing::info!(pruned, "forgot streams let go more than 14 days ago");
            }
            st.load_streams()?
        };
        let watch = match Watch::new() {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::warn!(error = %e, "inotify unavailable; relying on periodic rescans");
                None
            }
        };
        Ok(Tailer {
            registry: Registry::load(rows),
            open: HashMap::new(),
            by_path: PathMap::default(),
            deferred: HashMap::new(),
            finished: HashMap::new(),
            gzip_pending: HashMap::new(),
            refused: HashMap::new(),
            looked_for: HashSet::new(),
            alerted_paths: HashSet::new(),
            overflow: false,
            watch,
            bell,
            stop,
            buf: vec![0u8; READ_CHUNK],
            dirty: HashSet::new(),
            pass: Vec::new(),
            timers: timers::Timers::default(),
            last_prune: Instant::now(),
            last_scan: None,
            last_stall_note: None,
            scan_requested: true,
            scanner: None,
            scan_dirs: Vec::new(),
            slots: Slots::new(&cfg),
            stats,
            cfg,
            store,
        })
    }

    /// Switches to a new config. A source removed stops; a source whose settings changed stops
    /// and is picked up again by the next scan with the new settings; offsets are kept, so
    /// nothing is read twice or skipped.
    pub fn apply_config(&mut self, new: Arc<Config>) {
        let old = std::mem::replace(&mut self.cfg, new);
        let keys: Vec<FileKey> = self.open.keys().copied().collect();
        for key in keys {
            let t = &self.open[&key];
            let was = &old.sources[t.source];
            let now = self.cfg.sources.iter().position(|s| s.name == was.name);
            match now {
                Some(i) if self.cfg.sources[i].signature == was.signature => {
                    if let Some(t) = self.open.get_mut(&key) {
                        t.source = i;
                    }
                }
                _ => {
                    let t = self.open.remove(&key).expect("key from the map");
                    tracing::info!(stream = %t.id, source = %was.name, "source removed or changed; stream stops here");
                    self.close_quietly(*t);
                }
            }
        }
        self.deferred.clear();
        self.slots.configure(&self.cfg);
        self.rearm_all();
        self.last_scan = None;
    }

    /// One turn: wake-ups, a scan when due, reading until the batch is full, timers. Busy when
    /// bytes were read or files wait for a free slot.
    fn tail_turn(&mut self, out: &mut Intake<'_>) -> Turn {
        self.drain_wakes();
        let in_flight = self.scanner.as_ref().is_some_and(|s| s.in_flight());
        let due = !in_flight
            && match self.last_scan {
                None => true,
                Some(t) => {
                    t.elapsed() >= self.cfg.discovery.rescan_interval
                        || (self.scan_requested && t.elapsed() >= MIN_SCAN_GAP)
                        || self.overflow
                }
            };
        if due {
            self.scan_or_request(out);
        }
        self.scanned(out);
        self.admit(Some(Instant::now() + ADMIT_SLICE));
        let worked = self.read_dirty(out);
        self.run_timers(out);
        // Files waiting for a free slot are opened next turn, not after a wait.
        if worked || self.slots_to_fill() {
            Turn::Busy
        } else {
            Turn::Idle
        }
    }

    /// Scans now, whatever the interval (tests drive the tailer step by step with this).
    pub fn scan_now(&mut self, out: &mut Intake<'_>) {
        self.scan(out);
    }

    /// Takes every inotify event queued since the last turn: the files written are marked to
    /// be read in this turn's one pass over them, however many events each had.
    fn drain_wakes(&mut self) {
        let Some(mut watch) = self.watch.take() else {
            return;
        };
        watch.drain(|w| match w {
            Wake::Modified(path) => self.written(path),
            Wake::Rescan => {
                self.scan_requested = true;
                true
            }
            Wake::Overflow => {
                tracing::info!("inotify's queue overflowed; rescanning every file");
                self.overflow = true;
                true
            }
        });
        self.watch = Some(watch);
    }

    /// inotify says `path` was written: marks its stream to be read, or queues its parked file
    /// to be reopened. False when no followed file has that path.
    fn written(&mut self, path: &Path) -> bool {
        if let Some(&k) = self.by_path.get(path.as_os_str()) {
            if let Some(t) = self.open.get_mut(&k) {
                t.dirty = true;
                self.dirty.insert(k);
                return true;
            }
        }
        self.parked_woken(path)
    }

    fn wait_hint(&self) -> Duration {
        let mut wait = IDLE_WAIT;
        if self.scan_requested || self.overflow {
            wait = wait.min(MIN_SCAN_GAP);
        }
        if let Some(at) = self.timers.next() {
            wait = wait.min(at.saturating_duration_since(Instant::now()));
        }
        if self.scanner.as_ref().is_some_and(|s| s.in_flight()) {
            wait = wait.min(SCAN_POLL);
        }
        wait
    }

    fn alert(
        &self,
        kind: &'static str,
        source: Option<&str>,
        stream: Option<&str>,
        path: Option<&Path>,
        detail: String,
    ) {
        tracing::warn!(kind, path = ?path, stream = ?stream, "{detail}");
        self.stats.alerts.fetch_add(1, Ordering::Relaxed);
        let a = Alert {
            kind,
            source: source.map(str::to_string),
            stream: stream.map(str::to_string),
            path: path.map(|p| p.display().to_string()),
            detail,
        };
        if let Err(e) = self.store.lock().expect("store lock").add_alert(&a) {
            tracing::error!(error = %e, "cannot record alert");
        }
    }

    fn persist(&self, row: &StreamRow) {
        if let Err(e) = self.store.lock().expect("store lock").upsert_stream(row) {
            tracing::error!(error = %e, stream = %row.stream, "cannot update stream in store");
        }
    }
}

impl Input for Tailer {
    fn name(&self) -> &str {
        "files"
    }

    fn start(&mut self) {
        if let Some(w) = &mut self.watch {
            let bell = self.bell.clone();
            if let Err(e) = w.ring_with(move || bell.ring()) {
                tracing::warn!(error = %e, "cannot start the inotify thread; files are read at each turn");
            }
        }
        match discover::background::Scanner::spawn() {
            Ok(s) => self.scanner = Some(s),
            Err(e) => tracing::warn!(error = %e, "cannot start the scan thread; scanning in line"),
        }
    }

    fn turn(&mut self, out: &mut Intake<'_>) -> Turn {
        self.tail_turn(out)
    }

    fn idle_wait(&self) -> Duration {
        self.wait_hint()
    }

    fn stalled(&mut self) {
        self.note_stalled_sizes();
    }

    fn reconfigure(&mut self, cfg: &Arc<Config>) {
        self.apply_config(cfg.clone());
    }
}

fn file_version(f: &File) -> (u64, i64) {
    f.metadata()
        .map(|m| (m.len(), m.mtime() * 1_000_000_000 + m.mtime_nsec()))
        .unwrap_or((u64::MAX, 0))
}

/// The bytes before the read position are not the ones read: truncated and written again.
fn rewritten(t: &Tracked) -> bool {
    if t.pos_marker.is_some()
        && open::marker_at(t.file(), t.framer.position())
            .ok()
            .flatten()
            != t.pos_marker
    {
        return true;
    }
    match t.head_check {
        Some((len, hash)) => head_hash(t.file(), len) != Some(hash),
        None => false,
    }
}

/// Hash of a plain file's first `len` bytes, if it has that many.
fn head_hash(file: &File, len: u64) -> Option<u64> {
    let mut buf = vec![0u8; len as usize];
    match crate::file::head::read_at_most(file, 0, &mut buf) {
        Ok(n) if n as u64 == len => Some(crate::file::head::hash(&buf)),
        _ => None,
    }
}
