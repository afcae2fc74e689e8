//! The agent's TLS setup, shared by `enroll` and the collector and syslog sinks: one
//! [`make_config`], one-line loaders, certificate validity, and 0600 atomic writes.
//!
//! rustls with the ring provider only (no aws-lc): the whole workspace is pinned that way.

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {what} from {path}: {message}")]
    Load {
        what: &'static str,
        path: PathBuf,
        message: String,
    },
    #[error("{what}: {source}")]
    Rustls {
        what: &'static str,
        source: rustls::Error,
    },
    #[error("certificate {path} cannot be parsed: {message}")]
    BadCert { path: PathBuf, message: String },
    #[error("{name:?} is not a valid TLS server name (a DNS name or an IP address)")]
    ServerName { name: String },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    log_sensor_common::pem::load_certs(path).map_err(|e| TlsError::Load {
        what: e.what,
        path: e.path,
        message: e.message,
    })
}

pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    log_sensor_common::pem::load_key(path).map_err(|e| TlsError::Load {
        what: e.what,
        path: e.path,
        message: e.message,
    })
}

/// How the server's certificate is checked.
pub enum ServerTrust<'a> {
    /// Chains to one of the CA certificates in this PEM file.
    Ca(&'a Path),
    /// Not checked at all: only `enroll --insecure-first-contact` asks for this, loudly.
    InsecureFirstContact,
}

/// A client config: the server checked per `trust`, and our certificate and key (mTLS) if given.
pub fn make_config(
    trust: ServerTrust<'_>,
    identity: Option<(&Path, &Path)>,
) -> Result<Arc<ClientConfig>, TlsError> {
    let rustls_err = |what| move |source| TlsError::Rustls { what, source };
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(rustls_err("protocol versions"))?;
    let builder = match trust {
        ServerTrust::Ca(ca) => {
            let mut roots = RootCertStore::empty();
            for cert in load_certs(ca)? {
                roots.add(cert).map_err(rustls_err("CA certificate"))?;
            }
            builder.with_root_certificates(roots)
        }
        ServerTrust::InsecureFirstContact => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyServer(provider()))),
    };
    let config = match identity {
        Some((cert, key)) => builder
            .with_client_auth_cert(load_certs(cert)?, load_key(key)?)
            .map_err(rustls_err("client certificate and key"))?,
        None => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

pub fn server_name(host: &str) -> Result<ServerName<'static>, TlsError> {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    ServerName::try_from(bare.to_string()).map_err(|_| TlsError::ServerName {
        name: host.to_string(),
    })
}

/// `not_before` and `not_after` of the first certificate in a PEM file, in unix seconds.
pub fn validity(cert: &Path) -> Result<(i64, i64), TlsError> {
    let der = load_certs(cert)?.remove(0);
    let (_, parsed) =
        x509_parser::parse_x509_certificate(der.as_ref()).map_err(|e| TlsError::BadCert {
            path: cert.to_path_buf(),
            message: e.to_string(),
        })?;
    let v = parsed.validity();
    Ok((v.not_before.timestamp(), v.not_after.timestamp()))
}

/// Writes through a temp file and a rename, so a reader (the running agent) sees the old file or
/// the new one, never half of one. Keys are written 0600 from their first byte.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), TlsError> {
    log_sensor_common::fsutil::write_atomic(path, bytes, mode).map_err(|source| TlsError::Write {
        path: path.to_path_buf(),
        source,
    })
}

/// Identifies a version of some files (mtime, inode, size), so a change on disk is noticed with a
/// few `stat`s. A missing file stamps as zeros.
pub type Stamp = Vec<(i64, i64, u64, u64)>;

pub fn stamp(paths: &[&Path]) -> Stamp {
    use std::os::unix::fs::MetadataExt;
    paths
        .iter()
        .map(|p| {
            std::fs::metadata(p)
                .map(|m| (m.mtime(), m.mtime_nsec(), m.ino(), m.len()))
                .unwrap_or_default()
        })
        .collect()
}

/// A client config rebuilt whenever one of its files changed on disk (a rotated certificate is
/// used from the next connection on, without a restart).
pub struct Reloading {
    ca: PathBuf,
    identity: Option<(PathBuf, PathBuf)>,
    current: Option<(Stamp, Arc<ClientConfig>)>,
}

impl Reloading {
    pub fn new(ca: PathBuf, identity: Option<(PathBuf, PathBuf)>) -> Reloading {
        Reloading {
            ca,
            identity,
            current: None,
        }
    }

    pub fn get(&mut self) -> Result<Arc<ClientConfig>, TlsError> {
        let mut paths = vec![self.ca.as_path()];
        if let Some((c, k)) = &self.identity {
            paths.extend([c.as_path(), k.as_path()]);
        }
        let now = stamp(&paths);
        match &self.current {
            Some((s, config)) if *s == now => Ok(config.clone()),
            _ => {
                let config = make_config(
                    ServerTrust::Ca(&self.ca),
                    self.identity
                        .as_ref()
                        .map(|(c, k)| (c.as_path(), k.as_path())),
                )?;
                self.current = Some((now, config.clone()));
                Ok(config)
            }
        }
    }
}

/// Accepts any server certificate (signatures are still checked, so the handshake is sound; the
/// server's identity is not). Used only for `enroll --insecure-first-contact`.
#[derive(Debug)]
struct AnyServer(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// What a TLS failure means for an operator, when it is about our certificate.
pub fn explain(err: &rustls::Error) -> Option<&'static str> {
    use rustls::AlertDescription as A;
    match err {
        rustls::Error::AlertReceived(a) => Some(match a {
            A::CertificateRevoked => {
                "the server refused our client certificate: it is REVOKED; re-enrol with `log-sensor enroll`"
            }
            A::CertificateExpired => {
                "the server refused our client certificate: it is EXPIRED (or not yet valid); re-enrol with `log-sensor enroll`"
            }
            A::UnknownCA => "the server refused our client certificate: issued by a CA it does not trust",
            A::AccessDenied => {
                "the server refused our client certificate: it does not know it (re-enrol with `log-sensor enroll`)"
            }
            A::BadCertificate | A::UnsupportedCertificate | A::CertificateUnknown => {
                "the server refused our client certificate"
            }
            A::CertificateRequired => "the server requires a client certificate and we sent none",
            _ => return None,
        }),
        rustls::Error::InvalidCertificate(_) => {
            Some("the server's certificate does not verify against our CA file")
        }
        _ => None,
    }
}

/// A TLS error with its meaning first when it is about our certificate.
pub fn describe(err: &rustls::Error) -> String {
    match explain(err) {
        Some(meaning) => format!("{meaning} ({err})"),
        None => err.to_string(),
    }
}

/// The rustls error inside an I/O error from a rustls stream, if that is what it is.
pub fn rustls_error(e: &std::io::Error) -> Option<&rustls::Error> {
    e.get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
}
