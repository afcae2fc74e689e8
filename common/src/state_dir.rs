//! The files inside the agent's state dir. The agent creates them; the extension and the CLI
//! find them by the same names, so the names live here once.

use std::path::{Path, PathBuf};

/// The SQLite offset store (streams, checkpoints, alerts).
pub const STORE: &str = "store.db";
/// The osquery logger plugin's durable queue, which the agent drains.
pub const OSQUERY_OUTBOX: &str = "osquery-outbox.db";
/// The agent's control socket (mode 0600).
pub const CONTROL_SOCKET: &str = "control.sock";
/// The running agent's process id.
pub const PID: &str = "agent.pid";
/// Held (flock) by the one agent that owns the state dir.
pub const LOCK: &str = "agent.lock";
/// The agent's own log when it runs detached.
pub const LOG: &str = "agent.log";
/// The folder of the identity `log-sensor enroll` obtains (mode 0700).
pub const TLS_DIR: &str = "tls";
/// The collector's CA certificate, inside [`TLS_DIR`].
pub const TLS_CA: &str = "ca.pem";
/// This host's client certificate, inside [`TLS_DIR`].
pub const TLS_CERT: &str = "cert.pem";
/// This host's private key (mode 0600), inside [`TLS_DIR`].
pub const TLS_KEY: &str = "key.pem";

pub fn store(state_dir: &Path) -> PathBuf {
    state_dir.join(STORE)
}

pub fn osquery_outbox(state_dir: &Path) -> PathBuf {
    state_dir.join(OSQUERY_OUTBOX)
}

pub fn control_socket(state_dir: &Path) -> PathBuf {
    state_dir.join(CONTROL_SOCKET)
}

/// The enrolled identity's files: CA, certificate and key, in that order.
pub fn tls_files(state_dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let dir = state_dir.join(TLS_DIR);
    (dir.join(TLS_CA), dir.join(TLS_CERT), dir.join(TLS_KEY))
}
