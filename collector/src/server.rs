//! The HTTPS server: accepting connections, routing requests, and cutting
//! connections whose certificate is revoked or expires.
//!
//! [`serve`] takes its listener and shutdown signal from the caller, so
//! tests bind `127.0.0.1:0` and stop it cleanly. Shutdown is two steps:
//! every connection is told to finish (idle ones close at once), then
//! `serve` waits for the last one.

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONNECTION, CONTENT_ENCODING, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::{broadcast, mpsc, watch};
use tokio_rustls::TlsAcceptor;

use crate::alerts::AlertLog;
use crate::config::{Config, Layout};
use crate::db::{CertState, Db};
use crate::enroll::{EnrollError, EnrollRequest, Enroller, RenewRequest};
use crate::ingest::{read_batch_with, BodyCut, IngestError};
use crate::metrics::{Metrics, RefusedReason};
use crate::pki::Ca;
use crate::ratelimit::Limiter;
use crate::revoke::watch_revocations;
use crate::storage::{Storage, StorageError, StorageLimits};
use crate::tls::{make_server_config, PeerIdentity, RevokedSet};
use crate::verify::Verifier;
use log_sensor_common::clock::now_secs as unix_now;

/// Largest enrol or renew body (a CSR is about a kilobyte).
const MAX_SMALL_BODY: usize = 64 * 1024;
/// A client that has not finished its handshake by then is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// A connection idle this long between requests (or this slow to send a
/// request's headers) is closed; nginx's keep-alive default.
const IDLE_TIMEOUT: Duration = Duration::from_secs(75);
/// How long shutdown waits for in-flight requests.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error(transparent)]
    Db(#[from] crate::db::DbError),
    #[error(transparent)]
    Pki(#[from] crate::pki::PkiError),
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error(transparent)]
    AlertLog(#[from] crate::alerts::AlertLogError),
}

/// Everything a request handler may need, shared by all connections.
pub struct Collector {
    pub config: Config,
    pub db: Arc<Db>,
    pub storage: Storage,
    pub enroller: Enroller,
    pub metrics: Arc<Metrics>,
    pub alert_log: AlertLog,
    /// Revoked serials as last polled; open connections watch it.
    pub revoked: RevokedSet,
    /// One permit per batch being read or stored, so a fleet uploading at
    /// once cannot hold unbounded memory.
    pub ingest_slots: tokio::sync::Semaphore,
    /// Per host, `max_batches_per_host` permits, taken before a global slot.
    host_slots: std::sync::Mutex<HashMap<String, Arc<tokio::sync::Semaphore>>>,
}

impl Collector {
    /// The host's own ingest permits; hosts with none in use are forgotten
    /// once many are known.
    fn host_slots(&self, host: &str) -> Arc<tokio::sync::Semaphore> {
        let per_host = self.config.max_batches_per_host as usize;
        let mut map = self.host_slots.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= 1024 && !map.contains_key(host) {
            map.retain(|_, s| Arc::strong_count(s) > 1 || s.available_permits() < per_host);
        }
        map.entry(host.to_owned())
            .or_insert_with(|| Arc::new(tokio::sync::Semaphore::new(per_host)))
            .clone()
    }
}

/// A collector ready to serve: shared state, TLS acceptor and the sender
/// side of the revoked set (driven by the poller inside [`serve`]).
pub struct Server {
    pub collector: Arc<Collector>,
    acceptor: TlsAcceptor,
    /// Connection used by the revocation poller.
    poll_db: Arc<Db>,
    revoked_tx: watch::Sender<Arc<HashSet<String>>>,
}

impl Server {
    /// Loads the CA, database, storage and TLS config from `layout`.
    pub fn open(layout: &Layout, config: Config) -> Result<Server, OpenError> {
        let db = Arc::new(Db::open(&layout.db())?);
        // Handshakes and the poller get their own connection so they never
        // wait behind an ingest commit.
        let tls_db = Arc::new(Db::open(&layout.db())?);
        let metrics = Arc::new(Metrics::default());
        let revoked_now = tls_db.revoked_serials()?;
        let (revoked_tx, revoked) = watch::channel(Arc::new(revoked_now));
        let tls = make_server_config(
            &layout.ca_cert(),
            &layout.server_cert(),
            &layout.server_key(),
            Arc::clone(&tls_db),
            revoked.clone(),
            Arc::clone(&metrics),
        )?;
        let enroller = Enroller {
            db: Arc::clone(&db),
            ca: Ca::load(&layout.ca_cert(), &layout.ca_key())?,
            limiter: Limiter::new(
                config.rate_limit.max_failures,
                Duration::from_secs(config.rate_limit.window_secs),
            ),
            verifier: Verifier::new(config.max_password_checks, Arc::clone(&metrics)),
            cert_days: config.cert_days,
        };
        let storage = Storage::new(
            layout.data_dir(),
            Arc::clone(&db),
            u64::from(config.overlong_alert_after),
            StorageLimits {
                max_open_files: config.max_open_stream_files as usize,
                max_new_streams_per_batch: config.max_new_streams_per_batch as usize,
            },
        )?;
        let alert_log = AlertLog::open(&layout.alerts_log())?;
        let ingest_slots = tokio::sync::Semaphore::new(config.max_concurrent_batches as usize);
        Ok(Server {
            collector: Arc::new(Collector {
                config,
                db,
                storage,
                enroller,
                metrics,
                alert_log,
                revoked,
                ingest_slots,
                host_slots: Default::default(),
            }),
            acceptor: TlsAcceptor::from(Arc::new(tls)),
            poll_db: tls_db,
            revoked_tx,
        })
    }
}

/// Serves until `shutdown` completes, then drains open connections.
pub async fn serve(listener: TcpListener, server: Server, shutdown: impl Future<Output = ()>) {
    let (notify, _) = broadcast::channel::<()>(1);
    let (done_tx, mut done_rx) = mpsc::channel::<()>(1);
    let poller = tokio::spawn(watch_revocations(
        server.poll_db,
        server.revoked_tx,
        notify.subscribe(),
    ));
    tokio::pin!(shutdown);
    let open = Arc::new(OpenConnections::default());
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, peer)) => {
                    // Closed on arrival past the limits: before the handshake, so a
                    // stranger's flood costs no TLS work and no lasting descriptor.
                    let Some(held) = open.admit(&server.collector, peer.ip()) else {
                        server.collector.metrics.connections_refused.fetch_add(1, Relaxed);
                        tracing::debug!(%peer, "connection refused: connection limit reached");
                        continue;
                    };
                    let _ = tcp.set_nodelay(true);
                    tokio::spawn(connection(
                        Arc::clone(&server.collector),
                        server.acceptor.clone(),
                        tcp,
                        peer,
                        notify.subscribe(),
                        (done_tx.clone(), held),
                    ));
                }
                Err(e) => {
                    // Usually out of file descriptors: back off, do not spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            _ = &mut shutdown => break,
        }
    }
    drop(listener);
    let _ = notify.send(());
    drop(done_tx);
    if tokio::time::timeout(DRAIN_TIMEOUT, done_rx.recv())
        .await
        .is_err()
    {
        tracing::warn!("connections still open after the drain timeout; closing them");
    }
    let _ = poller.await;
}

