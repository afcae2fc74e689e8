//! End-to-end smoke test of the syslog server input: the real agent binary listening on UDP,
//! TCP and TLS (client certificates required), a Rust client for each, records in the file sink
//! with their `fields`, the spools' streams in the store. The real-sender tests (rsyslog,
//! logger, kill -9) live in their own file.
//!
//! The PKI is generated here with rcgen; no key is committed.

#[path = "support/mod.rs"]
mod support;

use serde_json::Value;
use std::io::Write;
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use support::*;

fn free_port() -> u16 {
    // A TCP port free now is free for UDP too in practice; the agent fails loudly if not.
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Pki {
    ca: PathBuf,
    client: (PathBuf, PathBuf),
}

fn pki(dir: &Path) -> Pki {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    use std::os::unix::fs::PermissionsExt;
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    std::fs::write(dir.join("ca.pem"), p.self_signed(&key).unwrap().pem()).unwrap();
    let ca = Issuer::new(p, key);
    let leaf = |name: &str| {
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec![name.to_string()])
            .unwrap()
            .signed_by(&key, &ca)
            .unwrap();
        let (c, k) = (
            dir.join(format!("{name}.pem")),
            dir.join(format!("{name}.key")),
        );
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        std::fs::set_permissions(&k, std::fs::Permissions::from_mode(0o600)).unwrap();
        (c, k)
    };
    leaf("127.0.0.1");
    Pki {
        ca: dir.join("ca.pem"),
        client: leaf("client"),
    }
}

fn tls_send(pki: &Pki, addr: SocketAddr, bytes: &[u8]) {
    use log_sensor::tls;
    let config = tls::make_config(
        tls::ServerTrust::Ca(&pki.ca),
        Some((pki.client.0.as_path(), pki.client.1.as_path())),
    )
    .unwrap();
    let conn =
        rustls::ClientConnection::new(config, tls::server_name("127.0.0.1").unwrap()).unwrap();
    let mut s = rustls::StreamOwned::new(conn, TcpStream::connect(addr).unwrap());
    s.write_all(bytes).unwrap();
    s.flush().unwrap();
    s.conn.send_close_notify();
    let _ = s.flush();
}

fn by_msg<'a>(records: &'a [Value], msg: &str) -> &'a Value {
    records
        .iter()
        .find(|r| r["msg"] == msg)
        .unwrap_or_else(|| panic!("no record {msg:?} in {records:?}"))
}

