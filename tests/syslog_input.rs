//! End-to-end tests of the syslog server input (`[sources.NAME] type = "syslog"`, issue #11
//! section 2) against real senders: Debian's rsyslog forwarding with `omfwd` over TCP (both
//! framings) and TLS (gtls), util-linux `logger` over UDP and TCP in RFC 5424 and RFC 3164, and
//! raw sockets for what well-behaved senders never do (split frames, garbage, over-long
//! messages, a thousand connections, clients without an accepted certificate).
//!
//! The raw client is Rust's std::net (and rustls for TLS) rather than Python: it runs in the
//! test's own process, so its connections' fate (closed, held back) is observed directly.
//! Certificates are made here with rcgen; no key is committed. Tests poll with deadlines.

#[path = "support/pki.rs"]
mod pki;
#[path = "support/mod.rs"]
mod support;
#[path = "support/syslog.rs"]
mod syslog;
#[path = "support/tmpfs.rs"]
mod tmpfs;

use serde_json::Value;
use std::collections::HashSet;
use std::io::Write;
use std::net::UdpSocket;
use std::time::Duration;
use support::*;
use syslog::*;

/// Sends numbered probe datagrams until one reaches the sink: the UDP socket is bound then
/// (the agent is ready once TCP accepts, but nothing orders its UDP bind before that).
fn wait_udp_ready(agent: &NetAgent, running: &Proc) {
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut i = 0;
    wait_for(
        &format!(
            "a UDP probe to arrive; agent stderr:\n{}",
            tail(&running.stderr_text())
        ),
        PATIENCE,
        || {
            i += 1;
            sock.send_to(
                format!("<14>1 - - probe - - - udp probe {i}").as_bytes(),
                ("127.0.0.1", agent.port),
            )
            .unwrap();
            agent.msgs().iter().any(|m| m.starts_with("udp probe "))
        },
    );
}

fn field<'a>(r: &'a Value, name: &str) -> &'a Value {
    &r["fields"][name]
}

fn assert_peer_is_loopback(r: &Value) {
    let peer = field(r, "peer").as_str().unwrap_or_default();
    let port = peer
        .strip_prefix("127.0.0.1:")
        .and_then(|p| p.parse::<u16>().ok());
    assert!(port.is_some_and(|p| p > 0), "peer is ip:port: {r}");
}

// ------------------------------------------------------------------ the senders themselves

/// What the tests below rely on the senders to put on the wire, checked against a plain
/// listener: a change in Debian's rsyslog or util-linux shows here, not as a puzzling failure
/// of the agent's tests.
#[test]
fn the_real_senders_frame_messages_as_these_tests_expect() {
    let tmp = tempfile::tempdir().unwrap();
    let cap = Capture::start();
    let port = cap.port.to_string();
    logger(&[
        "--rfc5424",
        "-T",
        "-n",
        "127.0.0.1",
        "-P",
        &port,
        "-t",
        "lf",
        "logger-lf",
    ]);
    logger(&[
        "--rfc5424",
        "--octet-count",
        "-T",
        "-n",
        "127.0.0.1",
        "-P",
        &port,
        "-t",
        "oc",
        "logger-oc",
    ]);
    logger(&[
        "--rfc3164",
        "-T",
        "-n",
        "127.0.0.1",
        "-P",
        &port,
        "-t",
        "bsd",
        "logger-bsd",
    ]);
    // Each logger is a connection of its own, read by a thread of its own: the last to be
    // sent need not be the last to arrive.
    wait_for("logger's three messages", PATIENCE, || {
        let text = String::from_utf8_lossy(&cap.bytes()).into_owned();
        ["logger-lf", "logger-oc", "logger-bsd"]
            .iter()
            .all(|m| text.contains(m))
    });
    let text = String::from_utf8_lossy(&cap.bytes()).into_owned();
    assert!(
        text.contains("<13>1 "),
        "RFC 5424 with user.notice: {text:?}"
    );
    assert!(
        text.contains("logger-lf\n"),
        "LF framing by default: {text:?}"
    );
    let oc = text
        .find(" <13>1 ")
        .expect("an octet count before the frame");
    assert!(
        text[..oc].ends_with(|c: char| c.is_ascii_digit()),
        "{text:?}"
    );
    assert!(
        regex_like_3164(&text),
        "RFC 3164: <13>Mmm dd hh:mm:ss host bsd: ...: {text:?}"
    );

    for (how, octets) in [(Forward::OctetCounted, true), (Forward::Lf, false)] {
        let cap = Capture::start();
        let fwd = Forwarder::start(tmp.path(), cap.port, how);
        fwd.send(&[rfc5424("forwarded one"), rfc5424("forwarded two")]);
        wait_for("rsyslog to forward both", PATIENCE, || {
            String::from_utf8_lossy(&cap.bytes()).contains("forwarded two")
        });
        let text = String::from_utf8_lossy(&cap.bytes()).into_owned();
        let one = "<134>1 2026-12-02T01:02:03.004Z fwd-host fwdapp 77 ID9 - forwarded one";
        if octets {
            assert!(
                text.starts_with(&format!("{} {one}", one.len())),
                "octet-counted, no LF: {text:?}"
            );
        } else {
            assert!(text.starts_with(&format!("{one}\n")), "LF-ended: {text:?}");
        }
    }
}

/// `<13>Mmm dd hh:mm:ss HOST bsd: logger-bsd`, checked by hand (no regex crate in the tests).
fn regex_like_3164(text: &str) -> bool {
    let months = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    text.match_indices("<13>").any(|(start, _)| {
        let rest = &text[start + 4..];
        rest.len() > 16
            && months.contains(&&rest[..3])
            && rest.as_bytes()[9] == b':'
            && rest.as_bytes()[12] == b':'
            && rest[15..].starts_with(' ')
            && rest[16..].contains(" bsd: logger-bsd")
    })
}

// ------------------------------------------------------------------ logger

fn assert_5424_logger_fields(r: &Value) {
    assert_eq!(field(r, "facility"), "local3", "{r}");
    assert_eq!(field(r, "severity"), "warning", "{r}");
    assert_eq!(field(r, "hostname"), hostname().as_str(), "{r}");
    assert_eq!(field(r, "app_name"), "myapp", "{r}");
    assert_eq!(field(r, "procid"), "4242", "{r}");
    assert_eq!(field(r, "msgid"), "ID47", "{r}");
    assert_eq!(
        field(r, "structured_data")["zoo@32473"]["tiger"],
        "hungry",
        "{r}"
    );
    // logger stamps the time itself (RFC 3339 with microseconds); kept as sent.
    let ts = field(r, "timestamp").as_str().unwrap_or_default();
    assert!(
        ts.starts_with("20") && ts.contains('T'),
        "timestamp as sent: {r}"
    );
    assert_peer_is_loopback(r);
}