/// Connections open, in all and per source address.
#[derive(Default)]
struct OpenConnections {
    per_address: std::sync::Mutex<HashMap<IpAddr, u32>>,
}

/// A connection's place under the limits, given back when dropped.
struct Admitted {
    open: Arc<OpenConnections>,
    collector: Arc<Collector>,
    from: IpAddr,
}

impl OpenConnections {
    /// A place for a connection from `from`, or None past `max_connections`
    /// or `max_connections_per_address`.
    fn admit(self: &Arc<Self>, collector: &Arc<Collector>, from: IpAddr) -> Option<Admitted> {
        let config = &collector.config;
        let mut map = self.per_address.lock().unwrap_or_else(|p| p.into_inner());
        let total = collector.metrics.connections_open.load(Relaxed);
        let here = map.get(&from).copied().unwrap_or(0);
        if total >= u64::from(config.max_connections) || here >= config.max_connections_per_address
        {
            return None;
        }
        map.insert(from, here + 1);
        collector.metrics.connections_open.fetch_add(1, Relaxed);
        Some(Admitted {
            open: Arc::clone(self),
            collector: Arc::clone(collector),
            from,
        })
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut map = self
            .open
            .per_address
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(n) = map.get_mut(&self.from) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.from);
            }
        }
        self.collector
            .metrics
            .connections_open
            .fetch_sub(1, Relaxed);
    }
}

