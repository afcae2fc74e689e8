//! Wires the agent together: the tailer thread frames records into batches; this module's
//! shipping loop sends each batch to the sink and, once acknowledged, commits its offsets.

use crate::batch::Batch;
use crate::commit::Committer;
use crate::config::layers::Layers;
use crate::control::{self, server::Controller};
use crate::input::syslog::SyslogInput;
use crate::sink::{self, Sink, SinkError};
use crate::status::{Live, ShipStats, TailStats};
use crate::store::{Alert, Store, StoreError};
use crate::tail::Tailer;
use crossbeam_channel::{Receiver, RecvError, RecvTimeoutError, TryRecvError};
use std::collections::VecDeque;
use std::fs::File;
use std::io::{Read, Seek, Write};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a stopping agent keeps retrying a failing sink before it gives up on the batch in
/// flight (it stays uncommitted and is read again at the next start).
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Sink(#[from] SinkError),
    #[error(
        "state dir {path} is in use by another log-sensor (pid {pid}); one agent per state dir"
    )]
    Locked { path: PathBuf, pid: String },
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error("cannot open the control socket {path}: {source}")]
    Control {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot lock state dir {path}: {source}")]
    Lock {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Syslog(#[from] crate::input::syslog::listen::ListenError),
    #[error("cannot serve the monitor on {addr} (monitor.listen): {source}")]
    Monitor {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
}

/// Holds the state dir's lock for as long as it lives.
pub struct StateLock {
    _file: File,
}

/// Takes the state dir for this process; a second agent on it is refused with the holder's pid.
pub fn lock_state_dir(dir: &Path) -> Result<StateLock, AgentError> {
    std::fs::create_dir_all(dir).map_err(|source| AgentError::Lock {
        path: dir.to_path_buf(),
        source,
    })?;
    let path = dir.join("agent.lock");
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|source| AgentError::Lock {
            path: path.clone(),
            source,
        })?;
    // SAFETY: flock on a descriptor we own; no memory is involved.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        let mut pid = String::new();
        let _ = file.read_to_string(&mut pid);
        return Err(AgentError::Locked {
            path: dir.to_path_buf(),
            pid: pid.trim().to_string(),
        });
    }
    let _ = file.set_len(0);
    let _ = file.rewind();
    let _ = writeln!(file, "{}", std::process::id());
    Ok(StateLock { _file: file })
}

/// The pieces of a running agent that status pages look at.
pub struct Running {
    pub tail: Arc<TailStats>,
    pub ship: Arc<ShipStats>,
}

/// Runs the agent until `stop` is set (a signal, or `stop` on the control socket); returns
/// after the batch in flight is committed.
pub fn run(layers: Layers, stop: Arc<AtomicBool>) -> Result<(), AgentError> {
    let cfg = layers.resolve()?;
    let _lock = lock_state_dir(&cfg.state_dir)?;
    raise_fd_limit();
    let store = Store::open(&cfg.state_dir)?;
    store.set_meta("host_id", &cfg.host_id)?;
    let store = Arc::new(Mutex::new(store));
    let sink = sink::build(&cfg.sink)?;
    let control = control::server::bind(&cfg.state_dir).map_err(|source| AgentError::Control {
        path: control::socket_path(&cfg.state_dir),
        source,
    })?;
    // Taken before the listener moves to its thread: shutdown wakes it through this, never
    // through the socket's path, which someone may have deleted.
    let control_waker = control.waker();
    let pid_file = cfg.state_dir.join("agent.pid");
    let _ = std::fs::write(&pid_file, format!("{}\n", std::process::id()));
    tracing::info!(sink = %sink.describe(), sources = cfg.sources.len(), store = %cfg.store_path().display(), "log-sensor running");
    let running = Running {
        tail: Arc::new(TailStats::default()),
        ship: Arc::new(ShipStats::default()),
    };
    // Listening before anything else starts, so a port in use fails the start, naming it.
    let syslog = match cfg.syslog_sources.is_empty() {
        true => None,
        false => Some(SyslogInput::start(
            &cfg.syslog_sources,
            &cfg.state_dir,
            store.clone(),
        )?),
    };
    let live = Live {
        listeners: syslog.as_ref().map(|s| s.counters()).unwrap_or_default(),
        tail: running.tail.clone(),
        ship: running.ship.clone(),
        started_at: crate::store::now_secs(),
        sink_kind: sink::kind(&cfg.sink).to_string(),
        sink_description: sink.describe(),
        pack_sources: layers.pack_source_names(),
    };
    let cfg = Arc::new(cfg);
    // A rendezvous: one batch being sent while the next is built, no more, so memory stays
    // bounded (two batches) when the sink is slow and the two threads still overlap.
    let (tx, rx) = crossbeam_channel::bounded::<Batch>(0);
    // Delivered batches go back to the tailer to be filled again.
    let (back_tx, back_rx) = crossbeam_channel::bounded::<Batch>(1);
    let (cfg_tx, cfg_rx) = crossbeam_channel::unbounded();
    let (sink_tx, sink_rx) = crossbeam_channel::unbounded();
    let mut tailer = Tailer::new(
        cfg.clone(),
        store.clone(),
        tx,
        stop.clone(),
        running.tail.clone(),
    )?;
    tailer.recycle_from(back_rx);
    if let Some(input) = syslog {
        tailer.add_input(Box::new(input));
    }
    tailer.sink_idle_flag(running.ship.waiting.clone());
    tailer.configs_from(cfg_rx);
    let controller = Arc::new(Controller::new(
        layers,
        cfg.clone(),
        live,
        cfg_tx,
        sink_tx,
        stop.clone(),
        store.clone(),
    ));
    // Bound before the tailer starts, so a taken port fails the start instead of leaving the
    // agent silently unmonitored. The handle stops and joins the monitor when dropped, also
    // when `run` returns early with an error. It shows what the control socket shows.
    let _monitor = match cfg.monitor.listen {
        Some(addr) => {
            let fail = |source| AgentError::Monitor { addr, source };
            let listener = std::net::TcpListener::bind(addr).map_err(fail)?;
            let c = controller.clone();
            let status = Arc::new(move || c.status());
            tracing::info!(%addr, "monitor listening");
            Some(crate::monitor::Handle::spawn(listener, status).map_err(fail)?)
        }
        None => None,
    };
    let helpers = [
        spawn("control", {
            let c = controller.clone();
            move || control::server::serve(control, c)
        }),
        spawn("config-watch", {
            let (c, s) = (controller.clone(), stop.clone());
            move || control::server::watch_config(c, s)
        }),
    ];
    let tail_thread = spawn("tail", move || tailer.run());
    ship_loop(
        rx,
        sink,
        &store,
        &stop,
        &running.ship,
        Some(back_tx),
        Some(sink_rx),
    );
    let _ = tail_thread.join();
    stop.store(true, Ordering::SeqCst);
    control_waker.wake();
    for h in helpers {
        let _ = h.join();
    }
    let _ = std::fs::remove_file(&pid_file);
    tracing::info!("log-sensor stopped; offsets committed");
    Ok(())
}

fn spawn(name: &str, f: impl FnOnce() + Send + 'static) -> std::thread::JoinHandle<()> {
    std::thread::Builder::new()
        .name(name.into())
        .spawn(f)
        .expect("spawn thread")
}

/// Sends each batch until the sink acknowledges it, then commits; never drops a batch.
///
/// Up to the sink's window of batches are in flight; they are acknowledged, and so committed,
/// strictly in order. After a failure every batch in flight is sent again, in order, one at a
/// time, until the sink works again: the receiver's high-water marks make whatever it had
/// already stored harmless.
#[allow(clippy::too_many_arguments)]
pub fn ship_loop(
    rx: Receiver<Batch>,
    sink: Box<dyn Sink>,
    store: &Mutex<Store>,
    stop: &AtomicBool,
    stats: &ShipStats,
    recycle: Option<crossbeam_channel::Sender<Batch>>,
    sinks: Option<Receiver<crate::config::SinkConfig>>,
) {
    let mut s = Shipping {
        sink,
        store,
        committer: Committer::new(store, stats),
        stop,
        stats,
        recycle,
        failing_since: None,
    };
    deliver(&mut s, rx, sinks);
    s.committer.finish();
}

/// The loop of [`ship_loop`]; returns when the tailer is done, or a stopping agent gave up.
fn deliver(
    s: &mut Shipping,
    rx: Receiver<Batch>,
    sinks: Option<Receiver<crate::config::SinkConfig>>,
) {
    let stats = s.stats;
    let mut inflight: VecDeque<Batch> = VecDeque::new();
    let mut closed = false;
    loop {
        // A reload that changed the sink takes effect between batches, with none in flight.
        if let Some(new) = sinks.as_ref().and_then(|r| r.try_recv().ok()) {
            if !s.drain(&mut inflight) {
                return;
            }
            s.replace_sink(new);
            continue;
        }
        let next = if closed || inflight.len() >= s.sink.window() {
            None
        } else if inflight.is_empty() {
            stats.waiting.store(true, Ordering::Relaxed);
            let b = s.wait_for_batch(&rx);
            stats.waiting.store(false, Ordering::Relaxed);
            b.map_err(|_| closed = true).ok()
        } else {
            match rx.try_recv() {
                Ok(b) => Some(b),
                Err(TryRecvError::Empty) => None,
                Err(TryRecvError::Disconnected) => {
                    closed = true;
                    None
                }
            }
        };
        let result = match next {
            Some(batch) => {
                let r = s.sink.submit(&batch);
                inflight.push_back(batch);
                r
            }
            None if inflight.is_empty() => {
                if closed {
                    return;
                }
                continue;
            }
            None => s.sink.confirm().map(|()| {
                let batch = inflight.pop_front().expect("a batch in flight");
                s.acknowledged(batch);
            }),
        };
        if let Err(e) = result {
            s.failed(&e);
            if !s.redeliver(&mut inflight) {
                return;
            }
        }
    }
}

/// The shipping thread's side of delivery: the sink, where acknowledgements are committed, and
/// the state of an outage.
struct Shipping<'a> {
    sink: Box<dyn Sink>,
    store: &'a Mutex<Store>,
    committer: Committer<'a>,
    stop: &'a AtomicBool,
    stats: &'a ShipStats,
    recycle: Option<crossbeam_channel::Sender<Batch>>,
    failing_since: Option<Instant>,
}

