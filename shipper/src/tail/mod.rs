//! The tailer: one loop that follows every stream through growth, rotation, truncation,
//! compression and deletion, framing what it reads into batches for the shipping thread.
//!
//! Where a newly seen file starts being read is decided in one place, [`Tailer::identify`].

mod registry;

use crate::batch::{Batch, StreamMeta};
use crate::config::{Config, Source};
use crate::discover::{self, watch::Wake, watch::Watch, Found};
use crate::fingerprint::{self, Fingerprint};
use crate::frame::{Framer, Rec};
use crate::read::{self, OpenAtError, Reader};
use crate::record::now_ms;
use crate::store::{now_secs, Alert, Checkpoint, Store, StreamRow, StreamState};
use crossbeam_channel::{Receiver, RecvTimeoutError, SendTimeoutError, Sender};
use registry::{Known, Registry};
use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

type FileKey = (u64, u64);

const READ_CHUNK: usize = 256 << 10;
/// Reads per stream per turn, so one busy file cannot starve the others.
const READS_PER_TURN: usize = 16;
/// How often the osquery outbox is looked at (osquery logs every few seconds at most).
const OUTBOX_POLL: Duration = Duration::from_millis(500);
/// How long an idle tailer lets wake-ups gather before acting on them.
const COALESCE: Duration = Duration::from_millis(25);
/// Events arriving faster than this cause at most one scan per interval.
const MIN_SCAN_GAP: Duration = Duration::from_millis(100);

/// Counters the tailer keeps for status pages and metrics.
#[derive(Debug, Default)]
pub struct TailStats {
    pub bytes_read: AtomicU64,
    pub records_read: AtomicU64,
    pub overlong_records: AtomicU64,
    pub open_files: AtomicU64,
    pub fingerprint_collisions: AtomicU64,
    pub truncations: AtomicU64,
    pub scans: AtomicU64,
    pub alerts: AtomicU64,
}

