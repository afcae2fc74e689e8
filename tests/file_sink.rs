//! What the agent writes to files of its own: a file sink's output across rotations, and
//! `<state_dir>/agent.log` under `start`, with the real binary. Each test is named after the bug it
//! pins.

#[path = "support/mod.rs"]
mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use support::*;

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

fn msgs_of(p: &Path) -> Vec<String> {
    read_ndjson(p)
        .iter()
        .filter_map(|r| r["msg"].as_str().map(str::to_string))
        .collect()
}

/// Deleted or renamed under a running agent, the sink file used to keep its old handle: every
/// later batch went into a deleted file (or the rotated one) and was committed all the same.
#[test]
fn a_deleted_or_renamed_sink_file_is_created_again_and_written() {
    let env = AgentEnv::new(r#"paths = ["logs/a.log"]"#);
    let log = env.p("logs/a.log");
    let out = env.p("state/out.ndjson");
    append_lines(&log, &["one".into()]);
    let agent = env.start();
    env.wait_msgs(&agent, &["one".into()]);
    // The agent made the state dir: only its user may look inside.
    assert_eq!(mode(&env.p("state")), 0o700);

    std::fs::remove_file(&out).unwrap();
    append_lines(&log, &["two".into()]);
    env.wait_msgs(&agent, &["two".into()]);
    assert_eq!(msgs_of(&out), ["two"]);
    assert_eq!(mode(&out), 0o600, "created again with the sink's mode");

    // logrotate's default: rename, and the writer is expected to make the new file.
    let rotated = env.p("state/out.ndjson.1");
    std::fs::rename(&out, &rotated).unwrap();
    append_lines(&log, &["three".into()]);
    env.wait_msgs(&agent, &["three".into()]);
    assert_eq!(msgs_of(&out), ["three"]);
    assert_eq!(msgs_of(&rotated), ["two"]);
}

/// Stops a detached agent when the test ends, however it ends.
struct Started<'a>(&'a AgentEnv);

impl Drop for Started<'_> {
    fn drop(&mut self) {
        let _ = self.0.cmd().arg("stop").output();
    }
}

