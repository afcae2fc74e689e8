//! `/metrics`: a [`Status`] in the Prometheus text exposition format, version 0.0.4.
//!
//! Per-source series come from the store (all time, as `status` shows them); the unlabelled
//! totals are this process's counters since it started. Streams get no series of their own: a
//! host may follow thousands of files, and one series per file would swamp a Prometheus server.

use crate::status::Status;
use std::fmt::Write;

/// The content type Prometheus asks for and expects back.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Every family `render` writes, for the README and the tests: (name, type).
pub const FAMILIES: &[(&str, &str)] = &[
    ("log_sensor_build_info", "gauge"),
    ("log_sensor_healthy", "gauge"),
    ("log_sensor_uptime_seconds", "gauge"),
    ("log_sensor_start_time_seconds", "gauge"),
    ("log_sensor_source_streams", "gauge"),
    ("log_sensor_source_records_shipped_total", "counter"),
    ("log_sensor_source_bytes_shipped_total", "counter"),
    ("log_sensor_source_bytes_read_total", "counter"),
    ("log_sensor_source_lag_bytes", "gauge"),
    ("log_sensor_source_overlong_records_total", "counter"),
    ("log_sensor_lag_bytes", "gauge"),
    ("log_sensor_records_read_total", "counter"),
    ("log_sensor_bytes_read_total", "counter"),
    ("log_sensor_records_shipped_total", "counter"),
    ("log_sensor_bytes_shipped_total", "counter"),
    ("log_sensor_batches_total", "counter"),
    ("log_sensor_overlong_records_total", "counter"),
    ("log_sensor_open_files", "gauge"),
    ("log_sensor_fingerprint_collisions_total", "counter"),
    ("log_sensor_truncations_total", "counter"),
    ("log_sensor_parked_files", "gauge"),
    ("log_sensor_held_back_total", "counter"),
    ("log_sensor_partial_parks_total", "counter"),
    ("log_sensor_sink_failing", "gauge"),
    ("log_sensor_sink_errors_total", "counter"),
    ("log_sensor_sink_retries_total", "counter"),
    ("log_sensor_sink_failovers_total", "counter"),
    ("log_sensor_sink_last_success_timestamp_seconds", "gauge"),
    ("log_sensor_sink_records_total", "counter"),
    ("log_sensor_sink_batches_total", "counter"),
    ("log_sensor_alerts_total", "counter"),
    ("log_sensor_store_bytes", "gauge"),
    ("log_sensor_store_writable", "gauge"),
    ("log_sensor_batch_latency_seconds", "histogram"),
];

/// One sample per sink, labelled `sink` (its name: `default` for `[sink]`) and `kind`.
fn sinks(m: &mut Exposition, s: &Status) {
    type Value = fn(&crate::status::SinkStatus) -> u64;
    let families: [(&str, &str, &str, Value); 7] = [
        (
            "log_sensor_sink_failing",
            "gauge",
            "1 while the sink is failing and batches are being retried.",
            |k| k.failing_since.is_some() as u64,
        ),
        (
            "log_sensor_sink_errors_total",
            "counter",
            "Failed sends to the sink since the agent started.",
            |k| k.errors,
        ),
        (
            "log_sensor_sink_retries_total",
            "counter",
            "Sends to the sink retried after a failure since the agent started.",
            |k| k.retries,
        ),
        (
            "log_sensor_sink_failovers_total",
            "counter",
            "Moves of a sink with several URLs to the next one after a failure since the agent started (0 with one URL).",
            |k| k.failovers,
        ),
        (
            "log_sensor_sink_last_success_timestamp_seconds",
            "gauge",
            "When the sink last acknowledged a batch, in Unix seconds (0: not yet).",
            |k| k.last_ok.unwrap_or(0).max(0) as u64,
        ),
        (
            "log_sensor_sink_records_total",
            "counter",
            "Records the sink acknowledged since the agent started (committed once every sink of their source has them).",
            |k| k.records,
        ),
        (
            "log_sensor_sink_batches_total",
            "counter",
            "Batches the sink acknowledged since the agent started.",
            |k| k.batches,
        ),
    ];
    // An older status (or a test's) may carry only `sink`.
    let all: Vec<&crate::status::SinkStatus> = if s.sinks.is_empty() {
        vec![&s.sink]
    } else {
        s.sinks.iter().collect()
    };
    for (name, kind, help, value) in families {
        m.family(name, kind, help);
        for k in &all {
            let sink = if k.name.is_empty() {
                crate::config::DEFAULT_SINK
            } else {
                &k.name
            };
            m.sample(name, &[("sink", sink), ("kind", &k.kind)], value(k));
        }
    }
}