fn is_certificate_error(e: &std::io::Error) -> bool {
    e.get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .is_some_and(|r| matches!(r, rustls::Error::InvalidCertificate(_)))
}

/// One client connection, from handshake to close.
async fn connection(
    collector: Arc<Collector>,
    acceptor: TlsAcceptor,
    tcp: tokio::net::TcpStream,
    peer: SocketAddr,
    mut shutdown: broadcast::Receiver<()>,
    // Dropped when this task ends: `serve` waits for all of them, and the
    // connection's place under the limits is given back.
    _done: (mpsc::Sender<()>, Admitted),
) {
    let handshake = tokio::select! {
        result = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)) => result,
        // Nothing is in flight before the handshake: shutdown drops it.
        _ = shutdown.recv() => return,
    };
    let tls = match handshake {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            // Certificate refusals were counted by the verifier.
            if !is_certificate_error(&e) {
                collector.metrics.refused(RefusedReason::Protocol);
            }
            tracing::debug!(%peer, error = %e, "handshake failed");
            return;
        }
        Err(_) => {
            collector.metrics.refused(RefusedReason::Protocol);
            return;
        }
    };
    let identity = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|certs| certs.first())
        .and_then(|der| PeerIdentity::from_der(der).ok());
    let service = {
        let collector = Arc::clone(&collector);
        let identity = identity.clone();
        service_fn(move |req| {
            let collector = Arc::clone(&collector);
            let identity = identity.clone();
            async move {
                Ok::<_, Infallible>(route(&collector, identity.as_ref(), peer.ip(), req).await)
            }
        })
    };
    // hyper's header read timeout also runs while a keep-alive connection
    // idles between requests, so it bounds both a client trickling headers
    // and an idle agent connection. A stranger (no certificate) gets
    // `unauthenticated_timeout_secs` for it: it has only enrolments and
    // scrapes to send, and must not hold a connection for long.
    let header_timeout = match &identity {
        Some(_) => IDLE_TIMEOUT,
        None => Duration::from_secs(collector.config.unauthenticated_timeout_secs),
    };
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .serve_connection(TokioIo::new(tls), service);
    tokio::pin!(conn);
    let mut revoked = collector.revoked.clone();
    let mut watching = identity.is_some();
    let expiry_of = |id: &PeerIdentity| {
        // Valid through its notAfter second (RFC 5280), as webpki reads it.
        let left = (id.not_after + 1 - unix_now()).max(0) as u64;
        tokio::time::Instant::now() + Duration::from_secs(left)
    };
    let mut expiry = identity.as_ref().map(expiry_of);
    let mut draining = false;
    loop {
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(%peer, error = %e, "connection ended with an error");
                }
                return;
            }
            changed = revoked.changed(), if watching => {
                if changed.is_err() {
                    watching = false;
                    continue;
                }
                let id = identity.as_ref().expect("watching only with an identity");
                if revoked.borrow_and_update().contains(&id.serial) {
                    collector.metrics.connections_cut.fetch_add(1, Relaxed);
                    tracing::info!(host = %id.host, serial = %id.serial, %peer, "closing connection: certificate revoked");
                    return;
                }
            }
            _ = tokio::time::sleep_until(expiry.unwrap_or_else(tokio::time::Instant::now)), if expiry.is_some() => {
                let id = identity.as_ref().expect("an expiry only with an identity");
                if id.not_after >= unix_now() {
                    // tokio caps very long sleeps (about two years): re-arm.
                    expiry = Some(expiry_of(id));
                    continue;
                }
                collector.metrics.connections_cut.fetch_add(1, Relaxed);
                tracing::info!(%peer, "closing connection: certificate expired");
                return;
            }
            _ = shutdown.recv(), if !draining => {
                draining = true;
                conn.as_mut().graceful_shutdown();
            }
        }
    }
}

