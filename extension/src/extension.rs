//! The extension's life: find the core's socket, register, serve, watch the core, stop.
//!
//! Follows the C++ SDK's `startExtension` and `ExtensionWatcher` (osquery
//! `osquery/extensions/extensions.cpp`): wait up to `--timeout` for the socket, register (a
//! refusal — a duplicate name, say — is fatal), ask for `options()`, serve at
//! `<socket>.<uuid>`, and every `--interval` check the core is still there and still lists us.

use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context};

use crate::agent_config::{self, AgentConfig};
use crate::agent_socket::Timeouts;
use crate::logger::heartbeat::{Activity, Heartbeats};
use crate::logger::outbox::Outbox;
use crate::logger::{calendar, Logger};
use crate::plugin::Plugins;
use crate::shutdown::{Reason, Shutdown};
use crate::table::alerts::Alerts;
use crate::table::config::ConfigTable;
use crate::table::streams::Streams;
use crate::table::TablePlugin;
use crate::thrift::client::ManagerClient;
use crate::thrift::server::{self, InFlight};
use crate::thrift::wire::ExtensionInfo;

/// The name osquery knows us by (`osquery_extensions.name`).
pub const EXTENSION_NAME: &str = "log_sensor";
/// The osquery SDK version whose protocol we follow; the core refuses anything below 1.7.7
/// (osquery `osquery/extensions/interface.cpp`, `kSDKVersionChanges`).
pub const SDK_VERSION: &str = "5.23.0";
/// Bound on each Thrift read/write to the core (osquery's `--thrift_timeout` is 300 s; a
/// watcher must notice a wedged core sooner).
const IO_TIMEOUT: Duration = Duration::from_secs(30);

/// What the extension runs with, resolved from the command line.
#[derive(Debug, Clone)]
pub struct Options {
    /// The core's extension socket (`--socket`).
    pub socket: PathBuf,
    /// How long to wait for that socket (`--timeout`).
    pub timeout: Duration,
    /// How often to check the core (`--interval`), at least 200 ms like the C++ watcher.
    pub interval: Duration,
    /// The agent config (`--config`, `$LOG_SENSOR_CONFIG`, default path).
    pub config: PathBuf,
    /// Cap on pending outbox rows.
    pub outbox_max_rows: u64,
}

