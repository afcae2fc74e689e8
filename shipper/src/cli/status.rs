//! `log-sensor status`: the running agent's state, as a table for people or as JSON.

use super::reach::{Agent, EXIT_NOT_RUNNING};
use anyhow::Context;
use log_sensor::control::{ClientError, Request};
use std::path::Path;
use std::process::ExitCode;

/// A line of the table: what the agent reports (a file's name, an error, an alert's detail)
/// cannot break it into lines of its own.
macro_rules! say {
    ($($t:tt)*) => {
        println!("{}", log_sensor_common::one_line::escape_controls(&format!($($t)*)))
    };
}

pub fn status(path: &Path, json: bool) -> anyhow::Result<ExitCode> {
    let agent = Agent::locate(path)?;
    agent.warn_if_invalid();
    let req = Request {
        cmd: "status".into(),
        key: None,
        value: None,
    };
    let resp = match agent.call(&req) {
        Ok(r) => r,
        Err(ClientError::NotRunning(_)) => {
            if json {
                println!("{}", serde_json::json!({"running": false}));
            } else {
                println!(
                    "log-sensor is not running (state dir {})",
                    agent.state_dir.display()
                );
            }
            for pid in log_sensor::agent::peers::others_with_config(path) {
                eprintln!(
                    "log-sensor: but pid {pid} runs with this config on the state dir the file named when it started (state_dir was changed since): `stop` stops it"
                );
            }
            return Ok(ExitCode::from(EXIT_NOT_RUNNING));
        }
        Err(e) => return Err(e.into()),
    };
    let st = resp.status.context("the agent sent no status")?;
    if json {
        println!("{}", serde_json::to_string_pretty(&st)?);
        return Ok(ExitCode::SUCCESS);
    }
    say!(
        "log-sensor {} on {}: running (pid {}, up {})",
        st.version,
        st.host_id,
        st.pid,
        human_secs(st.uptime_secs)
    );
    say!("config {}  state dir {}", st.config_path, st.state_dir);
    let last_ok = st
        .sink
        .last_ok
        .map(|t| {
            format!(
                ", last delivery {} ago",
                human_secs(log_sensor::store::now_secs() - t)
            )
        })
        .unwrap_or_default();
    say!("sink {} ({}{last_ok})", st.sink.description, st.sink.state);
    if let Some(now) = &st.sink.current {
        say!("  sending to {now} ({} failovers)", st.sink.failovers);
    }
    if let Some(e) = &st.sink.last_error {
        if st.sink.state != "ok" {
            say!("  last error: {e}");
        }
    }
    if st.sinks.len() > 1 {
        print_sinks(&st.sinks);
    }
    say!(
        "health: {}",
        if st.health.ok {
            "ok".to_string()
        } else {
            format!(
                "UNHEALTHY: {}",
                st.health.reason.clone().unwrap_or_default()
            )
        }
    );
    println!("\nsources:");
    for s in &st.sources {
        say!(
            "  {:<16} {:>4} stream(s)  lag {:>10}  {:>10} records shipped  [{}]",
            s.name,
            s.streams,
            human_bytes(s.lag_bytes),
            s.records_shipped,
            s.origin
        );
    }
    if !st.listeners.is_empty() {
        println!("\nlisteners:");
        for l in &st.listeners {
            say!(
                "  {:<28} {:>5} conn  {:>10} msgs  {:>10} in  spool {:>10}{}  dropped {}  framing errors {}  tls refused {}",
                l.listen,
                l.connections,
                l.messages,
                human_bytes(l.bytes),
                human_bytes(l.spool_bytes),
                if l.spool_full { " FULL" } else { "" },
                l.dropped,
                l.framing_errors,
                l.tls_failed,
            );
        }
    }
    if !st.transforms.is_empty() {
        println!("\ntransforms:");
        for t in &st.transforms {
            say!(
                "  {:<16} {:<7} {:>10} in  {:>8} dropped  {:>8} unparsed  {:>8} errors  {:.3}s",
                t.name,
                t.kind,
                t.records_in,
                t.dropped,
                t.parse_failures,
                t.errors,
                t.seconds,
            );
        }
    }
    println!("\nstreams:");
    for s in &st.streams {
        say!(
            "  {:<10} lag {:>10}  {:>10} records  {}",
            s.state,
            human_bytes(s.lag_bytes),
            s.records,
            s.path
        );
    }
    if !st.alerts.is_empty() {
        println!("\nrecent alerts:");
        for a in st.alerts.iter().take(10) {
            say!(
                "  {} {:<22} {} {}",
                log_sensor_common::record::rfc3339_ms(a.time * 1000),
                a.kind,
                a.path.clone().unwrap_or_default(),
                a.detail
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// One line per named sink, the failing ones with their error.
fn print_sinks(sinks: &[log_sensor::status::SinkStatus]) {
    for s in sinks {
        say!(
            "  sink {}: {} ({}, {} records delivered, {} errors)",
            s.name,
            s.description,
            s.state,
            s.records,
            s.errors
        );
        if let Some(now) = &s.current {
            say!("    sending to {now} ({} failovers)", s.failovers);
        }
        if let (Some(e), false) = (&s.last_error, s.state == "ok") {
            say!("    last error: {e}");
        }
    }
}

fn human_secs(s: i64) -> String {
    match s {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m{:02}s", s / 60, s % 60),
        s => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

fn human_bytes(b: u64) -> String {
    match b {
        b if b < 1 << 10 => format!("{b} B"),
        b if b < 1 << 20 => format!("{:.1} KiB", b as f64 / 1024.0),
        b if b < 1 << 30 => format!("{:.1} MiB", b as f64 / 1048576.0),
        b => format!("{:.1} GiB", b as f64 / 1073741824.0),
    }
}
