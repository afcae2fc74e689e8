//! The client certificate the sink connects with: the files re-read whenever they change on disk
//! (so a re-enrolment applies to a running agent without a restart), and renewed at `renew_at`
//! of its lifetime by a thread of its own, so an idle agent renews too. The renewal asks the
//! collector the sink is on first, then the others in the host's order: any collector of the
//! tier signs with the one CA.

use crate::config::{CollectorOptions, TlsFiles, Url};
use crate::http::HttpConn;
use crate::tls::{self, ServerTrust, TlsError};
use rustls::ClientConfig;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

/// A failed renewal is tried again after this long (the current certificate still works).
const RENEW_RETRY: Duration = Duration::from_secs(60);
/// The longest a collector's `Retry-After` holds the next renewal back: a wrong clock or a
/// misconfigured limit on its side must not keep a certificate from renewing for days.
const RENEW_RETRY_MAX: Duration = Duration::from_secs(3600);
/// At most one renewal this often, even if the clock or `renew_at` says one is due at once.
const RENEW_MIN_GAP: Duration = Duration::from_secs(10);

/// The client config built from one version of the files, and the certificate's validity.
struct Identity {
    config: Arc<ClientConfig>,
    stamp: tls::Stamp,
    not_before: i64,
    not_after: i64,
}

/// State the sink and its renewal thread share.
pub(super) struct Shared {
    /// The collectors in this host's order, home first (`CollectorOptions::in_order`).
    pub(super) order: Vec<Url>,
    /// The position in `order` the sink sends to now; renewal asks that collector first.
    pub(super) current: AtomicUsize,
    pub(super) files: TlsFiles,
    /// Fraction of the certificate's lifetime after which it is renewed.
    renew_at: f64,
    identity: Mutex<Option<Identity>>,
    /// Bumped when a renewal wrote a new certificate, so the sink reconnects with it.
    pub(super) generation: AtomicU64,
}

impl Shared {
    /// Nothing loaded yet: the first [`Shared::identity`] reads the files.
    pub(super) fn new(opts: &CollectorOptions) -> Shared {
        Shared {
            order: opts.in_order(),
            current: AtomicUsize::new(0),
            files: opts.files.clone(),
            renew_at: opts.renew_at,
            identity: Mutex::new(None),
            generation: AtomicU64::new(0),
        }
    }

    /// The current client config, re-read if a file changed (renewal, re-enrolment).
    pub(super) fn identity(&self) -> Result<(Arc<ClientConfig>, i64, i64), TlsError> {
        let mut slot = self.identity.lock().expect("identity lock");
        let now = tls::stamp(&[&self.files.ca, &self.files.cert, &self.files.key]);
        if slot.as_ref().map(|i| &i.stamp) != Some(&now) {
            let config = tls::make_config(
                ServerTrust::Ca(&self.files.ca),
                Some((&self.files.cert, &self.files.key)),
            )?;
            let (not_before, not_after) = tls::validity(&self.files.cert)?;
            if slot.is_some() {
                tracing::info!(cert = %self.files.cert.display(), not_after, "client certificate changed on disk; using the new one");
            }
            *slot = Some(Identity {
                config,
                stamp: now,
                not_before,
                not_after,
            });
        }
        let i = slot.as_ref().expect("just loaded");
        Ok((i.config.clone(), i.not_before, i.not_after))
    }

    fn renew_due(&self, not_before: i64, not_after: i64) -> i64 {
        not_before + ((not_after - not_before) as f64 * self.renew_at) as i64
    }

    /// Asks for a fresh certificate for our key and swaps it in atomically.
    fn renew(&self) -> Result<i64, RenewFailed> {
        let mut waits = Vec::new();
        self.try_renew(&mut waits).map_err(|message| RenewFailed {
            message,
            retry_in: retry_wait(&waits),
        })
    }

    /// [`Shared::renew`]; each collector that was away leaves in `waits` the `Retry-After` it
    /// answered with, or None.
    fn try_renew(&self, waits: &mut Vec<Option<u64>>) -> Result<i64, String> {
        let (config, _, _) = self.identity().map_err(|e| e.to_string())?;
        let key_pem = std::fs::read_to_string(&self.files.key)
            .map_err(|e| format!("cannot read {}: {e}", self.files.key.display()))?;
        let csr = crate::identity::csr_for(&key_pem).map_err(|e| e.to_string())?;
        let body = serde_json::to_string(&log_sensor_common::enroll::RenewRequest { csr })
            .expect("strings serialise");
        let first = self.current.load(Ordering::Relaxed);
        let n = self.order.len();
        let mut failures = Vec::new();
        let mut reply = None;
        for url in (0..n).map(|i| &self.order[(first + i) % n]) {
            match renew_at(url, config.clone(), body.as_bytes()) {
                Ok(resp) => {
                    reply = Some(resp);
                    break;
                }
                // A refusal (revoked, unknown host) is the tier's answer, not this collector's.
                Err(Renewal::Refused(e)) => return Err(format!("{url}: {e}")),
                Err(Renewal::Away { text, retry_after }) => {
                    failures.push(format!("{url}: {text}"));
                    waits.push(retry_after);
                }
            }
        }
        let Some(resp) = reply else {
            return Err(failures.join("; "));
        };
        let reply: log_sensor_common::enroll::CertReply =
            serde_json::from_slice(&resp.body).map_err(|e| format!("bad renew reply: {e}"))?;
        let cert = reply.cert;
        // Checked against our key before it replaces the certificate that works.
        let tmp_check = self.files.cert.with_extension("renew-check");
        tls::write_atomic(&tmp_check, cert.as_bytes(), 0o644).map_err(|e| e.to_string())?;
        let checked = tls::make_config(
            ServerTrust::Ca(&self.files.ca),
            Some((&tmp_check, &self.files.key)),
        );
        let _ = std::fs::remove_file(&tmp_check);
        checked.map_err(|e| format!("renewed certificate is unusable: {e}"))?;
        tls::write_atomic(&self.files.cert, cert.as_bytes(), 0o644).map_err(|e| e.to_string())?;
        self.generation.fetch_add(1, Ordering::SeqCst);
        let (_, _, not_after) = self.identity().map_err(|e| e.to_string())?;
        Ok(not_after)
    }
}