#[test]
fn logger_rfc5424_over_udp_and_tcp_in_both_framings_carries_every_field() {
    let mut agent = NetAgent::new("");
    let a = agent.start();
    wait_udp_ready(&agent, &a);
    let port = agent.port.to_string();
    let common = [
        "--rfc5424",
        "-n",
        "127.0.0.1",
        "-P",
        &port,
        "-t",
        "myapp",
        "--id=4242",
        "--msgid",
        "ID47",
        "--sd-id",
        "zoo@32473",
        "--sd-param",
        "tiger=\"hungry\"",
        "-p",
        "local3.warning",
    ];
    let cases: [(&[&str], &str); 3] = [
        (&["-d"], "5424 over udp"),
        (&["-T"], "5424 over tcp, LF"),
        (&["-T", "--octet-count"], "5424 over tcp, octet-counted"),
    ];
    for (transport, msg) in cases {
        let mut args: Vec<&str> = common.to_vec();
        args.extend_from_slice(transport);
        args.push(msg);
        logger(&args);
    }
    for (_, msg) in cases {
        let r = agent.record(&a, msg);
        assert_eq!(r["source"], "net");
        assert_5424_logger_fields(&r);
    }
}

#[test]
fn logger_rfc3164_over_udp_and_tcp_carries_its_fields() {
    let mut agent = NetAgent::new("");
    let a = agent.start();
    wait_udp_ready(&agent, &a);
    let port = agent.port.to_string();
    for (transport, msg) in [("-d", "bsd over udp"), ("-T", "bsd over tcp")] {
        logger(&[
            "--rfc3164",
            "-n",
            "127.0.0.1",
            "-P",
            &port,
            "-t",
            "oldapp",
            "--id=99",
            "-p",
            "mail.err",
            transport,
            msg,
        ]);
    }
    for msg in ["bsd over udp", "bsd over tcp"] {
        let r = agent.record(&a, msg);
        assert_eq!(field(&r, "facility"), "mail", "{r}");
        assert_eq!(field(&r, "severity"), "err", "{r}");
        assert_eq!(field(&r, "hostname"), hostname().as_str(), "{r}");
        assert_eq!(field(&r, "app_name"), "oldapp", "{r}");
        assert_eq!(field(&r, "procid"), "99", "{r}");
        let ts = field(&r, "timestamp").as_str().unwrap_or_default();
        assert_eq!(ts.len(), 15, "Mmm dd hh:mm:ss as sent: {r}");
        assert_peer_is_loopback(&r);
    }
}

// ------------------------------------------------------------------ raw clients: parsing

/// Both syslog formats, the common BSD variants, and text that is neither, each sent over UDP
/// and over TCP a byte at a time (a frame split across many writes is still one message).
#[test]
fn split_frames_and_every_format_variant_parse_as_sent() {
    let mut agent = NetAgent::new("");
    let a = agent.start();
    wait_udp_ready(&agent, &a);
    // (wire message with `{M}` for its MSG, msg, facility, severity, timestamp, hostname,
    // app_name, procid)
    let cases: Vec<[&str; 8]> = vec![
        [
            r#"<165>1 2003-10-11T22:14:15.003Z mymachine.example.com evntslog - ID47 [exampleSDID@32473 iut="3" eventSource="Application"] {M}"#,
            "5424 with sd",
            "local4",
            "notice",
            "2003-10-11T22:14:15.003Z",
            "mymachine.example.com",
            "evntslog",
            "",
        ],
        [
            "<34>Oct 11 22:14:15 mymachine su: {M}",
            "'su root' failed for lonvick",
            "auth",
            "crit",
            "Oct 11 22:14:15",
            "mymachine",
            "su",
            "",
        ],
        [
            "<30>Dec  2 01:02:03 somehost sshd[1234]: {M}",
            "bsd with pid",
            "daemon",
            "info",
            "Dec  2 01:02:03",
            "somehost",
            "sshd",
            "1234",
        ],
    ];
    let wire = |c: &[&str; 8], via: &str| c[0].replace("{M}", &format!("{} {via}", c[1]));
    let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    for c in &cases {
        udp.send_to(wire(c, "udp").as_bytes(), ("127.0.0.1", agent.port))
            .unwrap();
    }
    // Octet-counted, a byte per write; LF-ended, a byte per write.
    let mut oc = tcp(agent.port);
    let mut lf = tcp(agent.port);
    for c in &cases {
        for b in octet(&wire(c, "oc")) {
            oc.write_all(&[b]).unwrap();
        }
        for b in format!("{}\n", wire(c, "lf")).bytes() {
            lf.write_all(&[b]).unwrap();
        }
    }
    // Neither format: kept whole, as the message.
    let junk = "no priority, no header, just words";
    lf.write_all(format!("{junk}\n").as_bytes()).unwrap();
    let got = agent.record(&a, junk);
    assert_eq!(got["source"], "net");

    for [_, msg, facility, severity, ts, host, app, pid] in &cases {
        for via in ["udp", "oc", "lf"] {
            let r = agent.record(&a, &format!("{msg} {via}"));
            assert_eq!(field(&r, "facility"), *facility, "{r}");
            assert_eq!(field(&r, "severity"), *severity, "{r}");
            assert_eq!(field(&r, "timestamp"), *ts, "{r}");
            assert_eq!(field(&r, "hostname"), *host, "{r}");
            assert_eq!(field(&r, "app_name"), *app, "{r}");
            if pid.is_empty() {
                assert!(
                    field(&r, "procid").is_null() || field(&r, "procid") == "-",
                    "no procid: {r}"
                );
            } else {
                assert_eq!(field(&r, "procid"), *pid, "{r}");
            }
            assert_peer_is_loopback(&r);
        }
    }
    let sd = agent.record(&a, "5424 with sd lf");
    assert_eq!(field(&sd, "msgid"), "ID47");
    assert_eq!(
        field(&sd, "structured_data"),
        &serde_json::json!({"exampleSDID@32473": {"iut": "3", "eventSource": "Application"}})
    );
}

