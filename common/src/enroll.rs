//! The collector's enrolment API, as both ends see it: `POST /v1/enroll` (user name, password
//! and a CSR, over server-authenticated TLS) and `POST /v1/renew` (a CSR, over mutual TLS with
//! the still-valid certificate). Both answer a [`CertReply`].

use serde::{Deserialize, Serialize};

pub const ENROLL_PATH: &str = "/v1/enroll";
pub const RENEW_PATH: &str = "/v1/renew";

/// Body of `POST /v1/enroll`.
#[derive(Clone, Serialize, Deserialize)]
pub struct EnrollRequest {
    pub username: String,
    pub password: String,
    pub host_id: String,
    /// PKCS#10 request, PEM.
    pub csr: String,
}

impl std::fmt::Debug for EnrollRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The password never reaches a log line.
        f.debug_struct("EnrollRequest")
            .field("username", &self.username)
            .field("host_id", &self.host_id)
            .finish_non_exhaustive()
    }
}

/// Body of `POST /v1/renew`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RenewRequest {
    /// PKCS#10 request for the key the host already has, PEM.
    pub csr: String,
}

/// Reply to enrol and renew.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CertReply {
    pub host_id: String,
    /// Lower-case hex; what `revoke` and `certs list` use.
    pub serial: String,
    /// The new client certificate, PEM.
    pub cert: String,
    /// The collector's CA certificate, PEM: the agent's trust anchor.
    pub ca: String,
    /// Issue time, unix seconds (the certificate is valid from five minutes earlier, for clock
    /// skew).
    pub issued_at: i64,
    /// Expiry, unix seconds; renew at about two thirds of the lifetime.
    pub not_after: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_password_is_sent_but_never_printed() {
        let r = EnrollRequest {
            username: "ops".into(),
            password: "s3cret-pw".into(),
            host_id: "web-1".into(),
            csr: "-----BEGIN CERTIFICATE REQUEST-----".into(),
        };
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["password"], "s3cret-pw");
        assert_eq!(json["host_id"], "web-1");
        let shown = format!("{r:?}");
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(shown.contains("web-1"), "{shown}");
    }

    #[test]
    fn a_reply_missing_a_field_names_it() {
        let e = serde_json::from_str::<CertReply>(r#"{"host_id":"h","serial":"ab","ca":"x"}"#)
            .unwrap_err();
        assert!(e.to_string().contains("cert"), "{e}");
    }
}
