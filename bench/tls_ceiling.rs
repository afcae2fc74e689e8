//! The ceiling for the syslog benchmark: the least any sender must do to move a file to the
//! benchmark's receiver over mutual TLS. It reads the file in 1 MiB buffers (the syslog sink's
//! write size), encrypts and sends them with rustls and ring as the agent does, with no framing,
//! no parsing and no state, then closes and waits until the receiver, having read everything,
//! closes too.
//!
//!   tls_ceiling FILE ADDR CA CERT KEY
//!       prints "handshake_s send_s" (from start to the end of the handshake; from then until
//!       the receiver's close) on stdout.
//!
//! Built by `cargo build --release -p log-sensor --example tls_ceiling`.

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::Instant;

const BUF: usize = 1024 * 1024;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, file, addr, ca, cert, key] = &args[..] else {
        eprintln!("usage: tls_ceiling FILE ADDR CA CERT KEY");
        std::process::exit(2);
    };
    let started = Instant::now();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).expect("ca") {
        roots.add(c.expect("ca cert")).expect("add ca");
    }
    let certs = CertificateDer::pem_file_iter(cert)
        .expect("cert")
        .collect::<Result<Vec<_>, _>>()
        .expect("client cert");
    let key = PrivateKeyDer::from_pem_file(key).expect("key");
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_client_auth_cert(certs, key)
        .expect("client config");
    let host = addr.rsplit_once(':').expect("host:port").0;
    let name = ServerName::try_from(host.to_string()).expect("server name");
    let mut conn = ClientConnection::new(Arc::new(config), name).expect("connection");
    // As the sink does: a whole buffer encrypted at once, one writev of its records.
    conn.set_buffer_limit(Some(BUF));
    let mut s = StreamOwned::new(conn, TcpStream::connect(addr).expect("connect"));
    while s.conn.is_handshaking() {
        s.conn.complete_io(&mut s.sock).expect("handshake");
    }
    let handshake = started.elapsed();
    let mut input = std::fs::File::open(file).expect("input");
    let mut buf = vec![0u8; BUF];
    loop {
        let n = input.read(&mut buf).expect("read input");
        if n == 0 {
            break;
        }
        s.write_all(&buf[..n]).expect("send");
    }
    s.conn.send_close_notify();
    s.flush().expect("flush");
    s.sock
        .shutdown(std::net::Shutdown::Write)
        .expect("shutdown");
    // The receiver closes once it has read our close_notify, i.e. every byte before it.
    let mut sink = [0u8; 4096];
    while matches!(s.sock.read(&mut sink), Ok(n) if n > 0) {}
    println!(
        "{:.4} {:.4}",
        handshake.as_secs_f64(),
        (started.elapsed() - handshake).as_secs_f64()
    );
}
