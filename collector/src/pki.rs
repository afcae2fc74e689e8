//! The collector's certificate authority: creating it at `init`, issuing
//! the server certificate, and signing host CSRs at enrol and renew.
//!
//! Only CSRs are signed: a host's private key never leaves the host.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rand::Rng;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use time::OffsetDateTime;

use log_sensor_common::clock::now_secs as unix_now;
use log_sensor_common::fsutil;

/// Lifetime of the CA certificate.
const CA_DAYS: u64 = 3650;
/// Lifetime of the server certificate (the browsers' current ceiling).
const SERVER_DAYS: u64 = 397;
/// Certificates start a little in the past to tolerate clock skew.
const BACKDATE: Duration = Duration::from_secs(300);

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("{path} already exists; refusing to replace the collector's CA")]
    CaExists { path: PathBuf },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Parse { path: PathBuf, source: rcgen::Error },
    #[error("certificate generation: {0}")]
    Generate(rcgen::Error),
    #[error("invalid server name {name:?}: {problem}")]
    BadName { name: String, problem: String },
    #[error("invalid CSR: {0}")]
    BadCsr(rcgen::Error),
    #[error(
        "invalid CSR: its key type is not supported (use ECDSA P-256 or P-384, Ed25519 or RSA)"
    )]
    UnsupportedKey,
}

/// Warns when a private key file can be read by other users than its owner (`init` makes them
/// 0600; a copy or a restore may not keep that). A warning, not a refusal as sshd's: a
/// collector that will not start after a restore is an outage of its own.
pub fn warn_if_exposed(key: &Path, risk: &str) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(md) = std::fs::metadata(key) {
        let mode = md.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            tracing::warn!(
                "{} is readable by other users (mode {mode:04o}): chmod 600 it; {risk}",
                key.display()
            );
        }
    }
}

/// The key a CSR asks to be certified, as its SubjectPublicKeyInfo says (algorithm and curve),
/// not as its signature algorithm suggests: rcgen's CSR reader (0.14.10, `csr.rs` `from_der`)
/// takes the key's algorithm from the signature's, so a P-384 key signed with SHA-256 (what
/// `openssl req -new` does by default) was certified as prime256v1 beside a P-384 point, a
/// certificate no TLS stack loads, and its host could not enrol again until revoked.
fn csr_key(csr_pem: &str) -> Result<rcgen::SubjectPublicKeyInfo, PkiError> {
    use x509_parser::prelude::FromDer;
    let unparsable = || PkiError::BadCsr(rcgen::Error::CouldNotParseCertificationRequest);
    let (_, pem) =
        x509_parser::pem::parse_x509_pem(csr_pem.as_bytes()).map_err(|_| unparsable())?;
    let (_, csr) =
        x509_parser::certification_request::X509CertificationRequest::from_der(&pem.contents)
            .map_err(|_| unparsable())?;
    rcgen::SubjectPublicKeyInfo::from_der(csr.certification_request_info.subject_pki.raw)
        .map_err(|_| PkiError::UnsupportedKey)
}

/// A certificate as handed to a host.
#[derive(Debug, Clone)]
pub struct IssuedCert {
    pub pem: String,
    /// Lower-case hex of the DER serial number (as `certs list` shows it).
    pub serial: String,
    pub issued_at: i64,
    pub not_after: i64,
}

/// The CA's signing key and name, loaded once by `serve`.
pub struct Ca {
    /// PEM of the CA certificate, returned to hosts at enrolment.
    pub cert_pem: String,
    /// Signs host certificates; holds the CA private key.
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material.
        f.debug_struct("Ca").finish_non_exhaustive()
    }
}

