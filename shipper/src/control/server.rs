//! The agent's side of the control socket, and the watcher that reloads the config when its
//! file or an enabled pack changes.

use super::{EntryWire, Request, Response};
use crate::config::layers::{parse_value, Layers};
use crate::config::syslog::{Listener as SyslogListener, SyslogSource};
use crate::config::{Config, NamedSink};
use crate::input::syslog::listen::probe;
use crate::status::{Live, Status};
use crate::store::{Alert, Store};
use crossbeam_channel::Sender;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// A request line longer than this is refused (nothing legitimate comes close).
const MAX_REQUEST: u64 = 64 << 10;

/// What the control socket acts on: the config layers and the running agent's threads.
pub struct Controller {
    layers: Mutex<Layers>,
    current: Mutex<Arc<Config>>,
    live: Mutex<Live>,
    to_tailer: Sender<Arc<Config>>,
    to_shipper: Sender<NamedSink>,
    stop: Arc<AtomicBool>,
    store: Arc<Mutex<Store>>,
    /// The last config alert and when: the same refusal again within [`ALERT_AGAIN_AFTER`] (the
    /// file watcher's reload, then the operator's `reload` of the same edit) is logged only.
    last_alert: Mutex<Option<(String, Instant)>>,
}

/// How soon the same config alert may be stored again.
const ALERT_AGAIN_AFTER: Duration = Duration::from_secs(60);

impl Controller {
    pub fn new(
        layers: Layers,
        cfg: Arc<Config>,
        live: Live,
        to_tailer: Sender<Arc<Config>>,
        to_shipper: Sender<NamedSink>,
        stop: Arc<AtomicBool>,
        store: Arc<Mutex<Store>>,
    ) -> Controller {
        Controller {
            layers: Mutex::new(layers),
            current: Mutex::new(cfg),
            live: Mutex::new(live),
            to_tailer,
            to_shipper,
            stop,
            store,
            last_alert: Mutex::new(None),
        }
    }

    pub fn config(&self) -> Arc<Config> {
        self.current.lock().expect("config lock").clone()
    }

    pub fn status(&self) -> Status {
        let cfg = self.config();
        let mut live = self.live.lock().expect("live lock").clone();
        // The sink each thread uses, which a reload changes only once it is built.
        for l in &mut live.sinks {
            if let Some((kind, description)) = l.stats.in_use.lock().ok().and_then(|u| u.clone()) {
                l.kind = kind;
                l.description = description;
            }
        }
        Status::collect(&cfg, &live)
    }

    fn alert(&self, detail: String) {
        tracing::warn!(kind = "config_error", "{detail}");
        {
            let mut last = self.last_alert.lock().expect("alert lock");
            if last
                .as_ref()
                .is_some_and(|(d, at)| *d == detail && at.elapsed() < ALERT_AGAIN_AFTER)
            {
                return;
            }
            *last = Some((detail.clone(), Instant::now()));
        }
        let path = self.config().path.display().to_string();
        let a = Alert {
            kind: "config_error",
            source: None,
            stream: None,
            path: Some(path),
            detail,
        };
        let _ = self.store.lock().expect("store lock").add_alert(&a);
    }

    /// Reads the file and packs again; temporary overrides are dropped. An invalid file leaves
    /// the running config in place and raises an alert naming the error.
    pub fn reload(&self) -> Result<(), String> {
        let path = self.config().path.clone();
        // Re-read with what the command line set (`--cert`), which a reload keeps.
        let reread = self.layers.lock().expect("layers lock").reread();
        let loaded = reread.and_then(|l| l.resolve().map(|c| (l, c)));
        match loaded {
            Ok((layers, cfg)) => {
                let mut guard = self.layers.lock().expect("layers lock");
                self.apply(&layers, cfg)
                    .inspect_err(|e| self.alert(format!("reload refused: {e}")))?;
                *guard = layers;
                tracing::info!(config = %path.display(), "config reloaded");
                Ok(())
            }
            Err(e) => {
                let msg = format!("config not reloaded, the running one stays: {e}");
                self.alert(msg.clone());
                Err(msg)
            }
        }
    }