/// Renders the whole exposition.
pub fn render(s: &Status) -> String {
    let mut m = Exposition::default();

    m.family(
        "log_sensor_build_info",
        "gauge",
        "Always 1; the labels say which agent this is.",
    );
    m.sample(
        "log_sensor_build_info",
        &[("version", &s.version), ("host", &s.host_id)],
        1,
    );
    m.single(
        "log_sensor_healthy",
        "gauge",
        "1 while reading and shipping work; 0 when the sink has failed past monitor.unhealthy_after or the store is unwritable (see /healthz for why).",
        s.health.ok as u64,
    );
    m.single(
        "log_sensor_uptime_seconds",
        "gauge",
        "Seconds since the agent started.",
        s.uptime_secs.max(0) as u64,
    );
    m.single(
        "log_sensor_start_time_seconds",
        "gauge",
        "When the agent started, in Unix seconds.",
        s.started_at.max(0) as u64,
    );

    type SourceField = fn(&crate::status::SourceStatus) -> u64;
    let per_source: [(&str, &str, &str, SourceField); 6] = [
        (
            "log_sensor_source_streams",
            "gauge",
            "Streams (files, and their rotated copies) the source has in the store.",
            |x| x.streams,
        ),
        (
            "log_sensor_source_records_shipped_total",
            "counter",
            "Records of the source acknowledged by the sink and committed, all time.",
            |x| x.records_shipped,
        ),
        (
            "log_sensor_source_bytes_shipped_total",
            "counter",
            "Bytes of the source's streams up to their committed offsets, all time.",
            |x| x.bytes_shipped,
        ),
        (
            "log_sensor_source_bytes_read_total",
            "counter",
            "Bytes of the source's streams read so far, all time.",
            |x| x.bytes_read,
        ),
        (
            "log_sensor_source_lag_bytes",
            "gauge",
            "Bytes written to the source's files but not yet committed.",
            |x| x.lag_bytes,
        ),
        (
            "log_sensor_source_overlong_records_total",
            "counter",
            "Records of the source longer than max_record_bytes (shipped as head and tail), all time.",
            |x| x.overlong_records,
        ),
    ];
    for (name, kind, help, field) in per_source {
        m.family(name, kind, help);
        for src in &s.sources {
            m.sample(name, &[("source", &src.name)], field(src));
        }
    }
    m.single(
        "log_sensor_lag_bytes",
        "gauge",
        "Bytes written to all followed files but not yet committed.",
        s.streams.iter().map(|x| x.lag_bytes).sum(),
    );

    let c = &s.counters;
    let totals: [(&str, &str, &str, u64); 12] = [
        (
            "log_sensor_records_read_total",
            "counter",
            "Records framed from the files since the agent started.",
            c.records_read,
        ),
        (
            "log_sensor_bytes_read_total",
            "counter",
            "Bytes read from the files since the agent started.",
            c.bytes_read,
        ),
        (
            "log_sensor_records_shipped_total",
            "counter",
            "Records acknowledged by the sink since the agent started.",
            c.records_shipped,
        ),
        (
            "log_sensor_bytes_shipped_total",
            "counter",
            "Record bytes acknowledged by the sink since the agent started.",
            c.bytes_shipped,
        ),
        (
            "log_sensor_batches_total",
            "counter",
            "Batches acknowledged by the sink since the agent started.",
            c.batches,
        ),
        (
            "log_sensor_overlong_records_total",
            "counter",
            "Records longer than max_record_bytes since the agent started.",
            c.overlong_records,
        ),
        (
            "log_sensor_open_files",
            "gauge",
            "Files the agent holds open.",
            c.open_files,
        ),
        (
            "log_sensor_fingerprint_collisions_total",
            "counter",
            "Live files whose head matched another stream's fingerprint, since the agent started.",
            c.fingerprint_collisions,
        ),
        (
            "log_sensor_truncations_total",
            "counter",
            "Files truncated or rewritten under the reader (read again from 0), since the agent started.",
            c.truncations,
        ),
        (
            "log_sensor_parked_files",
            "gauge",
            "Followed files whose descriptor is closed until they change (close_inactive, or room made under max_open_files).",
            c.parked_files,
        ),
        (
            "log_sensor_held_back_total",
            "counter",
            "Times files had to wait because every open-file slot was taken, since the agent started.",
            c.held_back,
        ),
        (
            "log_sensor_partial_parks_total",
            "counter",
            "Streams parked to keep partial lines under discovery.max_partial_bytes, since the agent started.",
            c.partial_parks,
        ),
    ];
    for (name, kind, help, value) in totals {
        m.single(name, kind, help, value);
    }
    sinks(&mut m, s);

    m.family(
        "log_sensor_alerts_total",
        "counter",
        "Alerts raised, by kind, all time (the store's alerts table).",
    );
    for (kind, n) in &c.alerts_by_kind {
        m.sample("log_sensor_alerts_total", &[("kind", kind)], *n);
    }

    m.single(
        "log_sensor_store_bytes",
        "gauge",
        "Size of the store: store.db and its write-ahead log.",
        s.store.bytes,
    );
    m.single(
        "log_sensor_store_writable",
        "gauge",
        "1 while offsets commit to the store; 0 when commits fail.",
        s.store.writable as u64,
    );

    let h = &s.batch_latency;
    let name = "log_sensor_batch_latency_seconds";
    m.family(
        name,
        "histogram",
        "Seconds from a batch's first record to the sink's acknowledgement.",
    );
    let mut inf_written = false;
    for &(bound, count) in &h.buckets {
        let le = if bound >= f64::MAX {
            inf_written = true;
            "+Inf".to_string()
        } else {
            float(bound)
        };
        m.sample_raw(
            &format!("{name}_bucket"),
            &[("le", &le)],
            &count.to_string(),
        );
    }
    // The format requires a +Inf bucket equal to the count, even before the first batch.
    if !inf_written {
        m.sample(&format!("{name}_bucket"), &[("le", "+Inf")], h.count);
    }
    m.sample_raw(&format!("{name}_sum"), &[], &float(h.sum));
    m.sample(&format!("{name}_count"), &[], h.count);

    super::listener_metrics::render(&mut m, &s.listeners);
    super::transform_metrics::render(&mut m, &s.transforms);
    m.text
}

