//! End-to-end tests of the `log-sensor` agent: the real binary on real files, with real
//! rotations, crashes and bad input. Each asserts what a user would check in the output file.

#[path = "support/mod.rs"]
mod support;
#[path = "support/tmpfs.rs"]
mod tmpfs;

use serde_json::Value;
use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;
use support::*;

type Env = AgentEnv;

fn lines(prefix: &str, n: usize) -> Vec<String> {
    (0..n)
        .map(|i| format!("{prefix} line {i:05} {}", "y".repeat(i % 40)))
        .collect()
}

fn gzip(src: &Path, dst: &Path) {
    let data = std::fs::read(src).unwrap();
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(&data).unwrap();
    std::fs::write(dst, enc.finish().unwrap()).unwrap();
    std::fs::remove_file(src).unwrap();
}

fn count_by_msg(records: &[Value]) -> HashMap<String, usize> {
    let mut m = HashMap::new();
    for r in records {
        if let Some(s) = r["msg"].as_str() {
            *m.entry(s.to_string()).or_insert(0) += 1;
        }
    }
    m
}

#[test]
fn rename_rotation_drains_the_old_file_and_follows_the_new_one() {
    let env = Env::new(r#"paths = ["logs/app.log"]"#);
    let log = env.p("logs/app.log");
    let first = lines("first", 300);
    append_lines(&log, &first);
    let agent = env.start();
    env.wait_msgs(&agent, &first);
    // The writer keeps its handle after the rename and writes a little more: still shipped.
    let mut old = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
    std::fs::rename(&log, env.p("logs/app.log.1")).unwrap();
    let late = lines("late", 5);
    for l in &late {
        writeln!(old, "{l}").unwrap();
    }
    let second = lines("second", 200);
    append_lines(&log, &second);
    env.wait_msgs(
        &agent,
        &[first.clone(), late.clone(), second.clone()].concat(),
    );
    let counts = count_by_msg(&env.records());
    assert!(
        counts.values().all(|&c| c == 1),
        "no duplicates without a crash"
    );
    // Two streams: the rotated one and the new one.
    let streams: HashSet<String> = env
        .records()
        .iter()
        .map(|r| r["stream"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(streams.len(), 2);
}

#[test]
fn copytruncate_starts_again_from_zero_as_a_new_stream() {
    let env = Env::new(r#"paths = ["logs/app.log"]"#);
    let log = env.p("logs/app.log");
    let before = lines("before", 200);
    append_lines(&log, &before);
    let agent = env.start();
    env.wait_msgs(&agent, &before);
    std::fs::copy(&log, env.p("logs/app.log.1")).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&log)
        .unwrap()
        .set_len(0)
        .unwrap();
    let after = lines("after", 50);
    append_lines(&log, &after);
    env.wait_msgs(&agent, &after);
    let recs = env.records();
    let first_after = recs.iter().find(|r| r["msg"] == after[0].as_str()).unwrap();
    assert_eq!(first_after["offset"], 0, "reading starts again from 0");
    let first_before = recs
        .iter()
        .find(|r| r["msg"] == before[0].as_str())
        .unwrap();
    assert_ne!(
        first_after["stream"], first_before["stream"],
        "new content is a new stream (so offsets stay unique per stream)"
    );
    assert!(count_by_msg(&recs).values().all(|&c| c == 1));
}

#[test]
fn same_size_rewrite_is_seen_as_truncation() {
    let env = Env::new(r#"paths = ["logs/app.log"]"#);
    let log = env.p("logs/app.log");
    let a = lines("aaaa", 100);
    append_lines(&log, &a);
    let agent = env.start();
    env.wait_msgs(&agent, &a);
    let mut agent = agent;
    agent.signal(libc::SIGTERM);
    assert_eq!(agent.wait_exit(PATIENCE), Some(0));
    // Rewritten while the agent was down: same size, different content.
    let b = lines("bbbb", 100);
    std::fs::remove_file(&log).ok();
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .open(&log)
        .unwrap();
    f.write_all(
        b.iter()
            .map(|l| format!("{l}\n"))
            .collect::<String>()
            .as_bytes(),
    )
    .unwrap();
    drop(f);
    let agent = env.start();
    env.wait_msgs(&agent, &b);
}

#[test]
fn gzip_rotated_file_is_recognised_and_only_its_unread_part_shipped() {
    let env = Env::new(r#"paths = ["logs/app.log", "logs/app.log.*.gz"]"#);
    let log = env.p("logs/app.log");
    let read = lines("read", 200);
    append_lines(&log, &read);
    let mut agent = env.start();
    env.wait_msgs(&agent, &read);
    agent.signal(libc::SIGTERM);
    assert_eq!(agent.wait_exit(PATIENCE), Some(0));
    let stream = env.records()[0]["stream"].as_str().unwrap().to_string();
    // While the agent is down: more lines, then logrotate renames and compresses.
    let unread = lines("unread", 30);
    append_lines(&log, &unread);
    std::fs::rename(&log, env.p("logs/app.log.1")).unwrap();
    gzip(&env.p("logs/app.log.1"), &env.p("logs/app.log.1.gz"));
    let fresh = lines("fresh", 10);
    append_lines(&log, &fresh);
    let agent = env.start();
    env.wait_msgs(&agent, &[unread.clone(), fresh.clone()].concat());
    let recs = env.records();
    let counts = count_by_msg(&recs);
    assert!(
        read.iter().all(|l| counts[l] == 1),
        "the part already read is not shipped again"
    );
    for l in &unread {
        let r = recs.iter().find(|r| r["msg"] == l.as_str()).unwrap();
        assert_eq!(
            r["stream"],
            stream.as_str(),
            "the archive continues the same stream"
        );
        assert!(r["path"].as_str().unwrap().ends_with("app.log.1.gz"));
    }
    let rows = env.query(&format!(
        "SELECT state, compressed FROM streams WHERE stream = '{stream}'"
    ));
    wait_for("archive marked done", PATIENCE, || {
        env.query(&format!(
            "SELECT state FROM streams WHERE stream = '{stream}'"
        ))[0]["state"]
            == "done"
    });
    assert_eq!(rows[0]["compressed"], 1);
}

#[test]
fn live_rename_then_gzip_ships_everything_once() {
    let env = Env::new(r#"paths = ["logs/app.log", "logs/app.log.*.gz"]"#);
    let log = env.p("logs/app.log");
    let a = lines("a", 100);
    append_lines(&log, &a);
    let agent = env.start();
    env.wait_msgs(&agent, &a);
    std::fs::rename(&log, env.p("logs/app.log.1")).unwrap();
    gzip(&env.p("logs/app.log.1"), &env.p("logs/app.log.1.gz"));
    let b = lines("b", 100);
    append_lines(&log, &b);
    env.wait_msgs(&agent, &b);
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        count_by_msg(&env.records()).values().all(|&c| c == 1),
        "the archive adds nothing already shipped"
    );
}

#[test]
fn a_small_file_is_shipped_at_once_then_promoted_keeping_its_stream() {
    let env = Env::new(r#"paths = ["logs/app.log"]"#);
    let log = env.p("logs/app.log");
    append_lines(&log, &["tiny".to_string()]);
    let agent = env.start();
    env.wait_msgs(&agent, &["tiny".to_string()]);
    let first = env.records()[0].clone();
    assert!(
        first.get("fingerprint").is_none(),
        "no fingerprint while shorter than 1024 bytes: {first}"
    );
    let more = lines("more", 60);
    append_lines(&log, &more);
    env.wait_msgs(&agent, &more);
    let last = env.records().last().unwrap().clone();
    assert_eq!(
        last["stream"], first["stream"],
        "promotion keeps the stream id"
    );
    assert!(
        last["fingerprint"]
            .as_str()
            .map(|s| s.len() == 16)
            .unwrap_or(false),
        "fingerprint after promotion: {last}"
    );
    let rows = env.query("SELECT fingerprint, committed_offset FROM streams");
    assert_eq!(rows.len(), 1);
    assert!(rows[0]["fingerprint"].is_string());
}

#[test]
fn two_files_with_a_shared_header_are_both_shipped_whole() {
    let env = Env::new(r#"paths = ["logs/*.csv"]"#);
    let header = format!("{}\n", "id,name,value,".repeat(100)); // 1500 bytes: more than N
    let a: Vec<String> = (0..50).map(|i| format!("a,{i}")).collect();
    let b: Vec<String> = (0..50).map(|i| format!("b,{i}")).collect();
    for (name, rows) in [("a.csv", &a), ("b.csv", &b)] {
        let mut text = header.clone();
        for r in rows {
            text.push_str(r);
            text.push('\n');
        }
        std::fs::write(env.p(&format!("logs/{name}")), text).unwrap();
    }
    let agent = env.start();
    env.wait_msgs(&agent, &[a.clone(), b.clone()].concat());
    let recs = env.records();
    let sa = recs.iter().find(|r| r["msg"] == "a,0").unwrap()["stream"].clone();
    let sb = recs.iter().find(|r| r["msg"] == "b,0").unwrap()["stream"].clone();
    assert_ne!(sa, sb, "kept apart");
    assert_eq!(
        recs.iter()
            .filter(|r| r["msg"]
                .as_str()
                .map(|m| m.starts_with("id,name"))
                .unwrap_or(false))
            .count(),
        2,
        "each header shipped once per file"
    );
    let alerts = env.query("SELECT kind FROM alerts WHERE kind = 'fingerprint_collision'");
    assert_eq!(alerts.len(), 1, "the collision is counted");
}

#[test]
fn kill_9_mid_stream_loses_nothing_and_duplicates_only_the_unacknowledged() {
    let env = Env::new(r#"paths = ["logs/app.log"]"#);
    let log = env.p("logs/app.log");
    let all = lines("k", 60_000);
    append_lines(&log, &all[..20_000]);
    let agent = env.start();
    // Let it ship part of the file, then kill it without warning.
    wait_for("some records shipped", PATIENCE, || {
        env.records().len() > 1_000
    });
    append_lines(&log, &all[20_000..40_000]);
    let mut agent = agent;
    agent.signal(libc::SIGKILL);
    agent.wait_exit(PATIENCE);
    let committed = env.query("SELECT committed_offset FROM streams")[0]["committed_offset"]
        .as_u64()
        .unwrap();
    let shipped_before = env.records().len();
    append_lines(&log, &all[40_000..]);
    let agent = env.start();
    env.wait_msgs(&agent, &all);
    let recs = env.records();
    let written: HashSet<&str> = all.iter().map(String::as_str).collect();
    for r in &recs {
        assert!(
            written.contains(r["msg"].as_str().unwrap()),
            "invented record {r}"
        );
    }
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for r in &recs {
        *seen.entry(r["msg"].as_str().unwrap()).or_default() += 1;
    }
    for r in &recs {
        if seen[r["msg"].as_str().unwrap()] > 1 {
            assert!(
                r["offset"].as_u64().unwrap() >= committed,
                "a duplicate from before the committed offset {committed}: {r}"
            );
        }
    }
    assert!(shipped_before < recs.len());
}

#[test]
fn a_1_gib_line_without_delimiter_is_cut_in_bounded_memory() {
    let env = Env::new(r#"paths = ["logs/huge.log"]"#);
    let log = env.p("logs/huge.log");
    let f = std::fs::File::create(&log).unwrap();
    // A sparse gigabyte of NUL bytes: no delimiter anywhere.
    f.set_len(1 << 30).unwrap();
    drop(f);
    // The delimiter that ends the gigabyte, then a normal line.
    append_lines(&log, &[String::new(), "after".to_string()]);
    let agent = env.start();
    env.wait_msgs(&agent, &["after".to_string()]);
    let recs = env.records();
    let head = recs
        .iter()
        .find(|r| r["part"] == "head")
        .expect("head part");
    let tail = recs
        .iter()
        .find(|r| r["part"] == "tail")
        .expect("tail part");
    assert_eq!(head["len"], 1u64 << 30);
    assert_eq!(tail["len"], 1u64 << 30);
    assert_eq!(head["offset"], 0);
    assert_eq!(tail["offset"], (1u64 << 30) - 65536);
    assert_eq!(head["msg"].as_str().unwrap().len(), 65536);
    let rss = agent.peak_rss_kib();
    assert!(
        rss > 0 && rss < 64 * 1024,
        "peak RSS {rss} KiB for a 1 GiB line"
    );
    // Counted when committed, just after the sink wrote it.
    wait_for("the over-long record counted", PATIENCE, || {
        env.query("SELECT overlong_records FROM streams")[0]["overlong_records"] == 1
    });
}

#[test]
fn java_stack_traces_become_one_record_each() {
    let env = Env::new(
        r#"paths = ["logs/app.log"]
break_before = '^\d{4}-\d{2}-\d{2} '
multiline_timeout = "300ms""#,
    );
    let text = "2026-11-26 10:00:00 ERROR boom\njava.lang.IllegalStateException: bad\n\tat a.B.c(B.java:10)\n\tat a.D.e(D.java:20)\nCaused by: java.io.IOException: disk\n\t... 2 more\n2026-11-26 10:00:01 INFO fine\n";
    std::fs::write(env.p("logs/app.log"), text).unwrap();
    let agent = env.start();
    let first = "2026-11-26 10:00:00 ERROR boom\njava.lang.IllegalStateException: bad\n\tat a.B.c(B.java:10)\n\tat a.D.e(D.java:20)\nCaused by: java.io.IOException: disk\n\t... 2 more";
    // The last record has no successor: the multiline timeout flushes it.
    env.wait_msgs(
        &agent,
        &[
            first.to_string(),
            "2026-11-26 10:00:01 INFO fine".to_string(),
        ],
    );
    assert_eq!(env.records().len(), 2);
}

#[test]
fn permission_denied_is_alerted_then_shipped_once_readable() {
    let env = Env::new(r#"paths = ["logs/*.log"]"#);
    let secret = env.p("logs/secret.log");
    let content = lines("secret", 10);
    append_lines(&secret, &content);
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o000)).unwrap();
    let mut cmd = env.cmd();
    cmd.arg("run");
    if is_root() {
        // Root reads anything: run the agent as nobody so the permission applies.
        chown_tree(env.dir.path(), NOBODY);
        std::os::unix::process::CommandExt::uid(&mut cmd, NOBODY);
        std::os::unix::process::CommandExt::gid(&mut cmd, NOBODY);
        std::fs::set_permissions(env.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let agent = Proc::spawn("log-sensor", &mut cmd, &env.p("agent.err"));
    wait_for("a permission_denied alert", PATIENCE, || {
        env.try_query("SELECT path FROM alerts WHERE kind = 'permission_denied'")
            .map(|rows| {
                rows.iter().any(|a| {
                    a["path"]
                        .as_str()
                        .map(|p| p.ends_with("secret.log"))
                        .unwrap_or(false)
                })
            })
            .unwrap_or(false)
    });
    assert!(env.msgs().is_empty());
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o644)).unwrap();
    env.wait_msgs(&agent, &content);
}

#[test]
fn binary_garbage_is_kept_exactly() {
    let env = Env::new(r#"paths = ["logs/bin.log"]"#);
    let garbage: Vec<u8> = (0..=255u8).filter(|&b| b != b'\n').collect();
    let mut data = garbage.clone();
    data.push(b'\n');
    data.extend_from_slice(b"ok\x00nul\n");
    std::fs::write(env.p("logs/bin.log"), &data).unwrap();
    let agent = env.start();
    env.wait_msgs(&agent, &["ok\u{0}nul".to_string()]);
    use base64::Engine;
    let recs = env.records();
    let b64 = recs
        .iter()
        .find_map(|r| r["msg_b64"].as_str())
        .expect("msg_b64 record");
    let back = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .unwrap();
    assert_eq!(back, garbage);
}

#[test]
fn sigterm_commits_and_exits_zero_and_restart_resends_nothing() {
    let env = Env::new(r#"paths = ["logs/app.log"]"#);
    let a = lines("t", 500);
    append_lines(&env.p("logs/app.log"), &a);
    let mut agent = env.start();
    env.wait_msgs(&agent, &a);
    agent.signal(libc::SIGTERM);
    assert_eq!(agent.wait_exit(PATIENCE), Some(0));
    let rows = env.query("SELECT committed_offset, size, records FROM streams");
    assert_eq!(rows[0]["committed_offset"], rows[0]["size"]);
    assert_eq!(rows[0]["records"], 500);
    let b = lines("u", 5);
    append_lines(&env.p("logs/app.log"), &b);
    let agent = env.start();
    env.wait_msgs(&agent, &b);
    assert_eq!(
        env.records().len(),
        505,
        "nothing re-sent after a clean stop"
    );
    // While it runs, the size a commit writes is the file's, not the one from before the
    // read it commits (which made `size` trail `committed_offset`, and lag read 0).
    let c = lines("v", 5);
    append_lines(&env.p("logs/app.log"), &c);
    env.wait_msgs(&agent, &c);
    let file_len = std::fs::metadata(env.p("logs/app.log")).unwrap().len();
    wait_for("the commit of the new lines", PATIENCE, || {
        let rows = env.query("SELECT committed_offset, size FROM streams");
        rows[0]["committed_offset"] == file_len
    });
    let rows = env.query("SELECT committed_offset, size FROM streams");
    assert_eq!(rows[0]["size"], file_len, "{rows:?}");
}

#[test]
fn a_folder_created_later_is_picked_up() {
    let env = Env::new(r#"paths = ["logs/later/deeper/*.log"]"#);
    let agent = env.start();
    wait_for("agent started", PATIENCE, || {
        env.p("state/store.db").exists()
    });
    std::fs::create_dir_all(env.p("logs/later/deeper")).unwrap();
    let a = lines("later", 3);
    append_lines(&env.p("logs/later/deeper/x.log"), &a);
    env.wait_msgs(&agent, &a);
}

#[test]
fn a_deleted_file_is_drained_and_closed() {
    let env = Env::new(r#"paths = ["logs/*.log"]"#);
    let log = env.p("logs/gone.log");
    let a = lines("gone", 100);
    append_lines(&log, &a);
    let agent = env.start();
    env.wait_msgs(&agent, &a);
    std::fs::remove_file(&log).unwrap();
    let fd_dir = format!("/proc/{}/fd", agent.pid());
    wait_for("the deleted file's descriptor closed", PATIENCE, || {
        std::fs::read_dir(&fd_dir).unwrap().flatten().all(|e| {
            std::fs::read_link(e.path())
                .map(|t| !t.to_string_lossy().contains("gone.log"))
                .unwrap_or(true)
        })
    });
}

#[test]
fn a_second_agent_on_the_same_state_dir_is_refused() {
    let env = Env::new(r#"paths = ["logs/*.log"]"#);
    let first = env.start();
    wait_for("first agent running", PATIENCE, || {
        env.p("state/agent.lock").exists() && env.p("state/store.db").exists()
    });
    let out = env.cmd().arg("run").output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("in use") && err.contains(&first.pid().to_string()),
        "{err}"
    );
}

#[test]
fn a_corrupt_store_is_refused_and_left_untouched() {
    let env = Env::new(r#"paths = ["logs/*.log"]"#);
    std::fs::create_dir_all(env.p("state")).unwrap();
    let junk = vec![0xA5u8; 16384];
    std::fs::write(env.p("state/store.db"), &junk).unwrap();
    let out = env.cmd().arg("run").output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("store.db") && err.contains("refusing to start"),
        "{err}"
    );
    assert_eq!(std::fs::read(env.p("state/store.db")).unwrap(), junk);
}

#[test]
fn check_names_each_key_at_fault() {
    let env = Env::with_config(
        r#"
state_dir = "state"
surprise = 1
[defaults]
max_record_bytes = "lots"
[sources.app]
paths = ["logs/*.log"]
break_before = "([unclosed"
[sink]
type = "file"
"#,
    );
    let out = env.cmd().arg("check").output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    for key in [
        "surprise: unknown key",
        "defaults.max_record_bytes",
        "sources.app.break_before: bad regex",
        "sink.path",
    ] {
        assert!(err.contains(key), "missing {key:?} in:\n{err}");
    }
    let good = Env::new(r#"paths = ["logs/*.log"]"#);
    let out = good.cmd().arg("check").output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let missing = Command::new(bin("log-sensor"))
        .args(["-c", "/nonexistent/agent.toml", "check"])
        .output()
        .unwrap();
    assert_eq!(missing.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("/nonexistent/agent.toml"));
}

#[test]
fn the_example_config_from_the_issue_works_as_written() {
    let env = Env::with_config(include_str!("../examples/issue-example.toml"));
    std::fs::create_dir_all(env.p("logs/app")).unwrap();
    std::fs::write(
        env.p("logs/app/a.log"),
        "2026-01-01 one\n  more\n2026-01-01 two\n",
    )
    .unwrap();
    std::fs::write(env.p("logs/app/skip.tmp"), "2026-01-01 no\n").unwrap();
    let agent = env.start();
    env.wait_msgs(&agent, &["2026-01-01 one\n  more".to_string()]);
    let r = &env.records()[0];
    for field in [
        "host", "source", "stream", "path", "offset", "len", "part", "ts", "msg",
    ] {
        assert!(r.get(field).is_some(), "record lacks {field}: {r}");
    }
    assert!(!env.msgs().iter().any(|m| m.contains("no")));
}

/// An agent whose one sink is stdout, in batches of 1,000.
const STDOUT_SINK: &str = r#"
state_dir = "state"
[sources.app]
paths = ["logs/*.log"]
[batch]
max_wait = "100ms"
max_records = 1000
[sink]
type = "stdout"
"#;

/// Starts the agent with its stdout a pipe that nobody reads until [`read_stdout`].
fn run_piped(env: &Env, stderr: &str) -> Proc {
    let mut cmd = env.cmd();
    cmd.arg("run").stdout(std::process::Stdio::piped());
    Proc::spawn("log-sensor", &mut cmd, &env.p(stderr))
}

/// Reads the agent's stdout to its end on a thread → the `msg` of each record.
fn read_stdout(agent: &mut Proc) -> std::thread::JoinHandle<HashSet<String>> {
    let mut out = agent.child.stdout.take().unwrap();
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        std::io::Read::read_to_end(&mut out, &mut buf).unwrap();
        buf.split(|&b| b == b'\n')
            .filter_map(|l| serde_json::from_slice::<Value>(l).ok())
            .map(|v| v["msg"].as_str().unwrap().to_string())
            .collect()
    })
}

/// Records committed, over every stream.
fn committed_records(env: &Env) -> usize {
    env.query("SELECT COALESCE(SUM(records), 0) AS n FROM streams")[0]["n"]
        .as_u64()
        .unwrap() as usize
}

#[test]
fn a_blocked_sink_stops_reading_and_loses_nothing() {
    let env = Env::with_config(STDOUT_SINK);
    let a = lines("bp", 100_000);
    append_lines(&env.p("logs/app.log"), &a);
    let mut agent = run_piped(&env, "agent.err");
    // Nobody reads stdout yet: the pipe fills, the sink blocks, reading stops.
    std::thread::sleep(Duration::from_secs(2));
    let stalled = committed_records(&env);
    assert!(
        stalled < 100_000,
        "a blocked sink must hold back commits ({stalled})"
    );
    assert!(agent.peak_rss_kib() < 64 * 1024);
    let reader = read_stdout(&mut agent);
    wait_for("all records committed", PATIENCE, || {
        committed_records(&env) == 100_000
    });
    agent.signal(libc::SIGTERM);
    agent.wait_exit(PATIENCE);
    assert_eq!(reader.join().unwrap().len(), 100_000);
}

/// A sink stuck in a write that never returns (stdout into a pipe nobody reads) raised no
/// error: status said "ok" and a stop waited for ever. Now the sink shows as failing once the
/// write has lasted 10 s, and a stop exits past its limit (20 s), losing nothing: the next
/// start ships what was not acknowledged.
#[test]
fn a_sink_stuck_in_a_write_shows_as_failing_and_does_not_hold_the_stop() {
    let env = Env::with_config(STDOUT_SINK);
    let a = lines("stuck", 20_000);
    append_lines(&env.p("logs/app.log"), &a);
    let mut agent = run_piped(&env, "agent.err");
    let sink = || -> Option<Value> {
        let out = env.cmd().args(["status", "--json"]).output().ok()?;
        let st: Value = serde_json::from_slice(&out.stdout).ok()?;
        Some(st["sinks"][0].clone())
    };
    wait_for("the stuck sink failing", PATIENCE, || {
        sink().is_some_and(|s| {
            s["state"] == "failing"
                && s["last_error"]
                    .as_str()
                    .is_some_and(|e| e.contains("has not returned"))
        })
    });
    let asked = std::time::Instant::now();
    agent.signal(libc::SIGTERM);
    assert_eq!(agent.wait_exit(Duration::from_secs(60)), Some(0));
    assert!(
        asked.elapsed() >= Duration::from_secs(15),
        "it waited its limit first"
    );
    let err = agent.stderr_text();
    assert!(
        err.contains("did not finish in time") && err.contains("default (in one send"),
        "{}",
        tail(&err)
    );
    // Nothing lost: what the pipe took was acknowledged (and goes with the pipe); the next
    // start sends everything after that.
    let first = committed_records(&env);
    assert!(first < a.len(), "the stuck batch was not committed");
    drop(agent.child.stdout.take());
    let mut agent = run_piped(&env, "agent2.err");
    let reader = read_stdout(&mut agent);
    wait_for("all records committed", PATIENCE, || {
        committed_records(&env) == a.len()
    });
    agent.signal(libc::SIGTERM);
    assert_eq!(agent.wait_exit(PATIENCE), Some(0));
    let shipped = reader.join().unwrap();
    let missing: Vec<&String> = a[first..]
        .iter()
        .filter(|m| !shipped.contains(*m))
        .collect();
    assert!(
        missing.is_empty(),
        "{} not shipped, e.g. {:?}",
        missing.len(),
        missing.first()
    );
}

#[test]
fn query_prints_a_table() {
    let env = Env::new(r#"paths = ["logs/*.log"]"#);
    append_lines(&env.p("logs/a.log"), &lines("q", 3));
    let agent = env.start();
    env.wait_msgs(&agent, &lines("q", 3));
    let out = env
        .cmd()
        .args(["query", "SELECT source, records FROM streams"])
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.lines().next().unwrap().starts_with("source | records"),
        "{text}"
    );
    assert!(text.contains("app"));
    let bad = env
        .cmd()
        .args(["query", "DELETE FROM streams"])
        .output()
        .unwrap();
    assert_eq!(
        bad.status.code(),
        Some(1),
        "the store is read-only to queries"
    );
}

#[test]
fn a_file_past_max_file_bytes_raises_one_alert_and_is_still_read() {
    let env = Env::new(
        r#"paths = ["logs/big.log"]
max_file_bytes = "1KiB""#,
    );
    let a = lines("big", 100);
    append_lines(&env.p("logs/big.log"), &a);
    let agent = env.start();
    env.wait_msgs(&agent, &a);
    let b = lines("bigger", 50);
    append_lines(&env.p("logs/big.log"), &b);
    env.wait_msgs(&agent, &b);
    let alerts = env.query("SELECT stream, detail FROM alerts WHERE kind = 'file_too_large'");
    assert_eq!(alerts.len(), 1, "once per stream: {alerts:?}");
    assert!(alerts[0]["detail"]
        .as_str()
        .unwrap()
        .contains("max_file_bytes"));
}

#[test]
fn the_osquery_outbox_is_shipped_and_emptied_only_after_acknowledgement() {
    let env = Env::new(r#"paths = ["logs/*.log"]"#);
    let agent = env.start();
    wait_for("agent up", PATIENCE, || env.p("state/store.db").exists());
    // The extension's logger creates the outbox later, while the agent runs.
    let outbox = rusqlite::Connection::open(env.p("state/osquery-outbox.db")).unwrap();
    outbox
        .execute_batch(include_str!("../sql/outbox.sql"))
        .unwrap();
    let docs: Vec<String> = (0..50).map(|i| format!(r#"{{"name":"pack_health_lag","hostIdentifier":"h","columns":{{"n":"{i}"}},"action":"added"}}"#)).collect();
    for d in &docs {
        outbox.execute("INSERT INTO outbox(time, kind, name, record) VALUES (1, 'result', 'pack_health_lag', ?1)", [d]).unwrap();
    }
    env.wait_msgs(&agent, &docs);
    let rec = env
        .records()
        .into_iter()
        .find(|r| r["msg"] == docs[0].as_str())
        .unwrap();
    assert_eq!(rec["source"], "osquery");
    assert_eq!(rec["stream"], "pack_health_lag");
    wait_for("the outbox emptied", PATIENCE, || {
        outbox
            .query_row("SELECT count(*) FROM outbox", [], |r| r.get::<_, i64>(0))
            .unwrap()
            == 0
    });
    // Stop the agent: rows queued meanwhile wait in the outbox and go at the next start.
    let mut agent = agent;
    agent.signal(libc::SIGTERM);
    assert_eq!(agent.wait_exit(PATIENCE), Some(0));
    outbox.execute("INSERT INTO outbox(time, kind, name, record) VALUES (2, 'status', 'osquery_status', '{\"s\":1}')", []).unwrap();
    let agent = env.start();
    env.wait_msgs(&agent, &["{\"s\":1}".to_string()]);
    assert_eq!(
        env.records()
            .iter()
            .filter(|r| r["source"] == "osquery")
            .count(),
        51,
        "each row once"
    );
}

#[test]
fn a_file_sink_on_a_full_disk_keeps_every_line_whole() {
    // The sink's folder is a 64 KiB tmpfs: the first batch (~700 KB of NDJSON) is cut short by
    // ENOSPC part-way through a line, then refused; space comes back while the agent retries.
    let fs = tmpfs::Tmpfs::new(64 << 10);
    let out = fs.path().join("out.ndjson");
    let env = Env::with_config(&format!(
        r#"
state_dir = "state"
[sources.app]
paths = ["logs/app.log"]
[batch]
max_wait = "100ms"
[sink]
type = "file"
path = "{}"
"#,
        out.display()
    ));
    let all = lines("full", 3000);
    append_lines(&env.p("logs/app.log"), &all);
    let agent = env.start();
    wait_for("a sink_error alert for the full disk", PATIENCE, || {
        env.try_query("SELECT detail FROM alerts WHERE kind = 'sink_error'")
            .is_ok_and(|a| !a.is_empty())
    });
    fs.resize(16 << 20);
    wait_for(
        &format!(
            "every record in the sink; agent stderr:\n{}",
            tail(&agent.stderr_text())
        ),
        PATIENCE,
        || read_ndjson(&out).len() >= all.len(),
    );
    let text = std::fs::read(&out).unwrap();
    assert!(text.ends_with(b"\n"));
    let torn: Vec<String> = text
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty() && serde_json::from_slice::<Value>(l).is_err())
        .map(|l| String::from_utf8_lossy(&l[..l.len().min(200)]).into_owned())
        .collect();
    assert!(torn.is_empty(), "lines that are not JSON: {torn:?}");
    let counts = count_by_msg(&read_ndjson(&out));
    assert_eq!(counts.len(), all.len());
    assert!(
        counts.values().all(|&c| c == 1),
        "a failed batch is cut off, not kept beside its retry"
    );
}

#[test]
fn a_line_torn_by_a_crash_is_cut_off_the_sink_file_at_start() {
    // A kill -9 or power loss in the middle of a write leaves a batch's head without its end;
    // that batch was never acknowledged, so it comes again and the fragment must not stay.
    let env = Env::new(r#"paths = ["logs/app.log"]"#);
    std::fs::create_dir_all(env.p("state")).unwrap();
    let kept = "{\"msg\":\"earlier 1\"}\n{\"msg\":\"earlier 2\"}\n";
    std::fs::write(
        env.p("state/out.ndjson"),
        format!("{kept}{{\"host\":\"test-host\",\"msg\":\"half"),
    )
    .unwrap();
    let all = lines("after the crash", 20);
    append_lines(&env.p("logs/app.log"), &all);
    let _agent = env.start();
    wait_for("the 20 records committed", PATIENCE, || {
        env.try_query("SELECT COALESCE(SUM(records), 0) AS n FROM streams")
            .is_ok_and(|r| r[0]["n"] == 20)
    });
    let text = std::fs::read_to_string(env.p("state/out.ndjson")).unwrap();
    assert!(text.starts_with(kept), "whole lines stay: {text:.200}");
    for l in text.lines() {
        assert!(
            serde_json::from_str::<Value>(l).is_ok(),
            "not JSON: {l:.200}"
        );
    }
    assert_eq!(text.lines().count(), 2 + all.len());
}

#[test]
fn an_empty_store_is_refused_and_only_a_missing_one_starts_afresh() {
    let env = Env::new(r#"paths = ["logs/app.log"]"#);
    let all = lines("once", 50);
    append_lines(&env.p("logs/app.log"), &all);
    let (db, wal) = (env.p("state/store.db"), env.p("state/store.db-wal"));
    let refused = |what: &str| {
        let mut agent = env.start();
        assert_eq!(agent.wait_exit(PATIENCE), Some(1), "{what}");
        let err = agent.stderr_text();
        assert!(
            err.contains(&db.display().to_string()) && err.contains("refusing to start afresh"),
            "{what}: {err}"
        );
        err
    };
    let mut agent = env.start();
    env.wait_msgs(&agent, &all);
    agent.signal(libc::SIGTERM);
    assert_eq!(agent.wait_exit(PATIENCE), Some(0));
    let shipped = std::fs::read(env.p("state/out.ndjson")).unwrap();
    // Truncated while the agent was stopped (a botched restore): beside its lock, no WAL.
    std::fs::File::create(&db).unwrap();
    assert!(refused("an empty store").contains("empty (0 bytes)"));
    assert_eq!(std::fs::metadata(&db).unwrap().len(), 0, "left as it was");
    assert_eq!(std::fs::read(env.p("state/out.ndjson")).unwrap(), shipped);
    // Only a state dir without a store starts afresh (and so ships the file again).
    std::fs::remove_file(&db).unwrap();
    let mut agent = env.start();
    wait_for("the file shipped again", PATIENCE, || {
        env.records().len() == 2 * all.len()
    });
    // Killed, so its WAL stays; then the store is emptied, then removed, beside that WAL.
    agent.signal(libc::SIGKILL);
    agent.wait_exit(PATIENCE);
    let wal_bytes = std::fs::read(&wal).expect("a WAL left by kill -9");
    std::fs::File::create(&db).unwrap();
    assert!(refused("an empty store beside a WAL").contains("store.db-wal"));
    std::fs::remove_file(&db).unwrap();
    assert!(refused("a WAL without its store").contains("missing"));
    assert!(!db.exists());
    assert_eq!(
        std::fs::read(&wal).unwrap(),
        wal_bytes,
        "the WAL is untouched"
    );
}

/// One file source into a file sink, with the state dir (and so the store) on `fs`.
fn state_on(fs: &tmpfs::Tmpfs) -> String {
    format!(
        r#"
state_dir = "{}"
[sources.app]
paths = ["logs/app.log"]
[batch]
max_wait = "100ms"
[sink]
type = "file"
path = "out.ndjson"
"#,
        fs.path().display()
    )
}

#[test]
fn a_first_start_on_a_full_disk_leaves_no_store_behind() {
    // A state dir with room for the lock but not for a store's schema.
    let fs = tmpfs::Tmpfs::new(16 << 10);
    let env = Env::with_config(&state_on(&fs));
    let all = lines("first", 20);
    append_lines(&env.p("logs/app.log"), &all);
    let mut agent = env.start();
    assert_eq!(agent.wait_exit(PATIENCE), Some(1));
    let err = agent.stderr_text();
    assert!(err.contains("store.db.new"), "{err}");
    assert!(
        !fs.path().join("store.db").exists(),
        "a store cut short would be refused at every later start"
    );
    fs.resize(4 << 20);
    let agent = env.start();
    let out = env.p("out.ndjson");
    wait_for(
        &format!("the records; stderr:\n{}", tail(&agent.stderr_text())),
        PATIENCE,
        || read_ndjson(&out).len() == all.len(),
    );
}

#[test]
fn a_start_with_the_store_on_a_full_disk_says_so_and_starts_once_there_is_room() {
    // SQLite needs room for store.db-shm before it reads anything: the start must say that the
    // disk is full, name the store, and leave it fit for the next start.
    let fs = tmpfs::Tmpfs::new(4 << 20);
    let env = Env::with_config(&state_on(&fs));
    // Past fingerprint_bytes from the start, so the restart resumes by fingerprint; resuming a
    // short stream grown while stopped is tests/rotation.rs's matter, not this test's.
    let first = lines("before", 100);
    append_lines(&env.p("logs/app.log"), &first);
    let out = env.p("out.ndjson");
    let mut agent = env.start();
    wait_for("the first records", PATIENCE, || {
        read_ndjson(&out).len() == first.len()
    });
    agent.signal(libc::SIGTERM);
    assert_eq!(agent.wait_exit(PATIENCE), Some(0));
    let ballast = fs.fill();
    let mut agent = env.start();
    assert_eq!(agent.wait_exit(PATIENCE), Some(1));
    let err = agent.stderr_text();
    let db = fs.path().join("store.db");
    assert!(
        err.contains(&format!(
            "store {} cannot be written: its disk is full",
            db.display()
        )),
        "{err}"
    );
    std::fs::remove_file(ballast).unwrap();
    let then = lines("after", 30);
    append_lines(&env.p("logs/app.log"), &then);
    let agent = env.start();
    let all = [first.clone(), then.clone()].concat();
    wait_for(
        &format!("the rest; stderr:\n{}", tail(&agent.stderr_text())),
        PATIENCE,
        || {
            let got = count_by_msg(&read_ndjson(&out));
            all.iter().all(|l| got.contains_key(l))
        },
    );
    let counts = count_by_msg(&read_ndjson(&out));
    assert!(counts.values().all(|&c| c == 1));
}

/// Raising `fingerprint_bytes` past a file's length read that file again from its start: a
/// file shorter than the new N has no fingerprint under it, and only streams without one were
/// looked at, not its own stream, fingerprinted under the old N. Both files continue.
#[test]
fn raising_fingerprint_bytes_past_a_files_length_reads_nothing_again() {
    let config = |n: u32| {
        format!(
            r#"
state_dir = "state"
[defaults]
fingerprint_bytes = {n}
[sources.app]
paths = ["logs/*.log"]
[batch]
max_wait = "100ms"
[sink]
type = "file"
path = "out.ndjson"
"#
        )
    };
    let env = Env::with_config(&config(64));
    let short = lines("short", 10);
    let long = lines("long", 100);
    append_lines(&env.p("logs/short.log"), &short);
    append_lines(&env.p("logs/long.log"), &long);
    assert!(std::fs::metadata(env.p("logs/short.log")).unwrap().len() < 1024);
    let out = env.p("out.ndjson");
    let mut agent = env.start();
    wait_for("the first records", PATIENCE, || {
        read_ndjson(&out).len() == short.len() + long.len()
    });
    agent.signal(libc::SIGTERM);
    assert_eq!(agent.wait_exit(PATIENCE), Some(0));

    std::fs::write(env.p("agent.toml"), config(1024)).unwrap();
    let more = lines("after the change", 3);
    append_lines(&env.p("logs/short.log"), &more);
    let agent = env.start();
    wait_for(
        &format!("the new lines; stderr:\n{}", tail(&agent.stderr_text())),
        PATIENCE,
        || {
            let got = count_by_msg(&read_ndjson(&out));
            more.iter().all(|l| got.contains_key(l))
        },
    );
    std::thread::sleep(Duration::from_millis(500));
    let counts = count_by_msg(&read_ndjson(&out));
    let twice: Vec<_> = counts.iter().filter(|(_, &c)| c != 1).collect();
    assert!(twice.is_empty(), "read again: {twice:?}");
    assert_eq!(counts.len(), short.len() + long.len() + more.len());
}

/// A file's name is outside text: one with a newline in it must not forge a line of the agent's
/// log or of `status`, which show it escaped.
#[test]
fn a_file_name_with_a_newline_forges_no_log_or_status_line() {
    let env = AgentEnv::new(r#"paths = ["logs/*.log"]"#);
    let forged = "2026-12-03T00:00:00Z  INFO FORGED log-sensor stopped";
    std::fs::write(env.p(&format!("logs/x\n{forged}\x1b[2J.log")), "hello\n").unwrap();
    let mut agent = env.start();
    env.wait_msgs(&agent, &["hello".to_string()]);
    let out = env.cmd().arg("status").output().unwrap();
    let status = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(status.contains("x\\n2026-12-03T00:00:00Z"), "{status}");
    agent.signal(libc::SIGTERM);
    agent.wait_exit(PATIENCE);
    let log = agent.stderr_text();
    assert!(log.contains("x\\n2026-12-03T00:00:00Z"), "{log}");
    for (what, text) in [("log", &log), ("status", &status)] {
        assert!(
            !text.lines().any(|l| l.starts_with("2026-12-03T00:00:00Z")),
            "a forged {what} line:\n{text}"
        );
        assert!(
            !text.contains('\x1b'),
            "a terminal escape in the {what}:\n{text}"
        );
    }
}