    fn apply(&self, layers: &Layers, cfg: Config) -> Result<(), String> {
        let old = self.config();
        if cfg.state_dir != old.state_dir {
            return Err(format!(
                "state_dir cannot change while the agent runs ({} -> {}); restart it",
                old.state_dir.display(),
                cfg.state_dir.display()
            ));
        }
        if cfg.monitor.listen != old.monitor.listen {
            tracing::warn!("monitor.listen changes at the next restart");
        }
        if let Some(why) = crate::config::routes::unchangeable(&old, &cfg) {
            return Err(why);
        }
        self.could_start(&old, &cfg)?;
        let cfg = Arc::new(cfg);
        {
            let mut live = self.live.lock().expect("live lock");
            live.pack_sources = layers.pack_source_names();
            // The same names in the same order (routes::unchangeable): pairs are one sink. Status
            // goes on naming the old one until the sink's thread has built the new one.
            for (new, was) in cfg.sinks.iter().zip(&old.sinks) {
                if format!("{:?}", new.sink) != format!("{:?}", was.sink) {
                    let _ = self.to_shipper.send(new.clone());
                }
            }
        }
        let _ = self.to_tailer.send(cfg.clone());
        *self.current.lock().expect("config lock") = cfg;
        Ok(())
    }

    /// What would keep the changed parts of `cfg` from starting, asked before anything running
    /// stops. A reload is all or nothing: a changed sink that cannot be built, or a changed or
    /// new syslog source whose listener cannot bind, refuses the whole reload, and everything
    /// running goes on as it was (the running sink keeps its queue, the running listeners their
    /// connections). Without this the answer was `reloaded` while the sink's thread kept
    /// failing to build the new sink, or the listener was left on its old settings unseen.
    /// A port taken in the moment between is still possible; the syslog input then keeps the
    /// source's previous listeners and alerts, as it always did.
    fn could_start(&self, old: &Config, cfg: &Config) -> Result<(), String> {
        // The same names in the same order (routes::unchangeable): pairs are one sink.
        for (new, was) in cfg.sinks.iter().zip(&old.sinks) {
            if format!("{:?}", new.sink) != format!("{:?}", was.sink) {
                crate::sink::check(new).map_err(|e| format!("{e}; the running sink stays"))?;
            }
        }
        let same = |a: &SyslogSource| {
            old.syslog_sources
                .iter()
                .any(|b| b.name == a.name && b.signature() == a.signature())
        };
        let unchanged = |name: &str| cfg.syslog_sources.iter().any(|w| w.name == name && same(w));
        // The ports this reload frees: the changed and removed sources' listeners, as the old
        // config names them and as they run (a source the input kept on earlier settings).
        let running: Vec<SyslogListener> = {
            let live = self.live.lock().expect("live lock");
            live.listeners
                .iter()
                .flat_map(|list| list.lock().map(|l| l.clone()).unwrap_or_default())
                .filter(|c| !unchanged(&c.source))
                .filter_map(|c| SyslogListener::from_url(&c.listen).ok())
                .collect()
        };
        let freed: Vec<&SyslogListener> = old
            .syslog_sources
            .iter()
            .filter(|s| !unchanged(&s.name))
            .flat_map(|s| s.listen.iter())
            .chain(running.iter())
            .collect();
        for src in cfg.syslog_sources.iter().filter(|s| !same(s)) {
            probe(src, &freed).map_err(|e| format!("{e}; its running listeners stay"))?;
        }
        Ok(())
    }

    fn entries(&self, prefix: &str, exact: bool) -> Response {
        let layers = self.layers.lock().expect("layers lock");
        let entries: Vec<EntryWire> = layers
            .entries(prefix)
            .iter()
            .filter(|e| !exact || e.key == prefix)
            .map(EntryWire::from)
            .collect();
        if entries.is_empty() {
            return fail(format!("no key {prefix:?} (list shows what there is)"));
        }
        Response {
            ok: true,
            entries: Some(entries),
            ..Default::default()
        }
    }

    fn change(&self, key: &str, value: Option<&str>) -> Response {
        let mut layers = self.layers.lock().expect("layers lock");
        let before = layers.clone();
        let result = match value {
            Some(v) => layers.set_temporary(key, parse_value(v)),
            None => layers.del_temporary(key),
        };
        match result {
            Ok(cfg) => {
                if let Err(e) = self.apply(&layers, cfg) {
                    // Undo: the layers hold the change, the agent does not. Put back what they
                    // held, not merely drop the key: an earlier `set` of it is still running.
                    *layers = before;
                    return fail(e);
                }
                tracing::info!(
                    key,
                    value = value.unwrap_or("(deleted)"),
                    "temporary config change"
                );
                let under = format!("{key}.");
                let entries = layers
                    .entries(key)
                    .iter()
                    .filter(|e| e.key == key || e.key.starts_with(&under))
                    .map(EntryWire::from)
                    .collect();
                Response {
                    ok: true,
                    entries: Some(entries),
                    ..Default::default()
                }
            }
            Err(e) => fail(refused_change(key, value, e)),
        }
    }

