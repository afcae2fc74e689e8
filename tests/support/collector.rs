//! An embedded `log-sensor-collector` for agent tests: its own `init` (so its own CA), one
//! enrolment account, `serve` on a port fixed once chosen (a restarted collector is where the
//! agent expects it), and its stored records read back from its data files.
#![allow(dead_code)]

use super::{read_ndjson, wait_for, Proc, PATIENCE};
use serde_json::Value;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

pub const USER: &str = "alice";
pub const PASSWORD: &str = "correct horse battery staple";

pub struct Collector {
    pub root: tempfile::TempDir,
    pub dir: PathBuf,
    pub proc: Option<Proc>,
    pub port: u16,
}

pub fn collector_bin() -> PathBuf {
    super::bin("log-sensor-collector")
}

pub fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.output().expect("run");
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Collector {
    /// `init` for localhost and 127.0.0.1, and the account USER with PASSWORD.
    pub fn new() -> Collector {
        Collector::with_config(|_| {})
    }

    /// As [`Collector::new`], `collector.toml` edited first.
    pub fn with_config(edit: impl FnOnce(&mut String)) -> Collector {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("collector");
        run_ok(
            Command::new(collector_bin())
                .args(["init", "--dir"])
                .arg(&dir)
                .args(["--name", "localhost", "--name", "127.0.0.1"]),
        );
        let config = dir.join("collector.toml");
        let mut text = std::fs::read_to_string(&config).unwrap();
        edit(&mut text);
        std::fs::write(&config, text).unwrap();
        let pw = root.path().join("pw");
        std::fs::write(&pw, format!("{PASSWORD}\n")).unwrap();
        run_ok(
            Command::new(collector_bin())
                .args(["user", "add", "--dir"])
                .arg(&dir)
                .arg(USER)
                .arg("--password-file")
                .arg(&pw),
        );
        Collector {
            root,
            dir,
            proc: None,
            port: free_port(),
        }
    }

    /// A second embedded collector beside this one (not started, nothing stored yet): a copy of
    /// its directory, so the same CA, server certificate, accounts and issued certificates, and
    /// a store of its own from then on.
    pub fn twin(&self) -> Collector {
        assert!(self.proc.is_none(), "copied while stopped");
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("collector");
        copy_tree(&self.dir, &dir);
        Collector {
            root,
            dir,
            proc: None,
            port: free_port(),
        }
    }

    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    pub fn ca(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    pub fn start(&mut self) {
        let addr_file = self.dir.join("serve.addr");
        let _ = std::fs::remove_file(&addr_file);
        let mut cmd = Command::new(collector_bin());
        cmd.args(["serve", "--dir"])
            .arg(&self.dir)
            .args(["--listen", &format!("127.0.0.1:{}", self.port)])
            .stdout(std::process::Stdio::null());
        let n = std::fs::read_dir(self.root.path()).unwrap().count();
        let log = self.root.path().join(format!("serve-{n}.log"));
        self.proc = Some(Proc::spawn("collector", &mut cmd, &log));
        wait_for("the collector to listen", PATIENCE, || {
            std::fs::read_to_string(&addr_file)
                .ok()
                .and_then(|s| s.trim().parse::<SocketAddr>().ok())
                .is_some()
        });
    }

    pub fn kill9(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.signal(libc::SIGKILL);
            p.wait_exit(PATIENCE);
        }
    }

    pub fn revoke(&self, what: &str) {
        run_ok(
            Command::new(collector_bin())
                .args(["revoke", "--dir"])
                .arg(&self.dir)
                .arg(what),
        );
    }

    pub fn certs_list(&self) -> String {
        run_ok(
            Command::new(collector_bin())
                .args(["certs", "list", "--dir"])
                .arg(&self.dir),
        )
    }

    /// Every record stored for `host`, from the collector's data files.
    pub fn stored(&self, host: &str) -> Vec<Value> {
        let mut out = Vec::new();
        if let Ok(rd) = std::fs::read_dir(self.dir.join("data").join(host)) {
            for e in rd.flatten() {
                out.extend(read_ndjson(&e.path()));
            }
        }
        out
    }
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_tree(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), &target).unwrap();
        }
    }
}
