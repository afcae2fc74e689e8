//! The agent under Debian's real `logrotate` while a writer keeps writing and the agent is killed
//! with kill -9 at random moments (rotations also happen while it is down). Every line written
//! must arrive (at least once), and nothing may arrive that was not written — in particular not
//! the bytes of a gzip archive read as text.
//!
//! The writer behaves like a daemon with a `postrotate` reload: `logrotate`'s postrotate script
//! raises a flag and waits until the writer has reopened `app.log`, so compression starts only
//! once no one writes to the rotated file (as with a real daemon, lines written to the old file
//! after its compression started would be lost by any reader).

#[path = "support/mod.rs"]
mod support;

use log_sensor::store::Store;
use serde_json::Value;
use std::collections::HashSet;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};
use support::*;

/// How long the writer writes: a handful of rotations and kills, a few seconds in all.
const WRITING: Duration = Duration::from_secs(3);

/// The line with number `seq`: its padding is derived from `seq`, so any record can be checked
/// against what was written without keeping every line.
fn line(seq: u64) -> String {
    let pad = (b'a' + (seq % 26) as u8) as char;
    format!(
        "w{seq:08} {}",
        pad.to_string().repeat((seq as usize * 7) % 90 + 10)
    )
}

fn parse(msg: &str) -> Option<u64> {
    let seq: u64 = msg.get(1..9)?.parse().ok()?;
    (msg == line(seq)).then_some(seq)
}

/// xorshift64*: random kill moments, reproducible from the seed the test prints.
struct Rng(u64);

impl Rng {
    fn new() -> Rng {
        let seed = std::env::var("ROTATION_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as u64
                    | 1
            });
        eprintln!("ROTATION_SEED={seed}");
        Rng(seed)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n
    }
}

fn logrotate_bin() -> PathBuf {
    [
        "/usr/sbin/logrotate",
        "/sbin/logrotate",
        "/usr/bin/logrotate",
    ]
    .iter()
    .map(PathBuf::from)
    .find(|p| p.exists())
    .expect("logrotate not installed; run tests/setup.sh")
}

/// Writes numbered lines to `app.log` until stopped, reopening it when `logrotate`'s
/// postrotate raises the flag. Returns how many lines were written.
fn writer(log: PathBuf, flag: PathBuf, stop: Arc<AtomicBool>, written: Arc<AtomicU64>) -> u64 {
    let open = |p: &Path| {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)
            .unwrap()
    };
    let mut f = open(&log);
    let mut seq = 0u64;
    let mut buf = String::new();
    // About 1 MB/s: 100 lines of ~65 bytes every 5 ms or so.
    while !stop.load(Ordering::Relaxed) {
        buf.clear();
        for _ in 0..100 {
            buf.push_str(&line(seq));
            buf.push('\n');
            seq += 1;
        }
        f.write_all(buf.as_bytes()).unwrap();
        written.store(seq, Ordering::Relaxed);
        if flag.exists() {
            f = open(&log);
            std::fs::remove_file(&flag).unwrap();
        }
        thread::sleep(Duration::from_millis(5));
    }
    seq
}

struct Scenario {
    /// The source's `paths`.
    paths: &'static str,
    /// logrotate directives besides the common ones.
    directives: &'static str,
}