#[test]
fn udp_tcp_and_tls_land_in_the_file_sink_with_fields_and_streams() {
    let (udp, tcp, tls_port) = (free_port(), free_port(), free_port());
    let env = AgentEnv::with_config(&format!(
        r#"
host_id = "test-host"
state_dir = "state"
[sources.net]
type = "syslog"
listen = ["udp://127.0.0.1:{udp}", "tcp://127.0.0.1:{tcp}", "tls://127.0.0.1:{tls_port}"]
tls_cert = "127.0.0.1.pem"
tls_key = "127.0.0.1.key"
tls_client_ca = "ca.pem"
max_message_bytes = 128
[batch]
max_wait = "100ms"
[sink]
type = "file"
path = "state/out.ndjson"
"#
    ));
    let pki = pki(env.dir.path());
    let mut agent = env.start();
    let tcp_addr: SocketAddr = format!("127.0.0.1:{tcp}").parse().unwrap();
    wait_for("the TCP listener", PATIENCE, || {
        assert!(agent.is_running(), "{}", tail(&agent.stderr_text()));
        TcpStream::connect(tcp_addr).is_ok()
    });

    let u = UdpSocket::bind("127.0.0.1:0").unwrap();
    u.send_to(
        b"<165>1 2003-10-11T22:14:15.003Z mymachine evntslog - ID47 [ex@32473 iut=\"3\" src=\"a\\\"b\"] \xEF\xBB\xBFudp 5424",
        ("127.0.0.1", udp),
    )
    .unwrap();
    let mut t = TcpStream::connect(tcp_addr).unwrap();
    let m = "<34>Oct 11 22:14:15 web1 su[230]: tcp 3164 octet-counted";
    t.write_all(format!("{} {m}", m.len()).as_bytes()).unwrap();
    let long = format!("<13>1 - - longapp - - - {}END", "x".repeat(300));
    t.write_all(format!("{} {long}", long.len()).as_bytes())
        .unwrap();
    drop(t);
    tls_send(
        &pki,
        format!("127.0.0.1:{tls_port}").parse().unwrap(),
        b"<13>Dec  2 02:00:00 cron: tls lf-framed\n",
    );

    env.wait_msgs(
        &agent,
        &[
            "udp 5424".into(),
            "tcp 3164 octet-counted".into(),
            "tls lf-framed".into(),
        ],
    );
    wait_for("the cut message's two parts", PATIENCE, || {
        env.records()
            .iter()
            .filter(|r| r["part"] != "whole" && !r["part"].is_null())
            .count()
            >= 2
    });
    let records = env.records();
    let r = by_msg(&records, "udp 5424");
    assert_eq!(r["source"], "net");
    let f = &r["fields"];
    assert_eq!(f["facility"], "local4");
    assert_eq!(f["severity"], "notice");
    assert_eq!(f["timestamp"], "2003-10-11T22:14:15.003Z");
    assert_eq!(f["hostname"], "mymachine");
    assert_eq!(f["app_name"], "evntslog");
    assert_eq!(f["msgid"], "ID47");
    assert_eq!(f["structured_data"]["ex@32473"]["src"], "a\"b");
    assert_eq!(f["peer"], u.local_addr().unwrap().to_string());
    let f = &by_msg(&records, "tcp 3164 octet-counted")["fields"];
    assert_eq!(
        (&f["hostname"], &f["app_name"], &f["procid"]),
        (&"web1".into(), &"su".into(), &"230".into())
    );
    assert_eq!(
        by_msg(&records, "tls lf-framed")["fields"]["app_name"],
        "cron"
    );
    let tail_part = records.iter().find(|r| r["part"] == "tail").unwrap();
    assert!(tail_part["msg"].as_str().unwrap().ends_with("END"));
    assert_eq!(tail_part["fields"]["app_name"], "longapp");

    // One stream per listener, caught up once the sink has everything.
    wait_for("the spools' streams committed", PATIENCE, || {
        let rows = env
            .try_query("SELECT stream, lag_bytes FROM stream_lag WHERE stream LIKE 'syslog:net:%'")
            .unwrap_or_default();
        rows.len() == 3 && rows.iter().all(|r| r["lag_bytes"] == 0)
    });

    // Status shows the listeners and the source; their counters are this run's.
    let out = env.cmd().args(["status", "--json"]).output().unwrap();
    let st: Value = serde_json::from_slice(&out.stdout).unwrap();
    let listeners = st["listeners"].as_array().unwrap();
    assert_eq!(listeners.len(), 3, "{st}");
    let l = |scheme: &str| {
        listeners
            .iter()
            .find(|l| l["listen"].as_str().unwrap().starts_with(scheme))
            .unwrap()
    };
    assert_eq!(l("udp")["messages"], 1);
    assert_eq!(l("tcp")["messages"], 2);
    assert_eq!(l("tcp")["cut"], 1);
    assert_eq!(l("tls")["messages"], 1);
    assert_eq!(l("tls")["source"], "net");
    // Everything was acknowledged (the streams above caught up): no lag, and the spools give
    // their space back once the input sees the commits.
    wait_for("the spools reclaimed", PATIENCE, || {
        let out = env.cmd().args(["status", "--json"]).output().unwrap();
        let st: Value = serde_json::from_slice(&out.stdout).unwrap();
        st["listeners"]
            .as_array()
            .unwrap()
            .iter()
            .all(|l| l["spool_bytes"] == 0 && l["spool_lag_bytes"] == 0)
    });
    let net = st["sources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "net")
        .unwrap();
    assert_eq!(
        (&net["origin"], &net["streams"]),
        (&"syslog".into(), &3.into())
    );

    // A restart resumes after what was delivered: nothing again, the next message once.
    agent.signal(libc::SIGTERM);
    assert_eq!(agent.wait_exit(PATIENCE), Some(0));
    let mut agent = env.start();
    wait_for("the TCP listener again", PATIENCE, || {
        assert!(agent.is_running(), "{}", tail(&agent.stderr_text()));
        TcpStream::connect(tcp_addr).is_ok()
    });
    let mut t = TcpStream::connect(tcp_addr).unwrap();
    t.write_all(b"<13>after restart\n").unwrap();
    drop(t);
    env.wait_msgs(&agent, &["after restart".into()]);
    let msgs = env.msgs();
    assert_eq!(
        msgs.iter().filter(|m| *m == "udp 5424").count(),
        1,
        "{msgs:?}"
    );
}

#[test]
fn a_reload_starts_changed_and_new_listeners_and_bad_input_closes_only_its_connection() {
    let (tcp, udp) = (free_port(), free_port());
    let config = |listen: &str| {
        format!(
            r#"
host_id = "test-host"
state_dir = "state"
[sources.net]
type = "syslog"
listen = [{listen}]
[batch]
max_wait = "100ms"
[sink]
type = "file"
path = "state/out.ndjson"
"#
        )
    };
    let env = AgentEnv::with_config(&config(&format!("\"tcp://127.0.0.1:{tcp}\"")));
    // check counts it; list shows its keys and none of the file sources' [defaults].
    let out = env.cmd().arg("check").output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("ok (1 source(s)"));
    let out = env.cmd().args(["list", "sources.net"]).output().unwrap();
    let listed = String::from_utf8_lossy(&out.stdout);
    assert!(listed.contains("sources.net.listen"), "{listed}");
    assert!(!listed.contains("fingerprint_bytes"), "{listed}");
    let mut agent = env.start();
    let tcp_addr: SocketAddr = format!("127.0.0.1:{tcp}").parse().unwrap();
    wait_for("the TCP listener", PATIENCE, || {
        assert!(agent.is_running(), "{}", tail(&agent.stderr_text()));
        TcpStream::connect(tcp_addr).is_ok()
    });
    // Garbage on one connection closes it; the listener and the other connection go on.
    let mut good = TcpStream::connect(tcp_addr).unwrap();
    good.write_all(b"<13>before garbage\n").unwrap();
    let mut bad = TcpStream::connect(tcp_addr).unwrap();
    bad.write_all(b"<13>ok line\n\x00\x01\x02 binary").unwrap();
    env.wait_msgs(&agent, &["before garbage".into(), "ok line".into()]);
    good.write_all(b"<13>after garbage\n").unwrap();
    env.wait_msgs(&agent, &["after garbage".into()]);
    wait_for("the framing alert", PATIENCE, || {
        env.try_query("SELECT kind FROM alerts WHERE kind = 'syslog_framing'")
            .is_ok_and(|r| r.len() == 1)
    });

    std::fs::write(
        env.p("agent.toml"),
        config(&format!(
            "\"tcp://127.0.0.1:{tcp}\", \"udp://127.0.0.1:{udp}\""
        )),
    )
    .unwrap();
    let out = env.cmd().arg("reload").output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let u = UdpSocket::bind("127.0.0.1:0").unwrap();
    wait_for("the new UDP listener's message", PATIENCE, || {
        u.send_to(b"<13>over new udp", ("127.0.0.1", udp)).unwrap();
        env.msgs().iter().any(|m| m == "over new udp")
    });
    // The source changed, so its TCP listener was restarted: senders reconnect.
    let mut t = TcpStream::connect(tcp_addr).unwrap();
    t.write_all(b"<13>tcp after reload\n").unwrap();
    drop(t);
    env.wait_msgs(&agent, &["tcp after reload".into()]);
    let msgs = env.msgs();
    for m in [
        "before garbage",
        "ok line",
        "after garbage",
        "tcp after reload",
    ] {
        assert_eq!(msgs.iter().filter(|x| *x == m).count(), 1, "{m}: {msgs:?}");
    }
}

