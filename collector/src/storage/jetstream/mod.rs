//! The JetStream backend (`[storage] type = "jetstream"`, #13): several
//! collectors on one NATS cluster, every record stored exactly once
//! whichever collector a batch reaches; the accounts live there too
//! (`accounts`), and `export` reads the records back out.
//!
//! One stream, `{prefix}_records`, holds three kinds of subject:
//! * `{prefix}.rec.{host}.{stream}`: records, several per message (body:
//!   the agent's NDJSON lines; headers name host, stream and the offsets
//!   covered);
//! * `{prefix}.mark.{host}.{stream}`: the stream's high-water mark and
//!   over-length streak, one message kept per subject (`Nats-Rollup: sub`);
//! * `{prefix}.alert.{host}.{stream}`: one message per over-length streak.
//!
//! Host and stream ids are encoded into single tokens
//! ([`encode_subject_token`]), so an id holding `.`, `*` or `>` can neither
//! split a subject nor match another's.
//!
//! A batch is one atomic publish (ADR-50) of its new records, its marks
//! and its alerts, each mark sent with `Nats-Expected-Last-Subject-Sequence`
//! set to the mark's sequence read before: of two collectors storing the
//! same records at once, exactly one batch is stored, and the other
//! re-reads the marks, trims what is now stored, and tries again.
//!
//! [`encode_subject_token`]: crate::names::encode_subject_token

use std::collections::HashSet;
use std::sync::{Condvar, Mutex};
use std::time::Duration;

use async_nats::Client;
use serde_json::{json, Value};

use crate::config::JetStreamConfig;
use crate::db::{CertRow, CertState, Issued};
use crate::names::encode_subject_token;
use crate::storage::{BatchWrite, StoreError};

mod accounts;
#[cfg(test)]
mod accounts_tests;
mod api;
mod batch;
mod export;
#[cfg(test)]
mod freeze_tests;
#[cfg(test)]
mod tests;

pub use api::ApiError;
pub use batch::JsBatch;
pub use export::ExportError;

/// Oldest server whose atomic batches are atomic: 2.9 accepts the headers
/// and stores the messages one by one.
const MIN_VERSION: (u64, u64) = (2, 12);
/// Room left in a message for its headers under `max_payload`, which
/// counts them.
const HEADER_ROOM: usize = 4096;
/// Messages in one atomic batch: the server's default limit.
const MAX_BATCH_MESSAGES: usize = 1000;

#[derive(Debug, thiserror::Error)]
pub enum JetStreamError {
    #[error("connecting to NATS {servers:?}: {source}")]
    Connect {
        servers: Vec<String>,
        source: async_nats::ConnectError,
    },
    #[error("storage.servers: {server:?} is not a NATS server address: {detail}")]
    BadServer { server: String, detail: String },
    #[error("reading {path}: {source}")]
    Secret {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("starting the NATS client's runtime: {0}")]
    Runtime(std::io::Error),
    #[error("NATS server {server} runs {version}; the collector needs {}.{} or newer (older servers store an atomic batch one message at a time)", MIN_VERSION.0, MIN_VERSION.1)]
    TooOld { server: String, version: String },
    #[error("stream {stream}: `{setting}` is {found}, the collector needs {wanted} (edit the stream, or delete it to have it created)")]
    StreamSetting {
        stream: String,
        setting: &'static str,
        found: String,
        wanted: String,
    },
    #[error(transparent)]
    Api(#[from] ApiError),
    #[error("host {host:?} stream {stream:?}: record at offset {offset} is {len} bytes, more than fits in one NATS message ({limit}, the server's max_payload less headers)")]
    RecordTooLarge {
        host: String,
        stream: String,
        offset: u64,
        len: usize,
        limit: usize,
    },
    #[error("the batch needs {needed} NATS messages, more than the {limit} of one atomic batch; nothing of it is stored: send smaller batches")]
    BatchTooLarge { needed: usize, limit: usize },
    #[error("NATS stream {stream}: as many atomic batches are open as the server allows (jetstream.limits.batch.max_inflight_per_stream, 50 by default, or max_inflight_total, 1000); nothing of this batch is stored: send it again shortly")]
    TooManyOpenBatches { stream: String },
    #[error("{host:?}: the write lost the race for its records {tries} times in a row; nothing of it is stored, try again")]
    Contended { host: String, tries: u32 },
    #[error("user {name:?} already exists; `user del` it first")]
    UserExists { name: String },
    #[error("no user {name:?}")]
    NoSuchUser { name: String },
    #[error("no certificate with serial or host id {target:?}")]
    NothingToRevoke { target: String },
}

/// Subject and stream names, from the configured prefix.
#[derive(Debug, Clone)]
pub struct Names {
    prefix: String,
    /// The stream holding records, marks and alerts.
    pub stream: String,
    /// The stream holding users, certificates, enrolments and revocations.
    pub accounts: String,
}

impl Names {
    pub fn new(prefix: &str) -> Names {
        Names {
            prefix: prefix.to_owned(),
            stream: format!("{prefix}_records"),
            accounts: format!("{prefix}_accounts"),
        }
    }

