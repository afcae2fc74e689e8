//! The client against a real TLS server on loopback that plays a script: what goes on the wire,
//! and how each kind of reply (and non-reply) comes back.

use super::*;
use rustls::ServerConnection;
use std::io::Read;
use std::net::TcpListener;
use std::sync::mpsc;

type ServerStream = StreamOwned<ServerConnection, TcpStream>;

/// A TLS server for `127.0.0.1` (test PKI made here) that accepts one connection and runs
/// `script` on it; the client's config trusts its CA.
fn server(
    script: impl FnOnce(&mut ServerStream) + Send + 'static,
) -> (tempfile::TempDir, Url, Arc<ClientConfig>) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let dir = tempfile::tempdir().unwrap();
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_path = dir.path().join("ca.pem");
    std::fs::write(&ca_path, ca.self_signed(&ca_key).unwrap().pem()).unwrap();
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["127.0.0.1".to_string()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    let (cert_path, key_path) = (dir.path().join("s.pem"), dir.path().join("s.key"));
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    let config = Arc::new(
        rustls::ServerConfig::builder_with_provider(tls::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                tls::load_certs(&cert_path).unwrap(),
                tls::load_key(&key_path).unwrap(),
            )
            .unwrap(),
    );
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = Url::parse(&format!(
        "https://127.0.0.1:{}",
        listener.local_addr().unwrap().port()
    ))
    .unwrap();
    std::thread::spawn(move || {
        let (tcp, _) = listener.accept().unwrap();
        let mut s = StreamOwned::new(ServerConnection::new(config).unwrap(), tcp);
        script(&mut s);
        let _ = s.flush();
    });
    let client = tls::make_config(tls::ServerTrust::Ca(&ca_path), None).unwrap();
    (dir, url, client)
}

/// One request as it arrived: its head, then its Content-Length body.
fn read_request(s: &mut ServerStream) -> Vec<u8> {
    let mut got = Vec::new();
    let mut byte = [0u8; 1];
    while !got.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut byte).unwrap();
        got.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&got).to_ascii_lowercase();
    let length: usize = head
        .split("content-length: ")
        .nth(1)
        .and_then(|v| v.split("\r\n").next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; length];
    s.read_exact(&mut body).unwrap();
    got.extend(body);
    got
}

/// Writes each piece as its own TLS record, so a reply arrives cut where the piece ends.
fn write_pieces(s: &mut ServerStream, pieces: &[&[u8]]) {
    for p in pieces {
        s.write_all(p).unwrap();
        s.flush().unwrap();
    }
}

#[test]
fn requests_go_out_as_written_and_pipelined_replies_of_both_body_kinds_come_back_in_order() {
    let (tx, rx) = mpsc::channel();
    let (_dir, url, config) = server(move |s| {
        let first = read_request(s);
        let second = read_request(s);
        tx.send((first, second)).unwrap();
        write_pieces(
            s,
            &[b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nRetry-After: 7\r\n\r\nok"],
        );
        // The chunked reply in pieces that end mid-line, with a chunk extension.
        write_pieces(
            s,
            &[
                b"HTTP/1.1 429 Too Many Requests\r\ntransfer-encoding: Chunked\r\n\r\n5\r",
                b"\n{\"cod\r\na;ext=1\r\ne\":\"busy\"",
                b"}\r\n0\r\n\r\n",
            ],
        );
    });
    let mut c = HttpConn::connect(&url, config).unwrap();
    let port = url.port;
    c.write_request(
        "POST",
        "/v1/ingest",
        &[("Content-Type", "application/x-ndjson")],
        b"abc",
    )
    .unwrap();
    c.write_request("GET", "/healthz", &[], b"").unwrap();
    let (first, second) = rx.recv().unwrap();
    assert_eq!(
        String::from_utf8(first).unwrap(),
        format!("POST /v1/ingest HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 3\r\nContent-Type: application/x-ndjson\r\n\r\nabc")
    );
    assert_eq!(
        String::from_utf8(second).unwrap(),
        format!("GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\n\r\n")
    );
    let r = c.read_response().unwrap();
    assert_eq!(
        (r.status, r.body.as_slice(), r.retry_after),
        (200, &b"ok"[..], Some(7))
    );
    let r = c.read_response().unwrap();
    assert_eq!(r.status, 429);
    assert_eq!(r.body, br#"{"code":"busy"}"#);
    assert_eq!(r.code().as_deref(), Some("busy"));
    assert!(!c.closing);
}

#[test]
fn a_connection_close_is_noted_and_a_close_before_the_reply_is_named() {
    let (_dir, url, config) = server(|s| {
        read_request(s);
        write_pieces(
            s,
            &[b"HTTP/1.1 503 Unavailable\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"],
        );
        read_request(s);
        s.conn.send_close_notify();
    });
    let mut c = HttpConn::connect(&url, config).unwrap();
    let r = c.request("GET", "/a", &[], b"").unwrap();
    assert_eq!(r.status, 503);
    assert!(c.closing, "Connection: close must retire the connection");
    let e = c.request("GET", "/b", &[], b"").unwrap_err();
    assert!(matches!(e, HttpError::Closed { .. }), "{e}");
    assert!(
        e.to_string()
            .contains("closed the connection before replying"),
        "{e}"
    );
}

#[test]
fn a_silent_server_is_named_after_the_timeout_not_waited_for_forever() {
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let (_dir, url, config) = server(move |s| {
        read_request(s);
        // Holds the connection open, answering nothing, until the client has given up.
        let _ = done_rx.recv();
    });
    let mut c = HttpConn::connect_with(&url, config, Duration::from_millis(300)).unwrap();
    let e = c.request("POST", "/v1/ingest", &[], b"x").unwrap_err();
    done_tx.send(()).unwrap();
    assert!(matches!(e, HttpError::Silent { .. }), "{e}");
    assert!(e.to_string().contains("within 0.3s (sink.timeout)"), "{e}");
}

#[test]
fn malformed_and_oversized_replies_are_protocol_errors() {
    for (reply, why) in [
        (&b"garbage\r\n\r\n"[..], "bad status line"),
        (
            &b"HTTP/1.1 200 OK\r\nContent-Length: 1048577\r\n\r\n"[..],
            "reply body too large",
        ),
        (
            &b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"[..],
            "bad chunk size",
        ),
        (
            &b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n100001\r\n"[..],
            "reply body too large",
        ),
    ] {
        let (_dir, url, config) = server(move |s| {
            read_request(s);
            write_pieces(s, &[reply]);
        });
        let mut c = HttpConn::connect(&url, config).unwrap();
        let e = c.request("GET", "/", &[], b"").unwrap_err();
        assert!(matches!(e, HttpError::Protocol { .. }), "{why}: {e}");
        assert!(e.to_string().contains(why), "{why}: {e}");
    }
}
