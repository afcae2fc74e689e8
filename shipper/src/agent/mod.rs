//! Wires the agent together: a pipeline thread per group of sources going to the same sinks
//! drives the inputs (files, the osquery outbox) into batches, a thread per sink sends them,
//! and each group's shipping thread commits a batch once all its sinks acknowledged it
//! (`routes`); beside them the control socket, the config watch and the monitor.

pub mod peers;
mod routes;

use crate::batch::Batch;
use crate::config::layers::Layers;
use crate::control::{self, server::Controller};
use crate::input::syslog::SyslogInput;
use crate::input::{osquery::OsqueryInput, Bell};
use crate::pipeline::fanout::{group_loop, GroupTo};
use crate::pipeline::ship::{sink_loop, SinkTo, SHUTDOWN_GRACE};
use crate::pipeline::Pipeline;
use crate::sink::{self, Encoding, SinkError};
use crate::status::{Live, ShipStats, TailStats};
use crate::store::{Store, StoreError};
use crate::tail::Tailer;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a stop may take before the agent exits without waiting for its threads: the sinks'
/// grace for a failing send, and the syslog input's for spooling what it framed, with room to
/// spare; under the packaged unit's `TimeoutStopSec` (30 s), so the agent says why itself.
const STOP_LIMIT: Duration = Duration::from_secs(SHUTDOWN_GRACE.as_secs() + 10);

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
    #[error(
        "config {path} is in use by another log-sensor (pid {pid}), on the state dir the file named when it started; one agent per config: stop it first (`log-sensor -c {path} stop` finds it)"
    )]
    ConfigInUse { path: PathBuf, pid: u32 },
    #[error("cannot lock state dir {path}: {source}")]
    Lock {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Syslog(#[from] crate::input::syslog::listen::ListenError),
    #[error("cannot build the transforms: {0}")]
    Transforms(String),
    #[error("cannot serve the monitor on {addr} (monitor.listen): {source}")]
    Monitor {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
}

/// Holds the state dir's lock for as long as it lives.
pub type StateLock = log_sensor_common::fsutil::DirLock;

/// Creates the state dir (and missing parents) 0700 when there is none: it holds the store, the
/// control socket and, with `start`, agent.log with every record shipped to stdout, so only the
/// agent's user may look inside (as the packages make `/var/lib/log-sensor`). One that exists
/// keeps the mode its owner gave it.
pub fn create_state_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

/// Takes the state dir for this process; a second agent on it is refused with the holder's pid.
pub fn lock_state_dir(dir: &Path) -> Result<StateLock, AgentError> {
    use log_sensor_common::fsutil::{lock_dir, LockError};
    create_state_dir(dir).map_err(|source| AgentError::Lock {
        path: dir.to_path_buf(),
        source,
    })?;
    lock_dir(dir, log_sensor_common::state_dir::LOCK).map_err(|e| match e {
        LockError::Held { pid } => AgentError::Locked {
            path: dir.to_path_buf(),
            pid,
        },
        LockError::Io { path, source } => AgentError::Lock { path, source },
    })
}

/// Runs the agent until `stop` is set (a signal, or `stop` on the control socket); returns
/// after the batch in flight is committed.
pub fn run(layers: Layers, stop: Arc<AtomicBool>) -> Result<(), AgentError> {
    let cfg = layers.resolve()?;
    let _lock = lock_state_dir(&cfg.state_dir)?;
    // After the lock, so a second agent on the same state dir is told whose it is; this is the
    // one on another state dir (the file's `state_dir` edited under a running agent).
    let seen = peers::others_with_config(&cfg.path);
    if !seen.is_empty() {
        // One started in the same moment on our state dir fails its lock and is gone at once:
        // only a peer still there a moment later is another agent.
        std::thread::sleep(Duration::from_millis(500));
        let still = peers::others_with_config(&cfg.path);
        if let Some(&pid) = still.iter().find(|p| seen.contains(p)) {
            return Err(AgentError::ConfigInUse {
                path: cfg.path.clone(),
                pid,
            });
        }
    }
    raise_fd_limit();
    let store = Store::open(&cfg.state_dir)?;
    store.set_meta("host_id", &cfg.host_id)?;
    let store = Arc::new(Mutex::new(store));
    let mut routes = routes::Routes::build(&cfg)?;
    let control = control::server::bind(&cfg.state_dir).map_err(|source| AgentError::Control {
        path: control::socket_path(&cfg.state_dir),
        source,
    })?;
    // Taken before the listener moves to its thread: shutdown wakes it through this, never
    // through the socket's path, which someone may have deleted.
    let control_waker = control.waker();
    let pid_file = cfg.state_dir.join(log_sensor_common::state_dir::PID);
    let _ = std::fs::write(&pid_file, format!("{}\n", std::process::id()));
    tracing::info!(sinks = %sink::describe_all(&cfg.sinks), sources = cfg.sources.len(), syslog_sources = cfg.syslog_sources.len(), groups = routes.groups.len(), store = %cfg.store_path().display(), "log-sensor running");
    let commits = Arc::new(ShipStats::default());
    let tails: Vec<Arc<TailStats>> = routes
        .groups
        .iter()
        .map(|_| Arc::new(TailStats::default()))
        .collect();
    // Listening before anything else starts, so a port in use fails the start, naming it: one
    // syslog input per group that has syslog sources, each with its group's pipeline's bell.
    let mut syslog = Vec::new();
    for g in &routes.groups {
        let bell = Bell::new();
        let gcfg = routes::for_group(&cfg, &g.group.sinks);
        let input = match gcfg.syslog_sources.is_empty() {
            true => None,
            false => Some(SyslogInput::start(
                &gcfg.syslog_sources,
                &cfg.state_dir,
                store.clone(),
                bell.clone(),
            )?),
        };
        syslog.push((bell, input));
    }
    // Streams of listeners the file no longer has (edited while the agent was down) are no
    // longer shown as active.
    let running: std::collections::HashSet<String> = syslog
        .iter()
        .filter_map(|(_, i)| i.as_ref())
        .flat_map(|i| i.stream_ids())
        .collect();
    crate::input::syslog::stream::mark_stopped(&store, &running, None);
    let live = Live {
        listeners: syslog
            .iter()
            .filter_map(|(_, i)| i.as_ref().map(|i| i.counters()))
            .collect(),
        silent: syslog
            .iter()
            .filter_map(|(_, i)| i.as_ref().map(|i| i.silent()))
            .collect(),
        tails: tails.clone(),
        ship: commits.clone(),
        started_at: crate::store::now_secs(),
        sinks: routes.live(&cfg),
        pack_sources: layers.pack_source_names(),
        transforms: Default::default(),
    };
    let sink_stats: Vec<(String, Arc<ShipStats>)> = live
        .sinks
        .iter()
        .map(|s| (s.name.clone(), s.stats.clone()))
        .collect();
    let cfg = Arc::new(cfg);
    let (cfg_tx, cfg_rx) = crossbeam_channel::unbounded();
    let (sink_tx, sink_rx) = crossbeam_channel::unbounded();
    routes.forward_rebuilds(sink_rx);
    let mut pipelines = Vec::new();
    let mut group_configs = Vec::new();
    let mut shipping = Vec::new();
    for ((g, tail), (bell, syslog)) in routes.groups.into_iter().zip(tails).zip(syslog) {
        let gcfg = Arc::new(routes::for_group(&cfg, &g.group.sinks));
        let mut pipeline = Pipeline::new(gcfg.clone(), g.tx, stop.clone(), bell.clone());
        pipeline.alerts_into(store.clone());
        pipeline
            .build_transforms(live.transforms.clone())
            .map_err(AgentError::Transforms)?;
        let tailer = Tailer::new(
            gcfg.clone(),
            store.clone(),
            stop.clone(),
            tail.clone(),
            bell,
        )?;
        pipeline.input(Box::new(tailer));
        if g.group.osquery {
            pipeline.input(Box::new(OsqueryInput::new(
                &cfg.state_dir,
                store.clone(),
                tail.clone(),
            )));
        }
        if let Some(input) = syslog {
            pipeline.input(Box::new(input));
        }
        // Delivered batches go back to the pipeline to be filled again.
        let (back_tx, back_rx) = crossbeam_channel::bounded::<Batch>(1);
        pipeline.recycle_from(back_rx);
        pipeline.outlook(g.outlook.clone());
        let (gcfg_tx, gcfg_rx) = crossbeam_channel::unbounded();
        pipeline.configs_from(gcfg_rx);
        group_configs.push((g.group.sinks.clone(), gcfg_tx));
        // Encoded ahead when any of its sinks takes NDJSON; the others read the records.
        if g.group
            .sinks
            .iter()
            .any(|&i| routes.sinks[i].sink.encoding() == Encoding::Ndjson)
        {
            pipeline.wanted().set(Encoding::Ndjson);
        }
        pipelines.push(pipeline);
        shipping.push((
            g.batches,
            g.sinks,
            g.heard,
            g.limit,
            Some(back_tx),
            g.outlook,
        ));
    }
    routes::forward_configs(cfg_rx, group_configs);
    let controller = Arc::new(Controller::new(
        layers,
        cfg.clone(),
        live,
        cfg_tx,
        sink_tx,
        stop.clone(),
        store.clone(),
    ));
    // Bound before the pipeline starts, so a taken port fails the start instead of leaving the
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
    let finished = Arc::new(AtomicBool::new(false));
    spawn("stop-watchdog", {
        let (stop, finished) = (stop.clone(), finished.clone());
        move || stop_watchdog(&stop, &finished, &sink_stats)
    });
    std::thread::scope(|scope| {
        for p in pipelines {
            named_scoped(scope, "pipeline", move || p.run());
        }
        for (batches, sinks, heard, limit, recycle, outlook) in shipping {
            let (store, stats) = (&store, &*commits);
            named_scoped(scope, "group", move || {
                group_loop(
                    batches,
                    GroupTo {
                        store,
                        stats,
                        sinks,
                        heard,
                        limit,
                        recycle,
                        outlook: Some(outlook),
                    },
                )
            });
        }
        for s in routes.sinks {
            let (store, stop) = (&store, &stop);
            named_scoped(scope, "sink", move || {
                sink_loop(SinkTo {
                    sink: s.sink,
                    name: s.name,
                    store,
                    stop,
                    stats: &s.stats,
                    feeds: s.feeds,
                    rebuild: Some(s.rebuild),
                })
            });
        }
    });
    finished.store(true, Ordering::SeqCst);
    stop.store(true, Ordering::SeqCst);
    control_waker.wake();
    for h in helpers {
        let _ = h.join();
    }
    let _ = std::fs::remove_file(&pid_file);
    tracing::info!("log-sensor stopped; offsets committed");
    Ok(())
}

/// Once a stop is asked for, exits the process if the agent has not finished within
/// [`STOP_LIMIT`]. A sink stuck in a write that never returns (stdout into a pipe nobody
/// reads, a FIFO, a hung NFS mount) raises no error, so no grace ends it, and the stop waited
/// for ever. Exiting loses nothing: what that sink had not acknowledged is uncommitted and read
/// again at the next start. Exit status 0, as for any stop asked for: a unit restarted on
/// failure must not come back after `log-sensor stop`.
fn stop_watchdog(stop: &AtomicBool, finished: &AtomicBool, sinks: &[(String, Arc<ShipStats>)]) {
    const POLL: Duration = Duration::from_millis(100);
    while !stop.load(Ordering::SeqCst) {
        if finished.load(Ordering::SeqCst) {
            return;
        }
        std::thread::sleep(POLL);
    }
    let deadline = Instant::now() + STOP_LIMIT;
    while Instant::now() < deadline {
        if finished.load(Ordering::SeqCst) {
            return;
        }
        std::thread::sleep(POLL);
    }
    let now = crate::store::now_secs();
    let stuck: Vec<String> = sinks
        .iter()
        .filter_map(
            |(name, st)| match st.sending_since.load(Ordering::Relaxed) {
                0 => None,
                t => Some(format!("{name} (in one send for {} s)", now - t as i64)),
            },
        )
        .collect();
    tracing::error!(
        limit_s = STOP_LIMIT.as_secs(),
        stuck_sinks = %if stuck.is_empty() { "none".to_string() } else { stuck.join(", ") },
        "the stop did not finish in time; exiting without waiting: what was not acknowledged is read again at the next start"
    );
    std::process::exit(0);
}

fn named_scoped<'scope, 'env>(
    scope: &'scope std::thread::Scope<'scope, 'env>,
    name: &str,
    f: impl FnOnce() + Send + 'scope,
) {
    std::thread::Builder::new()
        .name(name.into())
        .spawn_scoped(scope, f)
        .expect("spawn thread");
}

fn spawn(name: &str, f: impl FnOnce() + Send + 'static) -> std::thread::JoinHandle<()> {
    std::thread::Builder::new()
        .name(name.into())
        .spawn(f)
        .expect("spawn thread")
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
mod tests;