    /// `{prefix}.{kind}.{id}` on the accounts stream.
    fn account(&self, kind: &str, id: &str) -> String {
        format!("{}.{kind}.{}", self.prefix, encode_subject_token(id))
    }

    fn subject(&self, kind: &str, host: &str, stream: &str) -> String {
        format!(
            "{}.{kind}.{}.{}",
            self.prefix,
            encode_subject_token(host),
            encode_subject_token(stream)
        )
    }

    pub fn records(&self, host: &str, stream: &str) -> String {
        self.subject("rec", host, stream)
    }

    pub fn mark(&self, host: &str, stream: &str) -> String {
        self.subject("mark", host, stream)
    }

    pub fn alert(&self, host: &str, stream: &str) -> String {
        self.subject("alert", host, stream)
    }

    /// The records stream's settings as the collector creates it.
    fn records_config(&self, replicas: u8) -> Value {
        let p = &self.prefix;
        stream_config(
            &self.stream,
            [
                format!("{p}.rec.>"),
                format!("{p}.mark.>"),
                format!("{p}.alert.>"),
            ],
            replicas,
        )
    }

    /// The accounts stream's settings as the collector creates it.
    fn accounts_config(&self, replicas: u8) -> Value {
        let p = &self.prefix;
        let kinds = ["user", "cert", "host", "enrol", "revoked"];
        stream_config(
            &self.accounts,
            kinds.map(|k| format!("{p}.{k}.>")),
            replicas,
        )
    }
}

/// Both streams' settings: kept forever (a limit would drop marks, users
/// or revocations), atomic batches and per-subject rollups allowed.
fn stream_config<const N: usize>(name: &str, subjects: [String; N], replicas: u8) -> Value {
    let subjects = subjects.to_vec();
    json!({
            "name": name,
            "subjects": subjects,
            "retention": "limits",
            "storage": "file",
            "num_replicas": replicas,
            "discard": "old",
            "max_msgs": -1,
            "max_bytes": -1,
            "max_age": 0,
            "allow_atomic": true,
            "allow_rollup_hdrs": true,
    })
}

/// The records side of the JetStream backend: a connection to the cluster
/// and the checked stream.
pub struct JetStream {
    /// Drives the NATS connection; the store's methods block on it from
    /// `serve`'s blocking threads. Shut down without waiting when dropped
    /// (`serve` may drop the store inside its own runtime).
    runtime: std::mem::ManuallyDrop<tokio::runtime::Runtime>,
    client: Client,
    names: Names,
    /// `overlong_alert_after`.
    alert_after: u64,
    /// `request_timeout_secs`: how long one read or publish waits.
    timeout: Duration,
    /// Largest body of one message: the server's `max_payload` less room
    /// for headers.
    max_body: usize,
    /// Hosts with a batch being stored here: one at a time per host, so a
    /// collector does not race itself for a host's marks.
    busy: Mutex<HashSet<String>>,
    idle: Condvar,
}

impl Drop for JetStream {
    fn drop(&mut self) {
        // SAFETY: taken once, here, and never used after.
        let runtime = unsafe { std::mem::ManuallyDrop::take(&mut self.runtime) };
        runtime.shutdown_background();
    }
}

impl std::fmt::Debug for JetStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JetStream")
            .field("stream", &self.names.stream)
            .finish_non_exhaustive()
    }
}