impl Shipping<'_> {
    /// Blocks for the next batch, retrying owed commits meanwhile; Err once the tailer is gone.
    fn wait_for_batch(&mut self, rx: &Receiver<Batch>) -> Result<Batch, RecvError> {
        loop {
            let Some(wait) = self.committer.retry_in() else {
                return rx.recv();
            };
            match rx.recv_timeout(wait) {
                Ok(b) => return Ok(b),
                Err(RecvTimeoutError::Timeout) => self.committer.retry(),
                Err(RecvTimeoutError::Disconnected) => return Err(RecvError),
            }
        }
    }

    fn replace_sink(&mut self, new: crate::config::SinkConfig) {
        match sink::build(&new) {
            Ok(s) => {
                tracing::info!(sink = %s.describe(), "sink replaced");
                self.sink = s;
            }
            Err(e) => {
                tracing::error!(error = %e, "new sink cannot start; keeping the old one");
                self.alert("config_error", e.to_string());
            }
        }
    }

    /// An alert about the sink (no source, stream or path); one that cannot be stored is
    /// already in the log.
    fn alert(&self, kind: &'static str, detail: String) {
        let alert = Alert {
            kind,
            source: None,
            stream: None,
            path: None,
            detail,
        };
        let _ = self.store.lock().expect("store lock").add_alert(&alert);
    }

    /// Confirms every batch in flight (redelivering after a failure); false when a stopping
    /// agent gave up.
    fn drain(&mut self, inflight: &mut VecDeque<Batch>) -> bool {
        while !inflight.is_empty() {
            match self.sink.confirm() {
                Ok(()) => {
                    let batch = inflight.pop_front().expect("a batch in flight");
                    self.acknowledged(batch);
                }
                Err(e) => {
                    self.failed(&e);
                    return self.redeliver(inflight);
                }
            }
        }
        true
    }

    /// After a failure: each batch in flight, oldest first, is sent alone until acknowledged,
    /// with backoff between tries. False when a stopping agent gave up (the batches stay
    /// uncommitted and are read again at the next start).
    fn redeliver(&mut self, inflight: &mut VecDeque<Batch>) -> bool {
        let mut backoff = Duration::from_millis(100);
        let mut give_up_at: Option<Instant> = None;
        while let Some(batch) = inflight.front() {
            if self.stop.load(Ordering::Relaxed) {
                let deadline = *give_up_at.get_or_insert_with(|| Instant::now() + SHUTDOWN_GRACE);
                if Instant::now() >= deadline {
                    tracing::warn!(
                        batches = inflight.len(),
                        "stopping with unacknowledged batches; they will be read again at the next start"
                    );
                    return false;
                }
            }
            self.stats.sink_retries.fetch_add(1, Ordering::Relaxed);
            std::thread::sleep(jitter(backoff));
            backoff = (backoff * 2).min(MAX_BACKOFF);
            match self.sink.submit(batch).and_then(|()| self.sink.confirm()) {
                Ok(()) => {
                    let batch = inflight.pop_front().expect("a batch in flight");
                    self.acknowledged(batch);
                    backoff = Duration::from_millis(100);
                }
                Err(e) => self.failed(&e),
            }
        }
        true
    }

    fn acknowledged(&mut self, mut batch: Batch) {
        if self.failing_since.take().is_some() {
            tracing::info!(sink = %self.sink.describe(), "sink recovered");
            self.stats.failing_since.store(0, Ordering::Relaxed);
        }
        self.stats
            .latency
            .record(batch.created.elapsed().as_secs_f64());
        self.committer.batch(&mut batch);
        let stats = self.stats;
        stats.batches.fetch_add(1, Ordering::Relaxed);
        stats
            .records
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        stats
            .bytes
            .fetch_add(batch.data_bytes() as u64, Ordering::Relaxed);
        stats
            .last_ok
            .store(crate::store::now_secs() as u64, Ordering::Relaxed);
        if let Some(back) = &self.recycle {
            let _ = back.try_send(batch);
        }
    }

    /// Counts a failure; alerts once per outage, and again whenever the reason changes (down,
    /// then up but refusing a revoked certificate): the operator must see both.
    fn failed(&mut self, e: &SinkError) {
        let stats = self.stats;
        stats.sink_errors.fetch_add(1, Ordering::Relaxed);
        let text = e.to_string();
        let changed = stats.last_error.lock().map(|mut last| {
            let changed = last.as_deref() != Some(text.as_str());
            *last = Some(text.clone());
            changed
        });
        if self.failing_since.is_none() || changed.unwrap_or(false) {
            if self.failing_since.is_none() {
                self.failing_since = Some(Instant::now());
                stats
                    .failing_since
                    .store(crate::store::now_secs() as u64, Ordering::Relaxed);
            }
            tracing::warn!(error = %e, "sink failed; retrying with backoff, nothing is committed meanwhile");
            self.alert("sink_error", text);
        }
    }
}