/// A renewal that failed, and when to try again.
#[derive(Debug)]
struct RenewFailed {
    message: String,
    retry_in: Duration,
}

/// When to try a failed renewal again: after [`RENEW_RETRY`], or later when every collector
/// asked was busy and said when to come back (429 with `Retry-After`, as the per-host renewal
/// limit answers): then at the soonest any of them named, at most [`RENEW_RETRY_MAX`]. Asking
/// every minute regardless only earned another 429 each time. One that gave no time (down,
/// 5xx) may be back any moment, so the minute stands.
fn retry_wait(waits: &[Option<u64>]) -> Duration {
    let soonest = waits.iter().copied().collect::<Option<Vec<u64>>>();
    match soonest.and_then(|w| w.into_iter().min()) {
        Some(secs) => Duration::from_secs(secs).clamp(RENEW_RETRY, RENEW_RETRY_MAX),
        None => RENEW_RETRY,
    }
}

/// Why one collector did not renew.
enum Renewal {
    /// Unreachable, timed out, 5xx or 429 (with its `Retry-After`): the next collector may.
    Away {
        text: String,
        retry_after: Option<u64>,
    },
    /// Any other refusal: every collector would say the same.
    Refused(String),
}

/// One `POST /v1/renew`; Ok with the collector's 200.
fn renew_at(
    url: &Url,
    config: Arc<ClientConfig>,
    body: &[u8],
) -> Result<crate::http::Response, Renewal> {
    let away = |e: crate::http::HttpError| Renewal::Away {
        text: e.to_string(),
        retry_after: None,
    };
    let mut conn = HttpConn::connect(url, config).map_err(away)?;
    let resp = conn
        .request(
            "POST",
            log_sensor_common::enroll::RENEW_PATH,
            &[("Content-Type", "application/json")],
            body,
        )
        .map_err(away)?;
    match resp.status {
        200 => Ok(resp),
        s => {
            let text = format!("collector replied {s} {}", resp.reason());
            Err(if s >= 500 || s == 429 {
                Renewal::Away {
                    text,
                    retry_after: (s == 429).then_some(resp.retry_after).flatten(),
                }
            } else {
                Renewal::Refused(text)
            })
        }
    }
}

/// Renews when due; exits when the sink is gone.
pub(super) fn renewal_loop(shared: Weak<Shared>) {
    let mut next_try = Instant::now();
    loop {
        std::thread::sleep(Duration::from_secs(1));
        let Some(s) = shared.upgrade() else { return };
        let Ok((_, nb, na)) = s.identity() else {
            continue;
        };
        if crate::store::now_secs() < s.renew_due(nb, na) || Instant::now() < next_try {
            continue;
        }
        match s.renew() {
            Ok(not_after) => {
                tracing::info!(cert = %s.files.cert.display(), not_after, "client certificate renewed");
                next_try = Instant::now() + RENEW_MIN_GAP;
            }
            Err(e) => {
                tracing::warn!(error = %e.message, retry_in_s = e.retry_in.as_secs(), "certificate renewal failed; the current certificate is still used");
                next_try = Instant::now() + e.retry_in;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_renewal_waits_as_long_as_every_busy_collector_asked() {
        let m = |s: u64| Duration::from_secs(s);
        assert_eq!(retry_wait(&[]), RENEW_RETRY, "failed before asking anyone");
        assert_eq!(
            retry_wait(&[None]),
            RENEW_RETRY,
            "down: may be back any moment"
        );
        assert_eq!(retry_wait(&[Some(900)]), m(900));
        assert_eq!(retry_wait(&[Some(900), Some(300)]), m(300), "the soonest");
        assert_eq!(retry_wait(&[Some(900), None]), RENEW_RETRY);
        assert_eq!(
            retry_wait(&[Some(5)]),
            RENEW_RETRY,
            "never more often than before"
        );
        assert_eq!(retry_wait(&[Some(86_400 * 30)]), RENEW_RETRY_MAX);
    }
}