impl JetStream {
    /// Connects and runs the start-up checks: the server is new enough, and
    /// the stream exists with the settings the collector needs (created
    /// when absent).
    pub fn connect(
        config: &JetStreamConfig,
        alert_after: u64,
    ) -> Result<JetStream, JetStreamError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("nats")
            .enable_all()
            .build()
            .map_err(JetStreamError::Runtime)?;
        let names = Names::new(&config.prefix);
        let (client, max_body) = runtime.block_on(async {
            let client = connect(config).await?;
            let info = client.server_info();
            check_version(&info.server_name, &info.version)?;
            let timeout = Duration::from_secs(config.request_timeout_secs);
            ensure_stream(&client, &names.records_config(config.replicas), timeout).await?;
            ensure_stream(&client, &names.accounts_config(config.replicas), timeout).await?;
            Ok::<_, JetStreamError>((client, info.max_payload.saturating_sub(HEADER_ROOM)))
        })?;
        Ok(JetStream {
            timeout: Duration::from_secs(config.request_timeout_secs),
            runtime: std::mem::ManuallyDrop::new(runtime),
            client,
            names,
            alert_after,
            max_body,
            busy: Mutex::new(HashSet::new()),
            idle: Condvar::new(),
        })
    }

    pub fn names(&self) -> &Names {
        &self.names
    }

    /// Runs `fut` on the client's runtime from blocking code. On a worker of
    /// `serve`'s own runtime (a TLS handshake's certificate check) the
    /// worker first hands its other tasks over, so they do not wait.
    fn block<F: std::future::Future>(&self, fut: F) -> F::Output {
        match tokio::runtime::Handle::try_current() {
            Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
                tokio::task::block_in_place(|| self.runtime.block_on(fut))
            }
            _ => self.runtime.block_on(fut),
        }
    }

    /// Starts storing a batch of `host`, once the host's previous batch on
    /// this collector is done.
    pub fn begin(&self, host: &str) -> JsBatch<'_> {
        let mut busy = self.busy.lock().unwrap_or_else(|p| p.into_inner());
        while busy.contains(host) {
            busy = self.idle.wait(busy).unwrap_or_else(|p| p.into_inner());
        }
        busy.insert(host.to_owned());
        JsBatch::new(self, host)
    }

    fn done(&self, host: &str) {
        self.busy
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(host);
        self.idle.notify_all();
    }
}

async fn connect(config: &JetStreamConfig) -> Result<Client, JetStreamError> {
    let mut options = async_nats::ConnectOptions::new()
        .name("log-sensor-collector")
        .connection_timeout(Duration::from_secs(config.request_timeout_secs))
        .request_timeout(Some(Duration::from_secs(config.request_timeout_secs)));
    if let Some(creds) = &config.creds_file {
        options =
            options
                .credentials_file(creds)
                .await
                .map_err(|source| JetStreamError::Secret {
                    path: creds.clone(),
                    source,
                })?;
    }
    if let Some(ca) = &config.tls_ca {
        options = options.add_root_certificates(ca.clone()).require_tls(true);
    }
    if let (Some(cert), Some(key)) = (&config.tls_cert, &config.tls_key) {
        options = options
            .add_client_certificate(cert.clone(), key.clone())
            .require_tls(true);
    }
    if config.servers.iter().any(|s| s.starts_with("tls://")) {
        options = options.require_tls(true);
    }
    let servers = config
        .servers
        .iter()
        .map(|s| {
            s.parse::<async_nats::ServerAddr>()
                .map_err(|e| JetStreamError::BadServer {
                    server: s.clone(),
                    detail: e.to_string(),
                })
        })
        .collect::<Result<Vec<_>, _>>()?;
    options
        .connect(servers)
        .await
        .map_err(|source| JetStreamError::Connect {
            servers: config.servers.clone(),
            source,
        })
}

/// Refuses a server older than [`MIN_VERSION`] (or one whose version does
/// not parse: it cannot be shown to be new enough).
fn check_version(server: &str, version: &str) -> Result<(), JetStreamError> {
    let mut parts = version
        .trim_start_matches('v')
        .split(|c: char| !c.is_ascii_digit())
        .map(|p| p.parse::<u64>());
    let too_old = || JetStreamError::TooOld {
        server: server.to_owned(),
        version: version.to_owned(),
    };
    match (parts.next(), parts.next()) {
        (Some(Ok(major)), Some(Ok(minor))) if (major, minor) >= MIN_VERSION => Ok(()),
        _ => Err(too_old()),
    }
}

/// Creates the stream when absent; refuses one whose settings would break
/// exactly-once storage. The settings are read back from the server, so
/// one that silently drops `allow_atomic` (2.9) is caught here too.
async fn ensure_stream(
    client: &Client,
    wanted: &Value,
    timeout: Duration,
) -> Result<(), JetStreamError> {
    let name = wanted["name"]
        .as_str()
        .expect("a stream config names its stream");
    let info = match api::request(
        client,
        &format!("reading stream {name}"),
        format!("$JS.API.STREAM.INFO.{name}"),
        None,
        bytes::Bytes::new(),
        timeout,
    )
    .await
    {
        Ok(info) => info,
        Err(e) if e.err_code() == Some(api::code::STREAM_NOT_FOUND) => {
            let body = serde_json::to_vec(wanted).expect("JSON serialises");
            api::request(
                client,
                &format!("creating stream {name}"),
                format!("$JS.API.STREAM.CREATE.{name}"),
                None,
                body.into(),
                timeout,
            )
            .await?
        }
        Err(e) => return Err(e.into()),
    };
    let found = info.get("config").cloned().unwrap_or(Value::Null);
    check_settings(name, &found, wanted)
}

