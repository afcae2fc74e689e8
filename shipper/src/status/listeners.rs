//! What network inputs' listeners report (today the syslog server's): counters the listener
//! threads bump, and the snapshot `status` and `/metrics` show, one per listener.

use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// The listeners running now, as status reads them (a reload may change the list).
pub type ListenerList = Arc<Mutex<Vec<Arc<ListenerCounters>>>>;

/// The network sources configured but listening on nothing (neither their new listeners nor
/// their previous ones could start after a reload), each as `NAME: why`: `/healthz` is
/// unhealthy while one is, since everything sent to it is lost.
pub type SilentList = Arc<Mutex<Vec<String>>>;

/// Live counters of one listener, shared by its threads and the status page.
#[derive(Debug, Default)]
pub struct ListenerCounters {
    pub source: String,
    /// The listener as configured: `tcp://127.0.0.1:5514`.
    pub listen: String,
    /// The store stream its spool is (`syslog:<source>:<listen>`).
    pub stream: String,
    /// Connections open now (TCP/TLS).
    pub connections: AtomicU64,
    pub accepted: AtomicU64,
    /// Connections closed at once because `max_connections` were open.
    pub refused: AtomicU64,
    /// TLS handshakes that failed (no or an unaccepted client certificate, not TLS, timeout).
    pub tls_failed: AtomicU64,
    /// Messages received and spooled (a cut message counts once).
    pub messages: AtomicU64,
    /// Bytes received from the network.
    pub bytes: AtomicU64,
    /// Messages longer than `max_message_bytes`, spooled as head and tail.
    pub cut: AtomicU64,
    /// Connections closed for a bad octet count or binary garbage.
    pub framing_errors: AtomicU64,
    /// UDP datagrams dropped because the spool was full.
    pub dropped: AtomicU64,
    /// Spool writes that failed (and were retried).
    pub spool_errors: AtomicU64,
    /// Bytes of spool segments on disk.
    pub spool_bytes: AtomicU64,
    /// The spool is at `spool_max_bytes`: reads paused, datagrams dropped.
    pub spool_full: AtomicBool,
    /// Spool offset up to which messages are durable.
    pub spool_end: AtomicU64,
    /// Spool offset up to which the sink has acknowledged (as last committed).
    pub spool_committed: AtomicU64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ListenerStatus {
    pub source: String,
    pub listen: String,
    pub stream: String,
    pub connections: u64,
    pub accepted: u64,
    pub refused: u64,
    pub tls_failed: u64,
    pub messages: u64,
    pub bytes: u64,
    pub cut: u64,
    pub framing_errors: u64,
    pub dropped: u64,
    pub spool_errors: u64,
    pub spool_bytes: u64,
    pub spool_full: bool,
    /// Spooled but not yet acknowledged by the sink: kept current during a sink outage too,
    /// when the store's stream row (updated with each batch) stands still.
    pub spool_lag_bytes: u64,
}

impl ListenerCounters {
    pub fn new(source: &str, listen: &str, stream: &str) -> ListenerCounters {
        ListenerCounters {
            source: source.into(),
            listen: listen.into(),
            stream: stream.into(),
            ..Default::default()
        }
    }

    /// Mirrors the spool's size, fullness and end (after a write or a reclaim).
    pub fn set_spool(&self, bytes: u64, full: bool, end: u64) {
        self.spool_bytes.store(bytes, Ordering::Relaxed);
        self.spool_full.store(full, Ordering::Relaxed);
        self.spool_end.store(end, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> ListenerStatus {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        ListenerStatus {
            source: self.source.clone(),
            listen: self.listen.clone(),
            stream: self.stream.clone(),
            connections: g(&self.connections),
            accepted: g(&self.accepted),
            refused: g(&self.refused),
            tls_failed: g(&self.tls_failed),
            messages: g(&self.messages),
            bytes: g(&self.bytes),
            cut: g(&self.cut),
            framing_errors: g(&self.framing_errors),
            dropped: g(&self.dropped),
            spool_errors: g(&self.spool_errors),
            spool_bytes: g(&self.spool_bytes),
            spool_full: self.spool_full.load(Ordering::Relaxed),
            spool_lag_bytes: g(&self.spool_end).saturating_sub(g(&self.spool_committed)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spool_lag_is_what_was_spooled_past_the_committed_offset() {
        let c = ListenerCounters::new(
            "net",
            "udp://127.0.0.1:5514",
            "syslog:net:udp://127.0.0.1:5514",
        );
        c.set_spool(4096, false, 1000);
        c.spool_committed.store(400, Ordering::Relaxed);
        assert_eq!(c.snapshot().spool_lag_bytes, 600);
        c.spool_committed.store(1000, Ordering::Relaxed);
        assert_eq!(c.snapshot().spool_lag_bytes, 0);
    }
}
