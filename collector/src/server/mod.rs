//! The HTTPS server: accepting connections, routing requests, and cutting
//! connections whose certificate is revoked or expires.
//!
//! [`serve`] takes its listener and shutdown signal from the caller, so
//! tests bind `127.0.0.1:0` and stop it cleanly. Shutdown is two steps:
//! every connection is told to finish (idle ones close at once), then
//! `serve` waits for the last one.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{broadcast, mpsc, watch};
use tokio_rustls::TlsAcceptor;

use crate::alerts::AlertLog;
use crate::config::{Config, Layout};
use crate::enroll::Enroller;
use crate::metrics::Metrics;
use crate::pki::Ca;
use crate::ratelimit::Limiter;
use crate::renew_limit::RenewLimit;
use crate::revoke::watch_revocations;
use crate::storage::{Store, StoreError};
use crate::tls::{make_server_config, RevokedSet};
use crate::verify::Verifier;

mod connection;
mod reply;
mod routes;
mod upload;

use connection::{connection, OpenConnections};

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
    Pki(#[from] crate::pki::PkiError),
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    AlertLog(#[from] crate::alerts::AlertLogError),
}

/// Everything a request handler may need, shared by all connections.
pub struct Collector {
    pub config: Config,
    /// Accounts, certificates, revocations, marks and records.
    pub store: Arc<dyn Store>,
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
    revoked_tx: watch::Sender<Arc<HashSet<String>>>,
}

impl Server {
    /// Loads the CA and the TLS config from `layout`, and opens the store
    /// `config` chooses.
    pub fn open(layout: &Layout, config: Config) -> Result<Server, OpenError> {
        let store = crate::storage::open(layout, &config)?;
        Server::with_store(layout, config, store)
    }

    /// Loads the CA and TLS config from `layout`, with state in `store`.
    pub fn with_store(
        layout: &Layout,
        config: Config,
        store: Arc<dyn Store>,
    ) -> Result<Server, OpenError> {
        let metrics = Arc::new(Metrics::default());
        let revoked_now = store.revoked_serials()?;
        let (revoked_tx, revoked) = watch::channel(Arc::new(revoked_now));
        let tls = make_server_config(
            &layout.ca_cert(),
            &layout.server_cert(),
            &layout.server_key(),
            Arc::clone(&store),
            revoked.clone(),
            Arc::clone(&metrics),
        )?;
        let enroller = Enroller {
            db: Arc::clone(&store),
            ca: Ca::load(&layout.ca_cert(), &layout.ca_key())?,
            limiter: Limiter::new(
                config.rate_limit.max_failures,
                Duration::from_secs(config.rate_limit.window_secs),
            ),
            verifier: Verifier::new(config.max_password_checks, Arc::clone(&metrics)),
            renewals: RenewLimit::new(
                config.rate_limit.max_renewals,
                Duration::from_secs(config.rate_limit.renewal_window_secs),
            ),
            cert_days: config.cert_days,
        };
        let alert_log = AlertLog::open(&layout.alerts_log())?;
        let ingest_slots = tokio::sync::Semaphore::new(config.max_concurrent_batches as usize);
        Ok(Server {
            collector: Arc::new(Collector {
                config,
                store,
                enroller,
                metrics,
                alert_log,
                revoked,
                ingest_slots,
                host_slots: Default::default(),
            }),
            acceptor: TlsAcceptor::from(Arc::new(tls)),
            revoked_tx,
        })
    }
}

/// Serves until `shutdown` completes, then drains open connections.
pub async fn serve(listener: TcpListener, server: Server, shutdown: impl Future<Output = ()>) {
    let (notify, _) = broadcast::channel::<()>(1);
    let (done_tx, mut done_rx) = mpsc::channel::<()>(1);
    let poller = tokio::spawn(watch_revocations(
        Arc::clone(&server.collector.store),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::Db;

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