/// Compares the settings exactly-once depends on.
fn check_settings(stream: &str, found: &Value, wanted: &Value) -> Result<(), JetStreamError> {
    let differs = |setting: &'static str, found: &Value, wanted: &Value| {
        Err(JetStreamError::StreamSetting {
            stream: stream.to_owned(),
            setting,
            found: found.to_string(),
            wanted: wanted.to_string(),
        })
    };
    // Absent booleans are false (the server omits them), absent numbers
    // are the server's defaults for "no limit".
    let or = |v: Option<&Value>, default: Value| v.cloned().unwrap_or(default);
    for setting in ["allow_atomic", "allow_rollup_hdrs"] {
        let f = or(found.get(setting), Value::Bool(false));
        if f != Value::Bool(true) {
            return differs(setting, &f, &Value::Bool(true));
        }
    }
    // A stream that does not acknowledge publishes (`no_ack`) would leave every batch
    // waiting for an answer until it times out, and a sealed one refuses every write: both
    // are named here, at start-up, rather than as timeouts later.
    for setting in ["no_ack", "sealed"] {
        let f = or(found.get(setting), Value::Bool(false));
        if f != Value::Bool(false) {
            return differs(setting, &f, &Value::Bool(false));
        }
    }
    for setting in ["retention", "storage", "num_replicas"] {
        let f = or(found.get(setting), Value::Null);
        let w = &wanted[setting];
        if &f != w {
            return differs(setting, &f, w);
        }
    }
    // A limit would drop marks with old records, and records would then be
    // stored again. `max_msgs_per_subject` too: a stream's records share one
    // subject, so a limit there (`nats stream edit --max-msgs-per-subject`,
    // common on streams used as KV) would silently keep only its newest N
    // records. The server writes -1 for each of these when none is set
    // (stream.go, checkStreamCfg).
    for (setting, none) in [
        ("max_msgs", -1),
        ("max_bytes", -1),
        ("max_age", 0),
        ("max_msgs_per_subject", -1),
    ] {
        let f = or(found.get(setting), json!(none));
        if f != json!(none) {
            return differs(setting, &f, &json!(none));
        }
    }
    let subjects: Vec<&str> = found
        .get("subjects")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    for s in wanted["subjects"].as_array().expect("subjects listed") {
        if !subjects.contains(&s.as_str().expect("subject is text")) {
            return differs("subjects", &json!(subjects), &wanted["subjects"]);
        }
    }
    Ok(())
}

impl crate::storage::Store for JetStream {
    fn user_hash(&self, name: &str) -> Result<Option<String>, StoreError> {
        Ok(JetStream::user_hash(self, name)?)
    }

    fn record_issued(&self, issued: &Issued<'_>) -> Result<(), StoreError> {
        Ok(JetStream::record_issued(self, issued)?)
    }

    fn record_enrolment(&self, issued: &Issued<'_>) -> Result<Option<String>, StoreError> {
        Ok(JetStream::record_enrolment(self, issued)?)
    }

    fn cert_state(&self, serial: &str) -> Result<CertState, StoreError> {
        Ok(JetStream::cert_state(self, serial)?)
    }

    fn revoked_serials(&self) -> Result<HashSet<String>, StoreError> {
        Ok(JetStream::revoked_serials(self)?)
    }

    fn begin(&self, host: &str) -> Result<Box<dyn BatchWrite + '_>, StoreError> {
        Ok(Box::new(JetStream::begin(self, host)))
    }

    fn add_user(&self, name: &str, password_hash: &str, now: i64) -> Result<(), StoreError> {
        Ok(JetStream::add_user(self, name, password_hash, now)?)
    }

    fn delete_user(&self, name: &str) -> Result<(), StoreError> {
        Ok(JetStream::delete_user(self, name)?)
    }

    fn revoke(&self, target: &str, now: i64) -> Result<Vec<CertRow>, StoreError> {
        Ok(JetStream::revoke(self, target, now)?)
    }

    fn list_certs(&self) -> Result<Vec<CertRow>, StoreError> {
        Ok(JetStream::list_certs(self)?)
    }
}
