//! Issuing host certificates: `/v1/enroll` (user name and password, rate
//! limited) and `/v1/renew` (a still-valid client certificate). Both only
//! sign a CSR; every issue is recorded with who, which host, serial and
//! when.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::db::{CertState, Issued};
use crate::names;
use crate::pki::{Ca, PkiError};
use crate::ratelimit::{Limiter, Refusal, Try};
use crate::renew_limit::{Counted, RenewLimit};
use crate::storage::{Store, StoreError};
use crate::verify::{Slot, Verifier};

/// The request and reply bodies, as the agent sends and reads them.
pub use log_sensor_common::enroll::{CertReply, EnrollRequest, RenewRequest};

#[derive(Debug, thiserror::Error)]
pub enum EnrollError {
    #[error("too many failed attempts; try again later")]
    RateLimited,
    #[error("too many enrolments are being checked at once; try again in a few seconds")]
    Busy,
    #[error("host {host_id:?} has renewed {max} times within {window_secs} s (rate_limit.max_renewals); its certificate still works: renew again in {retry_after_secs} s")]
    RenewLimited {
        host_id: String,
        max: u32,
        window_secs: u64,
        retry_after_secs: u64,
    },
    /// Deliberately one message for unknown user and wrong password.
    #[error("invalid credentials")]
    BadCredentials,
    #[error("host_id {host_id:?} {problem}")]
    BadHostId { host_id: String, problem: String },
    #[error("host {host_id:?} already holds a valid certificate ({serial}); renew with it, or revoke it before enrolling again")]
    AlreadyEnrolled { host_id: String, serial: String },
    #[error("certificate is revoked")]
    Revoked,
    #[error(transparent)]
    Pki(#[from] PkiError),
    #[error(transparent)]
    Db(#[from] StoreError),
}

impl EnrollError {
    pub fn status(&self) -> u16 {
        match self {
            EnrollError::RateLimited | EnrollError::Busy | EnrollError::RenewLimited { .. } => 429,
            EnrollError::BadCredentials => 401,
            EnrollError::BadHostId { .. }
            | EnrollError::Pki(PkiError::BadCsr(_) | PkiError::UnsupportedKey) => 400,
            EnrollError::AlreadyEnrolled { .. } => 409,
            EnrollError::Revoked => 403,
            EnrollError::Pki(_) | EnrollError::Db(_) => 500,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            EnrollError::RateLimited | EnrollError::RenewLimited { .. } => "rate_limited",
            EnrollError::Busy => "busy",
            EnrollError::BadCredentials => "invalid_credentials",
            EnrollError::BadHostId { .. } => "bad_host_id",
            EnrollError::Pki(PkiError::BadCsr(_) | PkiError::UnsupportedKey) => "bad_csr",
            EnrollError::AlreadyEnrolled { .. } => "already_enrolled",
            EnrollError::Revoked => "certificate_revoked",
            EnrollError::Pki(_) | EnrollError::Db(_) => "internal",
        }
    }
}

/// Host ids become a certificate CN and DNS SAN and a file name, so they
/// are printable ASCII without spaces, and short.
pub fn check_host_id(host_id: &str) -> Result<(), EnrollError> {
    let bad = |problem: String| EnrollError::BadHostId {
        host_id: host_id.to_owned(),
        problem,
    };
    names::check_id(host_id).map_err(|e| bad(e.to_string()))?;
    if !host_id.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(bad("must be printable ASCII without spaces".into()));
    }
    Ok(())
}

/// How long an enrolment waits for room under the failure limit (tries in
/// flight fill it) or for a password check slot before it gets 429 `busy`:
/// long enough for a fleet enrolling with one account at once to get
/// through a few checks at a time, short enough that waiting holds little.
const ADMIT_WAIT: Duration = Duration::from_secs(5);

/// Signs CSRs for enrolled users and renewing hosts.
pub struct Enroller {
    pub db: std::sync::Arc<dyn Store>,
    pub ca: Ca,
    pub limiter: Arc<Limiter>,
    /// Bounds the argon2 checks running at once.
    pub verifier: Verifier,
    /// Renewals per host: each signs and writes the database, and a host with a valid
    /// certificate could otherwise renew in a loop.
    pub renewals: RenewLimit,
    /// Lifetime of issued certificates.
    pub cert_days: u32,
}

/// An enrolment counted under the limits and holding a check slot.
pub struct Admitted {
    attempt: Try,
    slot: Slot,
}

impl Enroller {
    /// Counts the try before its password is checked (so tries sent at once
    /// are limited like tries sent in turn), then takes a check slot.
    pub async fn admit(&self, source: IpAddr, username: &str) -> Result<Admitted, EnrollError> {
        let started = tokio::time::Instant::now();
        let attempt = self
            .limiter
            .admit(source, username, ADMIT_WAIT)
            .await
            .map_err(|r| match r {
                Refusal::Limited => EnrollError::RateLimited,
                Refusal::Busy => EnrollError::Busy,
            })?;
        let left = ADMIT_WAIT.saturating_sub(started.elapsed());
        let slot = self.verifier.slot(left).await.ok_or(EnrollError::Busy)?;
        Ok(Admitted { attempt, slot })
    }