/// Octet counting lets a message hold an LF; LF framing ends it there. Each connection of one
/// listener is framed by what it sends first, as rsyslog does.
#[test]
fn octet_counted_and_lf_framing_are_told_apart_per_connection() {
    let mut agent = NetAgent::new("");
    let a = agent.start();
    let mut oc = tcp(agent.port);
    let mut lf = tcp(agent.port);
    oc.write_all(&octet(&rfc5424("oc first\noc same message")))
        .unwrap();
    lf.write_all(format!("{}\n", rfc5424("lf first")).as_bytes())
        .unwrap();
    oc.write_all(&octet(&rfc5424("oc second"))).unwrap();
    lf.write_all(format!("{}\nlf second line\n", rfc5424("lf again")).as_bytes())
        .unwrap();
    let want: Vec<String> = [
        "oc first\noc same message",
        "oc second",
        "lf first",
        "lf again",
        "lf second line",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let recs = agent.wait_msgs(&a, &want);
    assert_eq!(recs.len(), want.len(), "nothing else: {recs:?}");
}

// ------------------------------------------------------------------ raw clients: bad input

/// Binary garbage on one connection and a bad octet count on another close those two, with an
/// alert naming the peer once; a connection open beside them, and new ones, keep working.
#[test]
fn garbage_and_a_bad_octet_count_close_only_their_connection() {
    let mut agent = NetAgent::new("");
    let a = agent.start();
    let mut good = tcp(agent.port);
    good.write_all(&octet(&rfc5424("before the garbage")))
        .unwrap();
    agent.wait_msgs(&a, &["before the garbage".to_string()]);

    let mut garbage = tcp(agent.port);
    let garbage_peer = garbage.local_addr().unwrap();
    garbage
        .write_all(&[0x00, 0xff, 0xfe, 0x13, 0x37, 0x80, 0x00, 0x01, 0x02])
        .unwrap();
    garbage
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    assert!(
        closed_by_peer(&mut garbage, PATIENCE),
        "the agent closes a connection sending binary garbage"
    );

    let mut bad_count = tcp(agent.port);
    bad_count.write_all(b"12x4 <13>1 - - - - - - no").unwrap();
    bad_count
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    assert!(
        closed_by_peer(&mut bad_count, PATIENCE),
        "the agent closes a connection with a bad octet count"
    );

    good.write_all(&octet(&rfc5424("after the garbage")))
        .unwrap();
    let mut fresh = tcp(agent.port);
    fresh
        .write_all(format!("{}\n", rfc5424("a new connection")).as_bytes())
        .unwrap();
    agent.wait_msgs(
        &a,
        &[
            "after the garbage".to_string(),
            "a new connection".to_string(),
        ],
    );

    wait_for(
        &format!(
            "an alert naming the garbage's peer; alerts: {:?}",
            agent.all_alerts()
        ),
        PATIENCE,
        || {
            agent
                .all_alerts()
                .iter()
                .any(|d| d.contains(&garbage_peer.to_string()))
        },
    );
    let naming = |peer: &str| {
        agent
            .all_alerts()
            .iter()
            .filter(|d| d.contains(peer))
            .count()
    };
    assert_eq!(
        naming(&garbage_peer.to_string()),
        1,
        "{:?}",
        agent.all_alerts()
    );
    assert!(
        a_record_from(&agent, "no").is_none(),
        "nothing from the bad count"
    );
}

fn a_record_from(agent: &NetAgent, msg: &str) -> Option<Value> {
    agent.records().into_iter().find(|r| r["msg"] == msg)
}

/// A message over `max_message_bytes` (64 KiB here) becomes a head and a tail part, over TCP in
/// both framings, like an over-long line of a file.
#[test]
fn an_over_long_message_is_cut_into_head_and_tail() {
    let mut agent = NetAgent::new("");
    let a = agent.start();
    let body = |tag: &str| format!("BEGIN-{tag} {} END-{tag}", "x".repeat(100_000));
    let mut oc = tcp(agent.port);
    oc.write_all(&octet(&rfc5424(&body("oc")))).unwrap();
    oc.write_all(&octet(&rfc5424("after the long oc"))).unwrap();
    let mut lf = tcp(agent.port);
    lf.write_all(
        format!(
            "{}\n{}\n",
            rfc5424(&body("lf")),
            rfc5424("after the long lf")
        )
        .as_bytes(),
    )
    .unwrap();
    agent.wait_msgs(
        &a,
        &[
            "after the long oc".to_string(),
            "after the long lf".to_string(),
        ],
    );
    for tag in ["oc", "lf"] {
        let recs = agent.records();
        let head: Vec<&Value> = recs
            .iter()
            .filter(|r| {
                r["part"] == "head"
                    && r["msg"]
                        .as_str()
                        .is_some_and(|m| m.contains(&format!("BEGIN-{tag}")))
            })
            .collect();
        let tail: Vec<&Value> = recs
            .iter()
            .filter(|r| {
                r["part"] == "tail"
                    && r["msg"]
                        .as_str()
                        .is_some_and(|m| m.ends_with(&format!("END-{tag}")))
            })
            .collect();
        assert_eq!(
            head.len(),
            1,
            "one head part over {tag}: {:?}",
            part_summary(&recs)
        );
        assert_eq!(
            tail.len(),
            1,
            "one tail part over {tag}: {:?}",
            part_summary(&recs)
        );
        for p in [head[0], tail[0]] {
            let m = p["msg"].as_str().unwrap();
            assert!(
                m.len() <= 65536,
                "a part is at most max_message_bytes: {}",
                m.len()
            );
            assert!(!m.contains(&format!("END-{tag}")) || p["part"] == "tail");
        }
    }
    let tcp_url = &agent.urls()[1];
    assert_eq!(
        listener_stat(&agent.status(), tcp_url, "cut"),
        Some(2),
        "both counted as cut"
    );
}

fn part_summary(recs: &[Value]) -> Vec<(String, usize)> {
    recs.iter()
        .map(|r| {
            (
                r["part"].as_str().unwrap_or("?").to_string(),
                r["msg"].as_str().map_or(0, str::len),
            )
        })
        .collect()
}

// ------------------------------------------------------------------ raw clients: connections

#[test]
fn a_thousand_connections_at_once_are_all_served() {
    let mut agent = NetAgent::new("");
    let a = agent.start();
    let conns: Vec<_> = (0..1000)
        .map(|i| {
            let mut s = tcp(agent.port);
            s.write_all(&octet(&rfc5424(&format!("conn {i:04}"))))
                .unwrap();
            s
        })
        .collect();
    let want: Vec<String> = (0..1000).map(|i| format!("conn {i:04}")).collect();
    let recs = agent.wait_msgs(&a, &want);
    let peers: HashSet<&str> = recs
        .iter()
        .filter_map(|r| field(r, "peer").as_str())
        .collect();
    assert_eq!(peers.len(), 1000, "one peer per connection");
    drop(conns);
}

#[test]
fn max_connections_refuses_the_one_over() {
    let mut agent = NetAgent::new("max_connections = 10");
    let a = agent.start();
    let mut open: Vec<_> = (0..10)
        .map(|i| {
            let mut s = tcp(agent.port);
            s.write_all(&octet(&rfc5424(&format!("held {i}")))).unwrap();
            s
        })
        .collect();
    let held: Vec<String> = (0..10).map(|i| format!("held {i}")).collect();
    agent.wait_msgs(&a, &held);

    // The eleventh: the kernel completes the handshake, but the agent must not serve it.
    let mut over = tcp(agent.port);
    over.write_all(&octet(&rfc5424("the eleventh"))).unwrap();
    over.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let refused = closed_by_peer(&mut over, PATIENCE);
    // A UDP message sent after it arrives: the agent kept working meanwhile.
    wait_udp_ready(&agent, &a);
    assert!(refused, "the eleventh connection is closed by the agent");
    assert!(
        a_record_from(&agent, "the eleventh").is_none(),
        "not served"
    );

    // One of the ten goes; a new connection is served again once the agent has seen it go
    // (until then a new one may still be refused: try again).
    open.pop();
    let mut k = 0;
    wait_for("a connection served in the freed slot", PATIENCE, || {
        k += 1;
        let msg = format!("in a freed slot {k}");
        let mut s = tcp(agent.port);
        s.write_all(&octet(&rfc5424(&msg))).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        loop {
            if a_record_from(&agent, &msg).is_some() {
                return true;
            }
            if closed_by_peer(&mut s, Duration::ZERO) {
                return a_record_from(&agent, &msg).is_some();
            }
        }
    });
}

// ------------------------------------------------------------------ TLS

/// With `tls_client_ca`, only a client certificate from that CA gets in: a client with none,
/// or one from another CA, is refused and nothing it sent arrives.
#[test]
fn tls_clients_without_an_accepted_certificate_are_refused() {
    let mut agent = NetAgent::new("");
    let a = agent.start();
    for (cert, msg) in [
        (None, "no certificate"),
        (Some("wrong"), "wrong certificate"),
    ] {
        let mut c = tls_client(agent.tls_port, &agent.pki, cert);
        // TLS 1.3 finishes the client's side of the handshake before the server has checked
        // the certificate: the write may succeed; the refusal is the connection's end.
        let _ = c.write_all(&octet(&rfc5424(msg)));
        let _ = c.flush();
        assert!(
            closed_by_peer(&mut c, PATIENCE),
            "the agent ends a TLS connection with {msg}"
        );
    }
    let mut good = tls_client(agent.tls_port, &agent.pki, Some("client"));
    good.write_all(&octet(&rfc5424("accepted certificate")))
        .unwrap();
    good.flush().unwrap();
    let r = agent.record(&a, "accepted certificate");
    assert_peer_is_loopback(&r);
    assert!(a_record_from(&agent, "no certificate").is_none());
    assert!(a_record_from(&agent, "wrong certificate").is_none());
}

// ------------------------------------------------------------------ rsyslog forwarding

fn assert_forwarded(r: &Value) {
    assert_eq!(field(r, "hostname"), "fwd-host", "{r}");
    assert_eq!(field(r, "app_name"), "fwdapp", "{r}");
    assert_eq!(field(r, "procid"), "77", "{r}");
    assert_eq!(field(r, "msgid"), "ID9", "{r}");
    assert_eq!(field(r, "facility"), "local0", "{r}");
    assert_eq!(field(r, "severity"), "info", "{r}");
    assert_peer_is_loopback(r);
}

#[test]
fn rsyslog_forwards_over_tcp_octet_counted_and_lf_framed() {
    let tmp = tempfile::tempdir().unwrap();
    let mut agent = NetAgent::new("");
    let a = agent.start();
    let oc = Forwarder::start(tmp.path(), agent.port, Forward::OctetCounted);
    let lf = Forwarder::start(tmp.path(), agent.port, Forward::Lf);
    let want_oc = numbered("rsyslog-oc", 0..500);
    let want_lf = numbered("rsyslog-lf", 0..500);
    oc.send(&want_oc.iter().map(|m| rfc5424(m)).collect::<Vec<_>>());
    lf.send(&want_lf.iter().map(|m| rfc5424(m)).collect::<Vec<_>>());
    let all: Vec<String> = want_oc.iter().chain(&want_lf).cloned().collect();
    let recs = agent.wait_msgs(&a, &all);
    assert_eq!(recs.len(), all.len(), "each once");
    for r in &recs {
        assert_forwarded(r);
    }
}

#[test]
fn rsyslog_forwards_over_tls_and_a_wrong_client_certificate_gets_nothing_in() {
    let tmp = tempfile::tempdir().unwrap();
    let mut agent = NetAgent::new("");
    let a = agent.start();
    let wrong = Forwarder::start(
        tmp.path().join("wrong").as_path(),
        agent.tls_port,
        Forward::Tls {
            pki: &agent.pki,
            cert: "wrong",
        },
    );
    wrong.send(
        &numbered("tls-wrong", 0..20)
            .iter()
            .map(|m| rfc5424(m))
            .collect::<Vec<_>>(),
    );
    let good = Forwarder::start(
        tmp.path().join("good").as_path(),
        agent.tls_port,
        Forward::Tls {
            pki: &agent.pki,
            cert: "client",
        },
    );
    let want = numbered("tls-good", 0..500);
    good.send(&want.iter().map(|m| rfc5424(m)).collect::<Vec<_>>());
    let recs = agent.wait_msgs(&a, &want);
    assert_eq!(
        recs.len(),
        want.len(),
        "each once, and nothing from the wrong certificate"
    );
    for r in &recs {
        assert_forwarded(r);
    }
    // The wrong one has been retrying all along; a refusal the agent logged proves it tried.
    wait_for(
        &format!(
            "the refused handshake in the agent's log:\n{}",
            tail(&a.stderr_text())
        ),
        PATIENCE,
        || a.stderr_text().to_lowercase().contains("certificate"),
    );
    assert!(
        agent.msgs().iter().all(|m| !m.starts_with("tls-wrong")),
        "the wrong certificate got nothing in"
    );
}

/// kill -9 while rsyslog forwards numbered messages over TCP, then a restart: every message the
/// spool held (or the sink had) at the kill arrives, none is invented. What was in a socket
/// buffer and not yet in the spool is the loss the README admits for plain TCP; rsyslog resends
/// from its queue whatever it had not yet written to the socket.
#[test]
fn kill9_while_rsyslog_forwards_loses_nothing_that_reached_the_spool() {
    let tmp = tempfile::tempdir().unwrap();
    let mut agent = NetAgent::new("");
    let mut a = agent.start();
    let fwd = Forwarder::start(tmp.path(), agent.port, Forward::OctetCounted);
    let all = numbered("k9", 0..6000);
    let feeder = {
        let port = fwd.port;
        let lines: Vec<String> = all.iter().map(|m| rfc5424(m)).collect();
        std::thread::spawn(move || {
            let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
            // Paced, so the kill falls while rsyslog is still forwarding.
            for chunk in lines.chunks(50) {
                let mut buf = String::new();
                for l in chunk {
                    buf.push_str(l);
                    buf.push('\n');
                }
                s.write_all(buf.as_bytes()).unwrap();
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    wait_for(
        "some messages at the sink before the kill",
        PATIENCE,
        || agent.msgs().len() >= 1000,
    );
    a.signal(libc::SIGKILL);
    a.wait_exit(PATIENCE);
    let spooled = numbers_in(&agent.state_bytes(), "k9-");
    let delivered: HashSet<String> = agent.msgs().into_iter().collect();
    let promised: Vec<&String> = all
        .iter()
        .filter(|m| delivered.contains(*m) || spooled.contains(*m))
        .collect();
    assert!(promised.len() >= 1000);

    let a2 = agent.restart();
    feeder.join().unwrap();
    let promised: Vec<String> = promised.into_iter().cloned().collect();
    agent.wait_msgs(&a2, &promised);
    // rsyslog keeps forwarding after the restart: the last message comes through too.
    agent.wait_msgs(&a2, &[all[all.len() - 1].clone()]);
    let got = agent.msgs();
    let sent: HashSet<&String> = all.iter().collect();
    let invented: Vec<&String> = got
        .iter()
        .filter(|m| !sent.contains(m) && !m.starts_with("udp probe"))
        .collect();
    assert!(invented.is_empty(), "none invented: {invented:?}");
    let got: HashSet<&String> = got.iter().collect();
    let lost: Vec<usize> = (0..all.len()).filter(|&i| !got.contains(&all[i])).collect();
    // What may be lost is what was in flight at the kill: one run of consecutive messages,
    // never a scattering (that would be a loss of the agent's own making).
    if let (Some(first), Some(last)) = (lost.first(), lost.last()) {
        assert_eq!(
            last - first + 1,
            lost.len(),
            "the lost messages are one window at the kill: {lost:?}"
        );
    }
    eprintln!(
        "kill -9: {} promised (spool or sink), {} of {} lost in transit",
        promised.len(),
        lost.len(),
        all.len()
    );
    drop(fwd);
}

/// Every `{prefix}NNNNNN` in `bytes` (one pass: the spool is megabytes, the messages thousands).
fn numbers_in(bytes: &[u8], prefix: &str) -> HashSet<String> {
    let p = prefix.as_bytes();
    let mut found = HashSet::new();
    let mut i = 0;
    while i + p.len() + 6 <= bytes.len() {
        if &bytes[i..i + p.len()] == p {
            let digits = &bytes[i + p.len()..i + p.len() + 6];
            if digits.iter().all(u8::is_ascii_digit) {
                found.insert(format!("{prefix}{}", String::from_utf8_lossy(digits)));
            }
            i += p.len() + 6;
        } else {
            i += 1;
        }
    }
    found
}

// ------------------------------------------------------------------ a full spool

/// With the sink's disk full and a small spool, the agent stops reading TCP (the bytes wait in
/// the kernel, the sender is held back) and drops UDP, counted, each listener's episode alerted
/// once; when the sink has room again, every TCP message arrives once, in order.
#[test]
fn a_full_spool_holds_back_tcp_and_drops_udp_with_one_alert() {
    let fs = tmpfs::Tmpfs::new(64 << 10);
    let out = fs.path().join("out.ndjson");
    let mut agent = NetAgent::with("spool_max_bytes = \"1MiB\"", Some(&out), "");
    let a = agent.start();
    let ballast = fs.fill();
    // 4,000 messages of ~2 KiB: 8 MB, eight times the spool (1 MiB, the least allowed).
    let all = numbered("full", 0..4000);
    let pad = "p".repeat(2000);
    let mut s = tcp(agent.port);
    let client_port = s.local_addr().unwrap().port();
    let frames: Vec<u8> = all
        .iter()
        .flat_map(|m| octet(&rfc5424(&format!("{m} {pad}"))))
        .collect();
    let sender = std::thread::spawn(move || {
        s.write_all(&frames).unwrap();
        s
    });
    let tcp_url = format!("tcp://127.0.0.1:{}", agent.port);
    let udp_url = format!("udp://127.0.0.1:{}", agent.port);
    let spool_alerts = |url: &str| {
        agent
            .all_alerts()
            .iter()
            .filter(|d| d.starts_with("syslog_spool_full ") && d.contains(url))
            .count()
    };
    let full = |url: &str| {
        agent
            .try_status()
            .is_some_and(|st| listener_stat_bool(&st, url, "spool_full"))
    };
    wait_until(
        || {
            format!(
                "the TCP spool full; status: {}\nagent stderr:\n{}",
                agent.status(),
                tail(&a.stderr_text())
            )
        },
        PATIENCE,
        || full(&tcp_url),
    );
    wait_for("bytes left unread in the agent's socket", PATIENCE, || {
        unread_by_agent(agent.port, client_port).is_some_and(|n| n > 0)
    });
    // The UDP listener has a spool of its own: 1,000 datagrams of 2 KiB overfill it.
    let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    let sent_udp = 1000;
    for i in 0..sent_udp {
        udp.send_to(
            rfc5424(&format!("udp {i:03} {pad}")).as_bytes(),
            ("127.0.0.1", agent.port),
        )
        .unwrap();
        // Paced, so the kernel's socket buffer is not what drops them.
        if i % 10 == 0 {
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    wait_until(
        || format!("UDP drops counted in status: {}", agent.status()),
        PATIENCE,
        || {
            full(&udp_url)
                && listener_stat(&agent.status(), &udp_url, "dropped").is_some_and(|n| n > 0)
        },
    );
    assert!(
        agent.msgs().iter().all(|m| !m.starts_with("full-")),
        "nothing reached the full disk"
    );
    // The stream rows follow the spools while the outage holds the batches: the lag SQL sees
    // is the spool's, not the one of the last commit.
    let row_lag = |url: &str| {
        agent
            .try_query(&format!(
                "SELECT lag_bytes FROM stream_lag WHERE stream LIKE '%{url}'"
            ))
            .ok()
            .and_then(|rows| rows.first().and_then(|r| r["lag_bytes"].as_u64()))
    };
    wait_until(
        || {
            let st = agent.status();
            format!(
                "stream rows with the spools' lag: rows {:?} / {:?}, spools {:?} / {:?}",
                row_lag(&tcp_url),
                row_lag(&udp_url),
                listener_stat(&st, &tcp_url, "spool_lag_bytes"),
                listener_stat(&st, &udp_url, "spool_lag_bytes"),
            )
        },
        PATIENCE,
        || {
            let st = agent.status();
            [&tcp_url, &udp_url].iter().all(|url| {
                let spool = listener_stat(&st, url, "spool_lag_bytes");
                spool.is_some_and(|n| n > 500_000) && row_lag(url) == spool
            })
        },
    );
    // Alerted while it matters: during the outage, not once the sink is back.
    wait_until(
        || {
            format!(
                "a spool-full alert for each listener: {:?}",
                agent.all_alerts()
            )
        },
        PATIENCE,
        || spool_alerts(&tcp_url) > 0 && spool_alerts(&udp_url) > 0,
    );
    assert_eq!(
        spool_alerts(&tcp_url),
        1,
        "one alert for the outage's episode: {:?}",
        agent.all_alerts()
    );

    std::fs::remove_file(&ballast).unwrap();
    fs.resize(64 << 20);
    let sock = sender.join().unwrap();
    let want: Vec<String> = all.iter().map(|m| format!("{m} {pad}")).collect();
    let recs = agent.wait_msgs(&a, &want);
    let order: Vec<&str> = recs
        .iter()
        .filter_map(|r| r["msg"].as_str())
        .filter(|m| m.starts_with("full-"))
        .collect();
    let mut sorted = order.clone();
    sorted.sort();
    assert_eq!(order, sorted, "in order");
    assert_eq!(order.len(), all.len(), "each once");
    // TCP: the catch-up after the outage refills the 1 MiB spool, and each refill is an episode
    // of its own to the agent; UDP ended during the outage, so it had exactly one.
    assert!(spool_alerts(&tcp_url) >= 1);
    assert_eq!(
        spool_alerts(&udp_url),
        1,
        "one alert per episode: {:?}",
        agent.all_alerts()
    );
    let dropped = listener_stat(&agent.status(), &udp_url, "dropped").unwrap();
    let udp_got = agent
        .msgs()
        .iter()
        .filter(|m| m.starts_with("udp "))
        .count() as u64;
    assert!(udp_got > 0, "UDP kept what the spool had room for");
    assert!(
        udp_got + dropped <= sent_udp,
        "{udp_got} received + {dropped} dropped of {sent_udp} sent"
    );
    drop(sock);
}

// ------------------------------------------------------------------ what the operator sees

#[test]
fn status_metrics_and_streams_show_the_listeners_and_their_counters() {
    let port = free_port();
    let mut agent = NetAgent::with(
        "",
        None,
        &format!("[monitor]\nlisten = \"127.0.0.1:{port}\"\n"),
    );
    let a = agent.start();
    wait_udp_ready(&agent, &a);
    let mut s = tcp(agent.port);
    let want = numbered("counted", 0..25);
    for m in &want {
        s.write_all(&octet(&rfc5424(m))).unwrap();
    }
    agent.wait_msgs(&a, &want);
    let [udp_url, tcp_url, tls_url] = agent.urls();
    let status = agent.status();
    let stat = |url: &str, key: &str| {
        listener_stat(&status, url, key).unwrap_or_else(|| panic!("{url} {key} in {status:#}"))
    };
    assert_eq!(stat(&tcp_url, "messages"), 25);
    assert_eq!(
        stat(&tcp_url, "connections"),
        1,
        "the connection still open"
    );
    assert!(stat(&tcp_url, "bytes") >= 25 * 50);
    assert!(stat(&udp_url, "messages") >= 1, "the probes");
    assert_eq!(stat(&tls_url, "messages"), 0);
    assert_eq!(stat(&tls_url, "connections"), 0);

    let metrics = http_get(port, "/metrics");
    let sample = |family: &str, url: &str| -> Option<f64> {
        metrics
            .lines()
            .find(|l| {
                l.starts_with(&format!("{family}{{")) && l.contains(&format!("listener=\"{url}\""))
            })
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
    };
    assert_eq!(
        sample("log_sensor_listener_messages_total", &tcp_url),
        Some(25.0),
        "{metrics}"
    );
    assert_eq!(
        sample("log_sensor_listener_connections", &tcp_url),
        Some(1.0),
        "{metrics}"
    );
    assert!(
        sample("log_sensor_listener_dropped_total", &udp_url).is_some(),
        "{metrics}"
    );

    // One stream per listener in the store, committed as the sink acknowledges.
    wait_for(
        &format!(
            "the TCP listener's stream with its 25 records: {:?}",
            agent.try_query("SELECT * FROM streams")
        ),
        PATIENCE,
        || {
            agent
                .try_query("SELECT stream, path, records FROM streams WHERE source = 'net'")
                .is_ok_and(|rows| {
                    rows.len() == 3
                        && rows
                            .iter()
                            .any(|r| r["records"] == 25 && r.to_string().contains(&tcp_url))
                })
        },
    );
}

fn http_get(port: u16, path: &str) -> String {
    use std::io::Read;
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    text
}

// ------------------------------------------------------------------ reloads

/// `log-sensor reload` with the running agent's config file → whether it was accepted, and
/// what it said on stderr.
fn ask_reload(agent: &NetAgent) -> (bool, String) {
    let out = agent
        .cmd()
        .arg("reload")
        .env("LOG_SENSOR_LOG", "warn")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `log-sensor reload`, which must be accepted.
fn reload(agent: &NetAgent) {
    let (ok, said) = ask_reload(agent);
    assert!(ok, "reload: {said}");
}

/// `log-sensor reload`, which must be refused → what it said.
fn reload_refused(agent: &NetAgent) -> String {
    let (ok, said) = ask_reload(agent);
    assert!(!ok, "reload should be refused: {said}");
    said
}

/// The agent also reloads on its own when the file changes (polled every second, then 200 ms
/// for the writer to finish): once this returns, that reload is behind too.
fn settle_reloads() {
    std::thread::sleep(Duration::from_millis(2500));
}

/// Adds `url` to the source's `listen` in the agent's config file.
fn add_listener(agent: &NetAgent, url: &str) {
    let path = agent.p("agent.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let tls = &agent.urls()[2];
    let edited = text.replace(&format!("\"{tls}\"]"), &format!("\"{tls}\", \"{url}\"]"));
    assert_ne!(edited, text, "the listen line is where the bench writes it");
    std::fs::write(&path, edited).unwrap();
}

/// A reload adding a listener on a port another process holds stopped the whole source (its
/// old listeners included) and only alerted: the reload must be refused, naming the listener
/// that cannot be bound, and the source go on with its old listeners; once the port is free,
/// a reload applies it.
#[test]
fn a_reload_with_an_unbindable_listener_keeps_the_old_listeners() {
    let mut agent = NetAgent::new("");
    let a = agent.start();
    wait_udp_ready(&agent, &a);
    let mut before = tcp(agent.port);
    before
        .write_all(&octet(&rfc5424("before the failed reload")))
        .unwrap();
    agent.wait_msgs(&a, &["before the failed reload".to_string()]);
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let held_url = format!("tcp://127.0.0.1:{}", held.local_addr().unwrap().port());
    add_listener(&agent, &held_url);
    let said = reload_refused(&agent);
    assert!(
        said.contains(&held_url) && said.contains("running listeners stay"),
        "{said}"
    );

    wait_until(
        || format!("an alert naming {held_url}: {:?}", agent.all_alerts()),
        PATIENCE,
        || agent.all_alerts().iter().any(|d| d.contains(&held_url)),
    );
    settle_reloads();
    // The watcher's reload of the edit and the operator's: one alert, not two alike.
    let naming: Vec<String> = agent
        .all_alerts()
        .into_iter()
        .filter(|d| d.contains(&held_url))
        .collect();
    assert_eq!(naming.len(), 1, "{naming:?}");
    let [udp_url, tcp_url, _] = agent.urls();
    let status = agent.status();
    for url in [&udp_url, &tcp_url] {
        assert!(
            listener_stat(&status, url, "connections").is_some(),
            "{url} still in status: {status:#}"
        );
    }
    assert!(
        listener_stat(&status, &held_url, "connections").is_none(),
        "the unbound listener is not shown as listening: {status:#}"
    );

    // The alert is raised once the old listeners are back: these must arrive, once each.
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .send_to(
            rfc5424("udp after the failed reload").as_bytes(),
            ("127.0.0.1", agent.port),
        )
        .unwrap();
    let mut s = tcp(agent.port);
    s.write_all(&octet(&rfc5424("tcp after the failed reload")))
        .unwrap();
    // The change is refused before anything stops: a connection open across it goes on.
    before
        .write_all(&octet(&rfc5424("across the failed reload")))
        .unwrap();
    let want = [
        "udp after the failed reload".to_string(),
        "tcp after the failed reload".to_string(),
        "across the failed reload".to_string(),
    ];
    agent.wait_msgs(&a, &want);
    std::thread::sleep(Duration::from_millis(500));
    let msgs = agent.msgs();
    for w in &want {
        assert_eq!(
            msgs.iter().filter(|m| *m == w).count(),
            1,
            "{w:?} once: {msgs:?}"
        );
    }

    // The file was not applied, so reloading it once the port is free does.
    drop(held);
    reload(&agent);
    wait_until(
        || format!("{held_url} listening: {:#}", agent.status()),
        PATIENCE,
        || {
            agent
                .try_status()
                .is_some_and(|st| listener_stat(&st, &held_url, "connections").is_some())
        },
    );
    let mut s = tcp(agent.port);
    s.write_all(&octet(&rfc5424("tcp once the port is free")))
        .unwrap();
    let mut n = tcp(held_url.rsplit(':').next().unwrap().parse().unwrap());
    n.write_all(&octet(&rfc5424("on the listener added")))
        .unwrap();
    agent.wait_msgs(
        &a,
        &[
            "tcp once the port is free".to_string(),
            "on the listener added".to_string(),
        ],
    );
}

/// The same when the port is another source's: the reload is refused as a config error naming
/// both sources, and the source keeps its old TCP listener. A reload that removes that other
/// source frees the port for the move in the same step.
#[test]
fn a_reload_moving_a_listener_onto_another_sources_port_waits_for_it_to_be_free() {
    let other_port = free_port();
    let other = format!(
        "[sources.other]\ntype = \"syslog\"\nlisten = [\"tcp://127.0.0.1:{other_port}\"]\n"
    );
    let mut agent = NetAgent::with("", None, &other);
    let a = agent.start();
    let [_, tcp_url, _] = agent.urls();
    let moved_url = format!("tcp://127.0.0.1:{other_port}");
    let path = agent.p("agent.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(
        &path,
        text.replace(&format!("\"{tcp_url}\""), &format!("\"{moved_url}\"")),
    )
    .unwrap();
    // Two sources on one port: the config itself is refused, naming both.
    let said = reload_refused(&agent);
    assert!(
        said.contains(&moved_url) && said.contains("sources.net") && said.contains("sources.other"),
        "{said}"
    );

    wait_until(
        || format!("an alert naming {moved_url}: {:?}", agent.all_alerts()),
        PATIENCE,
        || {
            agent
                .all_alerts()
                .iter()
                .any(|d| d.starts_with("config_error") && d.contains(&moved_url))
        },
    );
    let mut s = tcp(agent.port);
    s.write_all(&octet(&rfc5424("on the old port"))).unwrap();
    let mut o = tcp(other_port);
    o.write_all(&octet(&rfc5424("to the other source")))
        .unwrap();
    agent.wait_msgs(&a, &["on the old port".to_string()]);
    wait_until(
        || format!("the other source's record: {:?}", read_ndjson(&agent.out)),
        PATIENCE,
        || {
            read_ndjson(&agent.out)
                .iter()
                .any(|r| r["source"] == "other" && r["msg"] == "to the other source")
        },
    );

    settle_reloads();
    let naming_moved = || {
        agent
            .all_alerts()
            .iter()
            .filter(|d| d.contains(&moved_url))
            .count()
    };
    let refusals = naming_moved();

    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, text.replace(&other, "")).unwrap();
    reload(&agent);
    wait_until(
        || format!("{moved_url} listening for net: {:#}", agent.status()),
        PATIENCE,
        || {
            agent.try_status().is_some_and(|st| {
                listener_stat(&st, &tcp_url, "connections").is_none()
                    && listener_stat(&st, &moved_url, "connections").is_some()
            })
        },
    );
    let mut m = tcp(other_port);
    m.write_all(&octet(&rfc5424("on the moved listener")))
        .unwrap();
    let r = agent.record(&a, "on the moved listener");
    assert_eq!(r["source"], "net", "{r}");
    assert_eq!(
        naming_moved(),
        refusals,
        "the first reload after the removal applies the move: {:?}",
        agent.all_alerts()
    );
}

/// A UDP listener URL on a free port whose spool folder for `source` is a file, so it binds but
/// cannot start → (its URL, the file in the way).
fn blocked_udp_listener(agent: &NetAgent, source: &str) -> (String, std::path::PathBuf) {
    let port = free_port();
    let spool = agent.p(&format!("state/spool/{source}"));
    std::fs::create_dir_all(&spool).unwrap();
    let blocked = spool.join(format!("udp-127.0.0.1-{port}"));
    std::fs::write(&blocked, b"not a folder").unwrap();
    (format!("udp://127.0.0.1:{port}"), blocked)
}

/// A change that passes the bind check but still cannot start (here the new listener's spool
/// folder is a file) comes back on its previous listeners, which had been stopped for it.
#[test]
fn a_reload_whose_new_listener_cannot_start_restarts_the_previous_ones() {
    let mut agent = NetAgent::new("");
    let a = agent.start();
    wait_udp_ready(&agent, &a);
    let (new_url, _) = blocked_udp_listener(&agent, "net");
    add_listener(&agent, &new_url);
    reload(&agent);

    wait_until(
        || format!("an alert naming {new_url}: {:?}", agent.all_alerts()),
        PATIENCE,
        || {
            agent
                .all_alerts()
                .iter()
                .any(|d| d.starts_with("config_error") && d.contains(&new_url))
        },
    );
    settle_reloads();
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .send_to(
            rfc5424("udp after the restart").as_bytes(),
            ("127.0.0.1", agent.port),
        )
        .unwrap();
    let mut s = tcp(agent.port);
    s.write_all(&octet(&rfc5424("tcp after the restart")))
        .unwrap();
    let want = [
        "udp after the restart".to_string(),
        "tcp after the restart".to_string(),
    ];
    agent.wait_msgs(&a, &want);
    std::thread::sleep(Duration::from_millis(500));
    let msgs = agent.msgs();
    for w in &want {
        assert_eq!(
            msgs.iter().filter(|m| *m == w).count(),
            1,
            "{w:?} once: {msgs:?}"
        );
    }
}

/// A syslog source a reload adds that cannot start (its spool folder is a file) listens on
/// nothing: everything sent to it is lost, so health says so, naming it, until a reload starts
/// it. Before, `/healthz` answered ok throughout.
#[test]
fn a_source_listening_on_nothing_makes_the_agent_unhealthy_until_it_starts() {
    let mut agent = NetAgent::new("");
    let a = agent.start();
    wait_udp_ready(&agent, &a);
    let (url, blocked) = blocked_udp_listener(&agent, "extra");
    let port: u16 = url.rsplit(':').next().unwrap().parse().unwrap();
    let path = agent.p("agent.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let extra = format!("[sources.extra]\ntype = \"syslog\"\nlisten = [\"{url}\"]\n[batch]");
    std::fs::write(&path, text.replacen("[batch]", &extra, 1)).unwrap();
    reload(&agent);

    let health = |st: &serde_json::Value| st["health"].clone();
    wait_until(
        || format!("unhealthy, naming extra: {:#}", agent.status()),
        PATIENCE,
        || {
            agent.try_status().is_some_and(|st| {
                let h = health(&st);
                h["ok"] == false
                    && h["reason"].as_str().is_some_and(|r| {
                        r.contains("extra") && r.contains(&url) && r.contains("not listening")
                    })
            })
        },
    );
    // The running source goes on meanwhile.
    let mut s = tcp(agent.port);
    s.write_all(&octet(&rfc5424("net while extra is down")))
        .unwrap();
    agent.wait_msgs(&a, &["net while extra is down".to_string()]);

    std::fs::remove_file(&blocked).unwrap();
    reload(&agent);
    wait_until(
        || format!("healthy again: {:#}", agent.status()),
        PATIENCE,
        || {
            agent
                .try_status()
                .is_some_and(|st| health(&st)["ok"] == true)
        },
    );
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .send_to(rfc5424("on extra").as_bytes(), ("127.0.0.1", port))
        .unwrap();
    wait_until(
        || format!("extra's record: {:?}", read_ndjson(&agent.out)),
        PATIENCE,
        || {
            read_ndjson(&agent.out)
                .iter()
                .any(|r| r["source"] == "extra" && r["msg"] == "on extra")
        },
    );
}

/// A listener removed by a reload (or by an edit made while the agent was down) kept its stream
/// `active` in status for ever. It is `stopped` now, never forgotten (its spool and offset wait
/// for it), and `active` again once a reload brings it back.
#[test]
fn a_removed_listener_s_stream_is_stopped_and_active_again_when_it_comes_back() {
    let mut agent = NetAgent::new("");
    let a = agent.start();
    wait_udp_ready(&agent, &a);
    let [_, tcp_url, _] = agent.urls();
    let tcp_stream = format!("syslog:net:{tcp_url}");
    let state = |agent: &NetAgent| -> Option<String> {
        agent
            .try_query(&format!(
                "SELECT state FROM streams WHERE stream = '{tcp_stream}'"
            ))
            .ok()?
            .first()?["state"]
            .as_str()
            .map(str::to_string)
    };
    let mut s = tcp(agent.port);
    s.write_all(&octet(&rfc5424("before the removal"))).unwrap();
    agent.wait_msgs(&a, &["before the removal".to_string()]);
    assert_eq!(state(&agent).as_deref(), Some("active"));

    let path = agent.p("agent.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let without = text.replace(&format!("\"{tcp_url}\", "), "");
    assert_ne!(without, text);
    std::fs::write(&path, &without).unwrap();
    reload(&agent);
    wait_until(
        || format!("{tcp_stream} stopped: {:?}", state(&agent)),
        PATIENCE,
        || state(&agent).as_deref() == Some("stopped"),
    );
    std::fs::write(&path, &text).unwrap();
    reload(&agent);
    wait_until(
        || format!("{tcp_stream} active again: {:?}", state(&agent)),
        PATIENCE,
        || state(&agent).as_deref() == Some("active"),
    );

    // Removed while the agent was down: stopped from its start on.
    drop(a);
    std::fs::write(&path, &without).unwrap();
    let mut cmd = agent.cmd();
    cmd.arg("run");
    let b = Proc::spawn("log-sensor", &mut cmd, &agent.p("agent3.err"));
    wait_until(
        || format!("{tcp_stream} stopped after the start: {:?}", state(&agent)),
        PATIENCE,
        || state(&agent).as_deref() == Some("stopped"),
    );
    drop(b);
}
