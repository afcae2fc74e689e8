//! End-to-end tests of the osquery extension: the real `log-sensor-extension` binary driven by
//! a stand-in osquery extension manager (`tests/osquery_standin/manager.py`) written on
//! osquery's own published Python bindings, so wire mistakes in our Rust Thrift code cannot
//! cancel out. Every test uses its own temp dir and sockets and cleans up its processes.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::time::{Duration, Instant};

use log_sensor_extension::table::{self, Column, ColumnType};
use rusqlite::Connection;
use serde_json::{json, Value};

/// Generous: the machine is shared and debug builds are slow.
const DEADLINE: Duration = Duration::from_secs(60);

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn python() -> PathBuf {
    let py = workspace().join(".venv/bin/python");
    assert!(
        py.exists(),
        "{} is missing: run tests/setup.sh (it creates the venv with osquery's Python bindings)",
        py.display()
    );
    py
}

/// The stand-in osquery core.
struct Standin {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    socket: PathBuf,
}

impl Standin {
    fn start(dir: &Path) -> Standin {
        let socket = dir.join("em.sock");
        let mut child = Command::new(python())
            .arg(workspace().join("tests/osquery_standin/manager.py"))
            .arg("--socket")
            .arg(&socket)
            .arg("--watch-interval")
            .arg("0.5")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("starting the stand-in manager");
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let first = lines
            .recv_timeout(DEADLINE)
            .expect("the stand-in did not start listening");
        assert!(
            first.contains("listening"),
            "unexpected first line from the stand-in: {first}"
        );
        Standin {
            stdin: child.stdin.take(),
            child,
            lines,
            socket,
        }
    }

    /// Sends one command; returns its result or the stand-in's error text.
    fn try_cmd(&mut self, cmd: Value) -> Result<Value, String> {
        let stdin = self.stdin.as_mut().expect("stand-in stdin closed");
        writeln!(stdin, "{cmd}").unwrap();
        stdin.flush().unwrap();
        let line = self
            .lines
            .recv_timeout(Duration::from_secs(120))
            .unwrap_or_else(|_| panic!("no answer from the stand-in to {cmd}"));
        let v: Value = serde_json::from_str(&line).unwrap();
        if v["ok"] == json!(true) {
            Ok(v["result"].clone())
        } else {
            Err(v["error"].as_str().unwrap_or("").to_string())
        }
    }

    fn cmd(&mut self, cmd: Value) -> Value {
        let c = cmd.clone();
        self.try_cmd(cmd)
            .unwrap_or_else(|e| panic!("stand-in command {c} failed: {e}"))
    }

    /// Waits for the registration, then for the extension's own socket to answer: the extension
    /// learns its uuid from the registration and only then binds `<socket>.<uuid>`, so a call
    /// made the moment registration is seen can find no socket yet (osquery's watcher tolerates
    /// one failed ping for the same reason). Without this wait the first call of a test failed
    /// now and then on a loaded machine with "Could not connect to … em.sock.<uuid>".
    fn wait_registered(&mut self) -> i64 {
        let r = self.cmd(json!({"cmd": "wait_registered", "name": "log_sensor", "timeout": 60}));
        let uuid = r["uuid"].as_i64().unwrap();
        poll("the extension's socket to answer a ping", || {
            let ping = self.try_cmd(json!({"cmd": "ping", "uuid": uuid})).ok()?;
            (ping["code"] == 0).then_some(())
        });
        uuid
    }

    fn generate(&mut self, uuid: i64, table: &str, constraints: Value) -> Vec<Value> {
        let r = self.cmd(
            json!({"cmd": "generate", "uuid": uuid, "table": table, "constraints": constraints}),
        );
        assert_eq!(r["code"], 0, "generate on {table} failed: {r}");
        r["response"].as_array().unwrap().clone()
    }

    fn write(&mut self, uuid: i64, mut req: Value) -> Value {
        req["cmd"] = json!("write");
        req["uuid"] = json!(uuid);
        req["table"] = json!("log_sensor_config");
        let r = self.cmd(req);
        assert_eq!(r["code"], 0, "{r}");
        let rows = r["response"].as_array().unwrap();
        assert_eq!(rows.len(), 1, "a write must answer exactly one row: {r}");
        rows[0].clone()
    }
}

