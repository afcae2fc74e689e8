//! Certificates and private keys from PEM files, for the agent (client identity, syslog TLS) and
//! the collector (its CA and server identity). One loader, so a bad file reads the same error
//! wherever it is configured.

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::path::{Path, PathBuf};

/// A PEM file that could not be used, named with what was looked for in it.
#[derive(Debug, thiserror::Error)]
#[error("cannot read {what} from {path}: {message}")]
pub struct PemError {
    /// `certificates` or `a private key`.
    pub what: &'static str,
    pub path: PathBuf,
    pub message: String,
}

/// Every certificate in the file, in order; a file without one is an error.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, PemError> {
    let fail = |message: String| PemError {
        what: "certificates",
        path: path.to_path_buf(),
        message,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| fail(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| fail(e.to_string()))?;
    if certs.is_empty() {
        return Err(fail("no PEM certificate in the file".into()));
    }
    Ok(certs)
}

/// The first private key in the file (PKCS#8, PKCS#1 or SEC1).
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, PemError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| PemError {
        what: "a private key",
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_or_empty_file_names_the_file_and_what_was_wanted() {
        let t = tempfile::tempdir().unwrap();
        let missing = t.path().join("nope.pem");
        let e = load_certs(&missing).unwrap_err();
        assert!(
            e.to_string().contains("certificates") && e.to_string().contains("nope.pem"),
            "{e}"
        );
        let empty = t.path().join("empty.pem");
        std::fs::write(&empty, "not pem at all\n").unwrap();
        let e = load_certs(&empty).unwrap_err();
        assert!(e.to_string().contains("no PEM certificate"), "{e}");
        let e = load_key(&empty).unwrap_err();
        assert!(
            e.to_string().contains("a private key") && e.to_string().contains("empty.pem"),
            "{e}"
        );
    }
}
