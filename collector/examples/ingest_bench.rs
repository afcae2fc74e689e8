//! Times the collector's ingest stages on generated agent-format NDJSON,
//! without TLS or HTTP in the way: `read_batch` (gunzip and parse), `parse_batch` and
//! storing through the `Store` trait into the embedded backend (into a temporary folder on /dev/shm, so the fsyncs are
//! nearly free and the figures show CPU, not the disk).
//!
//! ```text
//! cargo build --release -p log-sensor-collector --example ingest_bench
//! target/release/examples/ingest_bench [--mb 200] [--batch-mib 16] [--rounds 3] [--dir /dev/shm]
//!     [--streams 1] [--fields | --fields-via-serde]
//! ```
//!
//! `--fields` gives every record a nested `fields` object like a syslog
//! input's (facility, severity, peer, structured data). `--fields-via-serde`
//! spells that key `"fi\u0065lds"`, which the line scanner leaves to
//! serde_json: the same records read the way every record with `fields` was
//! before the scanner skipped nested values.
//!
//! `--streams N` spreads the records over N streams round-robin (so every
//! batch writes to all of them; past `max_open_stream_files`, 1024, the
//! store keeps closing and reopening files).
//!
//! Each stage runs on one thread, so wall time is CPU time. Figures are MB
//! (10^6 bytes) of decoded NDJSON per second; the best round is printed
//! with the others in brackets.

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use log_sensor_collector::config::{Config, Layout};
use log_sensor_collector::db::Db;
use log_sensor_collector::ingest::{parse_batch, read_batch, Batch};
use log_sensor_collector::storage::{Embedded, Store};

const HOST: &str = "bench-host";
const STREAM: &str = "3f2a9c0d4e5b6a71";

struct Args {
    mb: usize,
    batch_mib: usize,
    rounds: usize,
    dir: PathBuf,
    streams: u64,
    fields: Option<&'static str>,
}

fn args() -> Args {
    let mut a = Args {
        mb: 200,
        batch_mib: 16,
        rounds: 3,
        dir: PathBuf::from("/dev/shm"),
        streams: 1,
        fields: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "--fields" || flag == "--fields-via-serde" {
            a.fields = Some(match flag.as_str() {
                "--fields" => "fields",
                _ => r"fi\u0065lds",
            });
            continue;
        }
        let value = it.next().unwrap_or_else(|| panic!("{flag} wants a value"));
        match flag.as_str() {
            "--mb" => a.mb = value.parse().expect("--mb N"),
            "--batch-mib" => a.batch_mib = value.parse().expect("--batch-mib N"),
            "--rounds" => a.rounds = value.parse().expect("--rounds N"),
            "--dir" => a.dir = PathBuf::from(value),
            "--streams" => a.streams = value.parse().expect("--streams N"),
            _ => panic!("unknown flag {flag}"),
        }
    }
    a
}