/// `start` with the default stdout sink writes every record into agent.log; it was created 0644
/// in a 0755 state dir, so a 0600 log's secrets became readable by every user.
#[test]
fn start_keeps_agent_log_and_its_state_dir_private() {
    let env = AgentEnv::with_config(
        r#"
host_id = "test-host"
state_dir = "st"
[sources.auth]
paths = ["logs/auth.log"]
[batch]
max_wait = "100ms"
"#,
    );
    let auth = env.p("logs/auth.log");
    append_lines(&auth, &["password=hunter2".into()]);
    std::fs::set_permissions(&auth, std::fs::Permissions::from_mode(0o600)).unwrap();
    let agent_log = env.p("st/agent.log");

    let run = |what: &str| {
        let out = env.cmd().arg(what).output().unwrap();
        assert!(
            out.status.success(),
            "{what}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    {
        let _started = Started(&env);
        let said = run("start");
        assert!(
            !said.contains("was mode"),
            "created 0600, not tightened after: {said}"
        );
        wait_for("the record in agent.log", PATIENCE, || {
            std::fs::read_to_string(&agent_log).is_ok_and(|t| t.contains("hunter2"))
        });
        assert_eq!(mode(&env.p("st")), 0o700);
        assert_eq!(mode(&agent_log), 0o600);
        if is_root() {
            // The probe's own check, with the folders above open to others as /var/lib is.
            std::fs::set_permissions(env.dir.path(), std::fs::Permissions::from_mode(0o755))
                .unwrap();
            let grep_as_nobody = |p: &Path| {
                Command::new("su")
                    .args(["nobody", "-s", "/bin/sh", "-c"])
                    .arg(format!("grep -q . {}", p.display()))
                    .output()
                    .unwrap()
                    .status
                    .success()
            };
            std::fs::set_permissions(env.p("agent.toml"), std::fs::Permissions::from_mode(0o644))
                .unwrap();
            assert!(grep_as_nobody(&env.p("agent.toml")), "su nobody works here");
            assert!(!grep_as_nobody(&agent_log), "another user read agent.log");
        }
        run("stop");
    }

    // Left readable by others (by a version that made it so): made private again at start.
    std::fs::set_permissions(&agent_log, std::fs::Permissions::from_mode(0o644)).unwrap();
    let _started = Started(&env);
    let said = run("start");
    assert_eq!(mode(&agent_log), 0o600);
    assert!(said.contains("was mode 0644; made 0600"), "{said}");
    run("stop");
}

/// A source glob matching the file sink's path made the agent ship its own output, each pass
/// re-escaped into a longer line (25 MB in 3 s), and `check` said ok.
#[test]
fn check_refuses_a_sink_file_a_source_reads_and_two_sinks_on_one_file() {
    let env = AgentEnv::with_config(
        r#"
state_dir = "state"
[sources.a]
paths = ["logs/*.log"]
[sinks.out]
type = "file"
path = "logs/out.log"
"#,
    );
    let out = env.cmd().arg("check").output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    let want = format!(
        "sinks.out.path: {} is matched by sources.a.paths",
        env.p("logs/out.log").display()
    );
    assert!(err.contains(&want), "missing {want:?} in:\n{err}");
    assert!(err.contains("the agent would ship its own output"), "{err}");
    // `run` refuses it as `check` does, before writing anything.
    let run = env.cmd().arg("run").output().unwrap();
    assert!(!run.status.success());
    assert!(!env.p("logs/out.log").exists());

    let env = AgentEnv::with_config(
        r#"
state_dir = "state"
[sources.a]
paths = ["logs/*.log"]
[sinks.one]
type = "file"
path = "state/out.ndjson"
[sinks.two]
type = "file"
path = "./state/../state/out.ndjson"
"#,
    );
    let out = env.cmd().arg("check").output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    let want = format!(
        "sinks.two.path: {} is also sinks.one.path",
        env.p("state/out.ndjson").display()
    );
    assert!(err.contains(&want), "missing {want:?} in:\n{err}");
}

/// A glob reaching the sink's own file through a symlinked folder passes the config check
/// (which compares paths as written), and the agent shipped its output again and again, each
/// pass one more layer of JSON. The tailer now knows the sink files by identity: such a file is
/// not read, and one alert names it and the sink.
#[test]
fn a_sink_file_reached_through_a_symlinked_folder_is_not_read() {
    let env = AgentEnv::with_config(
        r#"
host_id = "test-host"
state_dir = "state"
[sources.app]
paths = ["logs/*.log", "logs/link/*.ndjson"]
[batch]
max_wait = "100ms"
[discovery]
rescan_interval = "500ms"
[sink]
type = "file"
path = "out/real/out.ndjson"
"#,
    );
    std::fs::create_dir_all(env.p("out/real")).unwrap();
    std::os::unix::fs::symlink("../out/real", env.p("logs/link")).unwrap();
    let ok = env.cmd().arg("check").output().unwrap();
    assert!(ok.status.success(), "check sees paths as written");
    let want: Vec<String> = (0..10).map(|i| format!("line {i}")).collect();
    append_lines(&env.p("logs/a.log"), &want);
    let out = env.p("out/real/out.ndjson");
    let agent = env.start();
    wait_for("the lines in the sink", PATIENCE, || {
        want.iter().all(|w| msgs_of(&out).contains(w))
    });
    wait_for("an alert naming the sink file", PATIENCE, || {
        env.try_query("SELECT detail, path FROM alerts WHERE kind = 'config_error'")
            .unwrap_or_default()
            .iter()
            .any(|a| {
                a["path"]
                    .as_str()
                    .is_some_and(|p| p.ends_with("logs/link/out.ndjson"))
                    && a["detail"]
                        .as_str()
                        .is_some_and(|d| d.contains("the output of sink"))
            })
    });
    // Several scans later, still only the ten lines: nothing of the output came back.
    std::thread::sleep(std::time::Duration::from_secs(2));
    assert_eq!(msgs_of(&out).len(), 10, "{:?}", msgs_of(&out));
    drop(agent);
}
