//! One client connection: its place under the connection limits, its
//! handshake, and cutting it when its certificate is revoked or expires.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::sync::{broadcast, mpsc};
use tokio_rustls::TlsAcceptor;

use super::routes::route;
use super::{Collector, HANDSHAKE_TIMEOUT, IDLE_TIMEOUT};
use crate::metrics::RefusedReason;
use crate::tls::PeerIdentity;
use log_sensor_common::clock::now_secs as unix_now;

/// Connections open, in all and per source address.
#[derive(Default)]
pub(super) struct OpenConnections {
    per_address: std::sync::Mutex<HashMap<IpAddr, u32>>,
}

/// A connection's place under the limits, given back when dropped.
pub(super) struct Admitted {
    open: Arc<OpenConnections>,
    collector: Arc<Collector>,
    from: IpAddr,
}

impl OpenConnections {
    /// A place for a connection from `from`, or None past `max_connections`
    /// or `max_connections_per_address`.
    pub(super) fn admit(
        self: &Arc<Self>,
        collector: &Arc<Collector>,
        from: IpAddr,
    ) -> Option<Admitted> {
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
pub(super) async fn connection(
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