/// A stream whose file is open.
struct Tracked {
    id: String,
    source: usize,
    key: FileKey,
    path: PathBuf,
    compressed: bool,
    /// For fstat and pread (markers, promotion); `reader` has its own handle.
    file: File,
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
    /// Hash of the bytes before `framer.consumed()`.
    consumed_marker: Option<u64>,
    /// This stream's entry in the batch being built: (batch generation, slot).
    slot: Option<(u64, u32)>,
    alerted_too_large: bool,
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
    /// Paths already alerted as unreadable, so a permanent denial is one alert, not one a scan.
    alerted_paths: HashSet<PathBuf>,
    batch: Batch,
    generation: u64,
    tx: Sender<Batch>,
    /// Delivered batches coming back for reuse.
    recycled: Option<Receiver<Batch>>,
    /// New configs from reloads and temporary overrides.
    configs: Option<Receiver<Arc<Config>>>,
    /// What osquery logged through the extension, once it has made its outbox.
    outbox: Option<crate::outbox::Outbox>,
    last_outbox_poll: Instant,
    wakes: Receiver<Wake>,
    overflow: Arc<AtomicBool>,
    watch: Option<Watch>,
    stop: Arc<AtomicBool>,
    buf: Vec<u8>,
    /// Open files with bytes to read (or to check): reading touches only these, so 1,000 quiet
    /// files cost nothing between their own writes.
    dirty: HashSet<FileKey>,
    last_timers: Instant,
    last_scan: Option<Instant>,
    scan_requested: bool,
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
        let rows = store.lock().expect("store lock").load_streams()?;
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
            alerted_paths: HashSet::new(),
            batch: Batch::new(host, 0),
            generation: 0,
            tx,
            recycled: None,
            configs: None,
            outbox: None,
            last_outbox_poll: Instant::now() - OUTBOX_POLL,
            wakes,
            overflow,
            watch,
            stop,
            buf: vec![0u8; READ_CHUNK],
            dirty: HashSet::new(),
            last_timers: Instant::now(),
            last_scan: None,
            scan_requested: true,
            stats,
            cfg,
            store,
        })
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
        self.last_scan = None;
    }

    /// Reuse delivered batches that come back on `rx`.
    pub fn recycle_from(&mut self, rx: Receiver<Batch>) {
        self.recycled = Some(rx);
    }

    /// Runs until `stop` is set, then hands over the last batch and returns.
    pub fn run(mut self) {
        loop {
            if self.stop.load(Ordering::Relaxed) {
                break;
            }
            let Some(worked) = self.tick() else { return };
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
        let due = match self.last_scan {
            None => true,
            Some(t) => {
                t.elapsed() >= self.cfg.discovery.rescan_interval
                    || (self.scan_requested && t.elapsed() >= MIN_SCAN_GAP)
                    || self.overflow.swap(false, Ordering::Relaxed)
            }
        };
        if due {
            self.scan();
        }
        let worked = self.read_dirty()?;
        self.check_timers();
        self.poll_outbox();
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

    fn poll_outbox(&mut self) {
        if self.last_outbox_poll.elapsed() < OUTBOX_POLL {
            return;
        }
        self.last_outbox_poll = Instant::now();
        if self.outbox.is_none() {
            match crate::outbox::Outbox::open(&self.cfg.state_dir) {
                Ok(o) => self.outbox = o,
                Err(e) => {
                    let path = crate::outbox::path(&self.cfg.state_dir);
                    if self.alerted_paths.insert(path.clone()) {
                        self.alert(
                            "read_error",
                            Some(crate::outbox::SOURCE),
                            None,
                            Some(&path),
                            e.to_string(),
                        );
                    }
                }
            }
        }
        let room = self.cfg.batch.max_records.saturating_sub(self.batch.len());
        let Some(ob) = self.outbox.as_mut() else {
            return;
        };
        if room == 0 {
            return;
        }
        match ob.fill(&mut self.batch, room, now_ms()) {
            Ok(n) => {
                self.stats
                    .records_read
                    .fetch_add(n as u64, Ordering::Relaxed);
            }
            Err(e) => {
                // Reopened at the next poll; rows not acknowledged stay in the outbox.
                tracing::warn!(error = %e, "cannot read the osquery outbox");
                self.outbox = None;
            }
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
                None => self.scan_requested = true,
            },
            Wake::Rescan => self.scan_requested = true,
        }
    }

    fn idle_wait(&self) -> Duration {
        let mut wait = Duration::from_millis(250);
        if !self.batch.is_idle() {
            wait = wait.min(
                self.cfg
                    .batch
                    .max_wait
                    .saturating_sub(self.batch.created.elapsed()),
            );
        }
        if self.scan_requested {
            wait = wait.min(MIN_SCAN_GAP);
        }
        wait.max(Duration::from_millis(5))
    }

    fn batch_due(&self) -> bool {
        if self.batch.is_idle() {
            return false;
        }
        self.batch.len() >= self.cfg.batch.max_records
            || self.batch.data_bytes() >= self.cfg.batch.max_bytes
            || self.batch.created.elapsed() >= self.cfg.batch.max_wait
    }

    /// Hands the batch to the shipping thread, waiting while it is busy (backpressure).
    /// Returns false when the shipping thread is gone.
    fn ship(&mut self) -> bool {
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

    // ---------------------------------------------------------------- discovery

    fn scan(&mut self) {
        self.stats.scans.fetch_add(1, Ordering::Relaxed);
        self.scan_requested = false;
        self.last_scan = Some(Instant::now());
        let (found, problems) = discover::scan(&self.cfg.sources);
        for p in problems {
            if self.alerted_paths.insert(p.path.clone()) {
                let src = self.cfg.sources[p.source].name.clone();
                self.alert(
                    "permission_denied",
                    Some(&src),
                    None,
                    Some(&p.path),
                    format!("cannot list folder: {}", p.error),
                );
            }
        }
        // Files truncated in place are let go first, so that a copy of them found in this same
        // scan can continue their stream (copytruncate with the copy among the globs).
        for f in &found {
            let key = (f.device, f.inode);
            let truncated = self
                .open
                .get(&key)
                .map(|t| !t.compressed && (f.size < t.framer.position() || rewritten(t)))
                .unwrap_or(false);
            if truncated {
                let t = self.open.remove(&key).expect("checked above");
                self.truncated(t);
            }
        }
        let mut present: HashSet<FileKey> = HashSet::new();
        let mut symlink_dirs: Vec<PathBuf> = Vec::new();
        for f in found {
            let key = (f.device, f.inode);
            present.insert(key);
            if std::fs::symlink_metadata(&f.path)
                .map(|m| m.file_type().is_symlink())
                .unwrap_or(false)
            {
                if let Some(dir) = std::fs::canonicalize(&f.path)
                    .ok()
                    .and_then(|p| p.parent().map(Path::to_path_buf))
                {
                    symlink_dirs.push(dir);
                }
            }
            if self.open.contains_key(&key) {
                self.seen_again(key, &f);
                continue;
            }
            if self.finished.get(&key) == Some(&(f.size, f.mtime_ns)) {
                continue;
            }
            self.finished.remove(&key);
            self.adopt(f);
        }
        let now = Instant::now();
        for t in self.open.values_mut() {
            if !present.contains(&t.key) && t.released_at.is_none() {
                t.released_at = Some(now);
            }
            t.dirty = true;
            self.dirty.insert(t.key);
        }
        self.deferred.retain(|k, _| present.contains(k));
        self.finished.retain(|k, _| present.contains(k));
        self.stats
            .open_files
            .store(self.open.len() as u64, Ordering::Relaxed);
        if let Some(w) = &mut self.watch {
            w.update(&self.cfg.sources, symlink_dirs);
        }
    }

    /// An open file found again, maybe under a new name (rename rotation within the globs).
    fn seen_again(&mut self, key: FileKey, f: &Found) {
        let Some(t) = self.open.get_mut(&key) else {
            return;
        };
        t.released_at = None;
        if t.path != f.path {
            self.by_path.remove(&t.path);
            self.by_path.insert(f.path.clone(), key);
            t.path = f.path.clone();
            t.meta.path = f.path.display().to_string().into();
            let id = t.id.clone();
            let path = t.meta.path.to_string();
            if let Some(k) = self.registry.get_mut(&id) {
                k.row.path = path;
                let row = k.row.clone();
                self.persist(&row);
            }
        }
    }

    /// Opens a file no stream has open and decides which stream it is.
    fn adopt(&mut self, f: Found) {
        let source = self.cfg.sources[f.source].clone();
        let file = match File::open(&f.path) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return,
            Err(e) => {
                if self.alerted_paths.insert(f.path.clone()) {
                    let kind = if e.kind() == io::ErrorKind::PermissionDenied {
                        "permission_denied"
                    } else {
                        "read_error"
                    };
                    self.alert(
                        kind,
                        Some(&source.name),
                        None,
                        Some(&f.path),
                        format!("cannot open: {e}; retrying every scan"),
                    );
                }
                return;
            }
        };
        let md = match file.metadata() {
            Ok(m) => m,
            Err(_) => return,
        };
        let key = (md.dev(), md.ino());
        if self.open.contains_key(&key) {
            return;
        }
        if self.alerted_paths.remove(&f.path) {
            tracing::info!(path = %f.path.display(), "file readable again");
        }
        // The longest N any known stream of this source was fingerprinted with.
        let n = source.fingerprint_bytes;
        let head_len = self
            .registry_fp_lengths(&source.name)
            .into_iter()
            .chain(std::iter::once(n))
            .max()
            .unwrap_or(n);
        let head = match fingerprint::read_head(&file, head_len, source.detect_compression) {
            Ok(h) => h,
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                // A gzip archive still being written: look again later.
                self.deferred.entry(key).or_insert_with(Instant::now);
                return;
            }
            Err(e) => {
                if self.alerted_paths.insert(f.path.clone()) {
                    self.alert(
                        "read_error",
                        Some(&source.name),
                        None,
                        Some(&f.path),
                        format!("cannot read head: {e}"),
                    );
                }
                return;
            }
        };
        match self.identify(&source, &file, key, &head) {
            Identity::Wait => {}
            Identity::Finished => {
                self.finished.insert(key, file_version(&file));
            }
            Identity::Existing { id, resume, marker } => {
                self.start(&f, &source, file, key, &head, Some((id, resume, marker)))
            }
            Identity::New { collision_with } => {
                if let Some(other) = collision_with {
                    self.stats
                        .fingerprint_collisions
                        .fetch_add(1, Ordering::Relaxed);
                    self.alert(
                        "fingerprint_collision",
                        Some(&source.name),
                        Some(&other),
                        Some(&f.path),
                        format!("same first {n} bytes as the open stream {other}; read as a stream of its own"),
                    );
                }
                self.start(&f, &source, file, key, &head, None)
            }
        }
    }

    /// Every N the source's known streams were fingerprinted with: a stream fingerprinted under
    /// an older `fingerprint_bytes` is still recognised by hashing the head at its own N.
    fn registry_fp_lengths(&self, source: &str) -> Vec<usize> {
        let mut v: Vec<usize> = self
            .registry
            .iter()
            .filter(|k| k.row.source == source)
            .map(|k| k.row.fp_bytes as usize)
            .collect();
        v.sort_unstable();
        v.dedup();
        v
    }

    /// Which stream a newly opened file is: the one exhaustive decision.
    fn identify(
        &mut self,
        source: &Source,
        file: &File,
        key: FileKey,
        head: &fingerprint::Head,
    ) -> Identity {
        let n = source.fingerprint_bytes;
        let open_ids: HashSet<&str> = self.open.values().map(|t| t.id.as_str()).collect();
        let usable = |k: &Known| {
            !matches!(k.row.state, StreamState::Done | StreamState::Truncated)
                || (k.row.device, k.row.inode) != key
        };
        match head.fingerprint(n) {
            Fingerprint::Checksum { .. } => {
                let cands = self.registry.by_fingerprint(&source.name, |m| {
                    (head.bytes.len() >= m).then(|| fingerprint::hash(&head.bytes[..m]))
                });
                // 1. The same file as before (agent restart).
                if let Some(c) = cands.iter().find(|c| (c.row.device, c.row.inode) == key) {
                    // An archive read to its end is finished only once that end was committed;
                    // a crash may have lost the last batch.
                    if c.row.state == StreamState::Done && c.resume >= c.row.read_offset {
                        return Identity::Finished;
                    }
                    if c.row.state == StreamState::Done {
                        return self.existing_if_marker_holds(c, file, head.compressed);
                    }
                    if usable(c) && !open_ids.contains(c.row.stream.as_str()) {
                        return self.existing_if_marker_holds(c, file, head.compressed);
                    }
                }
                // 2. A same-head file is still open: a rotation copy or archive in the making, or a
                //    genuinely different file with a shared header. Wait for the open one to be let
                //    go; if it stays live past rotate_wait, they are two streams.
                let open_cands: Vec<&Known> = cands
                    .iter()
                    .copied()
                    .filter(|c| open_ids.contains(c.row.stream.as_str()))
                    .collect();
                if !open_cands.is_empty() {
                    let draining = open_cands.iter().any(|c| {
                        self.open
                            .values()
                            .any(|t| t.id == c.row.stream && t.released_at.is_some())
                    });
                    let since = *self.deferred.entry(key).or_insert_with(Instant::now);
                    if draining || since.elapsed() < self.cfg.discovery.rotate_wait {
                        return Identity::Wait;
                    }
                    self.deferred.remove(&key);
                    return Identity::New {
                        collision_with: Some(open_cands[0].row.stream.clone()),
                    };
                }
                // 3. A stream whose file is gone: this file continues it (renamed while we were
                //    down, or its compressed archive).
                if let Some(c) = cands.iter().find(|c| usable(c)) {
                    return self.existing_if_marker_holds(c, file, head.compressed);
                }
                Identity::New {
                    collision_with: None,
                }
            }
            Fingerprint::Provisional => {
                if let Some(c) = self.registry.provisional_on(&source.name, key.0, key.1) {
                    if !open_ids.contains(c.row.stream.as_str()) {
                        let c = c.clone();
                        return self.existing_if_marker_holds(&c, file, head.compressed);
                    }
                }
                // A short archive of a short stream: match on the bytes before where it stopped.
                if head.compressed {
                    let len = head.bytes.len() as u64;
                    let short: Vec<Known> = self
                        .registry_iter_source(&source.name)
                        .filter(|k| {
                            k.row.fingerprint.is_none()
                                && k.resume > 0
                                && k.resume <= len
                                && k.resume_marker.is_some()
                        })
                        .filter(|k| {
                            !open_ids.contains(k.row.stream.as_str())
                                && k.row.state != StreamState::Done
                        })
                        .cloned()
                        .collect();
                    for c in short {
                        if read::marker_in_chunk(
                            &head.bytes[..c.resume as usize],
                            c.resume,
                            c.resume,
                        ) == c.resume_marker
                        {
                            return Identity::Existing {
                                id: c.row.stream.clone(),
                                resume: c.resume,
                                marker: c.resume_marker,
                            };
                        }
                    }
                }
                Identity::New {
                    collision_with: None,
                }
            }
        }
    }

    fn registry_iter_source<'a>(&'a self, source: &'a str) -> impl Iterator<Item = &'a Known> + 'a {
        self.registry_all().filter(move |k| k.row.source == source)
    }

    fn registry_all(&self) -> impl Iterator<Item = &Known> {
        self.registry.iter()
    }

    fn existing_if_marker_holds(&self, c: &Known, file: &File, compressed: bool) -> Identity {
        match read::verify_marker(file, compressed, c.resume, c.resume_marker) {
            Ok(true) => Identity::Existing {
                id: c.row.stream.clone(),
                resume: c.resume,
                marker: c.resume_marker,
            },
            // Same head, different content before the offset: rewritten, not continued.
            Ok(false) => Identity::New {
                collision_with: None,
            },
            Err(_) => Identity::Wait,
        }
    }

    /// Opens the stream's reader and starts following it.
    fn start(
        &mut self,
        f: &Found,
        source: &Source,
        file: File,
        key: FileKey,
        head: &fingerprint::Head,
        existing: Option<(String, u64, Option<u64>)>,
    ) {
        let n = source.fingerprint_bytes;
        let fingerprint = match head.fingerprint(n) {
            Fingerprint::Checksum { hash, .. } => Some(hash),
            Fingerprint::Provisional => None,
        };
        let size = file.metadata().map(|m| m.len()).unwrap_or(0);
        let reader_file = match file.try_clone() {
            Ok(h) => h,
            Err(_) => return,
        };
        let (id, offset, marker) = match &existing {
            Some((id, resume, marker)) => (id.clone(), *resume, *marker),
            None => (new_stream_id(&source.name, key, fingerprint), 0, None),
        };
        let (reader, offset, marker, id) =
            match Reader::open_at(reader_file, head.compressed, offset) {
                Ok(r) => (r, offset, marker, id),
                Err(OpenAtError::Short { .. }) if head.compressed => {
                    // The archive holds nothing past what was shipped.
                    self.finish_archive_without_reading(&id, f, key, size);
                    return;
                }
                Err(OpenAtError::Short { .. }) => {
                    // Shorter than what was committed: truncated while we were away. New content.
                    let Ok(h) = file.try_clone() else { return };
                    let Ok(r) = Reader::open_at(h, false, 0) else {
                        return;
                    };
                    (r, 0, None, new_stream_id(&source.name, key, fingerprint))
                }
                Err(OpenAtError::Io(e)) => {
                    if self.alerted_paths.insert(f.path.clone()) {
                        self.alert(
                            "read_error",
                            Some(&source.name),
                            Some(&id),
                            Some(&f.path),
                            format!("cannot open at offset {offset}: {e}"),
                        );
                    }
                    return;
                }
            };
        let path_str = f.path.display().to_string();
        let row = match self.registry.get(&id) {
            Some(k) if existing.is_some() => {
                let mut row = k.row.clone();
                row.path = path_str.clone();
                row.device = key.0;
                row.inode = key.1;
                row.compressed = head.compressed;
                row.size = size;
                row.state = StreamState::Active;
                if row.fingerprint.is_none() && !head.compressed {
                    if let Some(fp) = fingerprint {
                        row.fingerprint = Some(fp);
                        row.fp_bytes = n as u64;
                    }
                }
                row
            }
            _ => StreamRow {
                stream: id.clone(),
                source: source.name.clone(),
                fingerprint,
                fp_bytes: n as u64,
                path: path_str.clone(),
                device: key.0,
                inode: key.1,
                compressed: head.compressed,
                size,
                read_offset: offset,
                committed_offset: offset,
                committed_hash: marker,
                first_seen: now_secs(),
                state: StreamState::Active,
                alerted_too_large: false,
            },
        };
        self.persist(&row);
        let known = Known {
            resume: offset,
            resume_marker: marker,
            row: row.clone(),
        };
        self.registry.insert(known);
        self.deferred.remove(&key);
        tracing::info!(stream = %id, path = %path_str, offset, compressed = head.compressed, "following");
        let t = Tracked {
            id: id.clone(),
            source: f.source,
            key,
            path: f.path.clone(),
            compressed: head.compressed,
            file,
            reader,
            framer: Framer::new(&source.framing, offset),
            meta: StreamMeta {
                id: id.as_str().into(),
                source: source.name.as_str().into(),
                fingerprint: row.fingerprint,
                path: path_str.into(),
            },
            fingerprint: row.fingerprint,
            size,
            at_eof: false,
            dirty: true,
            last_data: Instant::now(),
            released_at: None,
            pos_marker: marker,
            consumed_marker: marker,
            slot: None,
            alerted_too_large: row.alerted_too_large,
        };
        self.by_path.insert(f.path.clone(), key);
        self.dirty.insert(key);
        self.open.insert(key, t);
        self.stats
            .open_files
            .store(self.open.len() as u64, Ordering::Relaxed);
    }

    fn finish_archive_without_reading(&mut self, id: &str, f: &Found, key: FileKey, size: u64) {
        if let Some(k) = self.registry.get_mut(id) {
            k.row.path = f.path.display().to_string();
            k.row.device = key.0;
            k.row.inode = key.1;
            k.row.compressed = true;
            k.row.size = size;
            k.row.state = StreamState::Done;
            let row = k.row.clone();
            self.persist(&row);
        }
        if let Ok(f) = File::open(&f.path) {
            self.finished.insert(key, file_version(&f));
        }
    }

    // ---------------------------------------------------------------- reading

    fn read_dirty(&mut self) -> Option<bool> {
        let keys: Vec<FileKey> = self.dirty.iter().copied().collect();
        let mut worked = false;
        for key in keys {
            if self.stop.load(Ordering::Relaxed) {
                break;
            }
            let Some(mut t) = self.open.remove(&key) else {
                self.dirty.remove(&key);
                continue;
            };
            let outcome = self.read_turn(&mut t);
            if !matches!(outcome, Outcome::Progress) {
                self.dirty.remove(&key);
            }
            match outcome {
                Outcome::Progress => {
                    worked = true;
                    self.open.insert(key, t);
                }
                Outcome::Eof => {
                    t.dirty = false;
                    if t.compressed {
                        // An archive is immutable: at its end it is done.
                        self.close(t, StreamState::Done);
                    } else {
                        self.open.insert(key, t);
                    }
                }
                Outcome::Truncated => {
                    let path = t.path.clone();
                    let source = t.source;
                    self.truncated(t);
                    if let Ok(md) = std::fs::metadata(&path) {
                        self.adopt(Found {
                            source,
                            path,
                            device: md.dev(),
                            inode: md.ino(),
                            size: md.len(),
                            mtime_ns: md.mtime() * 1_000_000_000 + md.mtime_nsec(),
                        });
                    }
                }
                Outcome::Failed(e) => {
                    let src = self.cfg.sources[t.source].name.clone();
                    if t.compressed && e.kind() == io::ErrorKind::UnexpectedEof {
                        // Archive still being written: reopen at the last record boundary later.
                        self.close_quietly(t);
                    } else {
                        self.alert(
                            "read_error",
                            Some(&src),
                            Some(&t.id),
                            Some(&t.path),
                            format!("read failed at offset {}: {e}", t.framer.position()),
                        );
                        self.close_quietly(t);
                    }
                }
            }
            if self.batch_due() && !self.ship() {
                return None;
            }
        }
        Some(worked)
    }

    fn slot(&mut self, t: &mut Tracked) -> u32 {
        if let Some((g, s)) = t.slot {
            if g == self.batch.generation {
                return s;
            }
        }
        let cp = Checkpoint {
            stream: t.id.clone(),
            committed_offset: t.framer.consumed(),
            committed_hash: t.consumed_marker,
            read_offset: t.framer.position(),
            size: t.size,
            records: 0,
            bytes: 0,
            overlong: 0,
        };
        let s = self.batch.add_stream(t.meta.clone(), cp);
        t.slot = Some((self.batch.generation, s));
        s
    }

    /// After framing: what acknowledging this batch will commit for the stream.
    fn update_checkpoint(&mut self, t: &mut Tracked, chunk: &[u8]) {
        let consumed = t.framer.consumed();
        let slot = self.slot(t);
        let cp = &mut self.batch.streams[slot as usize].checkpoint;
        if cp.committed_offset != consumed {
            t.consumed_marker = read::marker_in_chunk(chunk, t.framer.position(), consumed)
                .or_else(|| {
                    if t.compressed {
                        None
                    } else {
                        read::marker_at(&t.file, consumed).ok().flatten()
                    }
                });
        }
        cp.committed_offset = consumed;
        cp.committed_hash = t.consumed_marker;
        cp.read_offset = t.framer.position();
        cp.size = t.size;
    }

    fn read_turn(&mut self, t: &mut Tracked) -> Outcome {
        // Before reading on from an earlier end: is the content before our position unchanged?
        if t.at_eof && !t.compressed {
            match std::fs::File::metadata(&t.file) {
                Ok(md) if md.len() < t.framer.position() => return Outcome::Truncated,
                Ok(md) => t.size = md.len(),
                Err(e) => return Outcome::Failed(e),
            }
        }
        let source = self.cfg.sources[t.source].clone();
        let mut buf = std::mem::take(&mut self.buf);
        let mut outcome = Outcome::Progress;
        for _ in 0..READS_PER_TURN {
            let n = match t.reader.read(&mut buf) {
                Ok(n) => n,
                Err(e) => {
                    outcome = Outcome::Failed(e);
                    break;
                }
            };
            if n == 0 {
                outcome = self.at_end(t);
                break;
            }
            t.at_eof = false;
            t.last_data = Instant::now();
            if t.fingerprint.is_none()
                && !t.compressed
                && t.framer.position() + n as u64 >= source.fingerprint_bytes as u64
            {
                self.promote(t, &source);
            }
            let chunk = &buf[..n];
            self.frame_chunk(t, chunk);
            if let Some(m) = read::marker_in_chunk(chunk, t.framer.position(), t.framer.position())
            {
                t.pos_marker = Some(m);
            } else if !t.compressed {
                t.pos_marker = read::marker_at(&t.file, t.framer.position()).ok().flatten();
            }
            self.stats.bytes_read.fetch_add(n as u64, Ordering::Relaxed);
            if !t.compressed {
                t.size = t.size.max(t.framer.position());
            }
            if self.batch.len() >= self.cfg.batch.max_records
                || self.batch.data_bytes() >= self.cfg.batch.max_bytes
            {
                break;
            }
        }
        self.buf = buf;
        if !t.alerted_too_large && t.size > source.max_file_bytes {
            t.alerted_too_large = true;
            if let Some(k) = self.registry.get_mut(&t.id) {
                k.row.alerted_too_large = true;
                let row = k.row.clone();
                self.persist(&row);
            }
            self.alert(
                "file_too_large",
                Some(&source.name),
                Some(&t.id),
                Some(&t.path),
                format!(
                    "file is {} bytes, over max_file_bytes {}; still reading",
                    t.size, source.max_file_bytes
                ),
            );
        }
        outcome
    }

    fn frame_chunk(&mut self, t: &mut Tracked, chunk: &[u8]) {
        let slot = self.slot(t);
        let ts = now_ms();
        let batch = &mut self.batch;
        let stats = &self.stats;
        t.framer.push(chunk, &mut |r: Rec<'_>| {
            stats.records_read.fetch_add(1, Ordering::Relaxed);
            if r.part == crate::frame::Part::Head {
                stats.overlong_records.fetch_add(1, Ordering::Relaxed);
            }
            batch.push(slot, &r, ts);
        });
        self.update_checkpoint(t, chunk);
    }

    fn at_end(&mut self, t: &mut Tracked) -> Outcome {
        if t.compressed {
            t.at_eof = true;
            return Outcome::Eof;
        }
        match t.file.metadata() {
            Ok(md) if md.len() < t.framer.position() => return Outcome::Truncated,
            Ok(md) => t.size = md.len(),
            Err(e) => return Outcome::Failed(e),
        }
        t.at_eof = true;
        Outcome::Eof
    }

    /// A short file reached N bytes: it gains its fingerprint and keeps its id and offset.
    fn promote(&mut self, t: &mut Tracked, source: &Source) {
        let Ok(head) = fingerprint::read_head(&t.file, source.fingerprint_bytes, false) else {
            return;
        };
        let Fingerprint::Checksum { hash, .. } = head.fingerprint(source.fingerprint_bytes) else {
            return;
        };
        t.fingerprint = Some(hash);
        t.meta.fingerprint = Some(hash);
        // Records from here on carry the fingerprint; those already in the batch were read while
        // the stream was short and keep none.
        t.slot = None;
        if let Some(k) = self.registry.get_mut(&t.id) {
            k.row.fingerprint = Some(hash);
            k.row.fp_bytes = source.fingerprint_bytes as u64;
            let row = k.row.clone();
            self.persist(&row);
        }
        tracing::debug!(stream = %t.id, "promoted: fingerprint taken");
    }

    fn check_timers(&mut self) {
        let rotate_wait = self.cfg.discovery.rotate_wait;
        // Timers are in seconds (multiline_timeout, rotate_wait): a tenth of a second is precise
        // enough, and spares a pass over every open file on every write.
        if self.last_timers.elapsed() < Duration::from_millis(100) {
            return;
        }
        self.last_timers = Instant::now();
        let due: Vec<FileKey> = self
            .open
            .iter()
            .filter(|(_, t)| {
                let timeout = self.cfg.sources[t.source]
                    .framing
                    .multiline
                    .as_ref()
                    .map(|m| m.timeout);
                let flush = timeout
                    .is_some_and(|to| t.framer.has_pending_record() && t.last_data.elapsed() >= to);
                let close = t
                    .released_at
                    .is_some_and(|since| t.at_eof && !t.dirty && since.elapsed() >= rotate_wait);
                flush || close
            })
            .map(|(k, _)| *k)
            .collect();
        for key in due {
            let Some(mut t) = self.open.remove(&key) else {
                continue;
            };
            let timeout = self.cfg.sources[t.source]
                .framing
                .multiline
                .as_ref()
                .map(|m| m.timeout);
            if let Some(timeout) = timeout {
                if t.framer.has_pending_record() && t.last_data.elapsed() >= timeout {
                    let slot = self.slot(&mut t);
                    let ts = now_ms();
                    let batch = &mut self.batch;
                    t.framer
                        .flush_pending_record(&mut |r: Rec<'_>| batch.push(slot, &r, ts));
                    self.update_checkpoint(&mut t, &[]);
                }
            }
            let drained = t.at_eof && !t.dirty;
            if let Some(since) = t.released_at {
                if drained && since.elapsed() >= rotate_wait {
                    self.close(t, StreamState::Released);
                    continue;
                }
            }
            self.open.insert(key, t);
        }
    }

    /// The file under an open stream was truncated in place. Complete lines waiting for a
    /// multiline record go out; a partial last line does not: its rest was written before the
    /// truncation, so a copy of the file (if the globs find one) continues the stream from the
    /// start of that line. The file itself, now new content, becomes a new stream.
    fn truncated(&mut self, mut t: Tracked) {
        self.stats.truncations.fetch_add(1, Ordering::Relaxed);
        tracing::info!(stream = %t.id, path = %t.path.display(), "truncated in place; its new content is a new stream");
        let slot = self.slot(&mut t);
        let ts = now_ms();
        let batch = &mut self.batch;
        t.framer
            .flush_pending_record(&mut |r: Rec<'_>| batch.push(slot, &r, ts));
        self.update_checkpoint(&mut t, &[]);
        self.remember(t, StreamState::Truncated);
    }

    /// Lets go of a file: what is left goes out, the stream is remembered in `state`.
    fn close(&mut self, mut t: Tracked, state: StreamState) {
        let slot = self.slot(&mut t);
        let ts = now_ms();
        let batch = &mut self.batch;
        t.framer.finish(&mut |r: Rec<'_>| batch.push(slot, &r, ts));
        self.update_checkpoint(&mut t, &[]);
        self.remember(t, state);
    }

    fn remember(&mut self, t: Tracked, state: StreamState) {
        if let Some(k) = self.registry.get_mut(&t.id) {
            k.resume = t.framer.consumed();
            k.resume_marker = t.consumed_marker;
            k.row.read_offset = t.framer.position();
            k.row.state = state;
            k.row.size = t.size;
            let row = k.row.clone();
            self.persist(&row);
        }
        if state == StreamState::Done {
            self.finished.insert(t.key, file_version(&t.file));
        }
        tracing::info!(stream = %t.id, path = %t.path.display(), state = state.as_str(), "closed");
        self.forget(&t);
        // Something may have been waiting for this stream to let go.
        if !self.deferred.is_empty() {
            self.scan_requested = true;
        }
    }

    /// Closes without flushing: it will be reopened at the last record boundary.
    fn close_quietly(&mut self, t: Tracked) {
        if let Some(k) = self.registry.get_mut(&t.id) {
            k.resume = t.framer.consumed();
            k.resume_marker = t.consumed_marker;
        }
        self.forget(&t);
    }

    fn forget(&mut self, t: &Tracked) {
        self.dirty.remove(&t.key);
        if self.by_path.get(&t.path) == Some(&t.key) {
            self.by_path.remove(&t.path);
        }
        self.stats
            .open_files
            .store(self.open.len() as u64, Ordering::Relaxed);
    }
}

fn file_version(f: &File) -> (u64, i64) {
    f.metadata()
        .map(|m| (m.len(), m.mtime() * 1_000_000_000 + m.mtime_nsec()))
        .unwrap_or((u64::MAX, 0))
}

/// The bytes before the read position are not the ones read: truncated and written again.
fn rewritten(t: &Tracked) -> bool {
    t.pos_marker.is_some()
        && read::marker_at(&t.file, t.framer.position()).ok().flatten() != t.pos_marker
}

enum Identity {
    /// Not now: look again at the next scan.
    Wait,
    /// An archive already read to its end.
    Finished,
    Existing {
        id: String,
        resume: u64,
        marker: Option<u64>,
    },
    New {
        collision_with: Option<String>,
    },
}

/// A fresh stream id: 16 hex digits, unique per host.
fn new_stream_id(source: &str, key: FileKey, fp: Option<u64>) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let seed = format!(
        "{source}\0{}:{}\0{fp:?}\0{nanos}\0{}",
        key.0,
        key.1,
        std::process::id()
    );
    format!("{:016x}", fingerprint::hash(seed.as_bytes()))
}