impl Drop for Standin {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One run of the extension binary.
struct Ext {
    child: Child,
    stderr: PathBuf,
}

impl Ext {
    fn start(socket: &Path, config: &Path, extra: &[&str]) -> Ext {
        let stderr = socket.with_file_name(format!(
            "ext-{}.stderr",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        // osqueryd's argv (osquery/core/process/posix/process.cpp, launchExtension).
        let child = Command::new(env!("CARGO_BIN_EXE_log-sensor-extension"))
            .args(["--verbose", "--socket"])
            .arg(socket)
            .args(if extra.contains(&"--timeout") {
                &[][..]
            } else {
                &["--timeout", "60"][..]
            })
            .args(["--interval", "1", "--config"])
            .arg(config)
            .args(extra)
            .env_remove("LOG_SENSOR_CONFIG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .expect("starting log-sensor-extension");
        Ext { child, stderr }
    }

    fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(
                start.elapsed() < limit,
                "the extension did not exit within {limit:?}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    fn signal(&self, sig: i32) {
        // SAFETY: plain kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }
}

impl Drop for Ext {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A temp dir with an agent config (state dir `state`, host id `test-host`).
struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::Builder::new()
            .prefix("lsx")
            .tempdir_in("/tmp")
            .unwrap();
        std::fs::write(
            dir.path().join("log-sensor.toml"),
            r#"host_id = "test-host"
state_dir = "state"

[defaults]
max_record_bytes = 100

[sources.app]
paths = ["logs/app/*.log", "logs/app/*.log.*.gz"]
exclude = ["*.tmp"]
break_before = '^\d{4}-\d{2}-\d{2} '
"#,
        )
        .unwrap();
        Fixture { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn config(&self) -> PathBuf {
        self.path().join("log-sensor.toml")
    }

    fn state(&self) -> PathBuf {
        self.path().join("state")
    }

    fn outbox(&self) -> Connection {
        Connection::open(self.state().join("osquery-outbox.db")).unwrap()
    }

    /// A store made from sql/schema.sql and sql/views.sql, as the agent would leave it.
    fn make_store(&self) {
        std::fs::create_dir_all(self.state()).unwrap();
        let c = Connection::open(self.state().join("store.db")).unwrap();
        c.query_row("PRAGMA journal_mode = WAL", [], |_| Ok(()))
            .unwrap();
        c.execute_batch(include_str!("../sql/schema.sql")).unwrap();
        c.execute_batch(include_str!("../sql/views.sql")).unwrap();
        c.execute_batch(
            "INSERT INTO meta VALUES ('host_id', 'store-host');
             INSERT INTO streams (stream, source, fingerprint, fp_bytes, path, device, inode, compressed, size,
                                  read_offset, committed_offset, first_seen, last_read, state, records, overlong_records)
             VALUES ('s1', 'app', 'aa', 1024, '/logs/app/a.log', 1, 11, 0, 5000, 4000, 3000, 100, 200, 'active', 30, 2),
                    ('s2', 'app', NULL, 1024, '/logs/app/b.log.1.gz', 1, 12, 1, 900, 7000, 6500, 100, NULL, 'done', 60, 0),
                    ('s3', 'syslog', 'cc', 1024, '/var/log/syslog', 2, 13, 0, 100, 100, 100, 50, 60, 'active', 5, 0);
             INSERT INTO alerts (time, kind, source, stream, path, detail)
             VALUES (1000, 'file_too_large', 'app', 's1', '/logs/app/a.log', 'over 4 GiB'),
                    (2000, 'permission_denied', 'syslog', NULL, '/var/log/auth.log', 'EACCES'),
                    (3000, 'sink_error', NULL, NULL, NULL, 'sink down');",
        )
        .unwrap();
    }
}

/// Stand-in, extension, registration: the common start of most tests.
fn started(fx: &Fixture, extra: &[&str]) -> (Standin, Ext, i64) {
    let mut core = Standin::start(fx.path());
    let ext = Ext::start(&core.socket, &fx.config(), extra);
    let uuid = core.wait_registered();
    (core, ext, uuid)
}

fn col<'a>(rows: &'a [Value], key: &str) -> Vec<&'a str> {
    rows.iter()
        .map(|r| r[key].as_str().unwrap_or("<null>"))
        .collect()
}

/// An outbox row: kind, name, category, record.
type OutboxRow = (String, String, Option<String>, String);

fn outbox_rows(fx: &Fixture) -> Vec<OutboxRow> {
    let c = fx.outbox();
    let mut stmt = c
        .prepare("SELECT kind, name, category, record FROM outbox ORDER BY id")
        .unwrap();
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

/// The outbox rows once the extension has created the outbox (for polling).
fn outbox_rows_when_ready(fx: &Fixture) -> Option<Vec<OutboxRow>> {
    let path = fx.state().join("osquery-outbox.db");
    if !path.exists() {
        return None;
    }
    let c = Connection::open_with_flags(&path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).ok()?;
    let mut stmt = c
        .prepare("SELECT kind, name, category, record FROM outbox ORDER BY id")
        .ok()?;
    let rows = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
        .ok()?;
    rows.collect::<Result<Vec<_>, _>>().ok()
}

fn counter(fx: &Fixture, name: &str) -> i64 {
    fx.outbox()
        .query_row("SELECT value FROM counters WHERE name = ?1", [name], |r| {
            r.get(0)
        })
        .unwrap_or(0)
}

fn poll<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(start.elapsed() < DEADLINE, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

// ---------------------------------------------------------------------------------------------
// Registration and the extension's life

#[test]
fn registration_is_accepted_and_every_plugin_is_routed() {
    let fx = Fixture::new();
    let (mut core, _ext, uuid) = started(&fx, &[]);
    let reg = core.cmd(json!({"cmd": "wait_registered", "name": "log_sensor"}));
    assert_eq!(reg["uuid"], uuid);
    for t in [
        "log_sensor_streams",
        "log_sensor_alerts",
        "log_sensor_config",
    ] {
        let routes = reg["registry"]["table"][t]
            .as_array()
            .unwrap_or_else(|| panic!("{t} not registered: {reg}"));
        assert!(
            routes.iter().all(|r| r["id"] == "column" && r["op"] == "0"),
            "{routes:?}"
        );
    }
    assert!(reg["registry"]["logger"]["log_sensor"].is_array(), "{reg}");
    let sdk = reg["sdk_version"].as_str().unwrap();
    assert!(
        sdk >= "1.7.7",
        "sdk_version {sdk} would be refused by osquery"
    );
    let ping = core.cmd(json!({"cmd": "ping", "uuid": uuid}));
    assert_eq!(ping["code"], 0);
    assert_eq!(ping["uuid"], uuid);
    let cols = core.cmd(json!({"cmd": "columns", "uuid": uuid, "table": "log_sensor_streams"}));
    let names: Vec<&str> = cols["response"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "host_id",
            "source",
            "path",
            "stream",
            "fingerprint",
            "state",
            "compressed",
            "size",
            "read_offset",
            "committed_offset",
            "lag_bytes",
            "records",
            "overlong_records",
            "first_seen",
            "last_read",
            "device",
            "inode"
        ]
    );
}

#[test]
fn a_refused_registration_exits_non_zero_with_the_reason() {
    let fx = Fixture::new();
    let (mut core, _first, uuid) = started(&fx, &[]);
    let mut second = Ext::start(&core.socket, &fx.config(), &[]);
    let status = second.wait_exit(DEADLINE);
    assert!(
        !status.success(),
        "a duplicate extension must not keep running"
    );
    let log = second.log();
    assert!(
        log.contains("osquery refused to register extension log_sensor"),
        "{log}"
    );
    assert!(log.contains("Duplicate extension registered"), "{log}");
    let attempts = core.cmd(json!({"cmd": "attempts"}));
    assert_eq!(attempts.as_array().unwrap().len(), 2, "{attempts}");
    // The first one is untouched.
    assert_eq!(core.cmd(json!({"cmd": "ping", "uuid": uuid}))["code"], 0);
}

#[test]
fn waits_for_a_socket_that_appears_late() {
    let fx = Fixture::new();
    let socket = fx.path().join("em.sock");
    let _ext = Ext::start(&socket, &fx.config(), &[]);
    std::thread::sleep(Duration::from_millis(1500));
    let mut core = Standin::start(fx.path());
    let uuid = core.wait_registered();
    assert_eq!(core.cmd(json!({"cmd": "ping", "uuid": uuid}))["code"], 0);
}

#[test]
fn gives_up_with_a_message_when_no_socket_appears() {
    let fx = Fixture::new();
    let socket = fx.path().join("never.sock");
    let mut ext = Ext::start(&socket, &fx.config(), &["--timeout", "1"]);
    let status = ext.wait_exit(DEADLINE);
    assert!(!status.success());
    let log = ext.log();
    assert!(log.contains("did not appear within"), "{log}");
    assert!(log.contains("never.sock"), "{log}");
}

#[test]
fn serves_several_connections_at_once() {
    let fx = Fixture::new();
    let (mut core, _ext, uuid) = started(&fx, &[]);
    let codes = core.cmd(json!({"cmd": "concurrent", "uuid": uuid, "n": 8}));
    assert_eq!(codes, json!([0, 0, 0, 0, 0, 0, 0, 0]));
}

#[test]
fn the_shutdown_call_stops_it_cleanly() {
    let fx = Fixture::new();
    let (mut core, mut ext, uuid) = started(&fx, &[]);
    core.cmd(json!({"cmd": "shutdown_extension", "uuid": uuid}));
    let status = ext.wait_exit(DEADLINE);
    assert_eq!(status.code(), Some(0), "{}", ext.log());
    core.cmd(json!({"cmd": "wait_gone", "uuid": uuid}));
    assert!(
        !core.socket.with_extension(format!("sock.{uuid}")).exists(),
        "the extension socket is left behind"
    );
}

#[test]
fn sigterm_stops_it_cleanly() {
    let fx = Fixture::new();
    let (mut core, mut ext, uuid) = started(&fx, &[]);
    ext.signal(libc::SIGTERM);
    let status = ext.wait_exit(DEADLINE);
    assert_eq!(status.code(), Some(0), "{}", ext.log());
    core.cmd(json!({"cmd": "wait_gone", "uuid": uuid}));
}

#[test]
fn exits_cleanly_when_osquery_goes_away() {
    let fx = Fixture::new();
    let (mut core, mut ext, _uuid) = started(&fx, &[]);
    let _ = core.try_cmd(json!({"cmd": "stop"}));
    let status = ext.wait_exit(DEADLINE);
    assert_eq!(status.code(), Some(0), "{}", ext.log());
    assert!(ext.log().contains("ManagerGone"), "{}", ext.log());
}

#[test]
fn exits_cleanly_when_osquery_is_killed_and_its_socket_is_left_behind() {
    let fx = Fixture::new();
    let (mut core, mut ext, _uuid) = started(&fx, &[]);
    core.child.kill().unwrap();
    core.child.wait().unwrap();
    assert!(core.socket.exists(), "a killed core leaves its socket file");
    let status = ext.wait_exit(DEADLINE);
    assert_eq!(status.code(), Some(0), "{}", ext.log());
    assert!(ext.log().contains("ManagerGone"), "{}", ext.log());
}

// ---------------------------------------------------------------------------------------------
// Tables

#[test]
fn streams_table_applies_equality_and_like_on_path_and_source() {
    let fx = Fixture::new();
    fx.make_store();
    let (mut core, _ext, uuid) = started(&fx, &[]);
    let all = core.generate(uuid, "log_sensor_streams", json!([]));
    assert_eq!(col(&all, "stream"), ["s1", "s2", "s3"]);
    assert_eq!(col(&all, "host_id"), ["store-host"; 3]);
    // Lag as sql/views.sql computes it; NULLs are absent keys.
    assert_eq!(col(&all, "lag_bytes"), ["2000", "500", "0"]);
    assert!(
        all[1].get("fingerprint").is_none() && all[1].get("last_read").is_none(),
        "{:?}",
        all[1]
    );
    assert_eq!(all[0]["overlong_records"], "2");
    assert_eq!(all[0]["inode"], "11");

    let eq = core.generate(
        uuid,
        "log_sensor_streams",
        json!([["path", 2, "/var/log/syslog"]]),
    );
    assert_eq!(col(&eq, "stream"), ["s3"]);
    let like = core.generate(
        uuid,
        "log_sensor_streams",
        json!([["path", 65, "/LOGS/app/%"]]),
    );
    assert_eq!(
        col(&like, "stream"),
        ["s1", "s2"],
        "LIKE is SQLite's: case-insensitive"
    );
    let src = core.generate(uuid, "log_sensor_streams", json!([["source", 2, "app"]]));
    assert_eq!(col(&src, "stream"), ["s1", "s2"]);
    let both = core.generate(
        uuid,
        "log_sensor_streams",
        json!([["source", 65, "a%"], ["path", 65, "%.gz"]]),
    );
    assert_eq!(col(&both, "stream"), ["s2"]);
    let glob = core.generate(
        uuid,
        "log_sensor_streams",
        json!([["path", 66, "/var/log/*"]]),
    );
    assert_eq!(col(&glob, "stream"), ["s3"]);
    // Operators we do not push down are left to SQLite: all rows come back.
    let gt = core.generate(uuid, "log_sensor_streams", json!([["size", 4, "1000"]]));
    assert_eq!(gt.len(), 3);

    // The agent writing meanwhile is neither blocked nor seen half-done (WAL, read-only reader).
    let mut writer = Connection::open(fx.state().join("store.db")).unwrap();
    let tx = writer
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .unwrap();
    tx.execute(
        "INSERT INTO streams (stream, source, fp_bytes, path, device, inode, first_seen, state) \
         VALUES ('s4', 'app', 1024, '/logs/app/c.log', 1, 14, 300, 'active')",
        [],
    )
    .unwrap();
    assert_eq!(
        core.generate(uuid, "log_sensor_streams", json!([])).len(),
        3
    );
    tx.commit().unwrap();
    assert_eq!(
        col(
            &core.generate(uuid, "log_sensor_streams", json!([["path", 65, "%c.log"]])),
            "stream"
        ),
        ["s4"]
    );
}

#[test]
fn tables_are_empty_before_the_agent_has_made_a_store() {
    let fx = Fixture::new();
    let (mut core, _ext, uuid) = started(&fx, &[]);
    assert!(core
        .generate(uuid, "log_sensor_streams", json!([]))
        .is_empty());
    assert!(core
        .generate(uuid, "log_sensor_alerts", json!([["path", 2, "/x"]]))
        .is_empty());
}

#[test]
fn alerts_table_applies_constraints() {
    let fx = Fixture::new();
    fx.make_store();
    let (mut core, _ext, uuid) = started(&fx, &[]);
    let all = core.generate(uuid, "log_sensor_alerts", json!([]));
    assert_eq!(
        col(&all, "kind"),
        ["file_too_large", "permission_denied", "sink_error"]
    );
    assert_eq!(all[0]["stream"], "s1");
    assert_eq!(all[0]["time"], "1000");
    assert_eq!(all[0]["detail"], "over 4 GiB");
    let by_path = core.generate(uuid, "log_sensor_alerts", json!([["path", 65, "%auth%"]]));
    assert_eq!(col(&by_path, "kind"), ["permission_denied"]);
    let by_source = core.generate(uuid, "log_sensor_alerts", json!([["source", 2, "app"]]));
    assert_eq!(col(&by_source, "kind"), ["file_too_large"]);
    let recent = core.generate(uuid, "log_sensor_alerts", json!([["time", 4, "1500"]]));
    assert_eq!(col(&recent, "kind"), ["permission_denied", "sink_error"]);
}

#[test]
fn config_table_shows_the_file_the_enabled_packs_and_the_defaults() {
    let fx = Fixture::new();
    let config = std::fs::read_to_string(fx.config()).unwrap();
    let nginx = workspace().join("packs/nginx.json");
    std::fs::write(
        fx.config(),
        format!("packs = [{:?}]\n{config}", nginx.display().to_string()),
    )
    .unwrap();
    let (mut core, _ext, uuid) = started(&fx, &[]);
    let rows = core.generate(uuid, "log_sensor_config", json!([]));
    let get = |k: &str| {
        rows.iter()
            .find(|r| r["key"] == k)
            .unwrap_or_else(|| panic!("no key {k}: {rows:?}"))
            .clone()
    };
    assert_eq!(get("host_id")["value"], "test-host");
    assert_eq!(get("host_id")["origin"], "file");
    assert_eq!(get("defaults.max_record_bytes")["value"], "100");
    assert_eq!(get("defaults.max_record_bytes")["origin"], "file");
    assert_eq!(get("defaults.fingerprint_bytes")["value"], "1024");
    assert_eq!(get("defaults.fingerprint_bytes")["origin"], "default");
    assert_eq!(
        get("sources.app.paths")["value"],
        r#"["logs/app/*.log","logs/app/*.log.*.gz"]"#
    );
    assert_eq!(
        get("sources.app.break_before")["value"],
        r"^\d{4}-\d{2}-\d{2} "
    );
    assert!(
        rows.iter().all(|r| r["read_from"] == "config_file"),
        "rows must say no agent answered"
    );
    assert_eq!(get("state_dir")["writable"], "0");
    assert_eq!(get("defaults.fingerprint_bytes")["writable"], "1");
    assert!(get("host_id")["rowid"]
        .as_str()
        .unwrap()
        .parse::<i64>()
        .is_ok());
}

#[test]
fn config_table_writes_follow_the_writable_table_protocol() {
    let fx = Fixture::new();
    let (mut core, _ext, uuid) = started(&fx, &[]);
    let rows = core.generate(uuid, "log_sensor_config", json!([]));
    let rowid = |k: &str| -> i64 {
        rows.iter().find(|r| r["key"] == k).unwrap()["rowid"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap()
    };
    let key = "defaults.max_record_bytes";
    let values = |k: Value, v: Value| {
        json!([
            k,
            v,
            "file",
            1,
            "config_file",
            fx.config().display().to_string()
        ])
    };

    // No agent: a clear failure, never a fake success.
    let r = core.write(
        uuid,
        json!({"action": "update", "id": rowid(key), "values": values(json!(key), json!("200"))}),
    );
    assert_eq!(r["status"], "failure", "{r}");
    let msg = r["message"].as_str().unwrap();
    assert!(
        msg.contains("no log-sensor agent is running") && msg.contains("control.sock"),
        "{msg}"
    );
    let r = core.write(
        uuid,
        json!({"action": "insert", "values": values(json!("sources.app.exclude"), json!("[]"))}),
    );
    assert_eq!(r["status"], "failure", "{r}");
    let r = core.write(uuid, json!({"action": "delete", "id": rowid(key)}));
    assert_eq!(r["status"], "failure", "{r}");

    // Keys fixed for the agent's life are read-only.
    let r = core.write(uuid, json!({"action": "update", "id": rowid("state_dir"), "values": values(json!("state_dir"), json!("/x"))}));
    assert_eq!(r["status"], "readonly", "{r}");
    let r = core.write(uuid, json!({"action": "delete", "id": rowid("host_id")}));
    assert_eq!(r["status"], "readonly", "{r}");

    // Renaming a key, a new rowid, or NULLs break the table's constraints.
    let r = core.write(uuid, json!({"action": "update", "id": rowid(key), "values": values(json!("other.key"), json!("1"))}));
    assert_eq!(r["status"], "constraint", "{r}");
    let r = core.write(uuid, json!({"action": "update", "id": rowid(key), "new_id": 5, "values": values(json!(key), json!("1"))}));
    assert_eq!(r["status"], "constraint", "{r}");
    let r = core.write(
        uuid,
        json!({"action": "update", "id": rowid(key), "values": values(json!(key), Value::Null)}),
    );
    assert_eq!(r["status"], "constraint", "{r}");
    let r = core.write(
        uuid,
        json!({"action": "insert", "values": values(Value::Null, json!("1"))}),
    );
    assert_eq!(r["status"], "constraint", "{r}");

    // A rowid osquery never saw.
    let r = core.write(uuid, json!({"action": "delete", "id": 42}));
    assert_eq!(r["status"], "failure", "{r}");
    assert!(r["message"].as_str().unwrap().contains("rowid 42"), "{r}");
}

#[test]
fn a_missing_config_is_reported_and_defaults_are_used() {
    let fx = Fixture::new();
    let missing = fx.path().join("absent/log-sensor.toml");
    let mut core = Standin::start(fx.path());
    let ext = Ext::start(&core.socket, &missing, &[]);
    let uuid = core.wait_registered();
    let rows = core.generate(uuid, "log_sensor_config", json!([]));
    assert!(rows.iter().all(|r| r["origin"] == "default"), "{rows:?}");
    assert!(rows.iter().any(|r| r["key"] == "host_id"));
    assert!(core
        .generate(uuid, "log_sensor_streams", json!([]))
        .is_empty());
    let r =
        core.cmd(json!({"cmd": "log_results", "uuid": uuid, "name": "q", "added": [{"a": "1"}]}));
    assert_eq!(r["calls"][0]["code"], 0);
    assert!(
        fx.path().join("absent/state/osquery-outbox.db").exists(),
        "state_dir defaults to <config folder>/state"
    );
    assert!(ext.log().contains("cannot read"), "{}", ext.log());
}

// ---------------------------------------------------------------------------------------------
// log_sensor_config with the real agent running

/// The agent binary, built next to the extension by `cargo test --workspace`.
fn agent_bin() -> PathBuf {
    let p = Path::new(env!("CARGO_BIN_EXE_log-sensor-extension")).with_file_name("log-sensor");
    assert!(
        p.exists(),
        "{} is missing: these tests run the real agent; run `cargo test --workspace` \
         (or `cargo build -p log-sensor` with the same CARGO_TARGET_DIR) first",
        p.display()
    );
    p
}

/// The real agent, `log-sensor -c CONFIG run`, on the fixture's config and state dir; killed
/// when dropped.
struct Agent {
    child: Child,
    config: PathBuf,
    stderr: PathBuf,
}

impl Agent {
    fn start(fx: &Fixture) -> Agent {
        let stderr = fx.path().join("agent.stderr");
        let child = Command::new(agent_bin())
            .arg("-c")
            .arg(fx.config())
            .arg("run")
            .env_remove("LOG_SENSOR_CONFIG")
            .stdin(Stdio::null())
            // The fixture's sink is stdout: records are not what these tests look at.
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .expect("starting log-sensor");
        let mut agent = Agent {
            child,
            config: fx.config(),
            stderr,
        };
        poll("the agent's control socket", || {
            if let Some(s) = agent.child.try_wait().unwrap() {
                panic!("the agent exited ({s}) before answering:\n{}", agent.log());
            }
            agent.cli(&["status"]).0.then_some(())
        });
        agent
    }

    /// `log-sensor -c CONFIG ARGS…`: success, stdout, stderr.
    fn cli(&self, args: &[&str]) -> (bool, String, String) {
        let out = Command::new(agent_bin())
            .arg("-c")
            .arg(&self.config)
            .args(args)
            .env("LOG_SENSOR_LOG", "warn")
            .output()
            .expect("running log-sensor");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// What `log-sensor get KEY` prints, e.g. `defaults.max_record_bytes = 100  (file)`.
    fn get(&self, key: &str) -> String {
        let (ok, out, err) = self.cli(&["get", key]);
        assert!(ok, "log-sensor get {key} failed: {err}");
        assert!(
            !err.contains("no agent running"),
            "get {key} did not reach the agent: {err}"
        );
        out.trim().to_string()
    }

    fn signal(&self, sig: i32) {
        // SAFETY: plain kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }

    /// SIGTERM, then waits for a clean exit (the agent removes its socket on the way out).
    fn stop(&mut self) {
        self.signal(libc::SIGTERM);
        let start = Instant::now();
        while self.child.try_wait().unwrap().is_none() {
            assert!(
                start.elapsed() < DEADLINE,
                "the agent did not stop:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        // A test that stopped the agent with SIGSTOP must not leave it stopped.
        self.signal(libc::SIGCONT);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Agent, stand-in and extension: the start of every test in this section.
fn started_with_agent(fx: &Fixture) -> (Agent, Standin, Ext, i64) {
    let agent = Agent::start(fx);
    let (core, ext, uuid) = started(fx, &[]);
    (agent, core, ext, uuid)
}

fn config_rows(core: &mut Standin, uuid: i64) -> Vec<Value> {
    core.generate(uuid, "log_sensor_config", json!([]))
}

fn row<'a>(rows: &'a [Value], key: &str) -> &'a Value {
    rows.iter()
        .find(|r| r["key"] == key)
        .unwrap_or_else(|| panic!("no key {key} in {rows:?}"))
}

fn rowid_of(rows: &[Value], key: &str) -> i64 {
    row(rows, key)["rowid"].as_str().unwrap().parse().unwrap()
}

/// A `json_value_array` in the table's column order, as osquery builds it for a write.
fn config_values(fx: &Fixture, key: &str, value: Value) -> Value {
    json!([
        key,
        value,
        null,
        null,
        null,
        fx.config().display().to_string()
    ])
}

fn update(
    core: &mut Standin,
    uuid: i64,
    fx: &Fixture,
    rows: &[Value],
    key: &str,
    v: Value,
) -> Value {
    let id = rowid_of(rows, key);
    core.write(
        uuid,
        json!({"action": "update", "id": id, "values": config_values(fx, key, v)}),
    )
}

#[test]
fn config_table_shows_the_running_agents_values_with_origins() {
    let fx = Fixture::new();
    let (agent, mut core, _ext, uuid) = started_with_agent(&fx);
    let rows = config_rows(&mut core, uuid);
    assert!(
        rows.iter().all(|r| r["read_from"] == "agent"),
        "every row must come from the agent: {rows:?}\n{}",
        agent.log()
    );
    let shown = |k: &str| {
        let r = row(&rows, k);
        (r["value"].as_str().unwrap(), r["origin"].as_str().unwrap())
    };
    assert_eq!(shown("host_id"), ("test-host", "file"));
    assert_eq!(shown("defaults.max_record_bytes"), ("100", "file"));
    assert_eq!(shown("defaults.fingerprint_bytes"), ("1024", "default"));
    // Only the agent knows what a source inherits, and from where.
    assert_eq!(shown("sources.app.max_record_bytes"), ("100", "file"));
    assert_eq!(shown("sources.app.fingerprint_bytes"), ("1024", "default"));
    assert_eq!(shown("batch.max_wait"), ("1s", "default"));
    // Shown as the file source shows them: strings bare, arrays as JSON.
    assert_eq!(
        shown("sources.app.paths"),
        (r#"["logs/app/*.log","logs/app/*.log.*.gz"]"#, "file")
    );
    assert_eq!(
        shown("sources.app.break_before"),
        (r"^\d{4}-\d{2}-\d{2} ", "file")
    );
    assert_eq!(shown("defaults.delimiter"), ("\n", "default"));
    assert_eq!(row(&rows, "state_dir")["writable"], "0");
    assert_eq!(row(&rows, "host_id")["writable"], "0");
    assert_eq!(row(&rows, "defaults.max_record_bytes")["writable"], "1");
    // The table lists what the agent's own CLI lists (keys padded there).
    let (ok, list, err) = agent.cli(&["list"]);
    assert!(ok, "{err}");
    let mut cli_keys: Vec<&str> = list
        .lines()
        .filter_map(|l| l.split(" = ").next().map(str::trim))
        .collect();
    cli_keys.sort_unstable();
    let mut table_keys = col(&rows, "key");
    table_keys.sort_unstable();
    assert_eq!(table_keys, cli_keys);
}

#[test]
fn config_table_shows_transforms_keys_like_any_other() {
    let fx = Fixture::new();
    let mut text = std::fs::read_to_string(fx.config()).unwrap();
    text = text.replace(
        "[sources.app]\n",
        "[sources.app]\ntransforms = [\"access\"]\n",
    );
    text.push_str("\n[transforms.access]\ntype = \"regex\"\npattern = '^(?P<client>\\S+) '\n");
    std::fs::write(fx.config(), text).unwrap();
    let (agent, mut core, _ext, uuid) = started_with_agent(&fx);
    let rows = config_rows(&mut core, uuid);
    let shown = |k: &str| {
        let r = row(&rows, k);
        (r["value"].as_str().unwrap(), r["origin"].as_str().unwrap())
    };
    assert_eq!(shown("transforms.access.type"), ("regex", "file"));
    assert_eq!(
        shown("transforms.access.pattern"),
        (r"^(?P<client>\S+) ", "file")
    );
    assert_eq!(shown("sources.app.transforms"), (r#"["access"]"#, "file"));
    assert_eq!(
        agent.get("transforms.access.type"),
        r#"transforms.access.type = "regex"  (file)"#
    );
}

#[test]
fn an_update_is_a_temporary_override_in_the_agent_until_its_reload() {
    let fx = Fixture::new();
    let (agent, mut core, _ext, uuid) = started_with_agent(&fx);
    let key = "defaults.max_record_bytes";
    let rows = config_rows(&mut core, uuid);
    let r = update(&mut core, uuid, &fx, &rows, key, json!("131072"));
    assert_eq!(r["status"], "success", "{r}");
    assert_eq!(agent.get(key), format!("{key} = 131072  (temporary)"));
    let rows = config_rows(&mut core, uuid);
    assert_eq!(row(&rows, key)["value"], "131072");
    assert_eq!(row(&rows, key)["origin"], "temporary");
    assert_eq!(
        row(&rows, "sources.app.max_record_bytes")["value"],
        "131072"
    );

    // The agent's reload drops temporary overrides; the table follows.
    let (ok, out, err) = agent.cli(&["reload"]);
    assert!(ok, "reload failed: {out}{err}");
    assert_eq!(agent.get(key), format!("{key} = 100  (file)"));
    let rows = config_rows(&mut core, uuid);
    assert_eq!(row(&rows, key)["value"], "100");
    assert_eq!(row(&rows, key)["origin"], "file");
}

#[test]
fn an_insert_sets_and_a_delete_drops_a_temporary_override() {
    let fx = Fixture::new();
    let (agent, mut core, _ext, uuid) = started_with_agent(&fx);
    let key = "sources.app.exclude";
    assert_eq!(agent.get(key), format!(r#"{key} = ["*.tmp"]  (file)"#));
    // osquery's INSERT INTO log_sensor_config (key, value) VALUES (…): auto_rowid=false, so
    // the reply carries the rowid the key has in generate.
    let r = core.write(
        uuid,
        json!({"action": "insert", "values": config_values(&fx, key, json!(r#"["*.tmp", "*.bak"]"#))}),
    );
    assert_eq!(r["status"], "success", "{r}");
    assert_eq!(
        agent.get(key),
        format!(r#"{key} = ["*.tmp", "*.bak"]  (temporary)"#)
    );
    let rows = config_rows(&mut core, uuid);
    assert_eq!(
        r["id"].as_str().unwrap().parse::<i64>().unwrap(),
        rowid_of(&rows, key)
    );
    assert_eq!(row(&rows, key)["value"], r#"["*.tmp","*.bak"]"#);
    assert_eq!(row(&rows, key)["origin"], "temporary");

    // DELETE … WHERE key = …: osquery finds the rowid through generate, then deletes it.
    let r = core.write(
        uuid,
        json!({"action": "delete", "id": rowid_of(&rows, key)}),
    );
    assert_eq!(r["status"], "success", "{r}");
    assert_eq!(agent.get(key), format!(r#"{key} = ["*.tmp"]  (file)"#));
    let rows = config_rows(&mut core, uuid);
    assert_eq!(row(&rows, key)["origin"], "file");
}

#[test]
fn a_value_the_agent_refuses_fails_with_the_agents_reason() {
    let fx = Fixture::new();
    let (agent, mut core, _ext, uuid) = started_with_agent(&fx);
    let key = "defaults.max_record_bytes";
    let rows = config_rows(&mut core, uuid);
    let r = update(&mut core, uuid, &fx, &rows, key, json!("lots"));
    assert_eq!(r["status"], "failure", "{r}");
    let msg = r["message"].as_str().unwrap();
    assert!(
        msg.contains("the log-sensor agent refused") && msg.contains(&format!("{key}: ")),
        "the agent's own reason, naming the key: {msg}"
    );
    // Nothing changed in the agent.
    assert_eq!(agent.get(key), format!("{key} = 100  (file)"));

    // Keys fixed for the agent's life stay read-only; renames break the table's constraint.
    let r = update(
        &mut core,
        uuid,
        &fx,
        &rows,
        "state_dir",
        json!("/elsewhere"),
    );
    assert_eq!(r["status"], "readonly", "{r}");
    let r = update(&mut core, uuid, &fx, &rows, "host_id", json!("other"));
    assert_eq!(r["status"], "readonly", "{r}");
    let r = core.write(
        uuid,
        json!({"action": "update", "id": rowid_of(&rows, key), "values": config_values(&fx, "defaults.other", json!("1"))}),
    );
    assert_eq!(r["status"], "constraint", "{r}");
    assert!(agent.get("host_id").starts_with("host_id = \"test-host\""));
}

#[test]
fn with_the_agent_stopped_the_table_falls_back_to_the_file_and_writes_say_why() {
    let fx = Fixture::new();
    let (mut agent, mut core, _ext, uuid) = started_with_agent(&fx);
    let key = "defaults.max_record_bytes";
    let rows = config_rows(&mut core, uuid);
    let r = update(&mut core, uuid, &fx, &rows, key, json!("4096"));
    assert_eq!(r["status"], "success", "{r}");

    agent.stop();
    let rows = config_rows(&mut core, uuid);
    assert!(
        rows.iter().all(|r| r["read_from"] == "config_file"),
        "{rows:?}"
    );
    // The override died with the agent; the file's value shows.
    assert_eq!(row(&rows, key)["value"], "100");
    assert_eq!(row(&rows, key)["origin"], "file");
    let r = update(&mut core, uuid, &fx, &rows, key, json!("4096"));
    assert_eq!(r["status"], "failure", "{r}");
    let msg = r["message"].as_str().unwrap();
    assert!(
        msg.contains("no log-sensor agent is running") && msg.contains("control.sock"),
        "{msg}"
    );
    let r = core.write(
        uuid,
        json!({"action": "delete", "id": rowid_of(&rows, key)}),
    );
    assert_eq!(r["status"], "failure", "{r}");
}

#[test]
fn a_killed_agents_socket_left_behind_is_reported_as_no_agent() {
    let fx = Fixture::new();
    let (mut agent, mut core, _ext, uuid) = started_with_agent(&fx);
    agent.child.kill().unwrap();
    agent.child.wait().unwrap();
    assert!(
        fx.state().join("control.sock").exists(),
        "a killed agent leaves its socket file"
    );
    let rows = config_rows(&mut core, uuid);
    assert!(
        rows.iter().all(|r| r["read_from"] == "config_file"),
        "{rows:?}"
    );
    let r = update(
        &mut core,
        uuid,
        &fx,
        &rows,
        "defaults.max_record_bytes",
        json!("1"),
    );
    assert_eq!(r["status"], "failure", "{r}");
    let msg = r["message"].as_str().unwrap();
    assert!(
        msg.contains("no log-sensor agent is running") && msg.contains("refuses connections"),
        "{msg}"
    );
}

#[test]
fn a_wedged_agent_costs_a_table_call_seconds_not_a_hang() {
    let fx = Fixture::new();
    let (agent, mut core, _ext, uuid) = started_with_agent(&fx);
    let rows = config_rows(&mut core, uuid);
    // Stopped, the agent's socket still takes connections into its backlog but never answers.
    agent.signal(libc::SIGSTOP);
    let start = Instant::now();
    let stalled = config_rows(&mut core, uuid);
    let took = start.elapsed();
    assert!(
        stalled.iter().all(|r| r["read_from"] == "config_file"),
        "{stalled:?}"
    );
    // The answer wait is 3 s; the rest is slack for a loaded machine, far below osquery's
    // thrift timeout.
    assert!(took < Duration::from_secs(10), "took {took:?}");
    let r = update(
        &mut core,
        uuid,
        &fx,
        &rows,
        "defaults.max_record_bytes",
        json!("1"),
    );
    assert_eq!(r["status"], "failure", "{r}");
    assert!(
        r["message"].as_str().unwrap().contains("did not answer"),
        "{r}"
    );
    agent.signal(libc::SIGCONT);
    let rows = poll("the agent answering again", || {
        let rows = config_rows(&mut core, uuid);
        rows.iter()
            .all(|r| r["read_from"] == "agent")
            .then_some(rows)
    });
    assert_eq!(row(&rows, "defaults.max_record_bytes")["value"], "100");
}

// ---------------------------------------------------------------------------------------------
// Logger

#[test]
fn logger_declares_status_logs_and_queues_results_byte_exact() {
    let fx = Fixture::new();
    let (mut core, _ext, uuid) = started(&fx, &[]);
    let features = core.cmd(json!({"cmd": "logger_init", "uuid": uuid}));
    assert_eq!(
        features["code"], 1,
        "features must declare LOGSTATUS only: {features}"
    );

    let ev = core.cmd(
        json!({"cmd": "log_results", "uuid": uuid, "name": "pack_nginx_errors", "mode": "event",
        "added": [{"line": "a"}, {"line": "b"}], "removed": [{"line": "old"}]}),
    );
    let batch = core.cmd(
        json!({"cmd": "log_results", "uuid": uuid, "name": "pack_nginx_errors", "mode": "batch",
        "counter": 3, "added": [{"line": "c"}], "removed": []}),
    );
    for call in ev["calls"]
        .as_array()
        .unwrap()
        .iter()
        .chain(batch["calls"].as_array().unwrap())
    {
        assert_eq!(call["code"], 0, "{call}");
    }
    let docs: Vec<String> = ev["docs"]
        .as_array()
        .unwrap()
        .iter()
        .chain(batch["docs"].as_array().unwrap())
        .map(|d| d.as_str().unwrap().to_string())
        .collect();
    assert!(
        docs[0].contains(r#""action":"removed""#),
        "removed rows come first: {}",
        docs[0]
    );
    let rows = outbox_rows(&fx);
    assert_eq!(rows.len(), 4, "{rows:?}");
    for ((kind, name, category, record), doc) in rows.iter().zip(&docs) {
        assert_eq!(kind, "result");
        assert_eq!(name, "pack_nginx_errors");
        assert_eq!(category.as_deref(), Some("event"));
        assert_eq!(record, doc, "records are kept byte-exact");
    }
}

#[test]
fn status_logs_keep_all_seven_fields_and_events_are_queued() {
    let fx = Fixture::new();
    let (mut core, _ext, uuid) = started(&fx, &[]);
    let r = core.cmd(json!({"cmd": "log_status", "uuid": uuid, "lines": [
        {"s": 1, "f": "scheduler.cpp", "i": 87, "m": "Executing scheduled query"},
        {"s": 2, "f": "events.cpp", "i": 9, "m": "Event publisher failed"}]}));
    assert_eq!(r["code"], 0, "{r}");
    let ev = core.cmd(json!({"cmd": "log_event", "uuid": uuid, "row": {"time": "1", "eid": "7", "path": "/etc/x"}}));
    assert_eq!(ev["call"]["code"], 0, "{ev}");
    let rows = outbox_rows(&fx);
    assert_eq!(rows.len(), 3, "{rows:?}");
    let status: Value = serde_json::from_str(&rows[0].3).unwrap();
    assert_eq!(rows[0].0, "status");
    assert_eq!(rows[0].1, "osquery_status");
    for field in [
        "hostIdentifier",
        "calendarTime",
        "unixTime",
        "severity",
        "filename",
        "line",
        "message",
    ] {
        assert!(
            !status[field].is_null(),
            "status field {field} missing: {status}"
        );
    }
    assert_eq!(status["severity"], 1);
    assert_eq!(status["filename"], "scheduler.cpp");
    assert_eq!(status["line"], 87);
    assert_eq!(status["hostIdentifier"], "standin-host");
    assert!(status["calendarTime"].as_str().unwrap().ends_with(" UTC"));
    assert!(status["unixTime"].as_i64().unwrap() > 1_600_000_000);
    assert_eq!(rows[2].0, "event");
    assert_eq!(rows[2].1, "osquery_events");
    assert_eq!(rows[2].3, ev["doc"].as_str().unwrap());
}

#[test]
fn status_logs_relayed_every_few_seconds_reach_the_outbox() {
    let fx = Fixture::new();
    let (mut core, _ext, uuid) = started(&fx, &[]);
    let r = core.cmd(json!({"cmd": "start_status_relay", "uuid": uuid, "interval": 1}));
    assert_eq!(
        r["relaying"], true,
        "the logger must declare LOGSTATUS: {r}"
    );
    let statuses = poll("two relayed status logs", || {
        let rows: Vec<_> = outbox_rows_when_ready(&fx)?
            .into_iter()
            .filter(|r| r.0 == "status")
            .collect();
        (rows.len() >= 2).then_some(rows)
    });
    let first: Value = serde_json::from_str(&statuses[0].3).unwrap();
    assert_eq!(first["message"], "stand-in status relay 1");
}

#[test]
fn logger_never_fails_when_the_state_dir_is_unusable() {
    let fx = Fixture::new();
    // A file where the state dir should be: the outbox cannot be created.
    std::fs::write(fx.state(), "not a directory").unwrap();
    let (mut core, ext, uuid) = started(&fx, &[]);
    let r =
        core.cmd(json!({"cmd": "log_results", "uuid": uuid, "name": "q1", "added": [{"a": "1"}]}));
    assert_eq!(r["calls"][0]["code"], 0, "{r}");
    let r =
        core.cmd(json!({"cmd": "log_snapshot", "uuid": uuid, "name": "q2", "rows": [{"a": "1"}]}));
    assert_eq!(r["calls"][0]["code"], 0, "{r}");
    assert!(
        ext.log().contains("osquery-outbox.db"),
        "the problem is reported: {}",
        ext.log()
    );
    // Once the state dir is usable the held records go in, in order.
    std::fs::remove_file(fx.state()).unwrap();
    let start = Instant::now();
    while outbox_rows_when_ready(&fx).is_none_or(|rows| rows.len() < 3) {
        assert!(
            start.elapsed() < DEADLINE,
            "held records never reached the outbox:\n{}",
            ext.log()
        );
        std::thread::sleep(Duration::from_millis(200));
        let r = core
            .cmd(json!({"cmd": "log_results", "uuid": uuid, "name": "q3", "added": [{"a": "1"}]}));
        assert_eq!(r["calls"][0]["code"], 0);
    }
    let rows = outbox_rows(&fx);
    let names: Vec<&str> = rows.iter().map(|r| r.1.as_str()).collect();
    assert_eq!(&names[..2], ["q1", "q2"], "{names:?}");
    assert!(names[2..].iter().all(|n| *n == "q3"));
}

#[test]
fn a_full_outbox_drops_the_oldest_counts_and_alerts() {
    let fx = Fixture::new();
    let (mut core, _ext, uuid) = started(&fx, &["--outbox-max-rows", "3"]);
    for i in 0..5 {
        let r = core.cmd(json!({"cmd": "log_results", "uuid": uuid, "name": format!("q{i}"), "added": [{"i": i.to_string()}]}));
        assert_eq!(r["calls"][0]["code"], 0, "{r}");
    }
    let names: Vec<String> = outbox_rows(&fx).into_iter().map(|r| r.1).collect();
    assert_eq!(names, ["q2", "q3", "q4"]);
    assert_eq!(counter(&fx, "dropped_full"), 2);
    let (kind, count): (String, i64) = fx
        .outbox()
        .query_row("SELECT kind, count FROM alerts", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .unwrap();
    assert_eq!((kind.as_str(), count), ("outbox_full", 2));
    // The alert shows in osquery too.
    let alerts = core.generate(uuid, "log_sensor_alerts", json!([["source", 2, "osquery"]]));
    assert_eq!(col(&alerts, "kind"), ["outbox_full"]);
    assert!(
        alerts[0]["detail"]
            .as_str()
            .unwrap()
            .contains("2 oldest records dropped"),
        "{alerts:?}"
    );
}

#[test]
fn unchanged_snapshots_are_counted_not_queued_across_restarts() {
    let fx = Fixture::new();
    let rows_a = json!([{"pid": "1", "name": "init"}, {"pid": "2", "name": "kthreadd"}]);
    let rows_a_reordered = json!([{"name": "kthreadd", "pid": "2"}, {"pid": "1", "name": "init"}]);
    let rows_b = json!([{"pid": "1", "name": "init"}]);
    {
        let (mut core, mut ext, uuid) = started(&fx, &[]);
        for rows in [&rows_a, &rows_a] {
            let r = core.cmd(json!({"cmd": "log_snapshot", "uuid": uuid, "name": "pack_health_agent_heartbeat", "rows": rows}));
            assert_eq!(r["calls"][0]["code"], 0, "{r}");
        }
        assert_eq!(outbox_rows(&fx).len(), 1);
        assert_eq!(counter(&fx, "unchanged_snapshots"), 1);
        core.cmd(json!({"cmd": "shutdown_extension", "uuid": uuid}));
        assert_eq!(ext.wait_exit(DEADLINE).code(), Some(0));
    }
    let (mut core, _ext, uuid) = started(&fx, &[]);
    let r = core.cmd(json!({"cmd": "log_snapshot", "uuid": uuid, "name": "pack_health_agent_heartbeat", "rows": rows_a_reordered}));
    assert_eq!(r["calls"][0]["code"], 0);
    assert_eq!(outbox_rows(&fx).len(), 1, "the digest survives a restart");
    assert_eq!(counter(&fx, "unchanged_snapshots"), 2);
    let r = core.cmd(json!({"cmd": "log_snapshot", "uuid": uuid, "name": "pack_health_agent_heartbeat", "rows": rows_b}));
    assert_eq!(r["calls"][0]["code"], 0);
    let rows = outbox_rows(&fx);
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[1].0, "snapshot");
    assert_eq!(rows[1].3, r["docs"][0].as_str().unwrap());
    let unchanged: i64 = fx
        .outbox()
        .query_row(
            "SELECT unchanged FROM snapshot_digests WHERE name = 'pack_health_agent_heartbeat'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(unchanged, 0, "a change resets the per-query count");
}

#[test]
fn a_quiet_queue_query_gets_heartbeats() {
    let fx = Fixture::new();
    std::fs::create_dir_all(fx.path().join("packs")).unwrap();
    std::fs::write(
        fx.path().join("packs/testpack.json"),
        r#"{"queries": {"quiet": {"query": "SELECT 1", "interval": 2},
                        "plain": {"query": "SELECT 2", "interval": 2}},
            "log_sensor": {"queue_queries": ["quiet"]}}"#,
    )
    .unwrap();
    let mut core = Standin::start(fx.path());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    core.cmd(json!({"cmd": "set_schedule", "rows": [
        {"name": "pack_testpack_quiet", "interval": 2, "last_executed": now},
        {"name": "pack_testpack_plain", "interval": 2, "last_executed": now}]}));
    let _ext = Ext::start(&core.socket, &fx.config(), &[]);
    let uuid = core.wait_registered();
    let heartbeat = poll("a heartbeat for pack_testpack_quiet", || {
        outbox_rows_when_ready(&fx)?
            .into_iter()
            .find(|r| r.0 == "heartbeat")
    });
    assert_eq!(heartbeat.1, "pack_testpack_quiet");
    let hb: Value = serde_json::from_str(&heartbeat.3).unwrap();
    assert_eq!(hb["action"], "heartbeat");
    assert_eq!(hb["name"], "pack_testpack_quiet");
    assert_eq!(hb["interval"], 2);
    assert_eq!(hb["rows"], 0);
    assert_eq!(hb["hostIdentifier"], "test-host");
    assert_eq!(hb["last_executed"], now);
    assert!(
        core.cmd(json!({"cmd": "schedule_queries"}))
            .as_i64()
            .unwrap()
            >= 1,
        "learned from osquery_schedule"
    );
    // A logger call for the query counts as activity; a query not marked as queue query never
    // gets heartbeats.
    let r = core.cmd(json!({"cmd": "log_results", "uuid": uuid, "name": "pack_testpack_quiet", "added": [{"a": "1"}]}));
    assert_eq!(r["calls"][0]["code"], 0);
    assert!(outbox_rows(&fx)
        .iter()
        .all(|r| r.1 != "pack_testpack_plain"));
    assert!(counter(&fx, "heartbeats") >= 1);
}

// ---------------------------------------------------------------------------------------------
// SQL shipped with the project

/// `CREATE TABLE` mirroring an extension table from its declared columns.
fn mirror(name: &str, columns: &[Column]) -> String {
    let cols: Vec<String> = columns
        .iter()
        .map(|c| {
            let t = match c.ctype {
                ColumnType::Text => "TEXT",
                ColumnType::Integer => "INTEGER",
                ColumnType::BigInt => "BIGINT",
                ColumnType::Double => "DOUBLE",
            };
            format!("{} {t}", c.name)
        })
        .collect();
    format!("CREATE TABLE {name} ({});", cols.join(", "))
}

#[test]
fn every_example_query_and_pack_query_prepares_against_the_tables() {
    let db = Connection::open_in_memory().unwrap();
    db.execute_batch(&mirror("log_sensor_streams", table::streams::COLUMNS))
        .unwrap();
    db.execute_batch(&mirror("log_sensor_alerts", table::alerts::COLUMNS))
        .unwrap();
    db.execute_batch(&mirror("log_sensor_config", table::config::COLUMNS))
        .unwrap();

    let mut checked = 0;
    let mut queries: Vec<PathBuf> = std::fs::read_dir(workspace().join("sql/queries"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "sql"))
        .collect();
    queries.sort();
    assert!(
        queries.len() >= 4,
        "sql/queries holds the README's examples"
    );
    for q in &queries {
        let sql = std::fs::read_to_string(q).unwrap();
        db.prepare(&sql)
            .unwrap_or_else(|e| panic!("{} does not prepare: {e}", q.display()));
        checked += 1;
    }

    let mut packs: Vec<PathBuf> = std::fs::read_dir(workspace().join("packs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    packs.sort();
    let stems: Vec<String> = packs
        .iter()
        .map(|p| p.file_stem().unwrap().to_string_lossy().into_owned())
        .collect();
    for want in ["health", "linux_syslog", "nginx", "java_app"] {
        assert!(
            stems.iter().any(|s| s == want),
            "packs/{want}.json is missing"
        );
    }
    for p in &packs {
        let pack: Value = serde_json::from_str(&std::fs::read_to_string(p).unwrap())
            .unwrap_or_else(|e| panic!("{} is not JSON: {e}", p.display()));
        let queries = pack["queries"]
            .as_object()
            .unwrap_or_else(|| panic!("{} has no queries", p.display()));
        for (name, q) in queries {
            // osquery's pack rules (osquery/config/packs.cpp): a query, 0 < interval <= 604800.
            let sql = q["query"]
                .as_str()
                .unwrap_or_else(|| panic!("{}: {name} has no query", p.display()));
            let interval = q["interval"]
                .as_u64()
                .unwrap_or_else(|| panic!("{}: {name} has no numeric interval", p.display()));
            assert!(
                interval > 0 && interval <= 604_800,
                "{}: {name} interval {interval}",
                p.display()
            );
            if sql.contains("log_sensor_") {
                db.prepare(sql).unwrap_or_else(|e| {
                    panic!("{}: query {name} does not prepare: {e}", p.display())
                });
                checked += 1;
            }
        }
        let ls = &pack["log_sensor"];
        assert!(ls.is_object(), "{} has no log_sensor section", p.display());
        for q in ls["queue_queries"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
        {
            let q = q.as_str().unwrap();
            assert!(
                queries.contains_key(q),
                "{}: queue query {q} is not one of the pack's queries",
                p.display()
            );
        }
        for (source, s) in ls["sources"]
            .as_object()
            .map(|m| m.iter().collect::<Vec<_>>())
            .unwrap_or_default()
        {
            let paths = s["paths"]
                .as_array()
                .unwrap_or_else(|| panic!("{}: source {source} has no paths", p.display()));
            assert!(!paths.is_empty());
            if let Some(re) = s.get("break_before").and_then(Value::as_str) {
                assert!(!re.is_empty());
            }
        }
    }
    assert!(checked >= 10, "only {checked} queries checked");
}

#[test]
fn the_readme_documents_the_tables_as_declared() {
    let readme = std::fs::read_to_string(workspace().join("extension/README.md")).unwrap();
    let spec = table::spec_markdown();
    assert!(
        readme.contains(&spec),
        "extension/README.md is out of date: paste the output of `log-sensor-extension --spec`"
    );
    let out = Command::new(env!("CARGO_BIN_EXE_log-sensor-extension"))
        .arg("--spec")
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(String::from_utf8(out.stdout).unwrap(), spec);
}

#[test]
fn the_install_script_makes_a_file_osquery_will_autoload() {
    use std::os::unix::fs::PermissionsExt;
    let fx = Fixture::new();
    let dir = fx.path().join("lib");
    let load = fx.path().join("osquery/extensions.load");
    for _ in 0..2 {
        let out = Command::new("bash")
            .arg(workspace().join("extension/install.sh"))
            .arg("--binary")
            .arg(env!("CARGO_BIN_EXE_log-sensor-extension"))
            .arg("--dir")
            .arg(&dir)
            .arg("--load-file")
            .arg(&load)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let ext = dir.join("log_sensor.ext");
    let mode = std::fs::metadata(&ext).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o755, "executable, not writable by others");
    assert_eq!(
        std::fs::metadata(&dir).unwrap().permissions().mode() & 0o1022,
        0,
        "no sticky bit, not group/world-writable"
    );
    let lines = std::fs::read_to_string(&load).unwrap();
    assert_eq!(
        lines.lines().collect::<Vec<_>>(),
        [ext.to_str().unwrap()],
        "listed once"
    );
    // A sticky folder such as /tmp is refused, as osquery would refuse the file.
    let out = Command::new("bash")
        .arg(workspace().join("extension/install.sh"))
        .args([
            "--binary",
            env!("CARGO_BIN_EXE_log-sensor-extension"),
            "--dir",
            "/tmp",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("sticky bit"));
}

/// The whole way: osquery's logger call → the extension's outbox → the agent → its sink.
#[test]
fn what_osquery_logs_reaches_the_agents_sink_through_the_outbox() {
    let fx = Fixture::new();
    // Records go to a file here, so the test reads what the agent shipped.
    let mut text = std::fs::read_to_string(fx.config()).unwrap();
    text.push_str(
        "\n[batch]\nmax_wait = \"100ms\"\n[sink]\ntype = \"file\"\npath = \"state/out.ndjson\"\n",
    );
    std::fs::write(fx.config(), text).unwrap();
    let agent = Agent::start(&fx);
    let (mut core, _ext, uuid) = started(&fx, &[]);
    core.cmd(json!({"cmd": "logger_init", "uuid": uuid}));
    let ev = core.cmd(
        json!({"cmd": "log_results", "uuid": uuid, "name": "pack_nginx_errors", "mode": "event",
        "added": [{"line": "a"}, {"line": "b"}], "removed": [{"line": "old"}]}),
    );
    for call in ev["calls"].as_array().unwrap() {
        assert_eq!(call["code"], 0, "{call}");
    }
    let docs: Vec<String> = ev["docs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_str().unwrap().to_string())
        .collect();
    assert_eq!(docs.len(), 3);
    let out = fx.state().join("out.ndjson");
    let shipped = poll("osquery's results in the agent's sink", || {
        let text = std::fs::read_to_string(&out).unwrap_or_default();
        let recs: Vec<Value> = text
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .filter(|r: &Value| r["source"] == "osquery")
            .collect();
        (recs.len() >= docs.len()).then_some(recs)
    });
    for (rec, doc) in shipped.iter().zip(&docs) {
        assert_eq!(
            rec["msg"].as_str().unwrap(),
            doc,
            "byte for byte, in order:\n{}",
            agent.log()
        );
        assert_eq!(rec["stream"], "pack_nginx_errors");
        assert_eq!(rec["host"], "test-host");
    }
    poll("the outbox emptied after acknowledgement", || {
        (outbox_rows(&fx).is_empty()).then_some(())
    });
    // The agent's deletes keep the count the logger's cap check reads (sql/outbox.sql triggers).
    let size: i64 = fx
        .outbox()
        .query_row("SELECT rows FROM outbox_size", [], |r| r.get(0))
        .unwrap();
    assert_eq!(size, 0);
}