/// Up to 25% off, so a fleet that lost its sink together does not retry together.
fn jitter(d: Duration) -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|t| t.subsec_nanos())
        .unwrap_or(0);
    d - d.mul_f64((nanos % 1000) as f64 / 4000.0)
}

fn raise_fd_limit() {
    // SAFETY: plain syscalls on a stack struct.
    unsafe {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            let _ = libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::StreamMeta;
    use crate::frame::{Part, Rec};
    use crate::store::{Checkpoint, StreamRow, StreamState};
    use std::sync::Arc;

    /// A receiver behind a pipelined sink, as the collector behaves: it stores batches in the
    /// order they arrive and drops any at or below its high-water mark; failures are scripted.
    struct Scripted {
        window: usize,
        /// Generations written and not yet confirmed.
        wire: VecDeque<u64>,
        stored: Arc<Mutex<Vec<u64>>>,
        /// (generation, fail on submit?) for each scripted failure, used once.
        failures: Vec<(u64, bool)>,
    }

    impl Scripted {
        fn fail(&mut self, generation: u64, on_submit: bool) -> bool {
            let hit = self
                .failures
                .iter()
                .position(|f| *f == (generation, on_submit));
            hit.map(|i| self.failures.remove(i)).is_some()
        }
        fn lost(&mut self) -> SinkError {
            self.wire.clear();
            SinkError::Failed {
                sink: "scripted".into(),
                message: "connection lost".into(),
            }
        }
    }

    impl Sink for Scripted {
        fn send(&mut self, batch: &Batch) -> Result<(), SinkError> {
            self.submit(batch)?;
            self.confirm()
        }
        fn describe(&self) -> String {
            "scripted".into()
        }
        fn window(&self) -> usize {
            self.window
        }
        fn submit(&mut self, batch: &Batch) -> Result<(), SinkError> {
            if self.fail(batch.generation, true) {
                return Err(self.lost());
            }
            let mut stored = self.stored.lock().unwrap();
            if stored.last().is_none_or(|&m| batch.generation > m) {
                stored.push(batch.generation);
            }
            self.wire.push_back(batch.generation);
            Ok(())
        }
        fn confirm(&mut self) -> Result<(), SinkError> {
            let Some(g) = self.wire.pop_front() else {
                return Ok(());
            };
            if self.fail(g, false) {
                return Err(self.lost());
            }
            Ok(())
        }
    }

    fn batch(generation: u64) -> Batch {
        let mut b = Batch::new("h".into(), generation);
        let meta = StreamMeta {
            id: "s".into(),
            source: "app".into(),
            fingerprint: None,
            path: "/var/log/app.log".into(),
        };
        let mut none = crate::transform::Transforms::none();
        let limits = crate::batch::Limits {
            max_records: 100,
            max_bytes: 1 << 20,
        };
        let mut out = crate::batch::Intake::new(&mut b, &mut none, limits);
        let cp = Checkpoint {
            stream: "s".into(),
            committed_offset: generation * 10,
            committed_hash: None,
            read_offset: generation * 10,
            size: generation * 10,
            ..Checkpoint::default()
        };
        let slot = out.open_stream(meta, crate::batch::Ack::Store(cp));
        for i in 0..2 {
            let rec = Rec {
                offset: (generation - 1) * 10 + i * 5,
                len: 4,
                part: Part::Whole,
                bytes: b"line",
            };
            out.push(slot, &rec, 0, None);
        }
        b
    }

    /// Eight batches through a window of two, with failures on a confirm and on a submit: every
    /// batch reaches the receiver, in order, and is committed exactly once.
    #[test]
    fn pipelined_batches_commit_in_order_once_and_failures_redeliver_from_the_oldest() {
        for window in [1, 2, 3] {
            let dir = tempfile::tempdir().unwrap();
            let mut store = Store::open(dir.path()).unwrap();
            store
                .upsert_stream(&StreamRow {
                    stream: "s".into(),
                    source: "app".into(),
                    fingerprint: None,
                    fp_bytes: 0,
                    path: "/var/log/app.log".into(),
                    device: 1,
                    inode: 1,
                    compressed: false,
                    size: 0,
                    read_offset: 0,
                    committed_offset: 0,
                    committed_hash: None,
                    first_seen: 0,
                    state: StreamState::Active,
                    alerted_too_large: false,
                })
                .unwrap();
            let store = Mutex::new(store);
            let stored = Arc::new(Mutex::new(Vec::new()));
            let sink = Scripted {
                window,
                wire: VecDeque::new(),
                stored: stored.clone(),
                failures: vec![(3, false), (5, true), (6, false), (6, false)],
            };
            let (tx, rx) = crossbeam_channel::unbounded();
            for g in 1..=8 {
                tx.send(batch(g)).unwrap();
            }
            drop(tx);
            let stats = ShipStats::default();
            let stop = AtomicBool::new(false);
            ship_loop(rx, Box::new(sink), &store, &stop, &stats, None, None);
            assert_eq!(
                *stored.lock().unwrap(),
                (1..=8).collect::<Vec<_>>(),
                "window {window}"
            );
            let store = store.lock().unwrap();
            assert_eq!(
                store.stream_offsets("s").unwrap(),
                Some((80, 16)),
                "window {window}: the last offset, and each batch's records counted once"
            );
            assert_eq!(stats.batches.load(Ordering::Relaxed), 8);
            assert!(stats.sink_errors.load(Ordering::Relaxed) >= 4);
            assert!(store.alerts().unwrap().iter().any(|a| a.1 == "sink_error"));
        }
    }
}
