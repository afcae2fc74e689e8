//! Revocation: the `revoke` command's effect on the store, and the server
//! side that turns it into refused handshakes and cut connections.
//!
//! `revoke` runs in its own process and only writes the store (the
//! embedded `certs.revoked_at`, or the cluster's accounts stream). Every
//! `serve` sees it two ways: the TLS verifier asks the store on every
//! handshake (new connections refused at once), and
//! [`watch_revocations`] polls the revoked serials every
//! [`POLL_INTERVAL`] and publishes them, so each open connection whose
//! certificate appears closes itself.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{broadcast, watch};

use crate::db::CertRow;
use crate::storage::{Store, StoreError};
use log_sensor_common::clock::now_secs as unix_now;

pub const POLL_INTERVAL: Duration = Duration::from_millis(500);

/// Marks the certificate with serial `target` (hex, colons allowed), or
/// else every certificate of host `target`, as revoked.
pub fn revoke(store: &dyn Store, target: &str) -> Result<Vec<CertRow>, StoreError> {
    store.revoke(target, unix_now())
}

/// Publishes the revoked set until `shutdown` fires.
pub async fn watch_revocations(
    store: Arc<dyn Store>,
    tx: watch::Sender<Arc<HashSet<String>>>,
    mut shutdown: broadcast::Receiver<()>,
) {
    let mut tick = tokio::time::interval(POLL_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.recv() => return,
        }
        let store = Arc::clone(&store);
        match tokio::task::spawn_blocking(move || store.revoked_serials()).await {
            Ok(Ok(set)) => {
                tx.send_if_modified(|current| {
                    if **current == set {
                        false
                    } else {
                        *current = Arc::new(set);
                        true
                    }
                });
            }
            Ok(Err(e)) => tracing::warn!(error = %e, "cannot poll revocations"),
            Err(e) => tracing::warn!(error = %e, "revocation poll task failed"),
        }
    }
}
