//! Other agents running with the same config file, found in /proc.
//!
//! The state dir's lock keeps two agents off one store, not off one config. An edit of
//! `state_dir` under a running agent (its reload refuses the change) left the CLI looking for
//! that agent in the new state dir: `stop` and `status` said "not running" and `start` ran a
//! second agent there, so every file was shipped twice from then on. The running agent's own
//! command line says which file it runs with, and that is looked at here rather than a record
//! it leaves somewhere: the packaged unit lets the agent write only its state dir.

use std::ffi::OsString;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

/// The pids of the other `log-sensor … run` processes whose config file is `config` (the same
/// file however each names it). Processes whose folder or environment this user may not read
/// are judged by what can be read; others' agents are not ours to find.
pub fn others_with_config(config: &Path) -> Vec<u32> {
    let Ok(mine) = config.canonicalize() else {
        return Vec::new();
    };
    let me = std::process::id();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut found: Vec<u32> = procs
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid != me)
        .filter(|&pid| config_of(pid).is_some_and(|c| c == mine))
        .collect();
    found.sort_unstable();
    found
}

/// The config file of process `pid` when it is a running agent, resolved as it resolved it.
fn config_of(pid: u32) -> Option<PathBuf> {
    let dir = PathBuf::from(format!("/proc/{pid}"));
    let cmdline = std::fs::read(dir.join("cmdline")).ok()?;
    let args: Vec<OsString> = cmdline
        .split(|&b| b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| OsString::from_vec(a.to_vec()))
        .collect();
    let named = args.first().map(Path::new)?.file_name()?.as_bytes();
    if !named.starts_with(b"log-sensor") || named.starts_with(b"log-sensor-") {
        return None;
    }
    let (runs, given) = parse_args(&args[1..]);
    if !runs {
        return None;
    }
    let path = match given {
        Some(p) => p,
        None => env_config(&dir)
            .unwrap_or_else(|| PathBuf::from(log_sensor_common::agent_defaults::CONFIG_PATH)),
    };
    let path = if path.is_relative() {
        std::fs::read_link(dir.join("cwd")).ok()?.join(path)
    } else {
        path
    };
    path.canonicalize().ok()
}

/// Whether the arguments (after the program) run the agent, and the config they name, as clap
/// reads them: `-c PATH`, `-cPATH`, `--config PATH`, `--config=PATH`.
fn parse_args(args: &[OsString]) -> (bool, Option<PathBuf>) {
    let mut given = None;
    let mut runs = false;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let b = a.as_bytes();
        if b == b"-c" || b == b"--config" {
            given = it.next().map(PathBuf::from);
        } else if let Some(v) = b.strip_prefix(b"--config=") {
            given = Some(PathBuf::from(std::ffi::OsStr::from_bytes(v)));
        } else if let Some(v) = b.strip_prefix(b"-c").filter(|v| !v.is_empty()) {
            given = Some(PathBuf::from(std::ffi::OsStr::from_bytes(v)));
        } else if b == b"--cert" || b == b"--key" {
            // Their values are paths, never the subcommand.
            it.next();
        } else if b == b"run" {
            runs = true;
        }
    }
    (runs, given)
}

/// The config path the process was given in its environment, when this user may read it.
fn env_config(dir: &Path) -> Option<PathBuf> {
    let environ = std::fs::read(dir.join("environ")).ok()?;
    let key = format!("{}=", log_sensor_common::agent_defaults::CONFIG_ENV);
    environ
        .split(|&b| b == 0)
        .find_map(|kv| kv.strip_prefix(key.as_bytes()))
        .filter(|v| !v.is_empty())
        .map(|v| PathBuf::from(std::ffi::OsStr::from_bytes(v)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> (bool, Option<PathBuf>) {
        let v: Vec<OsString> = a.iter().map(OsString::from).collect();
        parse_args(&v)
    }

    #[test]
    fn reads_the_config_and_the_subcommand_as_clap_does() {
        let p = |s: &str| Some(PathBuf::from(s));
        assert_eq!(args(&["-c", "a.toml", "run"]), (true, p("a.toml")));
        assert_eq!(args(&["-ca.toml", "run"]), (true, p("a.toml")));
        assert_eq!(
            args(&["--config", "/e/a.toml", "run"]),
            (true, p("/e/a.toml"))
        );
        assert_eq!(args(&["--config=/e/a.toml", "run"]), (true, p("/e/a.toml")));
        assert_eq!(args(&["run"]), (true, None));
        assert_eq!(args(&["-c", "a.toml", "status"]), (false, p("a.toml")));
        assert_eq!(args(&["-c", "a.toml", "start"]), (false, p("a.toml")));
        assert_eq!(
            args(&["-c", "a.toml", "--cert", "run", "--key", "k", "stop"]),
            (false, p("a.toml")),
            "a --cert value is no subcommand"
        );
    }

    #[test]
    fn finds_nothing_for_a_file_no_agent_runs_with() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("agent.toml");
        std::fs::write(&f, "").unwrap();
        assert!(others_with_config(&f).is_empty());
        assert!(others_with_config(&dir.path().join("missing.toml")).is_empty());
    }
}