/// One record as the agent writes it: the ~210-byte access-log message of
/// `bench/shipping_bench.py` (its quotes escaped), ~470 bytes in all.
fn record(out: &mut Vec<u8>, i: u64, offset: u64, streams: u64, fields: Option<&str>) -> u64 {
    let msg = format!(
        "2026-11-26T10:{:02}:{:02}.{:03}Z INFO [worker-{}] request id={i:010} method=GET path=/api/v1/items/{} status=200 bytes={} latency_ms={} ua=\\\"Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0\\\"",
        i / 60000 % 60,
        i / 1000 % 60,
        i % 1000,
        i % 8,
        i % 5000,
        i % 9000,
        i % 250,
    );
    let len = msg.len() as u64 - 2;
    write!(
        out,
        r#"{{"host":"{HOST}","source":"bench","stream":"{}","fingerprint":"00000000deadbeef","path":"/var/tmp/log-sensor-shipbench/logs/input.log","offset":{offset},"len":{len},"part":"whole","ts":"2026-11-26T10:00:00.000Z","msg":"{msg}""#,
        stream_name(i % streams, streams)
    )
    .expect("writing to a Vec");
    if let Some(key) = fields {
        write!(out, r#","{key}":"#).expect("writing to a Vec");
        out.extend_from_slice(br#"{"facility":"local4","severity":"info","hostname":"web-1","app_name":"nginx","procid":"812","structured_data":{"origin@32473":{"ip":"10.0.0.7","software":"nginx"}},"peer":"10.0.0.7:51514"}"#);
    }
    out.push(b'}');
    out.push(b'\n');
    len + 1
}

/// The id of stream `n` of `streams`.
fn stream_name(n: u64, streams: u64) -> String {
    match streams {
        1 => STREAM.to_owned(),
        _ => format!("{STREAM}-{n}"),
    }
}

/// Bodies of about `batch` bytes each, `total` bytes in all.
fn bodies(total: usize, batch: usize, streams: u64, fields: Option<&str>) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let (mut i, mut offset, mut made) = (0u64, 0u64, 0usize);
    while made < total {
        let mut body = Vec::with_capacity(batch + 1024);
        while body.len() < batch && made + body.len() < total {
            offset += record(&mut body, i, offset, streams, fields);
            i += 1;
        }
        made += body.len();
        out.push(body);
    }
    out
}

fn gzip(body: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(body).expect("gzip into a Vec");
    enc.finish().expect("gzip into a Vec")
}

/// Prints the best of `secs` as MB/s of `bytes`.
fn report(stage: &str, bytes: usize, secs: &[f64]) {
    let rate = |s: f64| bytes as f64 / 1e6 / s;
    let best = secs.iter().cloned().fold(f64::INFINITY, f64::min);
    let all: Vec<String> = secs.iter().map(|s| format!("{:.0}", rate(*s))).collect();
    println!(
        "{stage:<24} {:>7.0} MB/s  {:>6.3} s  [{}]",
        rate(best),
        best,
        all.join(" ")
    );
}

fn main() {
    let a = args();
    let batch = a.batch_mib << 20;
    let plain = bodies(a.mb * 1_000_000, batch, a.streams, a.fields);
    let bytes: usize = plain.iter().map(Vec::len).sum();
    let lines: usize = plain
        .iter()
        .map(|b| b.iter().filter(|c| **c == b'\n').count())
        .sum();
    println!(
        "{} bodies, {bytes} bytes, {lines} lines of {} bytes on average",
        plain.len(),
        bytes / lines.max(1)
    );
    let gz: Vec<Vec<u8>> = plain.iter().map(|b| gzip(b)).collect();
    let gz_bytes: usize = gz.iter().map(Vec::len).sum();
    println!("gzip (fast): {gz_bytes} bytes");

    let (mut t_gunzip, mut t_parse, mut t_store) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..a.rounds {
        let input = gz.clone();
        let t = Instant::now();
        for body in input {
            let batch = read_batch(&body[..], Some("gzip"), 64 << 20, body.len() as u64, HOST)
                .expect("gzip bodies read");
            std::hint::black_box(batch);
        }
        t_gunzip.push(t.elapsed().as_secs_f64());

        let input = plain.clone();
        let t = Instant::now();
        let batches: Vec<Batch> = input
            .into_iter()
            .map(|body| parse_batch(body, HOST).expect("bench lines parse"))
            .collect();
        t_parse.push(t.elapsed().as_secs_f64());

        let dir = tempfile::Builder::new()
            .prefix("ingest_bench")
            .tempdir_in(&a.dir)
            .expect("temporary folder");
        let layout = Layout::new(dir.path());
        Db::create(&layout.db()).expect("database");
        // The default open-file cap; no cap on new streams, which a
        // many-stream run creates all in its first batch.
        let config = Config {
            overlong_alert_after: 10,
            max_new_streams_per_batch: u32::MAX,
            ..Config::default()
        };
        let storage = Embedded::open(&layout, &config).expect("storage");
        let t = Instant::now();
        for b in &batches {
            let mut writing = storage.begin(HOST).expect("begin");
            writing.append(&b.body, &b.streams).expect("append");
            let o = writing.commit().expect("store");
            assert_eq!(o.stored, b.record_count);
        }
        t_store.push(t.elapsed().as_secs_f64());
        let stored: u64 = (0..a.streams)
            .map(|n| {
                let path = storage.stream_path(HOST, &stream_name(n, a.streams));
                std::fs::metadata(path).expect("stream file").len()
            })
            .sum();
        assert_eq!(stored as usize, bytes, "every line stored once");
    }
    report("read_batch, gzip (gunzip + parse)", bytes, &t_gunzip);
    report("parse_batch", bytes, &t_parse);
    report("store (Store trait, embedded)", bytes, &t_store);
    let sum = |v: &[f64]| v.iter().cloned().fold(f64::INFINITY, f64::min);
    report("parse + store", bytes, &[sum(&t_parse) + sum(&t_store)]);
}
