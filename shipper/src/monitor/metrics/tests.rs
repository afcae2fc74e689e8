use super::*;
use crate::status::*;
use std::collections::BTreeMap;

pub(crate) fn sample_status() -> Status {
    Status {
        host_id: "web\"1\"\\".into(),
        pid: 42,
        version: "0.1.0".into(),
        started_at: 1_800_000_000,
        uptime_secs: 75,
        config_path: "/etc/log-sensor/log-sensor.toml".into(),
        state_dir: "/var/lib/log-sensor".into(),
        sinks: Vec::new(),
        sink: SinkStatus {
            name: "default".into(),
            records: 0,
            batches: 0,
            kind: "file".into(),
            description: "file /tmp/out.ndjson".into(),
            state: "ok".into(),
            failing_since: None,
            last_ok: Some(1_800_000_070),
            errors: 3,
            retries: 2,
            last_error: None,
            current: None,
            failovers: 0,
        },
        sources: vec![SourceStatus {
            name: "app".into(),
            paths: vec!["/var/log/app/*.log".into()],
            origin: "file".into(),
            streams: 2,
            records_shipped: 1500,
            bytes_shipped: 90_000,
            bytes_read: 91_000,
            lag_bytes: 1000,
            overlong_records: 1,
        }],
        streams: vec![StreamStatus {
            stream: "4bd99001d40a1ea3".into(),
            source: "app".into(),
            path: "/var/log/app/a.log".into(),
            state: "open".into(),
            compressed: false,
            size: 91_000,
            read_offset: 91_000,
            committed_offset: 90_000,
            lag_bytes: 1000,
            records: 1500,
            overlong_records: 1,
            last_read: Some(1_800_000_070),
        }],
        alerts: vec![],
        counters: Counters {
            bytes_read: 91_000,
            records_read: 1510,
            records_shipped: 1500,
            bytes_shipped: 88_000,
            batches: 7,
            overlong_records: 1,
            open_files: 2,
            fingerprint_collisions: 0,
            truncations: 1,
            parked_files: 4,
            held_back: 5,
            partial_parks: 6,
            sink_errors: 3,
            sink_retries: 2,
            alerts_by_kind: BTreeMap::from([
                ("sink_error".to_string(), 1),
                ("odd \"kind\"\\\nx".to_string(), 2),
            ]),
        },
        store: StoreStatus {
            path: "/var/lib/log-sensor/store.db".into(),
            bytes: 65536,
            writable: true,
        },
        health: Health {
            ok: true,
            reason: None,
        },
        batch_latency: Histogram {
            buckets: LATENCY_BOUNDS
                .iter()
                .copied()
                .chain([f64::MAX])
                .zip([0, 1, 2, 3, 4, 5, 6, 7, 7, 7, 7])
                .collect(),
            sum: 1.25,
            count: 7,
        },
        listeners: vec![ListenerStatus {
            source: "net".into(),
            listen: "tcp://127.0.0.1:5514".into(),
            messages: 3,
            ..Default::default()
        }],
        transforms: vec![TransformStatus {
            name: "access".into(),
            kind: "regex".into(),
            records_in: 10,
            parse_failures: 2,
            seconds: 0.5,
            ..Default::default()
        }],
    }
}

#[test]
fn label_values_escape_backslash_quote_and_newline() {
    assert_eq!(escape_label(r#"a\b"c"#), r#"a\\b\"c"#);
    assert_eq!(escape_label("line1\nline2"), "line1\\nline2");
    assert_eq!(escape_label("plain é"), "plain é");
    assert_eq!(escape_help("a\\b\n\"q\""), "a\\\\b\\n\"q\"");
}

#[test]
fn floats_use_the_formats_spellings() {
    assert_eq!(float(f64::INFINITY), "+Inf");
    assert_eq!(float(f64::NEG_INFINITY), "-Inf");
    assert_eq!(float(f64::NAN), "NaN");
    assert_eq!(float(0.005), "0.005");
    assert_eq!(float(10.0), "10");
}

#[test]
fn every_family_has_help_and_type_once_and_its_samples_follow_it() {
    let text = render(&sample_status());
    let mut typed: Vec<(String, String)> = Vec::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let name = rest.split(' ').next().unwrap().to_string();
            assert!(name.starts_with("log_sensor_"), "{line}");
            current = Some(name);
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut it = rest.split(' ');
            let name = it.next().unwrap().to_string();
            assert_eq!(Some(&name), current.as_ref(), "TYPE right after its HELP");
            typed.push((name, it.next().unwrap().to_string()));
        } else {
            let family = current.as_ref().expect("a sample after a HELP");
            let sample = line.split(['{', ' ']).next().unwrap();
            let ok = sample == family
                || ["_bucket", "_sum", "_count"]
                    .iter()
                    .any(|s| sample == format!("{family}{s}"));
            assert!(ok, "{sample} outside its family {family}");
        }
    }
    let want: Vec<(String, String)> = FAMILIES
        .iter()
        .chain(super::super::listener_metrics::FAMILIES)
        .chain(super::super::transform_metrics::FAMILIES)
        .map(|(n, t)| (n.to_string(), t.to_string()))
        .collect();
    assert_eq!(typed, want, "FAMILIES lists what render writes, in order");
}

#[test]
fn values_and_labels_are_rendered_exactly() {
    let text = render(&sample_status());
    for line in [
        r#"log_sensor_build_info{version="0.1.0",host="web\"1\"\\"} 1"#,
        r#"log_sensor_source_records_shipped_total{source="app"} 1500"#,
        r#"log_sensor_source_lag_bytes{source="app"} 1000"#,
        "log_sensor_lag_bytes 1000",
        r#"log_sensor_alerts_total{kind="sink_error"} 1"#,
        r#"log_sensor_alerts_total{kind="odd \"kind\"\\\nx"} 2"#,
        "log_sensor_healthy 1",
        r#"log_sensor_sink_errors_total{sink="default",kind="file"} 3"#,
        "log_sensor_truncations_total 1",
        "log_sensor_parked_files 4",
        "log_sensor_held_back_total 5",
        "log_sensor_partial_parks_total 6",
        "log_sensor_store_bytes 65536",
        r#"log_sensor_batch_latency_seconds_bucket{le="0.005"} 0"#,
        r#"log_sensor_batch_latency_seconds_bucket{le="10"} 7"#,
        r#"log_sensor_batch_latency_seconds_bucket{le="+Inf"} 7"#,
        "log_sensor_batch_latency_seconds_sum 1.25",
        "log_sensor_batch_latency_seconds_count 7",
        "log_sensor_uptime_seconds 75",
        r#"log_sensor_transform_records_total{transform="access",type="regex"} 10"#,
        r#"log_sensor_transform_parse_failures_total{transform="access",type="regex"} 2"#,
        r#"log_sensor_transform_seconds_total{transform="access",type="regex"} 0.5"#,
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "missing line {line}\n{text}"
        );
    }
    assert!(text.ends_with('\n'));
}

#[test]
fn an_empty_histogram_still_has_its_inf_bucket() {
    let mut s = sample_status();
    s.batch_latency = Histogram::default();
    let text = render(&s);
    assert!(text.contains("log_sensor_batch_latency_seconds_bucket{le=\"+Inf\"} 0\n"));
    assert!(text.contains("log_sensor_batch_latency_seconds_count 0\n"));
}
