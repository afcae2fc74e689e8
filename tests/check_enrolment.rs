//! `log-sensor check` against `log-sensor run` on configs with a collector, a TLS syslog or a
//! file sink: where `run` refuses to start because the sink has no identity (nothing enrolled in
//! `<state_dir>/tls/`, no `sink.cert`/`sink.key`, no `--cert`/`--key`), its TLS files do not
//! load or its file cannot be opened, `check` fails with `run`'s own message, naming the sink
//! (and `log-sensor enroll` for a collector); with an identity enrolled or given, it passes.

#[path = "support/pki.rs"]
mod pki;
#[path = "support/mod.rs"]
mod support;

use pki::Pki;
use support::*;

/// A config whose only source goes to `sinks` (the one `[sink]` when empty).
fn config(sinks: &str) -> String {
    format!(
        r#"
host_id = "web1"
state_dir = "state"
[sources.app]
paths = ["logs/*.log"]
{sinks}
"#
    )
}

const COLLECTOR: &str = r#"
[sink]
type = "collector"
url = "https://127.0.0.1:9"
"#;

struct Outcome {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

fn check(env: &AgentEnv, args: &[&str]) -> Outcome {
    let out = env
        .cmd()
        .args(args)
        .arg("check")
        .env("LOG_SENSOR_LOG", "warn")
        .output()
        .unwrap();
    Outcome {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// What `run` says as it refuses to start: its last line on stderr.
fn run_refusal(env: &AgentEnv) -> String {
    let mut agent = env.start();
    assert_eq!(
        agent.wait_exit(PATIENCE),
        Some(1),
        "run should refuse to start: {}",
        agent.stderr_text()
    );
    let err = agent.stderr_text();
    err.lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or_default()
        .to_string()
}

/// The enrolled layout `log-sensor enroll` writes, from the test PKI's CA and client pair.
fn enrol(env: &AgentEnv, pki: &Pki, with_cert: bool) {
    let tls = env.p("state/tls");
    std::fs::create_dir_all(&tls).unwrap();
    std::fs::copy(pki.p("ca.pem"), tls.join("ca.pem")).unwrap();
    if with_cert {
        std::fs::copy(pki.p("client.pem"), tls.join("cert.pem")).unwrap();
        std::fs::copy(pki.p("client.key"), tls.join("key.pem")).unwrap();
    }
}

#[test]
fn check_fails_as_run_does_for_a_collector_sink_with_no_identity() {
    let env = AgentEnv::with_config(&config(COLLECTOR));
    let out = check(&env, &[]);
    assert_eq!(out.code, Some(1), "{}{}", out.stdout, out.stderr);
    assert!(!out.stdout.contains("ok"), "{}", out.stdout);
    let said = out.stderr.trim_end();
    assert!(
        said.starts_with("log-sensor: collector https://127.0.0.1:9: ")
            && said.contains("state/tls/ca.pem")
            && said.contains("run `log-sensor enroll` first"),
        "{said}"
    );
    assert!(
        !env.p("state").exists(),
        "check creates nothing, not even the state dir"
    );
    assert_eq!(said, run_refusal(&env), "check says what run says");

    // A CA alone (deployed by hand, or an enrolment cut short) is no identity either.
    let pki = Pki::new(&env.p("pki"), "web1");
    enrol(&env, &pki, false);
    let out = check(&env, &[]);
    assert_eq!(out.code, Some(1), "{}{}", out.stdout, out.stderr);
    let said = out.stderr.trim_end();
    assert!(
        said.contains("state/tls/cert.pem") && said.contains("log-sensor enroll"),
        "{said}"
    );
    assert_eq!(said, run_refusal(&env));
}

#[test]
fn check_names_every_named_collector_sink_with_no_identity() {
    let env = AgentEnv::with_config(&config(
        r#"sinks = ["archive", "central", "backup"]
[sinks.archive]
type = "file"
path = "state/out.ndjson"
[sinks.central]
type = "collector"
urls = ["https://127.0.0.1:9", "https://127.0.0.2:9"]
[sinks.backup]
type = "collector"
url = "https://127.0.0.3:9"
ca = "elsewhere/ca.pem"
"#,
    ));
    let out = check(&env, &[]);
    assert_eq!(out.code, Some(1), "{}{}", out.stdout, out.stderr);
    // One line per sink that would not start, in name order as `run` opens them.
    let lines: Vec<&str> = out.stderr.lines().collect();
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(
        lines[0].starts_with("log-sensor: sinks.backup (collector https://127.0.0.3:9): ")
            && lines[0].contains("elsewhere/ca.pem")
            && lines[0].contains("log-sensor enroll"),
        "{}",
        lines[0]
    );
    assert!(
        lines[1].starts_with(
            "log-sensor: sinks.central (collector https://127.0.0.1:9, https://127.0.0.2:9): "
        ) && lines[1].contains("state/tls/ca.pem"),
        "{}",
        lines[1]
    );
    assert!(!env.p("state/out.ndjson").exists(), "check opens no sink");
    // `run` stops at the first sink it cannot open, with the line `check` gave for it.
    assert_eq!(lines[0], run_refusal(&env));
}

#[test]
fn check_passes_a_collector_sink_whose_identity_is_enrolled_or_given() {
    // Enrolled: `<state_dir>/tls/{ca,cert,key}.pem`.
    let env = AgentEnv::with_config(&config(COLLECTOR));
    let pki = Pki::new(&env.p("pki"), "web1");
    enrol(&env, &pki, true);
    let out = check(&env, &[]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert!(
        out.stdout.contains(": ok (1 source(s)") && out.stdout.contains("collector"),
        "{}",
        out.stdout
    );

    // Given in the config: sink.ca, sink.cert and sink.key.
    let env = AgentEnv::with_config(&config(&format!(
        "{COLLECTOR}ca = {:?}\ncert = {:?}\nkey = {:?}\n",
        pki.p("ca.pem"),
        pki.p("client.pem"),
        pki.p("client.key")
    )));
    let out = check(&env, &[]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);

    // Given on the command line: --cert and --key, beside sink.ca.
    let env = AgentEnv::with_config(&config(&format!("{COLLECTOR}ca = {:?}\n", pki.p("ca.pem"))));
    assert_eq!(
        check(&env, &[]).code,
        Some(1),
        "sink.ca alone is no identity"
    );
    let out = check(
        &env,
        &[
            "--cert",
            &pki.p("client.pem"),
            "--key",
            &pki.p("client.key"),
        ],
    );
    assert_eq!(out.code, Some(0), "{}", out.stderr);
}

#[test]
fn check_fails_as_run_does_for_a_syslog_sink_whose_tls_files_do_not_load() {
    let env = AgentEnv::with_config(&config(
        r#"
[sink]
type = "syslog"
address = "127.0.0.1:6514"
tls = true
ca = "nope/ca.pem"
"#,
    ));
    let out = check(&env, &[]);
    assert_eq!(out.code, Some(1), "{}{}", out.stdout, out.stderr);
    let said = out.stderr.trim_end();
    assert!(said.contains("nope/ca.pem"), "{said}");
    assert_eq!(said, run_refusal(&env), "check says what run says");

    let pki = Pki::new(&env.p("pki"), "web1");
    let env = AgentEnv::with_config(&config(&format!(
        "[sink]\ntype = \"syslog\"\naddress = \"127.0.0.1:6514\"\ntls = true\nca = {:?}\n",
        pki.p("ca.pem")
    )));
    let out = check(&env, &[]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
}

#[test]
fn check_fails_as_run_does_for_a_file_sink_that_cannot_be_opened() {
    let env = AgentEnv::with_config(&config(
        "[sink]\ntype = \"file\"\npath = \"blocker/out.ndjson\"\n",
    ));
    // A file where the sink's folder should be: mkdir cannot make it, so open cannot either.
    std::fs::write(env.p("blocker"), b"not a folder").unwrap();
    let out = check(&env, &[]);
    assert_eq!(out.code, Some(1), "{}{}", out.stdout, out.stderr);
    let said = out.stderr.trim_end();
    assert!(
        said.contains("blocker/out.ndjson") && said.contains("cannot create folder"),
        "{said}"
    );
    assert_eq!(said, run_refusal(&env), "check says what run says");

    // With the way clear, check passes and still makes nothing: the folder is run's to create.
    std::fs::remove_file(env.p("blocker")).unwrap();
    let out = check(&env, &[]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert!(
        !env.p("blocker").exists(),
        "check created the sink's folder"
    );
}
