//! Fixtures shared by the end-to-end tests: the real binaries, temporary folders, processes that
//! are killed when a test ends, and polling with generous deadlines (never a timed assertion).
#![allow(dead_code)]

use serde_json::Value;
use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A binary of this workspace, built by `cargo test --workspace` next to the test executable.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let p = dir.join(name);
    assert!(
        p.exists(),
        "{} not built; run the tests with `cargo test --workspace`",
        p.display()
    );
    p
}

/// A child process that is killed when dropped.
pub struct Proc {
    pub child: Child,
    pub name: String,
    pub stderr: PathBuf,
}

impl Proc {
    pub fn spawn(name: &str, cmd: &mut Command, stderr: &Path) -> Proc {
        let err = std::fs::File::create(stderr).expect("stderr file");
        let child = cmd
            .stdin(Stdio::null())
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {name}: {e}"));
        Proc {
            child,
            name: name.to_string(),
            stderr: stderr.to_path_buf(),
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: sending a signal to our own child.
        unsafe {
            libc::kill(self.pid(), sig);
        }
    }

    /// Waits for the process to exit; returns its exit code (None when killed by a signal).
    pub fn wait_exit(&mut self, within: Duration) -> Option<i32> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(st) = self.child.try_wait().expect("try_wait") {
                return st.code();
            }
            if Instant::now() > deadline {
                panic!(
                    "{} did not exit within {within:?}; stderr:\n{}",
                    self.name,
                    self.stderr_text()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().expect("try_wait").is_none()
    }

    pub fn stderr_text(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Peak resident memory in KiB (VmHWM), while the process lives.
    pub fn peak_rss_kib(&self) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        status
            .lines()
            .find(|l| l.starts_with("VmHWM:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `f` until it is true; fails with `what` after `within`.
pub fn wait_for(what: &str, within: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !f() {
        if Instant::now() > deadline {
            panic!("timed out after {within:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub const PATIENCE: Duration = Duration::from_secs(60);

pub fn append_lines(path: &Path, lines: &[String]) {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .expect("open for append");
    let mut buf = String::new();
    for l in lines {
        buf.push_str(l);
        buf.push('\n');
    }
    f.write_all(buf.as_bytes()).expect("append");
}

/// JSON lines of a file; a torn last line (being written) is ignored.
pub fn read_ndjson(path: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read(path).unwrap_or_default();
    text.split(|&b| b == b'\n')
        .filter_map(|l| serde_json::from_slice(l).ok())
        .collect()
}

/// uid and gid of `nobody`, for tests that need a process permissions apply to (root ignores them).
pub const NOBODY: u32 = 65534;

pub fn is_root() -> bool {
    // SAFETY: no arguments, no memory.
    unsafe { libc::geteuid() == 0 }
}

pub fn chown_tree(dir: &Path, uid: u32) {
    for e in walk(dir) {
        let c = std::ffi::CString::new(e.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        unsafe {
            libc::lchown(c.as_ptr(), uid, uid);
        }
    }
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = vec![dir.to_path_buf()];
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() && !p.is_symlink() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// A temporary folder with `logs/`, a config, and the real agent binary to run on it.
pub struct AgentEnv {
    pub dir: tempfile::TempDir,
}

impl AgentEnv {
    /// A folder with `logs/` and a config with short timers (tests wait for outcomes, not times).
    pub fn new(sources: &str) -> AgentEnv {
        Self::with_config(&format!(
            r#"
host_id = "test-host"
state_dir = "state"
[sources.app]
{sources}
[batch]
max_wait = "100ms"
[discovery]
rescan_interval = "500ms"
rotate_wait = "500ms"
[sink]
type = "file"
path = "state/out.ndjson"
"#
        ))
    }

    pub fn with_config(text: &str) -> AgentEnv {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("logs")).unwrap();
        std::fs::write(dir.path().join("agent.toml"), text).unwrap();
        AgentEnv { dir }
    }

    pub fn p(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn cmd(&self) -> Command {
        let mut c = Command::new(bin("log-sensor"));
        c.arg("-c")
            .arg(self.p("agent.toml"))
            .env("LOG_SENSOR_LOG", "debug");
        c
    }

    pub fn start(&self) -> Proc {
        let mut c = self.cmd();
        c.arg("run");
        Proc::spawn("log-sensor", &mut c, &self.p("agent.err"))
    }

    pub fn records(&self) -> Vec<Value> {
        read_ndjson(&self.p("state/out.ndjson"))
    }

    pub fn msgs(&self) -> Vec<String> {
        self.records()
            .iter()
            .filter_map(|r| r["msg"].as_str().map(str::to_string))
            .collect()
    }

    pub fn wait_msgs(&self, agent: &Proc, want: &[String]) {
        let want: HashSet<&String> = want.iter().collect();
        wait_for(
            &format!(
                "{} records; agent stderr tail:\n{}",
                want.len(),
                tail(&agent.stderr_text())
            ),
            PATIENCE,
            || {
                let got: HashSet<String> = self.msgs().into_iter().collect();
                want.iter().all(|w| got.contains(*w))
            },
        );
    }

    pub fn query(&self, sql: &str) -> Vec<Value> {
        self.try_query(sql)
            .unwrap_or_else(|e| panic!("query failed: {e}"))
    }

    /// The sum of the committed offsets; 0 while there is no store yet (for polling).
    pub fn committed(&self) -> u64 {
        self.try_query("SELECT COALESCE(SUM(committed_offset), 0) AS n FROM streams")
            .unwrap_or_default()
            .first()
            .and_then(|r| r["n"].as_u64())
            .unwrap_or(0)
    }

    /// The details of the sink's alerts so far; none while there is no store yet.
    pub fn sink_alerts(&self) -> Vec<String> {
        self.try_query("SELECT detail FROM alerts WHERE kind = 'sink_error'")
            .unwrap_or_default()
            .iter()
            .filter_map(|r| r["detail"].as_str().map(str::to_string))
            .collect()
    }

    /// For polling: the store may not exist yet, or not have its tables yet.
    pub fn try_query(&self, sql: &str) -> Result<Vec<Value>, String> {
        let out = self
            .cmd()
            .args(["query", "--json", sql])
            .env("LOG_SENSOR_LOG", "warn")
            .output()
            .unwrap();
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        Ok(String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect())
    }
}

pub fn tail(s: &str) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}
