//! The tailer: one loop that follows every stream through growth, rotation, truncation,
//! compression and deletion, framing what it reads into batches for the shipping thread.
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

use crate::batch::{Ack, Batch, Intake, Limits, StreamMeta};
use crate::config::{Config, Source};
use crate::discover::{self, watch::Wake, watch::Watch, Found};
use crate::fingerprint::{self, Fingerprint, HeadError};
use crate::frame::{Framer, Rec};
use crate::input::Input;
use crate::read::{self, OpenAtError, Reader};
use crate::record::now_ms;
pub use crate::status::TailStats;
use crate::store::{now_secs, Alert, Checkpoint, Store, StreamRow, StreamState};
use crate::transform::Transforms;
use crossbeam_channel::{Receiver, RecvTimeoutError, SendTimeoutError, Sender};
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

const READ_CHUNK: usize = 256 << 10;
/// Reads per stream per turn, so one busy file cannot starve the others.
const READS_PER_TURN: usize = 16;
/// Streams whose file was let go are forgotten this long after they last moved.
const FORGET_AFTER_SECS: i64 = 14 * 86_400;
/// A file resumed at or below this position is read again from its head: the one pread then
/// also brings the head its rewrite check hashes (a few KiB copied cost less than a syscall).
const RESUME_FROM_HEAD: u64 = 4096;
/// How long an idle tailer lets wake-ups gather before acting on them.
const COALESCE: Duration = Duration::from_millis(25);
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
    open: HashMap<FileKey, Tracked>,
    by_path: HashMap<PathBuf, FileKey>,
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
    batch: Batch,
    generation: u64,
    tx: Sender<Batch>,
    /// Delivered batches coming back for reuse.
    recycled: Option<Receiver<Batch>>,
    /// Set while the shipping thread waits for a batch: a quiet tailer then hands over what it
    /// has without waiting out max_wait (latency at no cost to throughput).
    sink_idle: Option<Arc<AtomicBool>>,
    /// A full batch was handed over since the tailer last ran out of bytes: it is catching up
    /// on a backlog, so the remainder at the end goes to an idle sink at once (a trickle never
    /// fills a batch and keeps the max_wait/5 grouping).
    backlog: bool,
    /// New configs from reloads and temporary overrides.
    configs: Option<Receiver<Arc<Config>>>,
    /// What osquery logged through the extension.
    outbox: crate::input::osquery::OsqueryInput,
    /// Inputs with threads of their own (the syslog listeners), given a turn each round until
    /// the pipeline thread drives every input.
    inputs: Vec<Box<dyn Input>>,
    /// Every source's transforms, run as records enter the batch.
    transforms: Transforms,
    wakes: Receiver<Wake>,
    overflow: Arc<AtomicBool>,
    watch: Option<Watch>,
    stop: Arc<AtomicBool>,
    buf: Vec<u8>,
    /// Open files with bytes to read (or to check): reading touches only these, so 1,000 quiet
    /// files cost nothing between their own writes.
    dirty: HashSet<FileKey>,
    last_timers: Instant,
    last_prune: Instant,
    last_scan: Option<Instant>,
    scan_requested: bool,
    /// Scans off this thread once `run` starts (tests stepping `tick` scan in line).
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
        tx: Sender<Batch>,
        stop: Arc<AtomicBool>,
        stats: Arc<TailStats>,
    ) -> Result<Tailer, crate::store::StoreError> {
        let rows = {
            let st = store.lock().expect("store lock");
            let pruned = st.prune_streams(FORGET_AFTER_SECS)?;
            if pruned > 0 {
                tracing::info!(pruned, "forgot streams let go more than 14 days ago");
            }
            st.load_streams()?
        };
        let (wake_tx, wakes) = crossbeam_channel::bounded(4096);
        let overflow = Arc::new(AtomicBool::new(false));
        let watch = match Watch::new(wake_tx, overflow.clone()) {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::warn!(error = %e, "inotify unavailable; relying on periodic rescans");
                None
            }
        };
        let host: Arc<str> = cfg.host_id.as_str().into();
        Ok(Tailer {
            registry: Registry::load(rows),
            open: HashMap::new(),
            by_path: HashMap::new(),
            deferred: HashMap::new(),
            finished: HashMap::new(),
            gzip_pending: HashMap::new(),
            refused: HashMap::new(),
            looked_for: HashSet::new(),
            alerted_paths: HashSet::new(),
            batch: Batch::new(host, 0),
            generation: 0,
            tx,
            recycled: None,
            sink_idle: None,
            backlog: false,
            configs: None,
            outbox: crate::input::osquery::OsqueryInput::new(
                &cfg.state_dir,
                store.clone(),
                stats.clone(),
            ),
            inputs: Vec::new(),
            transforms: Transforms::none(),
            wakes,
            overflow,
            watch,
            stop,
            buf: vec![0u8; READ_CHUNK],
            dirty: HashSet::new(),
            last_timers: Instant::now(),
            last_prune: Instant::now(),
            last_scan: None,
            scan_requested: true,
            scanner: None,
            scan_dirs: Vec::new(),
            slots: Slots::new(&cfg),
            stats,
            cfg,
            store,
        })
    }

    /// The flag the shipping thread raises while it waits for a batch.
    pub fn sink_idle_flag(&mut self, flag: Arc<AtomicBool>) {
        self.sink_idle = Some(flag);
    }

    /// Take new configs from `rx` (reloads) between rounds.
    pub fn configs_from(&mut self, rx: Receiver<Arc<Config>>) {
        self.configs = Some(rx);
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
                    self.close_quietly(t);
                }
            }
        }
        if old.host_id != self.cfg.host_id {
            // Records already read keep the host they were read under.
            self.ship();
            self.batch.host = self.cfg.host_id.as_str().into();
        }
        self.deferred.clear();
        self.slots.configure(&self.cfg);
        self.last_scan = None;
    }

    /// Reuse delivered batches that come back on `rx`.
    pub fn recycle_from(&mut self, rx: Receiver<Batch>) {
        self.recycled = Some(rx);
    }

    /// Runs until `stop` is set, then hands over the last batch and returns.
    pub fn run(mut self) {
        match discover::background::Scanner::spawn() {
            Ok(s) => self.scanner = Some(s),
            Err(e) => tracing::warn!(error = %e, "cannot start the scan thread; scanning in line"),
        }
        loop {
            if self.stop.load(Ordering::Relaxed) {
                break;
            }
            let Some(worked) = self.tick() else { return };
            // Files waiting for a free slot are opened next round, not after a wait.
            let worked = worked || self.slots_to_fill();
            if !worked && self.batch.is_idle() {
                self.backlog = false;
            }
            if !worked && self.early_flush_due() {
                self.backlog = false;
                if !self.ship() {
                    return;
                }
            }
            if !worked {
                let wait = self.idle_wait();
                match self.wakes.recv_timeout(wait) {
                    Ok(w) => {
                        self.on_wake(w);
                        // Let a burst of wake-ups gather: a thousand files each writing a line
                        // a second then cost tens of rounds a second, not a thousand.
                        std::thread::sleep(COALESCE);
                    }
                    Err(RecvTimeoutError::Timeout) => {}
                    Err(RecvTimeoutError::Disconnected) => std::thread::sleep(wait),
                }
            }
        }
        self.ship();
    }

    /// One round: wake-ups, a scan when due, reading, timers, and a batch handed over when due.
    /// Returns whether any bytes were read, or None when the shipping side is gone.
    pub fn tick(&mut self) -> Option<bool> {
        while let Some(cfg) = self.configs.as_ref().and_then(|rx| rx.try_recv().ok()) {
            self.apply_config(cfg);
        }
        self.drain_wakes();
        let in_flight = self.scanner.as_ref().is_some_and(|s| s.in_flight());
        let due = !in_flight
            && match self.last_scan {
                None => true,
                Some(t) => {
                    t.elapsed() >= self.cfg.discovery.rescan_interval
                        || (self.scan_requested && t.elapsed() >= MIN_SCAN_GAP)
                        || self.overflow.swap(false, Ordering::Relaxed)
                }
            };
        if due {
            self.scan_or_request();
        }
        self.scanned();
        self.admit(Some(Instant::now() + ADMIT_SLICE));
        let worked = self.read_dirty()?;
        self.check_timers();
        self.park_inactive();
        let worked = self.poll_outbox() || worked;
        if self.batch_due() && !self.ship() {
            return None;
        }
        Some(worked)
    }

    /// Scans now, whatever the interval (tests drive the tailer step by step with this).
    pub fn scan_now(&mut self) {
        self.scan();
    }

    /// Hands over the batch being built, due or not.
    pub fn flush(&mut self) -> bool {
        self.ship()
    }

    /// Gives the outbox and the other inputs their turn → whether one has more ready.
    fn poll_outbox(&mut self) -> bool {
        let limits = self.limits();
        let mut out = Intake::new(&mut self.batch, &mut self.transforms, limits);
        self.outbox.turn(&mut out);
        let mut busy = false;
        for i in &mut self.inputs {
            busy |= i.turn(&mut out) == crate::input::Turn::Busy;
        }
        busy
    }

    /// Adds an input that gets a turn every round (see [`Input`]).
    pub fn add_input(&mut self, mut input: Box<dyn Input>) {
        input.start();
        self.inputs.push(input);
    }

    fn limits(&self) -> Limits {
        Limits {
            max_records: self.cfg.batch.max_records,
            max_bytes: self.cfg.batch.max_bytes,
        }
    }

    fn drain_wakes(&mut self) {
        while let Ok(w) = self.wakes.try_recv() {
            self.on_wake(w);
        }
    }

    fn on_wake(&mut self, w: Wake) {
        match w {
            Wake::Modified(p) => match self.by_path.get(&p) {
                Some(k) => {
                    if let Some(t) = self.open.get_mut(k) {
                        t.dirty = true;
                        self.dirty.insert(*k);
                    }
                }
                None => {
                    if !self.parked_woken(&p) {
                        self.scan_requested = true
                    }
                }
            },
            Wake::Rescan => self.scan_requested = true,
        }
    }

    fn idle_wait(&self) -> Duration {
        let mut wait = Duration::from_millis(250);
        if !self.batch.is_idle() {
            let age = self.batch.created.elapsed();
            let early = self.cfg.batch.max_wait / 5;
            let next = if age < early {
                // The end of a backlog goes as soon as the sink is free; the sink does not wake
                // the tailer, so look often (for at most max_wait/5).
                if self.backlog {
                    Duration::from_millis(2)
                } else {
                    early - age
                }
            } else {
                self.cfg.batch.max_wait.saturating_sub(age)
            };
            wait = wait.min(next);
        }
        if self.scan_requested {
            wait = wait.min(MIN_SCAN_GAP);
        }
        if self.scanner.as_ref().is_some_and(|s| s.in_flight()) {
            wait = wait.min(SCAN_POLL);
        }
        wait.max(Duration::from_millis(5))
    }

    /// Nothing left to read, the sink waiting, and the batch the end of a backlog or a fifth of
    /// max_wait old: send it now. The fifth keeps a trickle of writes (a thousand files each
    /// writing a line a second) batched rather than committed line by line.
    fn early_flush_due(&self) -> bool {
        !self.batch.is_idle()
            && self
                .sink_idle
                .as_ref()
                .is_some_and(|f| f.load(Ordering::Relaxed))
            && (self.backlog || self.batch.created.elapsed() >= self.cfg.batch.max_wait / 5)
    }

    fn batch_full(&self) -> bool {
        self.batch.len() >= self.cfg.batch.max_records
            || self.batch.data_bytes() >= self.cfg.batch.max_bytes
    }

    fn batch_due(&self) -> bool {
        if self.batch.is_idle() {
            return false;
        }
        self.batch_full() || self.batch.created.elapsed() >= self.cfg.batch.max_wait
    }

    /// Hands the batch to the shipping thread, waiting while it is busy (backpressure).
    /// Returns false when the shipping thread is gone.
    fn ship(&mut self) -> bool {
        self.backlog |= self.batch_full();
        self.generation += 1;
        let fresh = match self.recycled.as_ref().and_then(|rx| rx.try_recv().ok()) {
            Some(b) => b.recycle(self.generation),
            None => {
                let mut b = Batch::new(self.batch.host.clone(), self.generation);
                // Sized once for a full batch (it may overrun by one read), never doubled.
                b.reserve(self.cfg.batch.max_bytes + READ_CHUNK);
                b
            }
        };
        let mut batch = std::mem::replace(&mut self.batch, fresh);
        if batch.is_idle() {
            return true;
        }
        if crate::sink::wants_ndjson(&self.cfg.sink) {
            batch.encode_ndjson();
        }
        loop {
            match self.tx.send_timeout(batch, Duration::from_millis(200)) {
                Ok(()) => return true,
                Err(SendTimeoutError::Timeout(b)) => batch = b,
                Err(SendTimeoutError::Disconnected(_)) => return false,
            }
        }
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

fn file_version(f: &File) -> (u64, i64) {
    f.metadata()
        .map(|m| (m.len(), m.mtime() * 1_000_000_000 + m.mtime_nsec()))
        .unwrap_or((u64::MAX, 0))
}

/// The bytes before the read position are not the ones read: truncated and written again.
fn rewritten(t: &Tracked) -> bool {
    if t.pos_marker.is_some()
        && read::marker_at(t.file(), t.framer.position())
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
    match crate::fingerprint::read_at_most(file, 0, &mut buf) {
        Ok(n) if n as u64 == len => Some(crate::fingerprint::hash(&buf)),
        _ => None,
    }
}