type Reply = Response<Full<Bytes>>;

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: String,
    code: &'a str,
    /// The limit a refusal is about, as a number an agent can adapt to (`too_many_new_streams`:
    /// `max_new_streams_per_batch`), so it need not parse the message.
    #[serde(skip_serializing_if = "Option::is_none")]
    limit: Option<usize>,
}

fn json<T: Serialize>(status: u16, body: &T) -> Reply {
    let bytes = serde_json::to_vec(body).expect("serialisable reply");
    Response::builder()
        .status(StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
        .header(CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(bytes)))
        .expect("valid response")
}

fn error(status: u16, code: &str, message: impl ToString) -> Reply {
    json(
        status,
        &ErrorBody {
            error: message.to_string(),
            code,
            limit: None,
        },
    )
}

fn text(status: u16, content_type: &str, body: String) -> Reply {
    Response::builder()
        .status(status)
        .header(CONTENT_TYPE, content_type)
        .body(Full::new(Bytes::from(body)))
        .expect("valid response")
}

async fn route(
    collector: &Arc<Collector>,
    identity: Option<&PeerIdentity>,
    source: IpAddr,
    req: Request<Incoming>,
) -> Reply {
    let path = req.uri().path().to_owned();
    match (req.method(), path.as_str()) {
        (&Method::GET, "/healthz") => text(200, "text/plain", "ok\n".into()),
        (&Method::GET, "/metrics") => {
            text(200, "text/plain; version=0.0.4", collector.metrics.render())
        }
        (&Method::POST, "/v1/enroll") => enroll(collector, source, req).await,
        (&Method::POST, "/v1/renew") => match authorize(collector, identity) {
            Ok(id) => renew(collector, id, source, req).await,
            Err(reply) => reply,
        },
        (&Method::POST, "/v1/ingest") => {
            let mut reply = match authorize(collector, identity) {
                Ok(id) => ingest(collector, id, req).await,
                Err(reply) => reply,
            };
            // An agent may have pipelined its next batch behind this one. After a refusal that
            // batch must not be stored: its records would raise the stream's high-water mark
            // over the refused ones, which would then count as duplicates when re-sent. So the
            // connection closes here, unread requests and all.
            if reply.status() != StatusCode::OK {
                reply
                    .headers_mut()
                    .insert(CONNECTION, HeaderValue::from_static("close"));
            }
            // What the agent may send next (its `compression = "auto"` reads this).
            reply.headers_mut().insert(
                hyper::header::ACCEPT_ENCODING,
                HeaderValue::from_static(crate::ingest::ACCEPTED_ENCODINGS),
            );
            reply
        }
        (_, "/healthz" | "/metrics" | "/v1/enroll" | "/v1/renew" | "/v1/ingest") => {
            error(405, "method_not_allowed", "method not allowed")
        }
        _ => error(404, "not_found", format!("no route {path}")),
    }
}

