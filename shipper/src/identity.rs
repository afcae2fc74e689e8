//! The agent's client identity as the collector certifies it: a key made here (it never leaves
//! the host) and the CSR that asks for a certificate for it. Enrolment makes the first; the
//! collector sink's renewal asks again for the same key. Below both, so neither imports the
//! other.

/// A key or CSR that could not be made.
#[derive(Debug, thiserror::Error)]
#[error("cannot make a key or CSR: {0}")]
pub struct KeyError(String);

/// A new private key, as PEM.
pub fn new_key() -> Result<String, KeyError> {
    rcgen::KeyPair::generate()
        .map(|k| k.serialize_pem())
        .map_err(|e| KeyError(e.to_string()))
}

/// A CSR (PEM) for an existing key; the collector ignores its subject and sets the host id.
pub fn csr_for(key_pem: &str) -> Result<String, KeyError> {
    let key = rcgen::KeyPair::from_pem(key_pem).map_err(|e| KeyError(e.to_string()))?;
    rcgen::CertificateParams::new(Vec::<String>::new())
        .and_then(|p| p.serialize_request(&key))
        .and_then(|csr| csr.pem())
        .map_err(|e| KeyError(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_csr_is_made_for_a_new_key_and_a_bad_key_is_named() {
        let key = new_key().unwrap();
        assert!(csr_for(&key)
            .unwrap()
            .starts_with("-----BEGIN CERTIFICATE REQUEST-----"));
        let e = csr_for("not a key").unwrap_err().to_string();
        assert!(e.starts_with("cannot make a key or CSR: "), "{e}");
    }
}
