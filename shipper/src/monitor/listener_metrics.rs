//! `/metrics` for network listeners (the syslog server input): one series per listener,
//! labelled with its source and `listen` URL. Listeners are few and configured, unlike streams,
//! so a series each is bounded; per sending host there are none (senders are unbounded).

use super::metrics::Exposition;
use crate::status::ListenerStatus;

/// The families [`render`] writes, in order (after those of [`super::metrics::FAMILIES`]).
pub const FAMILIES: &[(&str, &str)] = &[
    ("log_sensor_listener_connections", "gauge"),
    ("log_sensor_listener_connections_total", "counter"),
    ("log_sensor_listener_refused_connections_total", "counter"),
    ("log_sensor_listener_tls_failures_total", "counter"),
    ("log_sensor_listener_messages_total", "counter"),
    ("log_sensor_listener_bytes_total", "counter"),
    ("log_sensor_listener_cut_messages_total", "counter"),
    ("log_sensor_listener_framing_errors_total", "counter"),
    ("log_sensor_listener_dropped_total", "counter"),
    ("log_sensor_listener_spool_errors_total", "counter"),
    ("log_sensor_listener_spool_bytes", "gauge"),
    ("log_sensor_listener_spool_full", "gauge"),
    ("log_sensor_listener_spool_lag_bytes", "gauge"),
];

type Field = fn(&ListenerStatus) -> u64;

const HELP: [(&str, Field); 13] = [
    ("TCP/TLS connections open now.", |l| l.connections),
    (
        "TCP/TLS connections accepted since the agent started.",
        |l| l.accepted,
    ),
    (
        "Connections closed because max_connections were open.",
        |l| l.refused,
    ),
    (
        "TLS handshakes refused (no or an unaccepted client certificate, not TLS, timeout).",
        |l| l.tls_failed,
    ),
    (
        "Messages received and written to the spool since the agent started.",
        |l| l.messages,
    ),
    (
        "Bytes received from the network since the agent started.",
        |l| l.bytes,
    ),
    (
        "Messages longer than max_message_bytes, spooled as head and tail.",
        |l| l.cut,
    ),
    (
        "Connections closed for a bad octet count or binary garbage.",
        |l| l.framing_errors,
    ),
    (
        "UDP datagrams dropped because the spool was full (spool_max_bytes).",
        |l| l.dropped,
    ),
    (
        "Spool writes that failed and were retried (a full disk).",
        |l| l.spool_errors,
    ),
    (
        "Bytes of the listener's spool on disk (delivered segments are deleted).",
        |l| l.spool_bytes,
    ),
    (
        "1 while the spool is full: TCP/TLS reads paused, UDP dropped.",
        |l| l.spool_full as u64,
    ),
    ("Bytes spooled but not yet acknowledged by the sink.", |l| {
        l.spool_lag_bytes
    }),
];

pub(super) fn render(m: &mut Exposition, listeners: &[ListenerStatus]) {
    for ((name, kind), (help, field)) in FAMILIES.iter().zip(HELP) {
        m.family(name, kind, help);
        for l in listeners {
            m.sample(
                name,
                &[("source", &l.source), ("listener", &l.listen)],
                field(l),
            );
        }
    }
}
