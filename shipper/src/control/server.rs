//! The agent's side of the control socket, and the watcher that reloads the config when its
//! file or an enabled pack changes.

use super::{EntryWire, Request, Response};
use crate::config::layers::{parse_value, Layers};
use crate::config::{Config, SinkConfig};
use crate::status::{Live, Status};
use crate::store::{Alert, Store};
use crossbeam_channel::Sender;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Connections served at once; more wait in the listen backlog.
const MAX_CONNECTIONS: usize = 16;
/// A request line longer than this is refused (nothing legitimate comes close).
const MAX_REQUEST: u64 = 64 << 10;

/// What the control socket acts on: the config layers and the running agent's threads.
pub struct Controller {
    layers: Mutex<Layers>,
    current: Mutex<Arc<Config>>,
    live: Mutex<Live>,
    to_tailer: Sender<Arc<Config>>,
    to_shipper: Sender<SinkConfig>,
    stop: Arc<AtomicBool>,
    store: Arc<Mutex<Store>>,
}

impl Controller {
    pub fn new(
        layers: Layers,
        cfg: Arc<Config>,
        live: Live,
        to_tailer: Sender<Arc<Config>>,
        to_shipper: Sender<SinkConfig>,
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
        }
    }

    pub fn config(&self) -> Arc<Config> {
        self.current.lock().expect("config lock").clone()
    }

    pub fn status(&self) -> Status {
        let cfg = self.config();
        let live = self.live.lock().expect("live lock").clone();
        Status::collect(&cfg, &live)
    }

    fn alert(&self, detail: String) {
        tracing::warn!(kind = "config_error", "{detail}");
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
        let cfg = Arc::new(cfg);
        {
            let mut live = self.live.lock().expect("live lock");
            live.pack_sources = layers.pack_source_names();
            if format!("{:?}", cfg.sink) != format!("{:?}", old.sink) {
                live.sink_kind = crate::sink::kind(&cfg.sink).to_string();
                live.sink_description = crate::sink::describe(&cfg.sink);
                let _ = self.to_shipper.send(cfg.sink.clone());
            }
        }
        let _ = self.to_tailer.send(cfg.clone());
        *self.current.lock().expect("config lock") = cfg;
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
        let result = match value {
            Some(v) => layers.set_temporary(key, parse_value(v)),
            None => layers.del_temporary(key),
        };
        match result {
            Ok(cfg) => {
                if let Err(e) = self.apply(&layers, cfg) {
                    // Undo: the layers hold the change, the agent does not.
                    let _ = layers.del_temporary(key);
                    return fail(e);
                }
                tracing::info!(
                    key,
                    value = value.unwrap_or("(deleted)"),
                    "temporary config change"
                );
                let entries = layers
                    .entries(key)
                    .iter()
                    .filter(|e| e.key == key)
                    .map(EntryWire::from)
                    .collect();
                Response {
                    ok: true,
                    entries: Some(entries),
                    ..Default::default()
                }
            }
            Err(e) => fail(e.to_string()),
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

/// Binds the socket (any old one is stale: the caller holds the state dir's lock), 0600.
pub fn bind(state_dir: &Path) -> std::io::Result<UnixListener> {
    let path = super::socket_path(state_dir);
    let _ = std::fs::remove_file(&path);
    // Created 0600 from the start: no moment where another user could connect.
    // SAFETY: umask only swaps the process's file mode mask; restored right after.
    let old = unsafe { libc::umask(0o177) };
    let bound = UnixListener::bind(&path);
    unsafe {
        libc::umask(old);
    }
    let listener = bound?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// Serves the socket until `stop` (then [`wake`] unblocks the accept); one thread per
/// connection, at most [`MAX_CONNECTIONS`].
pub fn serve(listener: UnixListener, ctl: Arc<Controller>, stop: Arc<AtomicBool>) {
    let active = Arc::new(AtomicUsize::new(0));
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok(_) if stop.load(Ordering::Relaxed) => break,
            Ok((stream, _)) => {
                if active.load(Ordering::Relaxed) >= MAX_CONNECTIONS {
                    drop(stream);
                    continue;
                }
                active.fetch_add(1, Ordering::Relaxed);
                let ctl = ctl.clone();
                let active = active.clone();
                let _ = std::thread::Builder::new()
                    .name("control".into())
                    .spawn(move || {
                        let _ = connection(stream, &ctl);
                        active.fetch_sub(1, Ordering::Relaxed);
                    });
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(50))
            }
            Err(e) => {
                tracing::warn!(error = %e, "control socket accept failed");
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    }
    if let Ok(addr) = listener.local_addr() {
        if let Some(p) = addr.as_pathname() {
            let _ = std::fs::remove_file(p);
        }
    }
}

fn connection(stream: UnixStream, ctl: &Controller) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(std::io::Read::take(stream, MAX_REQUEST));
    let mut line = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let resp = match serde_json::from_str::<Request>(line.trim()) {
            Ok(req) => ctl.handle(&req),
            Err(e) => fail(format!("not a request: {e}")),
        };
        let mut out = serde_json::to_vec(&resp).expect("a response serialises");
        out.push(b'\n');
        writer.write_all(&out)?;
    }
}

/// Unblocks [`serve`]'s accept once `stop` is set.
pub fn wake(state_dir: &Path) {
    let _ = UnixStream::connect(super::socket_path(state_dir));
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