    /// Blocking (argon2 takes tens of milliseconds): call from a blocking
    /// thread.
    pub fn enroll(
        &self,
        admitted: Admitted,
        req: &EnrollRequest,
        source: IpAddr,
    ) -> Result<CertReply, EnrollError> {
        let Admitted { attempt, slot } = admitted;
        let stored = self.db.user_hash(&req.username)?;
        if !slot.verify(&req.password, stored.as_deref()) {
            attempt.failed();
            return Err(EnrollError::BadCredentials);
        }
        attempt.succeeded();
        check_host_id(&req.host_id)?;
        // Whoever holds a password could otherwise take over a live host's
        // identity by enrolling its id again. Checked where the certificate
        // is recorded, in the same transaction as its insert: two
        // enrolments of one id at once would both pass a check made before.
        self.issue(&req.csr, &req.host_id, &req.username, "enroll", source)
    }

    /// Counts a renewal of `host_id` under its limit, before its body is read.
    pub fn admit_renewal(&self, host_id: &str) -> Result<Counted, EnrollError> {
        self.renewals
            .take(host_id, std::time::Instant::now())
            .map_err(|limited| EnrollError::RenewLimited {
                host_id: host_id.to_owned(),
                max: self.renewals.max(),
                window_secs: self.renewals.window().as_secs(),
                // Whole seconds, rounded up: a retry at the time said is let through.
                retry_after_secs: limited.retry_after.as_secs()
                    + u64::from(limited.retry_after.subsec_nanos() > 0),
            })
    }

    /// A fresh certificate for the host a valid certificate proves, counted by
    /// [`admit_renewal`](Self::admit_renewal). Blocking (signing, the database).
    pub fn renew(
        &self,
        counted: Counted,
        serial: &str,
        host_id: &str,
        csr: &str,
        source: IpAddr,
    ) -> Result<CertReply, EnrollError> {
        let result = match self.db.cert_state(serial) {
            Ok(CertState::Valid { username }) => {
                self.issue(csr, host_id, &username, "renew", source)
            }
            Ok(CertState::Revoked | CertState::Unknown) => Err(EnrollError::Revoked),
            Err(e) => Err(e.into()),
        };
        if result.as_ref().is_err_and(|e| e.status() >= 500) {
            // The collector's fault (its database or CA), not the host's: the host may retry.
            self.renewals.give_back(host_id, counted);
        }
        result
    }

    fn issue(
        &self,
        csr: &str,
        host_id: &str,
        username: &str,
        kind: &'static str,
        source: IpAddr,
    ) -> Result<CertReply, EnrollError> {
        let cert = self.ca.sign_client(csr, host_id, self.cert_days)?;
        let issued = Issued {
            serial: &cert.serial,
            host_id,
            username,
            issued_at: cert.issued_at,
            not_after: cert.not_after,
            kind,
            source_addr: &source.to_string(),
        };
        if kind == "renew" {
            // A renewal adds a certificate beside the live one on purpose.
            self.db.record_issued(&issued)?;
        } else if let Some(serial) = self.db.record_enrolment(&issued)? {
            // Another enrolment of this id won the race; this certificate
            // was never recorded, so it is refused at any handshake.
            return Err(EnrollError::AlreadyEnrolled {
                host_id: host_id.to_owned(),
                serial,
            });
        }
        tracing::info!(kind, host_id, username, serial = %cert.serial, %source, "issued client certificate");
        Ok(CertReply {
            host_id: host_id.to_owned(),
            serial: cert.serial,
            cert: cert.pem,
            ca: self.ca.cert_pem.clone(),
            issued_at: cert.issued_at,
            not_after: cert.not_after,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_ids_are_checked() {
        assert!(check_host_id("web-01.example.com").is_ok());
        assert!(
            check_host_id("../../etc").is_ok(),
            "allowed: storage encodes it"
        );
        assert!(check_host_id("a b").is_err());
        assert!(check_host_id("").is_err());
        assert!(check_host_id("é").is_err());
    }
}
