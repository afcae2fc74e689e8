//! `log-sensor check`: the config validated as `run` reads it, then every sink checked as `run`
//! opens it, without opening anything: a config that `check` passes is one `run` starts with.
//! A collector sink with no identity yet (nothing enrolled, no `sink.cert`/`sink.key` or
//! `--cert`/`--key`) is where the two parted: `run` refuses to start, naming the sink and
//! `log-sensor enroll`, and `check` said ok.

use crate::cert_args::CertArgs;
use std::path::Path;
use std::process::ExitCode;

pub fn check(path: &Path, cert: &CertArgs) -> anyhow::Result<ExitCode> {
    let cfg = cert.load(path)?.resolve()?;
    // Every sink that would not start, where `run` stops at the first: one pass tells all.
    let refused: Vec<_> = cfg
        .sinks
        .iter()
        .filter_map(|n| log_sensor::sink::check(n).err())
        .collect();
    if !refused.is_empty() {
        for e in &refused {
            eprintln!("log-sensor: {e}");
        }
        return Ok(ExitCode::FAILURE);
    }
    println!(
        "{}: ok ({} source(s), state dir {}, {})",
        path.display(),
        cfg.sources.len() + cfg.syslog_sources.len(),
        cfg.state_dir.display(),
        log_sensor::sink::describe_all(&cfg.sinks)
    );
    Ok(ExitCode::SUCCESS)
}