/// The syslog sink forwards what the syslog input received with its `fields` as structured
/// data, and a real rsyslog parses it as RFC 5424: the agent's fields in `[fields@32473 …]`,
/// the sender's own SD element as it arrived, the message intact.
#[test]
fn fields_reach_a_real_rsyslog_as_valid_structured_data() {
    let tmp = tempfile::tempdir().unwrap();
    let (udp, rs_port) = (free_port(), free_port());
    let out = tmp.path().join("received.log");
    std::fs::create_dir_all(tmp.path().join("work")).unwrap();
    std::fs::write(
        tmp.path().join("rsyslog.conf"),
        format!(
            r#"global(workDirectory="{work}" maxMessageSize="128k")
module(load="imtcp")
template(name="t" type="string" string="%app-name%|%structured-data%|%msg%\n")
ruleset(name="r") {{ action(type="omfile" file="{out}" template="t") }}
input(type="imtcp" port="{rs_port}" ruleset="r")
"#,
            work = tmp.path().join("work").display(),
            out = out.display(),
        ),
    )
    .unwrap();
    let mut cmd = std::process::Command::new("rsyslogd");
    cmd.arg("-n")
        .arg("-f")
        .arg(tmp.path().join("rsyslog.conf"))
        .arg("-i")
        .arg(tmp.path().join("rsyslog.pid"))
        .stdout(std::process::Stdio::null());
    let _rs = Proc::spawn("rsyslogd", &mut cmd, &tmp.path().join("rsyslog.err"));
    wait_for("rsyslog to listen", PATIENCE, || {
        TcpStream::connect(("127.0.0.1", rs_port)).is_ok()
    });

    let env = AgentEnv::with_config(&format!(
        r#"
host_id = "test-host"
state_dir = "state"
[sources.net]
type = "syslog"
listen = ["udp://127.0.0.1:{udp}", "tcp://127.0.0.1:{udp}"]
[batch]
max_wait = "100ms"
[sink]
type = "syslog"
address = "127.0.0.1:{rs_port}"
tls = false
"#
    ));
    let mut agent = env.start();
    wait_for("the agent to listen", PATIENCE, || {
        assert!(agent.is_running(), "{}", tail(&agent.stderr_text()));
        TcpStream::connect(("127.0.0.1", udp)).is_ok()
    });
    let u = UdpSocket::bind("127.0.0.1:0").unwrap();
    let received = || std::fs::read_to_string(&out).unwrap_or_default();
    wait_for("the message at rsyslog", PATIENCE, || {
        u.send_to(
            b"<165>1 2003-10-11T22:14:15.003Z mymachine evntslog - ID47 [ex@32473 iut=\"3\" q=\"a\\]b\"] relayed",
            ("127.0.0.1", udp),
        )
        .unwrap();
        received().contains("relayed")
    });
    let line = received()
        .lines()
        .find(|l| l.ends_with("|relayed"))
        .unwrap_or_else(|| panic!("{}", received()))
        .to_string();
    let (_, rest) = line.split_once('|').unwrap();
    let sd = rest.strip_suffix("|relayed").unwrap();
    assert!(sd.starts_with("[logsensor@32473 "), "{line}");
    for want in [
        "[fields@32473 ",
        " app_name=\"evntslog\"",
        " facility=\"local4\"",
        " msgid=\"ID47\"",
        " severity=\"notice\"",
        "[ex@32473 iut=\"3\" q=\"a\\]b\"]",
    ] {
        assert!(sd.contains(want), "{want} in {line}");
    }
}
