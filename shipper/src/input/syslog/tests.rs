//! The listeners on loopback with real sockets and real TLS: what senders write lands in the
//! spools with its fields; bad peers are refused or cut off without touching the listener.

use super::listen::{Event, ListenerHandle, Server};
use super::spool::{SpoolReader, SpoolRecord};
use crate::config::syslog::{Listener, SyslogSource, SyslogTls, Transport};
use std::io::{Read, Write};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

struct Pki {
    ca: std::path::PathBuf,
    server: (std::path::PathBuf, std::path::PathBuf),
    client: (std::path::PathBuf, std::path::PathBuf),
    /// A client certificate from a CA the listener does not accept.
    stranger: (std::path::PathBuf, std::path::PathBuf),
}

fn pki(dir: &Path) -> Pki {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let make_ca = |name: &str| {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        std::fs::write(dir.join(name), p.self_signed(&key).unwrap().pem()).unwrap();
        Issuer::new(p, key)
    };
    let ca = make_ca("ca.pem");
    let other = make_ca("other-ca.pem");
    let leaf = |name: &str, issuer: &Issuer<'_, KeyPair>| {
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec![name.to_string()])
            .unwrap()
            .signed_by(&key, issuer)
            .unwrap();
        let (c, k) = (
            dir.join(format!("{name}.pem")),
            dir.join(format!("{name}.key")),
        );
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        (c, k)
    };
    Pki {
        ca: dir.join("ca.pem"),
        server: leaf("127.0.0.1", &ca),
        client: leaf("client", &ca),
        stranger: leaf("stranger", &other),
    }
}

fn counters(l: &Listener) -> Arc<crate::status::ListenerCounters> {
    Arc::new(crate::status::ListenerCounters::new(
        "net",
        &l.url(),
        "test",
    ))
}

fn source(listen: &[(Transport, &str)], tls: Option<SyslogTls>, max: usize) -> SyslogSource {
    SyslogSource {
        name: "net".into(),
        listen: listen
            .iter()
            .map(|(t, a)| Listener {
                transport: *t,
                addr: a.parse().unwrap(),
            })
            .collect(),
        tls,
        max_message_bytes: max,
        max_connections: 4,
        spool_max_bytes: 1 << 30,
        sinks: None,
    }
}

/// Polls the listener's spool until `n` records are there (generous deadline, never a timing
/// assertion).
fn wait_records(h: &ListenerHandle, n: usize) -> Vec<SpoolRecord> {
    let mut r = SpoolReader::new(&h.spool_dir, h.spool_state.clone(), 0);
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(15);
    while got.len() < n {
        match r.next().unwrap() {
            Some((_, _, rec)) => got.push(rec),
            None if Instant::now() > deadline => {
                panic!("{} of {n} records in {}", got.len(), h.listener.url())
            }
            None => std::thread::sleep(Duration::from_millis(20)),
        }
    }
    got
}

fn fields(r: &SpoolRecord) -> serde_json::Value {
    serde_json::from_slice(&r.fields).unwrap()
}

fn tls_client(
    pki: &Pki,
    identity: Option<&(std::path::PathBuf, std::path::PathBuf)>,
    addr: std::net::SocketAddr,
) -> rustls::StreamOwned<rustls::ClientConnection, std::net::TcpStream> {
    let config = crate::tls::make_config(
        crate::tls::ServerTrust::Ca(&pki.ca),
        identity.map(|(c, k)| (c.as_path(), k.as_path())),
    )
    .unwrap();
    let conn = rustls::ClientConnection::new(config, crate::tls::server_name("127.0.0.1").unwrap())
        .unwrap();
    rustls::StreamOwned::new(conn, std::net::TcpStream::connect(addr).unwrap())
}