    pub fn handle(&self, req: &Request) -> Response {
        let key = req.key.as_deref().unwrap_or("");
        match req.cmd.as_str() {
            "status" => Response {
                ok: true,
                status: Some(Box::new(self.status())),
                ..Default::default()
            },
            "reload" => match self.reload() {
                Ok(()) => ok(),
                Err(e) => fail(e),
            },
            "stop" => {
                tracing::info!("stop requested on the control socket");
                self.stop.store(true, Ordering::SeqCst);
                ok()
            }
            "get" if !key.is_empty() => self.entries(key, true),
            "list" => self.entries(key, false),
            "set" if !key.is_empty() => match &req.value {
                Some(v) => self.change(key, Some(v)),
                None => fail("set needs a value".into()),
            },
            "del" if !key.is_empty() => self.change(key, None),
            "get" | "set" | "del" => fail(format!("{} needs a key", req.cmd)),
            other => fail(format!(
                "unknown command {other:?} (status, reload, stop, get, list, set, del)"
            )),
        }
    }

    /// Files to watch for changes: the config and the enabled packs.
    fn watched(&self) -> Vec<PathBuf> {
        self.layers.lock().expect("layers lock").watched_files()
    }
}

/// Why a `set` or `del` was refused, said of the change: the file was fine, and "config file
/// … has 1 error(s)" sent the operator to look for a mistake there.
fn refused_change(key: &str, value: Option<&str>, e: crate::config::ConfigError) -> String {
    use crate::config::ConfigError;
    let change = match value {
        Some(v) => format!("set {key} {v}"),
        None => format!("del {key}"),
    };
    match e {
        ConfigError::Invalid { issues, .. } => {
            let each: Vec<String> = issues.iter().map(|i| format!("  {i}")).collect();
            format!(
                "{change} refused, nothing changed ({} error(s)):\n{}",
                each.len(),
                each.join("\n")
            )
        }
        e => format!("{change} refused, nothing changed: {e}"),
    }
}

fn ok() -> Response {
    Response {
        ok: true,
        ..Default::default()
    }
}

fn fail(e: String) -> Response {
    Response {
        ok: false,
        error: Some(e),
        ..Default::default()
    }
}

/// Connections served at once. One more waits up to [`SLOT_WAIT`] for a slot, then is answered
/// `busy` and closed: a client then knows to retry, instead of reading "connection reset".
pub const MAX_CONNECTIONS: usize = 16;
/// How long a connection may take to send a whole request line, counted from its accept or from
/// the previous answer. Legitimate clients (the CLI, the extension) send at once, so a few seconds
/// is plenty; past it the connection is cut, so idle or trickling clients cannot keep the slots.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a connection over [`MAX_CONNECTIONS`] waits for a slot before it is answered `busy`.
const SLOT_WAIT: Duration = Duration::from_secs(1);
/// A client that does not read its answer must not hold a slot either.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// How often an idle [`serve`] checks that the socket file is still there. Rare, because it is
/// a wake-up of an idle agent; often enough that a deleted socket is back before an operator has
/// finished wondering why the CLI says "not running".
const SOCKET_CHECK: Duration = Duration::from_secs(5);

/// The bound control socket, and the pipe that tells [`serve`] to return.
pub struct Listener {
    socket: UnixListener,
    /// Where it is bound, to bind it again if the file is deleted (see [`Listener::restore`]).
    path: PathBuf,
    /// Readable once [`Waker::wake`] wrote to its other end: shutdown never goes through the
    /// socket's path, which a tmp cleaner or an operator may have removed.
    wake_rx: UnixStream,
    wake_tx: Arc<UnixStream>,
}