fn run(s: Scenario) {
    let env = AgentEnv::new(&format!("paths = {}", s.paths));
    let log = env.p("logs/app.log");
    let flag = env.p("reopen");
    std::fs::write(&log, "").unwrap();
    let conf = env.p("logrotate.conf");
    std::fs::write(
        &conf,
        format!(
            "{log} {{\n  rotate 100\n  missingok\n  {}\n  postrotate\n    touch {flag}\n    \
             while [ -e {flag} ]; do sleep 0.01; done\n  endscript\n}}\n",
            s.directives,
            log = log.display(),
            flag = flag.display(),
        ),
    )
    .unwrap();
    let state = env.p("logrotate.state");
    let rotate = || {
        Command::new(logrotate_bin())
            .arg("-f")
            .arg("-s")
            .arg(&state)
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn logrotate")
    };

    let mut rng = Rng::new();
    let mut runs = 0;
    let start_agent = |runs: &mut u32| {
        *runs += 1;
        let mut c = env.cmd();
        c.arg("run");
        Proc::spawn("log-sensor", &mut c, &env.p(&format!("agent.{runs}.err")))
    };
    let mut agent = start_agent(&mut runs);
    let stop = Arc::new(AtomicBool::new(false));
    let written = Arc::new(AtomicU64::new(0));
    let w = {
        let (log, flag, stop, written) = (log.clone(), flag.clone(), stop.clone(), written.clone());
        thread::spawn(move || writer(log, flag, stop, written))
    };

    let began = Instant::now();
    let (mut rotations, mut kills) = (0, 0);
    while began.elapsed() < WRITING {
        // A running agent sees a new file at once; a file it never saw, rotated out of the
        // globs, is one nobody can find again. So each round starts once the agent knows the
        // live file.
        wait_known(&env, &log);
        thread::sleep(Duration::from_millis(100 + rng.below(200)));
        // Every other round on average, kill -9: before the rotation (it happens while the
        // agent is down) or at a random moment of it (renaming, reloading, compressing).
        let kill = rng.below(2) == 0;
        let kill_first = kill && rng.below(2) == 0;
        if kill_first {
            agent.signal(libc::SIGKILL);
            agent.wait_exit(PATIENCE);
        }
        let lr = rotate();
        rotations += 1;
        if kill && !kill_first {
            thread::sleep(Duration::from_millis(rng.below(40)));
            agent.signal(libc::SIGKILL);
            agent.wait_exit(PATIENCE);
        }
        let out = lr.wait_with_output().expect("logrotate");
        assert!(
            out.status.success(),
            "logrotate failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        if kill {
            kills += 1;
            agent = start_agent(&mut runs);
        }
    }
    stop.store(true, Ordering::Relaxed);
    let total = w.join().unwrap();
    eprintln!("{total} lines written, {rotations} rotations, {kills} kills");
    assert!(rotations >= 4, "only {rotations} rotations");

    let deadline = Instant::now() + PATIENCE;
    let missing: Vec<u64> = loop {
        let recs = env.records();
        let (got, invented) = check_records(&recs, total);
        assert!(
            invented.is_empty(),
            "{} records that were never written, e.g. {:?}",
            invented.len(),
            &invented[..invented.len().min(3)]
        );
        let missing: Vec<u64> = (0..total).filter(|s| !got.contains(s)).collect();
        if missing.is_empty() || Instant::now() > deadline {
            break missing;
        }
        thread::sleep(Duration::from_millis(200));
    };
    if !missing.is_empty() {
        let files: Vec<String> = std::fs::read_dir(env.p("logs"))
            .unwrap()
            .flatten()
            .map(|e| {
                let m = e.metadata().unwrap();
                format!("{:?} ino {} size {}", e.file_name(), m.ino(), m.len())
            })
            .collect();
        panic!(
            "{} of {total} lines never arrived (first {:?}, last {:?}); files {files:?}; streams {:?}; \
             last agent stderr:\n{}",
            missing.len(),
            missing.first(),
            missing.last(),
            env.query("SELECT stream, path, inode, state, committed_offset, read_offset, size FROM streams"),
            tail(&agent.stderr_text())
        );
    }
}

/// Waits until the agent's store holds a stream on the file now at `log`.
fn wait_known(env: &AgentEnv, log: &Path) {
    wait_for("the agent to follow the live file", PATIENCE, || {
        let Ok(md) = std::fs::metadata(log) else {
            return false;
        };
        let Ok(conn) = Store::open_read_only(&env.p("state/store.db")) else {
            return false;
        };
        conn.query_row(
            "SELECT count(*) FROM streams WHERE device = ?1 AND inode = ?2 AND state = 'active' AND path = ?3",
            (md.dev() as i64, md.ino() as i64, log.display().to_string()),
            |r| r.get::<_, i64>(0),
        )
        .map(|n| n > 0)
        .unwrap_or(false)
    });
}

/// The sequence numbers the records carry, and the records that are not a written line.
fn check_records(recs: &[Value], total: u64) -> (HashSet<u64>, Vec<String>) {
    let mut got = HashSet::new();
    let mut invented = Vec::new();
    for r in recs {
        match r["msg"].as_str().and_then(parse) {
            Some(seq) if seq < total || total == 0 => {
                got.insert(seq);
            }
            _ => invented.push(format!(
                "path {} offset {} {}",
                r["path"],
                r["offset"],
                r.get("msg")
                    .or_else(|| r.get("msg_b64"))
                    .map(|m| m.to_string().chars().take(40).collect::<String>())
                    .unwrap_or_default()
            )),
        }
    }
    (got, invented)
}

/// Issue #10 item 1: `compress` archives were taken for text while `gzip` was filling them.
#[test]
fn logrotate_compress_ships_only_written_lines() {
    run(Scenario {
        paths: r#"["logs/app.log", "logs/app.log.*.gz"]"#,
        directives: "create\n  compress",
    });
}

/// Issue #10 item 1, with `delaycompress`: `app.log.1` is outside the globs, `app.log.2.gz`
/// inside (the shipped packaging config's shape).
#[test]
fn logrotate_compress_delaycompress_ships_only_written_lines() {
    run(Scenario {
        paths: r#"["logs/app.log", "logs/app.log.*.gz"]"#,
        directives: "create\n  compress\n  delaycompress",
    });
}