#[test]
fn udp_tcp_and_tls_messages_land_in_their_spools_with_fields() {
    let dir = tempfile::tempdir().unwrap();
    let pki = pki(dir.path());
    let src = source(
        &[
            (Transport::Udp, "127.0.0.1:0"),
            (Transport::Tcp, "127.0.0.1:0"),
            (Transport::Tls, "127.0.0.1:0"),
        ],
        Some(SyslogTls {
            cert: pki.server.0.clone(),
            key: pki.server.1.clone(),
            client_ca: Some(pki.ca.clone()),
        }),
        64,
    );
    let (tx, events) = mpsc::channel();
    let server = Server::start(
        &src,
        &dir.path().join("state"),
        &|_| 0,
        &counters,
        tx,
        crate::input::Bell::new(),
    )
    .unwrap();
    let [udp, tcp, tls] = &server.listeners[..] else {
        panic!()
    };

    let u = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    u.send_to(
        b"<34>Oct 11 22:14:15 mymachine su[230]: udp one\n",
        udp.local_addr,
    )
    .unwrap();
    let got = wait_records(udp, 1);
    assert_eq!(got[0].msg, b"udp one");
    let f = fields(&got[0]);
    assert_eq!(f["hostname"], "mymachine");
    assert_eq!(f["procid"], "230");
    assert_eq!(f["peer"], u.local_addr().unwrap().to_string());

    // Octet-counted, split mid-frame, then a frame over 64 bytes: head and tail.
    let mut t = std::net::TcpStream::connect(tcp.local_addr).unwrap();
    let m = b"<13>1 2026-01-01T00:00:00Z h app 7 id [x@1 a=\"b\\]\"] tcp one";
    t.write_all(format!("{} ", m.len()).as_bytes()).unwrap();
    t.write_all(&m[..10]).unwrap();
    t.flush().unwrap();
    t.write_all(&m[10..]).unwrap();
    let long = format!("<13>1 - h app - - - {}", "x".repeat(100) + "END");
    t.write_all(format!("{} {long}", long.len()).as_bytes())
        .unwrap();
    drop(t);
    let got = wait_records(tcp, 3);
    assert_eq!(got[0].msg, b"tcp one");
    assert_eq!(fields(&got[0])["structured_data"]["x@1"]["a"], "b]");
    assert_eq!(got[1].part, crate::frame::Part::Head);
    assert_eq!(got[2].part, crate::frame::Part::Tail);
    assert!(got[2].msg.ends_with(b"END"));
    assert_eq!(got[2].len, long.len() as u64);
    assert_eq!(fields(&got[2])["app_name"], "app");

    // TLS with an accepted client certificate, LF-framed.
    let mut s = tls_client(&pki, Some(&pki.client), tls.local_addr);
    s.write_all(b"<13>Dec  2 02:00:00 web1 nginx: over tls\n")
        .unwrap();
    s.flush().unwrap();
    let got = wait_records(tls, 1);
    assert_eq!(got[0].msg, b"over tls");

    // Without a certificate, or with one from another CA: refused; the listener goes on.
    for id in [None, None, Some(&pki.stranger)] {
        let mut s = tls_client(&pki, id, tls.local_addr);
        let _ = s.write_all(b"<13>refused\n");
        let _ = s.flush();
        let mut buf = [0u8; 16];
        assert!(matches!(s.read(&mut buf), Err(_) | Ok(0)));
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    while tls.stats.tls_failed.load(Ordering::Relaxed) < 3 {
        assert!(Instant::now() < deadline, "refusals not counted");
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut s = tls_client(&pki, Some(&pki.client), tls.local_addr);
    s.write_all(b"<13>still listening\n").unwrap();
    s.flush().unwrap();
    assert_eq!(wait_records(tls, 2)[1].msg, b"<13>still listening"[4..]);
    let alerts: Vec<Event> = events.try_iter().collect();
    assert_eq!(
        alerts
            .iter()
            .filter(|e| matches!(e, Event::TlsRefused { .. }))
            .count(),
        2,
        "one alert per peer address and problem: {alerts:?}"
    );
    server.stop();
}

#[test]
fn garbage_closes_the_connection_not_the_listener_and_stop_flushes() {
    let dir = tempfile::tempdir().unwrap();
    let src = source(&[(Transport::Tcp, "127.0.0.1:0")], None, 1024);
    let (tx, events) = mpsc::channel();
    let server = Server::start(
        &src,
        dir.path(),
        &|_| 0,
        &counters,
        tx,
        crate::input::Bell::new(),
    )
    .unwrap();
    let h = &server.listeners[0];
    for _ in 0..2 {
        let mut t = std::net::TcpStream::connect(h.local_addr).unwrap();
        t.write_all(b"3 abc\x00\x01garbage").unwrap();
        let mut buf = [0u8; 8];
        // The agent closes its end: a read sees EOF or a reset.
        assert!(matches!(t.read(&mut buf), Ok(0) | Err(_)));
    }
    let mut t = std::net::TcpStream::connect(h.local_addr).unwrap();
    t.write_all(b"<13>after\nno newline at the end").unwrap();
    drop(t);
    let got = wait_records(h, 4);
    let msgs: Vec<&[u8]> = got.iter().map(|r| &r.msg[..]).collect();
    assert_eq!(
        msgs,
        [&b"abc"[..], b"abc", b"after", b"no newline at the end"]
    );
    assert_eq!(h.stats.framing_errors.load(Ordering::Relaxed), 2);
    let framing: Vec<Event> = events
        .try_iter()
        .filter(|e| matches!(e, Event::FramingError { .. }))
        .collect();
    assert_eq!(framing.len(), 1, "{framing:?}");
    let state = h.spool_state.clone();
    let dir_ = h.spool_dir.clone();
    server.stop();
    let mut r = SpoolReader::new(&dir_, state, 0);
    let mut n = 0;
    while r.next().unwrap().is_some() {
        n += 1;
    }
    assert_eq!(n, 4);
}

#[test]
fn a_full_spool_drops_udp_and_pauses_tcp_until_it_drains() {
    let dir = tempfile::tempdir().unwrap();
    let src = source(
        &[
            (Transport::Udp, "127.0.0.1:0"),
            (Transport::Tcp, "127.0.0.1:0"),
        ],
        None,
        1024,
    );
    let (tx, events) = mpsc::channel();
    let server = Server::start(
        &src,
        dir.path(),
        &|_| 0,
        &counters,
        tx,
        crate::input::Bell::new(),
    )
    .unwrap();
    let (udp, tcp) = (&server.listeners[0], &server.listeners[1]);
    // As if spool_max_bytes were reached.
    udp.spool_state.full.store(true, Ordering::Release);
    tcp.spool_state.full.store(true, Ordering::Release);
    let u = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    while udp.stats.dropped.load(Ordering::Relaxed) < 3 {
        assert!(Instant::now() < deadline);
        u.send_to(b"<13>dropped", udp.local_addr).unwrap();
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut t = std::net::TcpStream::connect(tcp.local_addr).unwrap();
    t.write_all(b"<13>waits\n").unwrap();
    // Paused: nothing is read while full (checked as a count, not a timing).
    while !events
        .try_iter()
        .any(|e| matches!(e, Event::SpoolFull { ref listener } if listener.starts_with("tcp")))
    {
        assert!(Instant::now() < deadline, "no SpoolFull alert for tcp");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(tcp.stats.bytes.load(Ordering::Relaxed), 0);
    tcp.spool_state.full.store(false, Ordering::Release);
    assert_eq!(wait_records(tcp, 1)[0].msg, b"waits");
    drop(Arc::clone(&udp.spool_state));
    server.stop();
}