/// Routes other than enrol need a client certificate that is still valid
/// now (the connection may have been opened before a revoke or expiry).
// A reply is the natural error of a route guard; it is built once per
// refused request, so its size does not matter.
#[allow(clippy::result_large_err)]
fn authorize<'a>(
    collector: &Collector,
    identity: Option<&'a PeerIdentity>,
) -> Result<&'a PeerIdentity, Reply> {
    let Some(id) = identity else {
        return Err(error(
            401,
            "certificate_required",
            "this route needs a client certificate from this collector's CA (POST /v1/enroll first)",
        ));
    };
    if collector.revoked.borrow().contains(&id.serial) {
        return Err(error(403, "certificate_revoked", "certificate is revoked"));
    }
    if id.not_after < unix_now() {
        return Err(error(403, "certificate_expired", "certificate has expired"));
    }
    Ok(id)
}

/// Reads a whole (small) body into one `Vec`, sized up front from
/// Content-Length (which `Limited` caps at `limit`), so each frame is
/// copied once.
async fn read_body(
    req: Request<Incoming>,
    limit: usize,
    stall: Duration,
) -> Result<Vec<u8>, Reply> {
    let mut body = Limited::new(req.into_body(), limit);
    let expected = hyper::body::Body::size_hint(&body).lower();
    let mut out = Vec::with_capacity(usize::try_from(expected).unwrap_or(limit).min(limit));
    while let Some(data) = next_data(&mut body, limit as u64, stall).await? {
        out.extend_from_slice(&data);
    }
    Ok(out)
}

/// The body's next bytes, None at its end; the reply when it is too large,
/// broken, or silent for `stall` (`body_timeout_secs`: a client trickling
/// nothing holds no task, slot or descriptor for longer).
async fn next_data(
    body: &mut Limited<Incoming>,
    limit: u64,
    stall: Duration,
) -> Result<Option<Bytes>, Reply> {
    loop {
        let Ok(next) = tokio::time::timeout(stall, body.frame()).await else {
            let mut reply = error(
                408,
                "body_timeout",
                format!("no body bytes for {}s (body_timeout_secs)", stall.as_secs()),
            );
            reply
                .headers_mut()
                .insert(CONNECTION, HeaderValue::from_static("close"));
            return Err(reply);
        };
        match next {
            None => return Ok(None),
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    return Ok(Some(data));
                }
            }
            Some(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
                return Err(error(
                    413,
                    "too_large",
                    format!("body larger than {limit} bytes"),
                ))
            }
            Some(Err(e)) => return Err(error(400, "bad_body", format!("reading body: {e}"))),
        }
    }
}

/// Counts a batch in `batches_in_progress` while it lives.
struct InProgress(Arc<Metrics>);

impl InProgress {
    fn count(metrics: &Arc<Metrics>) -> InProgress {
        metrics.batches_in_progress.fetch_add(1, Relaxed);
        InProgress(Arc::clone(metrics))
    }
}

impl Drop for InProgress {
    fn drop(&mut self) {
        self.0.batches_in_progress.fetch_sub(1, Relaxed);
    }
}

/// A piece of an ingest body on its way to the worker parsing it; `End`
/// says the body arrived whole (without it the worker stores nothing).
enum Piece {
    Data(Vec<Bytes>),
    End,
}

/// Hands the body's frames to the worker in pieces of at least this much:
/// a wake-up per TLS record would cost more than the parsing it overlaps.
const PIECE: usize = 256 * 1024;

/// Reads the body and hands it over. Err is the reply when the body was too
/// large, broken, or stopped arriving for `stall`; Ok also when the worker
/// stopped taking it (its result says why).
async fn pump_body(
    mut body: Limited<Incoming>,
    limit: u64,
    stall: Duration,
    tx: mpsc::Sender<Piece>,
) -> Result<(), Reply> {
    let mut group = Vec::new();
    let mut size = 0;
    while let Some(data) = next_data(&mut body, limit, stall).await? {
        size += data.len();
        group.push(data);
        if size >= PIECE {
            size = 0;
            if tx
                .send(Piece::Data(std::mem::take(&mut group)))
                .await
                .is_err()
            {
                return Ok(());
            }
        }
    }
    if !group.is_empty() && tx.send(Piece::Data(group)).await.is_err() {
        return Ok(());
    }
    let _ = tx.send(Piece::End).await;
    Ok(())
}