/// Issue #10 item 10: the globs name only the live file; a stream whose file was rotated while
/// the agent was down is found again by its inode and drained.
#[test]
fn logrotate_create_with_only_the_live_file_in_the_globs_loses_nothing_across_kill_9() {
    run(Scenario {
        paths: r#"["logs/app.log"]"#,
        directives: "create",
    });
}

/// While the agent is down, the rotated file of a stream is rewritten in place (same inode,
/// other bytes) by `rewrite`; on restart it must be recognised as not the stream's and left alone.
fn rewritten_while_down_is_not_shipped(rewrite: impl FnOnce(&Path, &[String])) {
    let env = AgentEnv::new(r#"paths = ["logs/app.log"]"#);
    let log = env.p("logs/app.log");
    let first: Vec<String> = (0..200).map(line).collect();
    append_lines(&log, &first);
    let mut agent = env.start();
    env.wait_msgs(&agent, &first);
    // Killed once everything is committed: the store then holds the hash before the offset.
    let size = std::fs::metadata(&log).unwrap().len();
    wait_for("the whole file committed", PATIENCE, || {
        env.query("SELECT committed_offset FROM streams")[0]["committed_offset"] == size
    });
    agent.signal(libc::SIGKILL);
    agent.wait_exit(PATIENCE);
    let inode = std::fs::metadata(&log).unwrap().ino();
    let rotated = env.p("logs/app.log.1");
    std::fs::rename(&log, &rotated).unwrap();
    rewrite(&rotated, &first);
    assert_eq!(std::fs::metadata(&rotated).unwrap().ino(), inode);
    let fresh: Vec<String> = (0..50).map(|i| format!("fresh {i:05}")).collect();
    append_lines(&log, &fresh);
    let agent = env.start();
    env.wait_msgs(&agent, &fresh);
    wait_for("the old stream to be let go", PATIENCE, || {
        !env.query(&format!(
            "SELECT stream FROM streams WHERE inode = {inode} AND state = 'released'"
        ))
        .is_empty()
    });
    let foreign: Vec<String> = env
        .msgs()
        .into_iter()
        .filter(|m| m.starts_with("other"))
        .collect();
    assert!(
        foreign.is_empty(),
        "{} lines of a file that is not the stream's were shipped, e.g. {:?}",
        foreign.len(),
        foreign.first()
    );
}

fn overwrite(path: &Path, lines: &[String]) {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(path)
        .unwrap();
    for l in lines {
        writeln!(f, "{l}").unwrap();
    }
}

/// Its head (the first N bytes the fingerprint covers) differs.
#[test]
fn a_file_on_the_old_inode_with_another_head_is_not_shipped() {
    rewritten_while_down_is_not_shipped(|p, _| {
        // Longer than the original, so only the hashes tell it apart.
        let other: Vec<String> = (0..3000).map(|i| format!("other {i:05}")).collect();
        overwrite(p, &other);
    });
}

/// Same head, but the bytes before the committed offset differ.
#[test]
fn a_file_on_the_old_inode_with_other_bytes_before_the_offset_is_not_shipped() {
    rewritten_while_down_is_not_shipped(|p, first| {
        let mut lines = first[..150].to_vec();
        lines.extend((0..300).map(|i| format!("other {i:05}")));
        overwrite(p, &lines);
    });
}

/// A `.gz` name promises gzip: text so named is refused with one alert naming the file, never
/// shipped as records; once the file is replaced by real gzip it is read.
#[test]
fn a_gz_named_file_that_is_not_gzip_is_alerted_and_not_shipped() {
    let env = AgentEnv::new(r#"paths = ["logs/*.log", "logs/*.gz"]"#);
    let plain: Vec<String> = (0..100).map(|i| format!("named gz {i:05}")).collect();
    let gz = env.p("logs/b.log.1.gz");
    append_lines(&gz, &plain);
    let live: Vec<String> = (0..100).map(line).collect();
    append_lines(&env.p("logs/a.log"), &live);
    let agent = env.start();
    env.wait_msgs(&agent, &live);
    wait_for("the alert naming the file", PATIENCE, || {
        env.query("SELECT detail FROM alerts WHERE path LIKE '%b.log.1.gz'")
            .iter()
            .any(|a| a["detail"].as_str().unwrap_or("").contains("gzip magic"))
    });
    assert!(
        !env.msgs().iter().any(|m| m.starts_with("named gz")),
        "text in a .gz name was shipped"
    );
    // Replaced by real gzip (a new version of the file): read.
    let real: Vec<String> = (0..100).map(|i| format!("real gz {i:05}")).collect();
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    for l in &real {
        writeln!(enc, "{l}").unwrap();
    }
    std::fs::write(&gz, enc.finish().unwrap()).unwrap();
    env.wait_msgs(&agent, &real);
    let alerts = env.query("SELECT kind FROM alerts WHERE path LIKE '%b.log.1.gz'");
    assert_eq!(alerts.len(), 1, "one alert, not one a scan: {alerts:?}");
}

// A file shorter than N (1024) when the agent stops, grown past N before it starts again: it was
// read again from 0 as a new stream, its short head shipped twice. It continues its provisional
// stream (same device and inode, same bytes before the committed offset).

fn short_lines() -> Vec<String> {
    (1..=5).map(|i| format!("line {i} small")).collect()
}

fn growing_lines() -> Vec<String> {
    (6..=60)
        .map(|i| format!("line {i} growing past the fingerprint length of 1024 bytes ......"))
        .collect()
}

/// Ships the short file, waits until its end is committed, and stops the agent with `sig`.
fn ship_short_then_stop(env: &AgentEnv, sig: i32) {
    let log = env.p("logs/app.log");
    append_lines(&log, &short_lines());
    let mut agent = env.start();
    env.wait_msgs(&agent, &short_lines());
    let size = std::fs::metadata(&log).unwrap().len();
    wait_for("the short file's end committed", PATIENCE, || {
        env.try_query("SELECT committed_offset FROM streams")
            .map(|r| r.len() == 1 && r[0]["committed_offset"].as_u64() == Some(size))
            .unwrap_or(false)
    });
    agent.signal(sig);
    agent.wait_exit(PATIENCE);
}

fn count(env: &AgentEnv) -> std::collections::HashMap<String, usize> {
    let mut m = std::collections::HashMap::new();
    for msg in env.msgs() {
        *m.entry(msg).or_insert(0) += 1;
    }
    m
}

fn grown_while_down_continues_its_stream(sig: i32) {
    let env = AgentEnv::new(r#"paths = ["logs/*.log"]"#);
    ship_short_then_stop(&env, sig);
    append_lines(&env.p("logs/app.log"), &growing_lines());
    let mut agent = env.start();
    let all = [short_lines(), growing_lines()].concat();
    env.wait_msgs(&agent, &all);
    agent.signal(libc::SIGTERM);
    assert_eq!(agent.wait_exit(PATIENCE), Some(0));
    let counts = count(&env);
    let written: HashSet<&String> = all.iter().collect();
    for (msg, n) in &counts {
        assert!(written.contains(msg), "never written: {msg}");
        // Its end was committed before the stop: even kill -9 lost nothing in flight.
        assert_eq!(*n, 1, "shipped {n} times: {msg}");
    }
    let rows = env.query("SELECT stream, fingerprint, committed_offset, size FROM streams");
    assert_eq!(rows.len(), 1, "one stream for one file: {rows:?}");
    assert!(rows[0]["fingerprint"].is_string(), "promoted: {rows:?}");
    assert_eq!(rows[0]["committed_offset"], rows[0]["size"]);
    let streams: HashSet<String> = env
        .records()
        .iter()
        .map(|r| r["stream"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(streams.len(), 1, "every record of one stream: {streams:?}");
}

#[test]
fn a_short_file_grown_past_n_while_stopped_continues_its_stream() {
    grown_while_down_continues_its_stream(libc::SIGTERM);
}

#[test]
fn a_short_file_grown_past_n_after_kill_9_continues_its_stream() {
    grown_while_down_continues_its_stream(libc::SIGKILL);
}

/// The same inode with other content (rewritten in place while down, as a deleted file's inode
/// is reused): its bytes before the committed offset differ, so it is a new stream read whole.
#[test]
fn a_short_files_inode_with_other_content_past_n_is_a_new_stream() {
    let env = AgentEnv::new(r#"paths = ["logs/*.log"]"#);
    ship_short_then_stop(&env, libc::SIGTERM);
    let log = env.p("logs/app.log");
    let ino = std::fs::metadata(&log).unwrap().ino();
    let other: Vec<String> = (1..=40)
        .map(|i| format!("other content {i:03} on the same inode, longer than the old offset"))
        .collect();
    overwrite(&log, &other);
    assert_eq!(std::fs::metadata(&log).unwrap().ino(), ino, "same inode");
    let mut agent = env.start();
    env.wait_msgs(&agent, &[short_lines(), other.clone()].concat());
    agent.signal(libc::SIGTERM);
    assert_eq!(agent.wait_exit(PATIENCE), Some(0));
    let counts = count(&env);
    let written: HashSet<String> = [short_lines(), other].concat().into_iter().collect();
    for (msg, n) in &counts {
        assert!(written.contains(msg), "never written (a cut line?): {msg}");
        assert_eq!(*n, 1, "shipped {n} times: {msg}");
    }
    assert_eq!(counts.len(), written.len(), "every line shipped");
    let rows = env.query("SELECT stream FROM streams");
    assert_eq!(
        rows.len(),
        2,
        "the old short stream and a new one: {rows:?}"
    );
}