fn at(unix: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(unix).unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

/// A random 128-bit positive serial whose DER encoding is exactly its 16
/// bytes (top bit clear, first byte non-zero), so the hex we store is the
/// hex a verifier reads back.
fn random_serial() -> (SerialNumber, String) {
    let mut bytes: [u8; 16] = rand::rng().random();
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    (SerialNumber::from_slice(&bytes), hex(&bytes))
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Creates the CA and the server certificate for `names` under the given
/// paths. Refuses if a CA key or certificate is already there.
pub fn init(
    ca_cert: &Path,
    ca_key: &Path,
    server_cert: &Path,
    server_key: &Path,
    names: &[String],
) -> Result<(), PkiError> {
    for name in names {
        // The names agents will connect to: each must be a valid DNS name
        // or an IP address, checked before anything is written.
        rustls::pki_types::ServerName::try_from(name.as_str()).map_err(|_| PkiError::BadName {
            name: name.clone(),
            problem: "is neither a DNS name nor an IP address".into(),
        })?;
    }
    for path in [ca_cert, ca_key, server_cert, server_key] {
        if path.exists() {
            return Err(PkiError::CaExists {
                path: path.to_owned(),
            });
        }
    }
    let now = unix_now();
    let ca_key_pair = KeyPair::generate().map_err(PkiError::Generate)?;
    let mut ca_params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "log-sensor");
    dn.push(DnType::CommonName, "log-sensor collector CA");
    ca_params.distinguished_name = dn;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    ca_params.not_before = at(now - BACKDATE.as_secs() as i64);
    ca_params.not_after = at(now + (CA_DAYS * 86400) as i64);
    ca_params.serial_number = Some(random_serial().0);
    let ca = ca_params
        .self_signed(&ca_key_pair)
        .map_err(PkiError::Generate)?;

    let mut server_params =
        CertificateParams::new(Vec::<String>::new()).map_err(PkiError::Generate)?;
    for name in names {
        let san = match name.parse::<std::net::IpAddr>() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => SanType::DnsName(name.as_str().try_into().map_err(|e: rcgen::Error| {
                PkiError::BadName {
                    name: name.clone(),
                    problem: e.to_string(),
                }
            })?),
        };
        server_params.subject_alt_names.push(san);
    }
    let mut dn = DistinguishedName::new();
    dn.push(
        DnType::CommonName,
        names.first().map(String::as_str).unwrap_or("collector"),
    );
    server_params.distinguished_name = dn;
    server_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    server_params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    server_params.not_before = at(now - BACKDATE.as_secs() as i64);
    server_params.not_after = at(now + (SERVER_DAYS * 86400) as i64);
    server_params.serial_number = Some(random_serial().0);
    server_params.use_authority_key_identifier_extension = true;
    let server_key_pair = KeyPair::generate().map_err(PkiError::Generate)?;
    let issuer = Issuer::from_params(&ca_params, &ca_key_pair);
    let server = server_params
        .signed_by(&server_key_pair, &issuer)
        .map_err(PkiError::Generate)?;

    let write = |path: &Path, text: String, mode| {
        fsutil::write_new(path, text.as_bytes(), mode).map_err(|source| PkiError::Write {
            path: path.to_owned(),
            source,
        })
    };
    // Keys first, with their final mode from creation.
    write(ca_key, ca_key_pair.serialize_pem(), 0o600)?;
    write(server_key, server_key_pair.serialize_pem(), 0o600)?;
    write(ca_cert, ca.pem(), 0o644)?;
    write(server_cert, server.pem(), 0o644)?;
    Ok(())
}

fn read(path: &Path) -> Result<String, PkiError> {
    std::fs::read_to_string(path).map_err(|source| PkiError::Read {
        path: path.to_owned(),
        source,
    })
}

impl Ca {
    pub fn load(cert: &Path, key: &Path) -> Result<Ca, PkiError> {
        warn_if_exposed(
            key,
            "whoever reads it can issue certificates every host trusts",
        );
        let cert_pem = read(cert)?;
        let key_pair = KeyPair::from_pem(&read(key)?).map_err(|source| PkiError::Parse {
            path: key.to_owned(),
            source,
        })?;
        let issuer =
            Issuer::from_ca_cert_pem(&cert_pem, key_pair).map_err(|source| PkiError::Parse {
                path: cert.to_owned(),
                source,
            })?;
        Ok(Ca { cert_pem, issuer })
    }