/// The worker's side of the body: `Read` over the pieces as they come.
struct Pieces {
    rx: mpsc::Receiver<Piece>,
    queue: std::collections::VecDeque<Bytes>,
    ended: bool,
}

impl Pieces {
    fn new(rx: mpsc::Receiver<Piece>) -> Pieces {
        Pieces {
            rx,
            queue: Default::default(),
            ended: false,
        }
    }
}

impl std::io::BufRead for Pieces {
    fn fill_buf(&mut self) -> std::io::Result<&[u8]> {
        while self.queue.is_empty() && !self.ended {
            match self.rx.blocking_recv() {
                Some(Piece::Data(pieces)) => self
                    .queue
                    .extend(pieces.into_iter().filter(|b| !b.is_empty())),
                Some(Piece::End) => self.ended = true,
                None => return Err(std::io::Error::other(BodyCut)),
            }
        }
        Ok(self.queue.front().map_or(&[][..], |b| &b[..]))
    }

    fn consume(&mut self, n: usize) {
        if let Some(front) = self.queue.front_mut() {
            bytes::Buf::advance(front, n);
            if front.is_empty() {
                self.queue.pop_front();
            }
        }
    }
}

impl std::io::Read for Pieces {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        use std::io::BufRead;
        let chunk = self.fill_buf()?;
        let n = chunk.len().min(buf.len());
        buf[..n].copy_from_slice(&chunk[..n]);
        self.consume(n);
        Ok(n)
    }
}

/// Runs blocking work (argon2, fsync) off the async workers.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, Reply> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| error(500, "internal", format!("worker failed: {e}")))
}

fn enroll_error(collector: &Collector, e: EnrollError) -> Reply {
    match &e {
        EnrollError::RateLimited => {
            collector.metrics.enrol_rate_limited.fetch_add(1, Relaxed);
        }
        EnrollError::Busy => {
            collector.metrics.enrol_busy.fetch_add(1, Relaxed);
        }
        EnrollError::BadCredentials => {
            collector.metrics.enrol_failures.fetch_add(1, Relaxed);
        }
        EnrollError::Pki(_) | EnrollError::Db(_) => tracing::error!(error = %e, "enrolment failed"),
        _ => {}
    }
    let mut reply = error(e.status(), e.code(), &e);
    let retry_after = match e {
        EnrollError::RateLimited => Some(collector.config.rate_limit.window_secs),
        EnrollError::Busy => Some(2),
        _ => None,
    };
    if let Some(secs) = retry_after {
        reply
            .headers_mut()
            .insert(hyper::header::RETRY_AFTER, secs.into());
    }
    reply
}

async fn enroll(collector: &Arc<Collector>, source: IpAddr, req: Request<Incoming>) -> Reply {
    let stall = Duration::from_secs(collector.config.body_timeout_secs);
    let body = match read_unauthenticated_body(collector, req, stall).await {
        Ok(b) => b,
        Err(reply) => return reply,
    };
    let request: EnrollRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return error(400, "bad_json", format!("enrol request: {e}")),
    };
    let admitted = match collector.enroller.admit(source, &request.username).await {
        Ok(a) => a,
        Err(e) => return enroll_error(collector, e),
    };
    let c = Arc::clone(collector);
    match blocking(move || c.enroller.enroll(admitted, &request, source)).await {
        Ok(Ok(reply)) => {
            collector.metrics.enrolments.fetch_add(1, Relaxed);
            json(200, &reply)
        }
        Ok(Err(e)) => enroll_error(collector, e),
        Err(reply) => reply,
    }
}

