//! Counters behind `/metrics`, rendered as Prometheus text.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Why a TLS handshake was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefusedReason {
    Revoked,
    Expired,
    UnknownCa,
    UnknownSerial,
    BadCertificate,
    Protocol,
}

impl RefusedReason {
    const ALL: [RefusedReason; 6] = [
        RefusedReason::Revoked,
        RefusedReason::Expired,
        RefusedReason::UnknownCa,
        RefusedReason::UnknownSerial,
        RefusedReason::BadCertificate,
        RefusedReason::Protocol,
    ];
    pub fn label(self) -> &'static str {
        match self {
            RefusedReason::Revoked => "revoked",
            RefusedReason::Expired => "expired",
            RefusedReason::UnknownCa => "unknown_ca",
            RefusedReason::UnknownSerial => "unknown_serial",
            RefusedReason::BadCertificate => "bad_certificate",
            RefusedReason::Protocol => "protocol",
        }
    }
}

/// Every counter the collector exports; plain atomics, bumped from any
/// task.
#[derive(Debug, Default)]
pub struct Metrics {
    pub batches: AtomicU64,
    pub batches_refused: AtomicU64,
    pub records: AtomicU64,
    pub records_stored: AtomicU64,
    pub bytes: AtomicU64,
    pub duplicates: AtomicU64,
    refused: [AtomicU64; 6],
    pub enrolments: AtomicU64,
    pub renewals: AtomicU64,
    pub enrol_failures: AtomicU64,
    pub enrol_rate_limited: AtomicU64,
    /// Enrolments refused because no room or no password check came free
    /// in time (429 `busy`).
    pub enrol_busy: AtomicU64,
    /// Renewals refused by the per-host renewal limit (429 `rate_limited`).
    pub renew_rate_limited: AtomicU64,
    /// A gauge: argon2 password checks running now.
    pub password_checks: AtomicU64,
    /// A gauge: the most password checks that ever ran at once (bounded by
    /// `max_password_checks`; shows the bound holds under a burst).
    pub password_checks_peak: AtomicU64,
    pub alerts: AtomicU64,
    pub connections_cut: AtomicU64,
    /// A gauge: ingest batches holding a slot (being read or stored).
    pub batches_in_progress: AtomicU64,
    /// A gauge: client connections open.
    pub connections_open: AtomicU64,
    pub connections_refused: AtomicU64,
}

impl Metrics {
    pub fn refused(&self, reason: RefusedReason) {
        let i = RefusedReason::ALL
            .iter()
            .position(|r| *r == reason)
            .expect("listed");
        self.refused[i].fetch_add(1, Relaxed);
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        let mut counter = |name: &str, help: &str, v: &AtomicU64| {
            let _ = writeln!(out, "# HELP log_sensor_collector_{name} {help}");
            let _ = writeln!(out, "# TYPE log_sensor_collector_{name} counter");
            let _ = writeln!(out, "log_sensor_collector_{name} {}", v.load(Relaxed));
        };
        counter(
            "batches_total",
            "Ingest batches acknowledged.",
            &self.batches,
        );
        counter(
            "batches_refused_total",
            "Ingest batches refused.",
            &self.batches_refused,
        );
        counter(
            "records_total",
            "Records received in acknowledged batches.",
            &self.records,
        );
        counter(
            "records_stored_total",
            "Records written to storage.",
            &self.records_stored,
        );
        counter(
            "bytes_total",
            "Decoded ingest body bytes received.",
            &self.bytes,
        );
        counter(
            "duplicates_dropped_total",
            "Re-sent records acknowledged but not stored again.",
            &self.duplicates,
        );
        counter(
            "enrolments_total",
            "Certificates issued by /v1/enroll.",
            &self.enrolments,
        );
        counter(
            "renewals_total",
            "Certificates issued by /v1/renew.",
            &self.renewals,
        );
        counter(
            "enrol_failures_total",
            "Enrolments refused for bad credentials.",
            &self.enrol_failures,
        );
        counter(
            "enrol_rate_limited_total",
            "Enrolments refused by the failure rate limit.",
            &self.enrol_rate_limited,
        );
        counter(
            "enrol_busy_total",
            "Enrolments refused because password checks stayed busy.",
            &self.enrol_busy,
        );
        counter(
            "renew_rate_limited_total",
            "Renewals refused by the per-host renewal limit.",
            &self.renew_rate_limited,
        );
        counter(
            "alerts_total",
            "Over-length streak alerts raised.",
            &self.alerts,
        );
        counter(
            "connections_cut_total",
            "Open connections closed after revocation or expiry.",
            &self.connections_cut,
        );
        counter(
            "connections_refused_total",
            "Connections closed on arrival: max_connections or max_connections_per_address reached.",
            &self.connections_refused,
        );
        let _ = writeln!(
            out,
            "# HELP log_sensor_collector_batches_in_progress Ingest batches being read or stored now.\n\
             # TYPE log_sensor_collector_batches_in_progress gauge\n\
             log_sensor_collector_batches_in_progress {}\n\
             # HELP log_sensor_collector_connections_open Client connections open now.\n\
             # TYPE log_sensor_collector_connections_open gauge\n\
             log_sensor_collector_connections_open {}\n\
             # HELP log_sensor_collector_password_checks Password checks (argon2id) running now.\n\
             # TYPE log_sensor_collector_password_checks gauge\n\
             log_sensor_collector_password_checks {}\n\
             # HELP log_sensor_collector_password_checks_peak Most password checks that ran at once since the start.\n\
             # TYPE log_sensor_collector_password_checks_peak gauge\n\
             log_sensor_collector_password_checks_peak {}",
            self.batches_in_progress.load(Relaxed),
            self.connections_open.load(Relaxed),
            self.password_checks.load(Relaxed),
            self.password_checks_peak.load(Relaxed)
        );
        let _ = writeln!(out, "# HELP log_sensor_collector_refused_handshakes_total TLS handshakes refused, by reason.");
        let _ = writeln!(
            out,
            "# TYPE log_sensor_collector_refused_handshakes_total counter"
        );
        for (reason, v) in RefusedReason::ALL.iter().zip(&self.refused) {
            let _ = writeln!(
                out,
                "log_sensor_collector_refused_handshakes_total{{reason=\"{}\"}} {}",
                reason.label(),
                v.load(Relaxed)
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_sample_with_a_type() {
        let m = Metrics::default();
        m.refused(RefusedReason::Revoked);
        m.batches.fetch_add(2, Relaxed);
        let text = m.render();
        assert!(text.contains("log_sensor_collector_batches_total 2\n"));
        assert!(
            text.contains("log_sensor_collector_refused_handshakes_total{reason=\"revoked\"} 1\n")
        );
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let (_, value) = line.rsplit_once(' ').unwrap();
            value.parse::<f64>().unwrap();
        }
    }
}