#[derive(Default)]
pub(super) struct Exposition {
    text: String,
}

impl Exposition {
    pub(super) fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.text, "# HELP {name} {}", escape_help(help));
        let _ = writeln!(self.text, "# TYPE {name} {kind}");
    }

    fn single(&mut self, name: &str, kind: &str, help: &str, value: u64) {
        self.family(name, kind, help);
        self.sample(name, &[], value);
    }

    pub(super) fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: u64) {
        let mut buf = itoa::Buffer::new();
        self.sample_raw(name, labels, buf.format(value));
    }

    pub(super) fn sample_raw(&mut self, name: &str, labels: &[(&str, &str)], value: &str) {
        self.text.push_str(name);
        if !labels.is_empty() {
            self.text.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.text.push(',');
                }
                let _ = write!(self.text, "{k}=\"{}\"", escape_label(v));
            }
            self.text.push('}');
        }
        self.text.push(' ');
        self.text.push_str(value);
        self.text.push('\n');
    }
}

/// Label values escape backslash, double quote and line feed.
pub fn escape_label(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for ch in v.chars() {
        match ch {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// HELP text escapes backslash and line feed (a double quote stays as it is).
pub fn escape_help(v: &str) -> String {
    v.replace('\\', "\\\\").replace('\n', "\\n")
}

/// Floats as the format spells them: `+Inf`, `-Inf`, `NaN`, otherwise Go-parsable decimals.
pub fn float(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v == f64::INFINITY {
        "+Inf".into()
    } else if v == f64::NEG_INFINITY {
        "-Inf".into()
    } else {
        format!("{v}")
    }
}

#[cfg(test)]
pub(crate) mod tests;