/// [`read_body`] for a request anyone may send: the whole body must arrive
/// within `unauthenticated_timeout_secs` of its headers, however steadily
/// it trickles (a byte a second never trips `body_timeout_secs`).
async fn read_unauthenticated_body(
    collector: &Collector,
    req: Request<Incoming>,
    stall: Duration,
) -> Result<Vec<u8>, Reply> {
    let total = collector.config.unauthenticated_timeout_secs;
    match tokio::time::timeout(
        Duration::from_secs(total),
        read_body(req, MAX_SMALL_BODY, stall),
    )
    .await
    {
        Ok(read) => read,
        Err(_) => {
            let mut reply = error(
                408,
                "request_timeout",
                format!("request body not complete within {total}s (unauthenticated_timeout_secs)"),
            );
            reply
                .headers_mut()
                .insert(CONNECTION, HeaderValue::from_static("close"));
            Err(reply)
        }
    }
}

async fn renew(
    collector: &Arc<Collector>,
    id: &PeerIdentity,
    source: IpAddr,
    req: Request<Incoming>,
) -> Reply {
    let stall = Duration::from_secs(collector.config.body_timeout_secs);
    let body = match read_body(req, MAX_SMALL_BODY, stall).await {
        Ok(b) => b,
        Err(reply) => return reply,
    };
    let request: RenewRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return error(400, "bad_json", format!("renew request: {e}")),
    };
    let c = Arc::clone(collector);
    let (serial, host) = (id.serial.clone(), id.host.clone());
    match blocking(move || c.enroller.renew(&serial, &host, &request.csr, source)).await {
        Ok(Ok(reply)) => {
            collector.metrics.renewals.fetch_add(1, Relaxed);
            json(200, &reply)
        }
        Ok(Err(e)) => enroll_error(collector, e),
        Err(reply) => reply,
    }
}

/// Reply to an acknowledged batch.
#[derive(Serialize)]
struct IngestReply {
    /// Records in the batch.
    records: usize,
    /// Newly stored.
    stored: usize,
    /// At or below their stream's mark: acknowledged, not stored again.
    duplicates: usize,
}