impl Listener {
    /// Binds the socket again when its file was deleted (a tmp cleaner, an operator): otherwise
    /// the running agent is unreachable and every CLI call says "not running" until a restart.
    /// Whatever else is at the path is left alone.
    fn restore(&mut self) {
        let gone = matches!(std::fs::symlink_metadata(&self.path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound);
        if !gone {
            return;
        }
        let path = self.path.display();
        match bind_socket(&self.path) {
            Ok(socket) => {
                self.socket = socket;
                tracing::warn!(%path, "the control socket was deleted; bound it again");
            }
            Err(e) => {
                tracing::warn!(%path, error = %e, "the control socket was deleted and cannot be bound again")
            }
        }
    }

    /// The handle that makes [`serve`] return (take it before handing the listener to a thread).
    pub fn waker(&self) -> Waker {
        Waker(self.wake_tx.clone())
    }
}

/// Makes [`serve`] return, whatever became of the socket file.
#[derive(Clone)]
pub struct Waker(Arc<UnixStream>);

impl Waker {
    pub fn wake(&self) {
        // One byte is enough: nothing ever reads it, so `serve` sees its end readable until it
        // returns, and a second wake cannot block (this end is non-blocking).
        let _ = (&*self.0).write(&[1]);
    }
}

/// Binds the socket (any old one is stale: the caller holds the state dir's lock), 0600.
pub fn bind(state_dir: &Path) -> std::io::Result<Listener> {
    let path = super::socket_path(state_dir);
    let _ = std::fs::remove_file(&path);
    let socket = bind_socket(&path)?;
    let (wake_tx, wake_rx) = UnixStream::pair()?;
    wake_tx.set_nonblocking(true)?;
    Ok(Listener {
        socket,
        path,
        wake_rx,
        wake_tx: Arc::new(wake_tx),
    })
}

/// Binds a listener at `path`, mode 0600 from its first moment there: it is bound inside a fresh
/// 0700 folder, given its mode, then renamed into place. No umask change, which is process-wide
/// and would race with the files other threads create when the socket is bound again.
fn bind_socket(path: &Path) -> std::io::Result<UnixListener> {
    let parent = path.parent().unwrap_or(Path::new("."));
    // Names no longer than `control.sock` (a pid has at most 7 digits): a socket path has a
    // length limit, and the staged one must fit wherever the final one does.
    let private = parent.join(format!(".c{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&private);
    std::fs::DirBuilder::new().mode(0o700).create(&private)?;
    let staged = private.join("s");
    let bound = UnixListener::bind(&staged).and_then(|socket| {
        std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(0o600))?;
        std::fs::rename(&staged, path)?;
        Ok(socket)
    });
    let _ = std::fs::remove_dir_all(&private);
    let socket = bound?;
    // Non-blocking so that a connection gone between poll and accept costs nothing.
    socket.set_nonblocking(true)?;
    Ok(socket)
}

/// Serves the socket until its [`Waker`] is woken; one thread per connection, at most
/// [`MAX_CONNECTIONS`]. The waker is the only way out, so that shutdown has one mechanism, and
/// it does not go through the socket file.
pub fn serve(mut listener: Listener, ctl: Arc<Controller>) {
    let slots = Arc::new(Slots::default());
    let mut fds = [
        libc::pollfd {
            fd: listener.socket.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        },
        libc::pollfd {
            fd: listener.wake_rx.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        },
    ];
    loop {
        fds[0].fd = listener.socket.as_raw_fd();
        // SAFETY: two valid pollfds owned by this frame. The waker ends the wait at shutdown;
        // the timeout is only for `restore`.
        let rc = unsafe {
            libc::poll(
                fds.as_mut_ptr(),
                fds.len() as libc::nfds_t,
                SOCKET_CHECK.as_millis() as libc::c_int,
            )
        };
        if rc < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                tracing::warn!(error = %e, "control socket poll failed");
                std::thread::sleep(Duration::from_millis(200));
            }
            continue;
        }
        if fds[1].revents != 0 {
            break;
        }
        if rc == 0 {
            listener.restore();
            continue;
        }
        match listener.socket.accept() {
            Ok((stream, _)) => match slots.take(SLOT_WAIT) {
                Some(slot) => {
                    let ctl = ctl.clone();
                    let spawned =
                        std::thread::Builder::new()
                            .name("control".into())
                            .spawn(move || {
                                let _slot = slot;
                                if let Err(e) = connection(stream, &ctl) {
                                    tracing::debug!(error = %e, "control connection ended");
                                }
                            });
                    if let Err(e) = spawned {
                        tracing::warn!(error = %e, "cannot start a control connection thread");
                    }
                }
                None => refuse_busy(stream),
            },
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => {
                tracing::warn!(error = %e, "control socket accept failed");
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    }
    let _ = std::fs::remove_file(&listener.path);
}

/// Counts the connections being served; a slot is given back when its guard drops.
#[derive(Default)]
struct Slots {
    used: Mutex<usize>,
    freed: Condvar,
}

struct Slot(Arc<Slots>);

impl Slots {
    /// A free slot, waiting up to `wait` for one.
    fn take(self: &Arc<Self>, wait: Duration) -> Option<Slot> {
        let used = self.used.lock().expect("slots lock");
        let (mut used, _) = self
            .freed
            .wait_timeout_while(used, wait, |n| *n >= MAX_CONNECTIONS)
            .expect("slots lock");
        if *used >= MAX_CONNECTIONS {
            return None;
        }
        *used += 1;
        Some(Slot(self.clone()))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        *self.0.used.lock().expect("slots lock") -= 1;
        self.0.freed.notify_one();
    }
}

/// Answers a connection over the limit without reading it: `busy`, then close.
fn refuse_busy(stream: UnixStream) {
    tracing::warn!(
        max = MAX_CONNECTIONS,
        "control socket busy: a connection was refused"
    );
    let resp = fail(format!(
        "busy: the agent already serves {MAX_CONNECTIONS} control connections; try again"
    ));
    let mut out = serde_json::to_vec(&resp).expect("a response serialises");
    out.push(b'\n');
    // The accept thread must not block here: whatever the client already sent is drained (a Unix
    // socket closed with unread data resets the peer, which would hide the answer), then the
    // answer goes out with a short write timeout.
    let _ = stream.set_nonblocking(true);
    let mut sink = [0u8; 4096];
    for _ in 0..16 {
        match (&stream).read(&mut sink) {
            Ok(n) if n > 0 => continue,
            _ => break,
        }
    }
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_write_timeout(Some(Duration::from_millis(200)));
    let _ = (&stream).write_all(&out);
    let _ = stream.shutdown(std::net::Shutdown::Write);
}

/// What one attempt to read a request line gave.
enum Incoming {
    Line(Vec<u8>),
    /// The client closed, or took longer than [`IDLE_TIMEOUT`] to send a whole line.
    Gone,
    TooLong,
}

/// Reads one request line within `deadline`, however the client trickles it.
fn read_request(
    reader: &mut BufReader<UnixStream>,
    deadline: Instant,
) -> std::io::Result<Incoming> {
    let mut line = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(Incoming::Gone);
        }
        reader.get_ref().set_read_timeout(Some(left))?;
        let buf = match reader.fill_buf() {
            Ok(buf) => buf,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return Ok(Incoming::Gone)
            }
            Err(e) => return Err(e),
        };
        if buf.is_empty() {
            return Ok(Incoming::Gone);
        }
        let (taken, done) = match memchr::memchr(b'\n', buf) {
            Some(i) => (i + 1, true),
            None => (buf.len(), false),
        };
        line.extend_from_slice(&buf[..taken]);
        reader.consume(taken);
        if line.len() as u64 > MAX_REQUEST {
            return Ok(Incoming::TooLong);
        }
        if done {
            return Ok(Incoming::Line(line));
        }
    }
}