/// Runs until shutdown; returns the process exit code. Errors are startup failures.
pub fn run(opts: Options, shutdown: Arc<Shutdown>) -> anyhow::Result<i32> {
    let config = AgentConfig::load(&opts.config);
    if let Some(p) = &config.problem {
        tracing::warn!(
            "{p}; using defaults (host_id {}, state_dir {})",
            config.host_id,
            config.state_dir.display()
        );
    }
    let outbox = Arc::new(Mutex::new(Outbox::new(
        config.outbox_path(),
        opts.outbox_max_rows,
    )));
    let activity = Arc::new(Activity::new(calendar::unix_now()));
    let plugins = Arc::new(Plugins::new(vec![
        Box::new(TablePlugin(Streams {
            config: config.clone(),
        })),
        Box::new(TablePlugin(Alerts {
            config: config.clone(),
        })),
        Box::new(TablePlugin(ConfigTable {
            config: config.clone(),
            agent_timeouts: Timeouts::default(),
        })),
        Box::new(Logger {
            outbox: outbox.clone(),
            activity: activity.clone(),
            host_id: config.host_id.clone(),
        }),
    ]));

    let stop = || shutdown.is_triggered();
    let mut manager =
        match ManagerClient::connect_waiting(&opts.socket, opts.timeout, IO_TIMEOUT, &stop) {
            Ok(m) => m,
            // Stopped (SIGTERM) while waiting for osquery: an orderly exit, not a failure.
            Err(_) if shutdown.is_triggered() => return Ok(0),
            Err(e) => {
                return Err(
                    anyhow::Error::new(e).context("log_sensor extension cannot reach osquery")
                )
            }
        };
    let info = ExtensionInfo {
        name: EXTENSION_NAME.into(),
        version: env!("CARGO_PKG_VERSION").into(),
        sdk_version: SDK_VERSION.into(),
        min_sdk_version: "0.0.0".into(),
    };
    let status = manager
        .register_extension(&info, &plugins.broadcast())
        .context("registering with osquery")?;
    if status.code != 0 {
        bail!(
            "osquery refused to register extension {EXTENSION_NAME} on {}: {} (code {}); is another \
             log_sensor extension already running?",
            opts.socket.display(),
            status.message,
            status.code
        );
    }
    let uuid = status.uuid;
    let pack_delimiter = match manager.options() {
        Ok(o) => o
            .get("pack_delimiter")
            .map(|v| v.value.clone())
            .filter(|v| !v.is_empty()),
        Err(e) => {
            tracing::debug!("osquery options unavailable: {e}");
            None
        }
    }
    .unwrap_or_else(|| "_".to_string());
    drop(manager);

    let ext_socket = PathBuf::from(format!("{}.{uuid}", opts.socket.display()));
    let listener = match bind(&ext_socket) {
        Ok(l) => l,
        Err(e) => {
            // Registered but unable to serve: take the routes back so osquery does not call us.
            deregister(&opts.socket, uuid);
            return Err(e);
        }
    };
    tracing::info!(
        "extension {EXTENSION_NAME} registered with uuid {uuid}, serving {}; config {}, state dir {}",
        ext_socket.display(),
        config.path.display(),
        config.state_dir.display()
    );
    let in_flight = Arc::new(InFlight::default());
    let server = {
        let (plugins, shutdown, in_flight) = (plugins.clone(), shutdown.clone(), in_flight.clone());
        std::thread::Builder::new()
            .name("ext-server".into())
            .spawn(move || server::serve(listener, plugins, uuid, shutdown, in_flight))?
    };
    let heartbeats = {
        let hb = Heartbeats {
            config: config.clone(),
            manager_socket: opts.socket.clone(),
            pack_delimiter,
            outbox,
            activity,
            shutdown: shutdown.clone(),
        };
        std::thread::Builder::new()
            .name("heartbeats".into())
            .spawn(move || hb.run())?
    };

    while !shutdown.wait_timeout(opts.interval) {
        if let Some(reason) = check_manager(&opts.socket, uuid) {
            shutdown.trigger(reason);
        }
    }

    let reason = shutdown.reason().unwrap_or(Reason::ShutdownCall);
    tracing::info!("extension {EXTENSION_NAME} stopping: {reason:?}");
    let _ = server.join();
    in_flight.drain(Duration::from_secs(5));
    let _ = heartbeats.join();
    if matches!(reason, Reason::ShutdownCall | Reason::Signal(_)) {
        deregister(&opts.socket, uuid);
    }
    let _ = std::fs::remove_file(&ext_socket);
    Ok(reason.exit_code())
}

/// Binds `<socket>.<uuid>`, replacing a stale socket file left by a crashed run.
fn bind(path: &Path) -> anyhow::Result<UnixListener> {
    if path.exists() {
        std::fs::remove_file(path)
            .with_context(|| format!("removing the stale socket {}", path.display()))?;
    }
    UnixListener::bind(path).with_context(|| format!("listening on {}", path.display()))
}

/// One watcher round; `Some` when the extension must stop.
fn check_manager(socket: &Path, uuid: i64) -> Option<Reason> {
    if !socket.exists() {
        return Some(Reason::ManagerGone(format!(
            "{} was removed",
            socket.display()
        )));
    }
    let mut c = match ManagerClient::connect(socket, IO_TIMEOUT) {
        Ok(c) => c,
        Err(e) => return Some(Reason::ManagerGone(e.to_string())),
    };
    if let Err(e) = c.ping() {
        return Some(Reason::ManagerGone(e.to_string()));
    }
    match c.extensions() {
        Ok(list) if !list.contains_key(&uuid) => {
            tracing::error!("osquery no longer lists extension uuid {uuid}");
            Some(Reason::Deregistered)
        }
        Ok(_) => None,
        Err(e) => Some(Reason::ManagerGone(e.to_string())),
    }
}

fn deregister(socket: &Path, uuid: i64) {
    match ManagerClient::connect(socket, Duration::from_secs(2))
        .and_then(|mut c| c.deregister_extension(uuid))
    {
        Ok(s) if s.code == 0 => tracing::debug!("deregistered uuid {uuid}"),
        Ok(s) => tracing::debug!("deregistering uuid {uuid}: {}", s.message),
        Err(e) => tracing::debug!("deregistering uuid {uuid}: {e}"),
    }
}

/// Resolves the config path the way the README documents it.
pub fn config_path(cli: Option<&Path>) -> PathBuf {
    agent_config::locate(cli)
}
