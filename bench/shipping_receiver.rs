//! A TLS receiver for the syslog benchmark that only counts: RFC 5425 octet-counted frames over
//! mutual TLS (rustls, ring), bytes and messages tallied, nothing stored. Kept minimal so the
//! figure is the agent's, not the receiver's.
//!
//!   shipping_receiver pki DIR
//!       writes ca.pem, server.pem/.key (localhost, 127.0.0.1) and client.pem/.key (CN bench-host)
//!   shipping_receiver serve DIR ADDR STATS_FILE
//!       listens on ADDR (mTLS: clients need a certificate from DIR/ca.pem), and rewrites
//!       STATS_FILE every 5 ms with "bytes messages connections\n"; runs until killed. A
//!       connection is closed once its peer has closed (TLS close_notify or EOF).
//!
//! Built by `cargo build --release -p log-sensor --example shipping_receiver`.

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig, ServerConnection, StreamOwned};
use std::io::Read;
use std::net::TcpListener;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

static BYTES: AtomicU64 = AtomicU64::new(0);
static MESSAGES: AtomicU64 = AtomicU64::new(0);
static CONNECTIONS: AtomicU64 = AtomicU64::new(0);

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("pki") if args.len() == 3 => pki(Path::new(&args[2])),
        Some("serve") if args.len() == 5 => serve(Path::new(&args[2]), &args[3], &args[4]),
        _ => {
            eprintln!("usage: shipping_receiver pki DIR | serve DIR ADDR STATS_FILE");
            std::process::exit(2);
        }
    }
}

fn pki(dir: &Path) {
    std::fs::create_dir_all(dir).expect("create pki dir");
    let ca_key = KeyPair::generate().expect("key");
    let mut ca = CertificateParams::new(Vec::<String>::new()).expect("params");
    ca.distinguished_name.push(DnType::CommonName, "bench CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca.self_signed(&ca_key).expect("CA");
    std::fs::write(dir.join("ca.pem"), ca_cert.pem()).expect("write");
    let issuer = Issuer::new(ca, ca_key);
    for (name, sans, cn, usage) in [
        (
            "server",
            vec!["localhost".to_string(), "127.0.0.1".to_string()],
            "localhost",
            ExtendedKeyUsagePurpose::ServerAuth,
        ),
        (
            "client",
            vec!["bench-host".to_string()],
            "bench-host",
            ExtendedKeyUsagePurpose::ClientAuth,
        ),
    ] {
        let key = KeyPair::generate().expect("key");
        let mut p = CertificateParams::new(sans).expect("params");
        p.distinguished_name.push(DnType::CommonName, cn);
        p.extended_key_usages = vec![usage];
        let cert = p.signed_by(&key, &issuer).expect("sign");
        std::fs::write(dir.join(format!("{name}.pem")), cert.pem()).expect("write");
        std::fs::write(dir.join(format!("{name}.key")), key.serialize_pem()).expect("write");
    }
}

fn serve(dir: &Path, addr: &str, stats: &str) {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(dir.join("ca.pem")).expect("ca") {
        roots.add(c.expect("ca cert")).expect("add ca");
    }
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .expect("verifier");
    let certs = CertificateDer::pem_file_iter(dir.join("server.pem"))
        .expect("server.pem")
        .collect::<Result<Vec<_>, _>>()
        .expect("server cert");
    let key = PrivateKeyDer::from_pem_file(dir.join("server.key")).expect("server.key");
    let config = Arc::new(
        ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_client_cert_verifier(verifier)
            .with_single_cert(certs, key)
            .expect("server config"),
    );
    let listener = TcpListener::bind(addr).expect("bind");
    let stats = stats.to_string();
    std::thread::spawn(move || loop {
        let line = format!(
            "{} {} {}\n",
            BYTES.load(Ordering::Relaxed),
            MESSAGES.load(Ordering::Relaxed),
            CONNECTIONS.load(Ordering::Relaxed)
        );
        let tmp = format!("{stats}.tmp");
        if std::fs::write(&tmp, line).is_ok() {
            let _ = std::fs::rename(&tmp, &stats);
        }
        // Often enough that the benchmark sees the last message within a few ms of its arrival.
        std::thread::sleep(Duration::from_millis(5));
    });
    for sock in listener.incoming().flatten() {
        let config = config.clone();
        std::thread::spawn(move || {
            let Ok(conn) = ServerConnection::new(config) else {
                return;
            };
            CONNECTIONS.fetch_add(1, Ordering::Relaxed);
            count(StreamOwned::new(conn, sock));
        });
    }
}

/// Counts frames: `LEN SP` then LEN bytes skipped, across read boundaries. A stream that is not
/// octet-counted (bench/tls_ceiling.rs sends the raw file) is read to its end, its bytes counted.
fn count(mut s: impl Read) {
    let mut buf = vec![0u8; 256 * 1024];
    let mut len: usize = 0;
    let mut skip: usize = 0;
    let mut framed = true;
    loop {
        let n = match s.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        BYTES.fetch_add(n as u64, Ordering::Relaxed);
        if !framed {
            continue;
        }
        let mut i = 0;
        let mut done = 0u64;
        while i < n {
            if skip > 0 {
                let take = skip.min(n - i);
                skip -= take;
                i += take;
                if skip == 0 {
                    done += 1;
                }
                continue;
            }
            match buf[i] {
                b'0'..=b'9' => len = len * 10 + (buf[i] - b'0') as usize,
                b' ' => {
                    skip = len;
                    len = 0;
                    if skip == 0 {
                        done += 1;
                    }
                }
                _ => {
                    framed = false;
                    break;
                }
            }
            i += 1;
        }
        MESSAGES.fetch_add(done, Ordering::Relaxed);
    }
}