    /// Signs `csr_pem` as a client certificate for `host_id`, valid for
    /// `days`. Whatever names the CSR asks for are ignored: the host id
    /// goes in the CN and in a DNS SAN, and the key usage is client auth.
    pub fn sign_client(
        &self,
        csr_pem: &str,
        host_id: &str,
        days: u32,
    ) -> Result<IssuedCert, PkiError> {
        let key = csr_key(csr_pem)?;
        // Parsed again by rcgen for what it checks: the CSR's signature, its extensions.
        CertificateSigningRequestParams::from_pem(csr_pem).map_err(PkiError::BadCsr)?;
        let now = unix_now();
        let not_after = now + i64::from(days) * 86400;
        let (serial_number, serial) = random_serial();
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, host_id);
        params.distinguished_name = dn;
        params.subject_alt_names = vec![SanType::DnsName(
            host_id.try_into().map_err(PkiError::BadCsr)?,
        )];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.not_before = at(now - BACKDATE.as_secs() as i64);
        params.not_after = at(not_after);
        params.serial_number = Some(serial_number);
        params.use_authority_key_identifier_extension = true;
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(PkiError::Generate)?;
        Ok(IssuedCert {
            pem: cert.pem(),
            serial,
            issued_at: now,
            not_after,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// CSRs as `openssl req` makes them, whose signature hash need not match the key's curve.
    #[test]
    fn the_certified_key_is_the_csrs_whatever_hash_signed_it() {
        use x509_parser::prelude::FromDer;
        let dir = tempfile::tempdir().unwrap();
        let p = |n: &str| dir.path().join(n);
        init(
            &p("ca.pem"),
            &p("ca.key"),
            &p("s.pem"),
            &p("s.key"),
            &["localhost".into()],
        )
        .unwrap();
        let ca = Ca::load(&p("ca.pem"), &p("ca.key")).unwrap();
        let openssl = |args: &[&str]| {
            let out = std::process::Command::new("openssl")
                .args(args)
                .current_dir(dir.path())
                .output()
                .expect("openssl (tests/setup.sh installs it)");
            assert!(
                out.status.success(),
                "{args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        let csr = |curve: &str, hash: &str| {
            let key = format!("{curve}.key");
            openssl(&["ecparam", "-genkey", "-name", curve, "-noout", "-out", &key]);
            let mut args = vec![
                "req", "-new", "-key", &key, "-subj", "/CN=x", "-out", "r.csr",
            ];
            if !hash.is_empty() {
                args.push(hash);
            }
            openssl(&args);
            std::fs::read_to_string(p("r.csr")).unwrap()
        };
        let spki = |der: &[u8]| {
            let (_, c) =
                x509_parser::certification_request::X509CertificationRequest::from_der(der)
                    .unwrap();
            c.certification_request_info.subject_pki.raw.to_vec()
        };
        // openssl's default hash for `req -new` is SHA-256, whatever the curve.
        for (curve, hash) in [
            ("secp384r1", ""),
            ("prime256v1", "-sha384"),
            ("prime256v1", ""),
        ] {
            let pem = csr(curve, hash);
            let issued = ca.sign_client(&pem, "web-01", 1).unwrap();
            let (_, cert_pem) = x509_parser::pem::parse_x509_pem(issued.pem.as_bytes()).unwrap();
            let cert = cert_pem.parse_x509().unwrap();
            let (_, csr_pem) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).unwrap();
            assert_eq!(
                cert.public_key().raw,
                &spki(&csr_pem.contents)[..],
                "{curve} {hash}"
            );
            assert!(cert.public_key().parsed().is_ok(), "{curve} {hash}");
        }
        let e = ca
            .sign_client(&csr("secp521r1", ""), "web-01", 1)
            .unwrap_err();
        assert!(matches!(e, PkiError::UnsupportedKey), "{e}");
    }

    #[test]
    fn init_then_sign_a_csr() {
        let dir = tempfile::tempdir().unwrap();
        let p = |n: &str| dir.path().join(n);
        init(
            &p("ca.pem"),
            &p("ca.key"),
            &p("s.pem"),
            &p("s.key"),
            &["localhost".into(), "127.0.0.1".into()],
        )
        .unwrap();
        let mode = std::fs::metadata(p("ca.key")).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(matches!(
            init(
                &p("ca.pem"),
                &p("ca.key"),
                &p("s.pem"),
                &p("s.key"),
                &["x".into()]
            ),
            Err(PkiError::CaExists { .. })
        ));
        let ca = Ca::load(&p("ca.pem"), &p("ca.key")).unwrap();
        let key = KeyPair::generate().unwrap();
        let csr = CertificateParams::new(vec!["ignored".to_string()])
            .unwrap()
            .serialize_request(&key)
            .unwrap()
            .pem()
            .unwrap();
        let issued = ca.sign_client(&csr, "web-01", 30).unwrap();
        let der = rustls_pemfile::certs(&mut issued.pem.as_bytes())
            .next()
            .unwrap()
            .unwrap();
        let (_, x) = x509_parser::parse_x509_certificate(&der).unwrap();
        assert_eq!(hex(x.raw_serial()), issued.serial);
        let cn = x
            .subject()
            .iter_common_name()
            .next()
            .unwrap()
            .as_str()
            .unwrap();
        assert_eq!(cn, "web-01");
        assert!(ca.sign_client("garbage", "web-01", 30).is_err());
    }
}
