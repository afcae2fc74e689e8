//! End-to-end tests of transforms with the real agent binary: parsers into `fields` in a file
//! sink, chains in order, a reload with a broken transform, per-transform counters in status,
//! and container partial lines joined across a kill -9.

#[path = "support/mod.rs"]
mod support;

use serde_json::Value;
use support::*;

/// The issue's nginx pattern, as written in its example config.
const NGINX: &str = r#"^(?P<client>\S+) \S+ \S+ \[(?P<time>[^\]]+)\] "(?P<method>\S+) (?P<path>\S+)[^"]*" (?P<status>\d{3}) (?P<bytes>\d+)"#;

fn config(source: &str, transforms: &str) -> String {
    format!(
        r#"
host_id = "test-host"
state_dir = "state"
[sources.app]
{source}
[batch]
max_wait = "100ms"
[discovery]
rescan_interval = "500ms"
rotate_wait = "500ms"
[sink]
type = "file"
path = "state/out.ndjson"
{transforms}
"#
    )
}

fn ls(env: &AgentEnv, args: &[&str]) -> std::process::Output {
    env.cmd()
        .args(args)
        .env("LOG_SENSOR_LOG", "warn")
        .output()
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn status(env: &AgentEnv) -> Value {
    let out = ls(env, &["status", "--json"]);
    assert!(out.status.success(), "status: {}", text(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn record_with<'a>(recs: &'a [Value], msg: &str) -> Option<&'a Value> {
    recs.iter().find(|r| r["msg"] == msg)
}

fn nginx(i: usize, path: &str) -> String {
    format!(
        r#"203.0.113.{i} - - [05/Mar/2024:10:11:{:02} +0000] "GET {path} HTTP/1.1" 200 {} "-" "curl/8.5.0""#,
        i % 60,
        100 + i
    )
}

#[test]
fn a_regex_transform_puts_named_groups_into_fields_and_counts_what_it_cannot_parse() {
    let env = AgentEnv::with_config(&config(
        r#"paths = ["logs/*.log"]
transforms = ["access"]"#,
        &format!("[transforms.access]\ntype = \"regex\"\npattern = '{NGINX}'\n"),
    ));
    let lines = vec![
        nginx(1, "/a"),
        "2024/03/05 10:11:12 [error] 31#31: upstream timed out".to_string(),
        nginx(2, "/healthz"),
    ];
    append_lines(&env.p("logs/access.log"), &lines);
    let agent = env.start();
    env.wait_msgs(&agent, &lines);
    let recs = env.records();
    let a = record_with(&recs, &lines[0]).unwrap();
    assert_eq!(a["fields"]["client"], "203.0.113.1");
    assert_eq!(a["fields"]["method"], "GET");
    assert_eq!(a["fields"]["path"], "/a");
    assert_eq!(a["fields"]["status"], "200");
    assert_eq!(a["fields"]["bytes"], "101");
    assert_eq!(
        record_with(&recs, &lines[2]).unwrap()["fields"]["path"],
        "/healthz"
    );
    // The error line does not match: it ships as it was, without fields.
    let e = record_with(&recs, &lines[1]).unwrap();
    assert!(e.get("fields").is_none_or(Value::is_null), "{e}");

    let st = status(&env);
    let t = &st["transforms"][0];
    assert_eq!(
        (t["name"].as_str(), t["type"].as_str()),
        (Some("access"), Some("regex"))
    );
    assert_eq!(t["records_in"], 3);
    assert_eq!(t["parse_failures"], 1);
    assert_eq!(t["dropped"], 0);
    let plain = text(&ls(&env, &["status"]).stdout);
    assert!(
        plain.contains("transforms:") && plain.contains("access"),
        "{plain}"
    );

    // Transforms' keys are config keys like any other.
    let out = ls(&env, &["get", "transforms.access.type"]);
    assert!(
        text(&out.stdout).contains(r#"transforms.access.type = "regex""#),
        "{}",
        text(&out.stdout)
    );
    let out = ls(&env, &["list", "transforms"]);
    assert!(
        text(&out.stdout).contains("transforms.access.pattern"),
        "{}",
        text(&out.stdout)
    );
    let out = ls(&env, &["get", "sources.app.transforms"]);
    assert!(
        text(&out.stdout).contains(r#"["access"]"#),
        "{}",
        text(&out.stdout)
    );
}

#[test]
fn a_source_runs_its_transforms_in_the_order_it_lists_them() {
    // logfmt first turns the line into its `msg`; the regex then reads that message.
    let env = AgentEnv::with_config(&config(
        r#"paths = ["logs/*.log"]
transforms = ["kv", "first_word"]"#,
        r#"
[transforms.first_word]
type = "regex"
pattern = '^(?P<verb>[a-z]+) '
[transforms.kv]
type = "logfmt"
message_key = "msg"
"#,
    ));
    append_lines(
        &env.p("logs/svc.log"),
        &[
            r#"time="2024-03-05T10:11:12Z" level=info msg="started server on :8080" pid=7"#
                .to_string(),
        ],
    );
    let agent = env.start();
    env.wait_msgs(&agent, &["started server on :8080".to_string()]);
    let recs = env.records();
    let f = &record_with(&recs, "started server on :8080").unwrap()["fields"];
    assert_eq!(f["level"], "info");
    assert_eq!(f["pid"], "7");
    assert_eq!(f["time"], "2024-03-05T10:11:12Z");
    assert_eq!(f["verb"], "started", "the regex saw logfmt's message: {f}");
}

#[test]
fn a_reload_with_a_bad_pattern_keeps_the_running_transforms() {
    let good = format!("[transforms.access]\ntype = \"regex\"\npattern = '{NGINX}'\n");
    let source = r#"paths = ["logs/*.log"]
transforms = ["access"]"#;
    let env = AgentEnv::with_config(&config(source, &good));
    let agent = env.start();
    let first = vec![nginx(1, "/before")];
    append_lines(&env.p("logs/access.log"), &first);
    env.wait_msgs(&agent, &first);

    let bad = "[transforms.access]\ntype = \"regex\"\npattern = '(?P<client>\\S+'\n";
    std::fs::write(env.p("agent.toml"), config(source, bad)).unwrap();
    let out = ls(&env, &["reload"]);
    assert!(!out.status.success(), "a broken pattern must be refused");
    let err = text(&out.stderr);
    assert!(err.contains("transforms.access.pattern"), "{err}");

    let after = vec![nginx(2, "/after")];
    append_lines(&env.p("logs/access.log"), &after);
    env.wait_msgs(&agent, &after);
    let recs = env.records();
    let r = record_with(&recs, &after[0]).unwrap();
    assert_eq!(
        r["fields"]["path"], "/after",
        "the running regex still parses: {r}"
    );
    let st = status(&env);
    assert_eq!(st["transforms"][0]["records_in"], 2);
}

#[test]
fn cri_partial_lines_join_at_the_first_offset_across_a_kill_9() {
    let env = AgentEnv::with_config(&config(
        r#"paths = ["logs/*.log"]
transforms = ["cri"]"#,
        "[transforms.cri]\ntype = \"cri\"\n",
    ));
    let log = env.p("logs/web-7d9f_default_nginx-0123abcd.log");
    let whole = "2024-03-05T10:11:12.000000001Z stdout F listening on :80";
    let p1 = "2024-03-05T10:11:13.000000001Z stdout P {\"event\":\"big\",\"part\":\"one ";
    // The whole line and the first part in one write: once the whole line has shipped, the
    // agent has read the part too and holds it.
    append_lines(&log, &[whole.to_string(), p1.to_string()]);
    let mut agent = env.start();
    env.wait_msgs(&agent, &["listening on :80".to_string()]);
    let part_at = whole.len() as u64 + 1;
    wait_for(
        "the whole line committed, and not the held part",
        PATIENCE,
        || {
            status(&env)["streams"]
                .as_array()
                .is_some_and(|s| s.iter().any(|s| s["committed_offset"] == part_at))
        },
    );
    let st = status(&env);
    assert_eq!(st["streams"][0]["committed_offset"], part_at, "{st}");
    agent.signal(libc::SIGKILL);
    agent.wait_exit(PATIENCE);

    // The runtime finishes the write while the agent is down.
    let p2 = "2024-03-05T10:11:13.000000002Z stdout P two ";
    let f = "2024-03-05T10:11:13.000000003Z stdout F three\"}";
    append_lines(&log, &[p2.to_string(), f.to_string()]);
    let agent = env.start();
    let joined = "{\"event\":\"big\",\"part\":\"one two three\"}".to_string();
    env.wait_msgs(&agent, &[joined.clone()]);
    let end = part_at + (p1.len() + p2.len() + f.len() + 3) as u64;
    wait_for("the joined record committed", PATIENCE, || {
        status(&env)["streams"][0]["committed_offset"] == end
    });
    let recs = env.records();
    let got: Vec<&Value> = recs
        .iter()
        .filter(|r| r["msg"] == joined.as_str())
        .collect();
    assert_eq!(got.len(), 1, "the joined record arrives once: {recs:?}");
    assert_eq!(got[0]["offset"], part_at, "at the first part's offset");
    assert_eq!(got[0]["fields"]["time"], "2024-03-05T10:11:13.000000001Z");
    assert_eq!(got[0]["fields"]["stream"], "stdout");
    // No part ever shipped alone.
    assert!(
        !recs.iter().any(|r| r["msg"]
            .as_str()
            .is_some_and(|m| m.contains("one") && m != joined)),
        "{recs:?}"
    );
}
