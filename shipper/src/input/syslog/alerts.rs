//! What the listeners report ([`Event`]) becomes log lines and rows of the store's `alerts`, on a
//! thread of its own: a sink that fails holds the pipeline thread, and that is exactly when a
//! full spool must still be alerted.

use super::listen::Event;
use crate::status::ListenerList;
use crate::store::{Alert, Store};
use std::sync::{mpsc, Arc, Mutex};

/// Runs until every sender of `events` is gone (the input and its listeners stopped).
pub fn spawn(
    events: mpsc::Receiver<Event>,
    store: Arc<Mutex<Store>>,
    listeners: ListenerList,
) -> std::thread::JoinHandle<()> {
    std::thread::Builder::new()
        .name("syslog-alerts".into())
        .spawn(move || {
            for e in events {
                let Some((kind, listener, detail)) = describe(&e) else {
                    continue;
                };
                tracing::warn!(%listener, kind, "{detail}");
                let source = listeners
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .iter()
                    .find(|c| c.listen == *listener)
                    .map(|c| c.source.clone());
                let a = Alert {
                    kind,
                    source,
                    stream: None,
                    path: Some(listener.to_string()),
                    // The listener leads the detail: it is what an operator greps for.
                    detail: format!("{listener}: {detail}"),
                };
                let st = store.lock().unwrap_or_else(|p| p.into_inner());
                if let Err(e) = st.add_alert(&a) {
                    tracing::error!(error = %e, "cannot record alert");
                }
            }
        })
        .expect("spawning a thread")
}

/// An event as (alert kind, listener, detail); `None` for what is only logged.
fn describe(e: &Event) -> Option<(&'static str, &str, String)> {
    Some(match e {
        Event::FramingError {
            listener,
            peer,
            error,
        } => (
            "syslog_framing",
            listener,
            format!("{peer}: {error}; connection closed (later ones from this address are only counted)"),
        ),
        Event::TlsRefused {
            listener,
            peer,
            error,
        } => (
            "syslog_tls_refused",
            listener,
            format!("{peer}: TLS handshake refused: {error}"),
        ),
        Event::ConnectionsFull { listener, max } => (
            "syslog_connections_full",
            listener,
            format!("max_connections ({max}) reached: new connections are closed"),
        ),
        Event::SpoolFull { listener } => (
            "syslog_spool_full",
            listener,
            "spool_max_bytes reached: TCP/TLS reads paused, UDP datagrams dropped, until the sink catches up".to_string(),
        ),
        Event::SpoolDrained { listener } => {
            tracing::info!(%listener, "syslog spool down to half of spool_max_bytes: the full episode is over");
            return None;
        }
        Event::SpoolWrite { listener, error } => (
            "syslog_spool_write",
            listener,
            format!("{error}; retried every second, connections wait"),
        ),
    })
}
