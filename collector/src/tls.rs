//! All TLS setup: the server config, the client-certificate verifier that
//! knows about revocation, and reading a host's identity from its
//! certificate.
//!
//! The verifier accepts connections without a client certificate (enrol
//! needs that); each route decides whether it needs one.

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;

use log_sensor_common::pem::{load_certs, load_key};
use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme,
};
use tokio::sync::watch;

use crate::db::CertState;
use crate::metrics::{Metrics, RefusedReason};
use crate::pki::hex;
use crate::storage::Store;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error(transparent)]
    Pem(#[from] log_sensor_common::pem::PemError),
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("client verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
}

/// The serials known to be revoked, refreshed from the database by
/// [`crate::revoke::watch_revocations`]; connections subscribe to it to
/// cut themselves when their certificate appears.
pub type RevokedSet = watch::Receiver<Arc<HashSet<String>>>;

pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Builds the server config: our certificate, HTTP/1.1 via ALPN, and
/// optional client certificates checked by [`RevocationAwareVerifier`].
pub fn make_server_config(
    ca_cert: &Path,
    server_cert: &Path,
    server_key: &Path,
    db: Arc<dyn Store>,
    revoked: RevokedSet,
    metrics: Arc<Metrics>,
) -> Result<rustls::ServerConfig, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(ca_cert)? {
        roots.add(cert)?;
    }
    let inner = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
        .allow_unauthenticated()
        .build()?;
    let verifier = Arc::new(RevocationAwareVerifier {
        inner,
        db,
        revoked,
        metrics,
    });
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(load_certs(server_cert)?, {
            crate::pki::warn_if_exposed(server_key, "whoever reads it can pose as this collector");
            load_key(server_key)?
        })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    // No session resumption: a resumed session skips the client
    // certificate check, so a revoked host could reconnect on a session
    // from before its revocation. Agents keep connections open, so full
    // handshakes are rare anyway.
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    Ok(config)
}

/// WebPKI chain and expiry checks, then our own: the serial must be one we
/// issued and not revoked. The database is asked on every handshake, so a
/// `revoke` is refused from its commit on, without a restart.
#[derive(Debug)]
pub struct RevocationAwareVerifier {
    /// Chain, signature, validity period and client-auth usage.
    inner: Arc<dyn ClientCertVerifier>,
    /// The issued-certificate table (its own connection, so handshakes do
    /// not queue behind ingest commits).
    db: Arc<dyn Store>,
    /// Cached revoked serials: checked first, no database trip needed.
    revoked: RevokedSet,
    /// Counts refusals by reason.
    metrics: Arc<Metrics>,
}

fn refused_reason(err: &rustls::Error) -> RefusedReason {
    match err {
        rustls::Error::InvalidCertificate(e) => match e {
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                RefusedReason::Expired
            }
            CertificateError::UnknownIssuer => RefusedReason::UnknownCa,
            CertificateError::Revoked => RefusedReason::Revoked,
            _ => RefusedReason::BadCertificate,
        },
        _ => RefusedReason::BadCertificate,
    }
}

impl RevocationAwareVerifier {
    fn refuse(
        &self,
        reason: RefusedReason,
        err: rustls::Error,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.metrics.refused(reason);
        tracing::info!(reason = reason.label(), "refused client certificate");
        Err(err)
    }
}

impl ClientCertVerifier for RevocationAwareVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        if let Err(e) = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)
        {
            return self.refuse(refused_reason(&e), e);
        }
        let revoked = || rustls::Error::InvalidCertificate(CertificateError::Revoked);
        let Ok(identity) = PeerIdentity::from_der(end_entity) else {
            return self.refuse(
                RefusedReason::BadCertificate,
                rustls::Error::InvalidCertificate(CertificateError::BadEncoding),
            );
        };
        if self.revoked.borrow().contains(&identity.serial) {
            return self.refuse(RefusedReason::Revoked, revoked());
        }
        match self.db.cert_state(&identity.serial) {
            Ok(CertState::Valid { .. }) => Ok(ClientCertVerified::assertion()),
            Ok(CertState::Revoked) => self.refuse(RefusedReason::Revoked, revoked()),
            Ok(CertState::Unknown) => self.refuse(
                RefusedReason::UnknownSerial,
                rustls::Error::InvalidCertificate(CertificateError::ApplicationVerificationFailure),
            ),
            Err(e) => {
                tracing::error!(error = %e, "cannot check certificate state");
                Err(rustls::Error::General(
                    "certificate state unavailable".into(),
                ))
            }
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// Who a verified client certificate says the peer is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerIdentity {
    /// The host id: the certificate's CN, also present as a DNS SAN.
    pub host: String,
    /// Lower-case hex serial, the key of the `certs` table.
    pub serial: String,
    /// Expiry, unix seconds; open connections are cut at this time.
    pub not_after: i64,
}

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("certificate does not parse")]
    Parse,
    #[error("certificate has no common name")]
    NoCommonName,
    #[error("certificate's common name {0:?} is not among its subject alternative names")]
    SanMismatch(String),
}

impl PeerIdentity {
    pub fn from_der(der: &CertificateDer<'_>) -> Result<PeerIdentity, IdentityError> {
        let (_, cert) =
            x509_parser::parse_x509_certificate(der).map_err(|_| IdentityError::Parse)?;
        let host = cert
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .ok_or(IdentityError::NoCommonName)?
            .to_owned();
        let in_san = cert
            .subject_alternative_name()
            .ok()
            .flatten()
            .is_some_and(|san| {
                san.value.general_names.iter().any(
                    |n| matches!(n, x509_parser::extensions::GeneralName::DNSName(d) if *d == host),
                )
            });
        if !in_san {
            return Err(IdentityError::SanMismatch(host));
        }
        Ok(PeerIdentity {
            host,
            serial: hex(cert.raw_serial()),
            not_after: cert.validity().not_after.timestamp(),
        })
    }
}