fn connection(stream: UnixStream, ctl: &Controller) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_write_timeout(Some(WRITE_TIMEOUT))?;
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    loop {
        // An over-long request is answered, then the connection closed: the rest of that line
        // would otherwise be read as further requests.
        let (resp, last) = match read_request(&mut reader, Instant::now() + IDLE_TIMEOUT)? {
            Incoming::Gone => return Ok(()),
            Incoming::TooLong => (
                fail(format!("request longer than {MAX_REQUEST} bytes")),
                true,
            ),
            Incoming::Line(line) => match serde_json::from_slice::<Request>(&line) {
                Ok(req) => (ctl.handle(&req), false),
                Err(e) => (fail(format!("not a request: {e}")), false),
            },
        };
        let mut out = serde_json::to_vec(&resp).expect("a response serialises");
        out.push(b'\n');
        writer.write_all(&out)?;
        if last {
            return Ok(());
        }
    }
}

/// Reloads when the config file or an enabled pack changes (checked every second; editors that
/// replace the file by rename are seen through the inode).
pub fn watch_config(ctl: Arc<Controller>, stop: Arc<AtomicBool>) {
    let version = |files: &[PathBuf]| -> Vec<Option<(u64, i64, i64, u64)>> {
        files
            .iter()
            .map(|f| {
                std::fs::metadata(f)
                    .ok()
                    .map(|m| (m.ino(), m.mtime(), m.mtime_nsec(), m.len()))
            })
            .collect()
    };
    let mut files = ctl.watched();
    let mut seen = version(&files);
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_secs(1));
        let now = version(&files);
        if now != seen {
            // Let a writer finish (an editor saving in several writes) before reading.
            std::thread::sleep(Duration::from_millis(200));
            let _ = ctl.reload();
            files = ctl.watched();
            seen = version(&files);
        }
    }
}