#[derive(Debug, thiserror::Error)]
enum IngestFailure {
    #[error("certificate is revoked")]
    Revoked,
    #[error(transparent)]
    Ingest(#[from] IngestError),
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error(transparent)]
    Db(#[from] crate::db::DbError),
}

async fn ingest(collector: &Arc<Collector>, id: &PeerIdentity, req: Request<Incoming>) -> Reply {
    // Taken before the body is read: waiting senders hold no memory here.
    // The host's own permit first, so a host waiting on itself holds no
    // global slot.
    let Ok(_host_slot) = collector.host_slots(&id.host).acquire_owned().await else {
        return error(503, "shutting_down", "collector is shutting down");
    };
    let Ok(_slot) = collector.ingest_slots.acquire().await else {
        return error(503, "shutting_down", "collector is shutting down");
    };
    let _in_progress = InProgress::count(&collector.metrics);
    let limit = collector.config.max_batch_bytes;
    let encoding = req
        .headers()
        .get(CONTENT_ENCODING)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    // The body is read here and parsed on a blocking thread as it arrives.
    let body = Limited::new(req.into_body(), limit as usize);
    let sent = hyper::body::Body::size_hint(&body).lower();
    let (tx, rx) = mpsc::channel(4);
    let c = Arc::clone(collector);
    let (serial, host) = (id.serial.clone(), id.host.clone());
    let work = tokio::task::spawn_blocking(
        move || -> Result<(usize, usize, crate::storage::StoreOutcome), IngestFailure> {
            // The cached revoked set may be half a second old; the database
            // is not.
            if c.db.cert_state(&serial)? == CertState::Revoked {
                return Err(IngestFailure::Revoked);
            }
            // Records are written as their pieces are parsed, and cut back
            // off if the body fails later; durable and indexed only at the
            // commit.
            let mut writing = c.storage.begin(&host);
            let batch = read_batch_with(
                Pieces::new(rx),
                encoding.as_deref(),
                limit,
                sent,
                &host,
                |body, streams| writing.append(body, streams).map_err(IngestFailure::from),
            )?;
            writing.append(&batch.body, &batch.streams)?;
            let bytes = batch.body.len();
            let outcome = writing.commit()?;
            for alert in &outcome.alerts {
                c.metrics.alerts.fetch_add(1, Relaxed);
                tracing::warn!(host = %alert.host_id, stream = %alert.stream, offset = alert.at_offset, count = alert.count, "over-length streak");
                if let Err(e) = c.alert_log.write(alert) {
                    tracing::error!(error = %e, "cannot write alert");
                }
            }
            Ok((batch.record_count, bytes, outcome))
        },
    );
    let stall = Duration::from_secs(collector.config.body_timeout_secs);
    let pumped = pump_body(body, limit, stall, tx).await;
    let result = work
        .await
        .map_err(|e| error(500, "internal", format!("worker failed: {e}")));
    if let Err(reply) = pumped {
        // The worker saw the body cut short and stored nothing.
        collector.metrics.batches_refused.fetch_add(1, Relaxed);
        return reply;
    }
    let m = &collector.metrics;
    match result {
        Ok(Ok((records, bytes, outcome))) => {
            m.batches.fetch_add(1, Relaxed);
            m.records.fetch_add(records as u64, Relaxed);
            m.records_stored.fetch_add(outcome.stored as u64, Relaxed);
            m.duplicates.fetch_add(outcome.duplicates as u64, Relaxed);
            m.bytes.fetch_add(bytes as u64, Relaxed);
            json(
                200,
                &IngestReply {
                    records,
                    stored: outcome.stored,
                    duplicates: outcome.duplicates,
                },
            )
        }
        Ok(Err(e)) => {
            m.batches_refused.fetch_add(1, Relaxed);
            match e {
                IngestFailure::Revoked => {
                    error(403, "certificate_revoked", "certificate is revoked")
                }
                IngestFailure::Storage(e @ StorageError::TooManyNewStreams { limit, .. }) => {
                    tracing::info!(host = %id.host, error = %e, "batch refused");
                    json(
                        400,
                        &ErrorBody {
                            error: e.to_string(),
                            code: "too_many_new_streams",
                            limit: Some(limit),
                        },
                    )
                }
                IngestFailure::Ingest(e) => {
                    let code = match e.status() {
                        403 => "host_mismatch",
                        413 => "too_large",
                        415 => "unsupported_encoding",
                        _ => "bad_batch",
                    };
                    tracing::info!(host = %id.host, error = %e, "batch refused");
                    error(e.status(), code, e)
                }
                e => {
                    tracing::error!(host = %id.host, error = %e, "cannot store batch");
                    error(500, "storage", e)
                }
            }
        }
        Err(reply) => reply,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `serve` takes its listener and shutdown from the caller: bind port
    /// 0, serve, stop, and `serve` returns once connections are drained.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn serve_stops_when_told_and_drains_connections() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::new(dir.path());
        crate::pki::init(
            &layout.ca_cert(),
            &layout.ca_key(),
            &layout.server_cert(),
            &layout.server_key(),
            &["localhost".to_owned()],
        )
        .unwrap();
        Db::create(&layout.db()).unwrap();
        let server = Server::open(&layout, Config::default()).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(serve(listener, server, async {
            let _ = stopped.await;
        }));
        // A client that connects and never speaks is dropped on shutdown,
        // not waited for.
        let idle = tokio::net::TcpStream::connect(addr).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        stop.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("serve returned")
            .unwrap();
        drop(idle);
        assert!(
            tokio::net::TcpStream::connect(addr).await.is_err(),
            "listener closed"
        );
    }
}
