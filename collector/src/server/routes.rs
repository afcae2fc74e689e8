//! Which request goes where, who may send it, and the enrol and renew
//! routes.

use std::net::IpAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONNECTION};
use hyper::{Method, Request, StatusCode};

use super::reply::{blocking, error, json, read_body, text, Reply};
use super::upload::ingest;
use super::{Collector, MAX_SMALL_BODY};
use crate::enroll::{EnrollError, EnrollRequest, RenewRequest};
use crate::tls::PeerIdentity;
use log_sensor_common::clock::now_secs as unix_now;

pub(super) async fn route(
    collector: &Arc<Collector>,
    identity: Option<&PeerIdentity>,
    source: IpAddr,
    req: Request<Incoming>,
) -> Reply {
    let path = req.uri().path().to_owned();
    match (req.method(), path.as_str()) {
        (&Method::GET, "/healthz") => text(200, "text/plain", "ok\n".into()),
        (&Method::GET, "/metrics") => {
            text(200, "text/plain; version=0.0.4", collector.metrics.render())
        }
        (&Method::POST, "/v1/enroll") => enroll(collector, source, req).await,
        (&Method::POST, "/v1/renew") => match authorize(collector, identity) {
            Ok(id) => renew(collector, id, source, req).await,
            Err(reply) => reply,
        },
        (&Method::POST, "/v1/ingest") => {
            let mut reply = match authorize(collector, identity) {
                Ok(id) => ingest(collector, id, req).await,
                Err(reply) => reply,
            };
            // An agent may have pipelined its next batch behind this one. After a refusal that
            // batch must not be stored: its records would raise the stream's high-water mark
            // over the refused ones, which would then count as duplicates when re-sent. So the
            // connection closes here, unread requests and all.
            if reply.status() != StatusCode::OK {
                reply
                    .headers_mut()
                    .insert(CONNECTION, HeaderValue::from_static("close"));
            }
            // What the agent may send next (its `compression = "auto"` reads this).
            reply.headers_mut().insert(
                hyper::header::ACCEPT_ENCODING,
                HeaderValue::from_static(crate::ingest::ACCEPTED_ENCODINGS),
            );
            reply
        }
        (_, "/healthz" | "/metrics" | "/v1/enroll" | "/v1/renew" | "/v1/ingest") => {
            error(405, "method_not_allowed", "method not allowed")
        }
        _ => error(404, "not_found", format!("no route {path}")),
    }
}

/// Routes other than enrol need a client certificate that is still valid
/// now (the connection may have been opened before a revoke or expiry).
// A reply is the natural error of a route guard; it is built once per
// refused request, so its size does not matter.
#[allow(clippy::result_large_err)]
fn authorize<'a>(
    collector: &Collector,
    identity: Option<&'a PeerIdentity>,
) -> Result<&'a PeerIdentity, Reply> {
    let Some(id) = identity else {
        return Err(error(
            401,
            "certificate_required",
            "this route needs a client certificate from this collector's CA (POST /v1/enroll first)",
        ));
    };
    if collector.revoked.borrow().contains(&id.serial) {
        return Err(error(403, "certificate_revoked", "certificate is revoked"));
    }
    if id.not_after < unix_now() {
        return Err(error(403, "certificate_expired", "certificate has expired"));
    }
    Ok(id)
}

fn enroll_error(collector: &Collector, e: EnrollError) -> Reply {
    match &e {
        EnrollError::RateLimited => {
            collector.metrics.enrol_rate_limited.fetch_add(1, Relaxed);
        }
        EnrollError::RenewLimited { .. } => {
            collector.metrics.renew_rate_limited.fetch_add(1, Relaxed);
        }
        EnrollError::Busy => {
            collector.metrics.enrol_busy.fetch_add(1, Relaxed);
        }
        EnrollError::BadCredentials => {
            collector.metrics.enrol_failures.fetch_add(1, Relaxed);
        }
        EnrollError::Pki(_) | EnrollError::Db(_) => tracing::error!(error = %e, "enrolment failed"),
        _ => {}
    }
    let mut reply = error(e.status(), e.code(), &e);
    let retry_after = match e {
        EnrollError::RateLimited => Some(collector.config.rate_limit.window_secs),
        EnrollError::RenewLimited {
            retry_after_secs, ..
        } => Some(retry_after_secs),
        EnrollError::Busy => Some(2),
        _ => None,
    };
    if let Some(secs) = retry_after {
        reply
            .headers_mut()
            .insert(hyper::header::RETRY_AFTER, secs.into());
    }
    reply
}

async fn enroll(collector: &Arc<Collector>, source: IpAddr, req: Request<Incoming>) -> Reply {
    let stall = Duration::from_secs(collector.config.body_timeout_secs);
    let body = match read_unauthenticated_body(collector, req, stall).await {
        Ok(b) => b,
        Err(reply) => return reply,
    };
    let request: EnrollRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return error(400, "bad_json", format!("enrol request: {e}")),
    };
    let admitted = match collector.enroller.admit(source, &request.username).await {
        Ok(a) => a,
        Err(e) => return enroll_error(collector, e),
    };
    // Peer input: cut short, and logged with `?` so that quotes and control characters are
    // escaped and cannot forge a line of the log.
    let username: String = request.username.chars().take(64).collect();
    let c = Arc::clone(collector);
    match blocking(move || c.enroller.enroll(admitted, &request, source)).await {
        Ok(Ok(reply)) => {
            collector.metrics.enrolments.fetch_add(1, Relaxed);
            json(200, &reply)
        }
        Ok(Err(e)) => {
            // One line per refused try, as sshd writes for a failed password, so that an
            // operator (or fail2ban) sees who tried from where; the password never.
            // Rate-limited tries are not logged one by one: refusing them costs nothing, so a
            // flood of them would become a flood of lines (they are counted in /metrics).
            match &e {
                EnrollError::BadCredentials => {
                    tracing::warn!(username = ?username, %source, "enrolment refused: invalid credentials")
                }
                EnrollError::AlreadyEnrolled { .. } | EnrollError::BadHostId { .. } => {
                    tracing::warn!(username = ?username, %source, error = %e, "enrolment refused")
                }
                _ => {}
            }
            enroll_error(collector, e)
        }
        Err(reply) => reply,
    }
}

/// [`read_body`] for a request anyone may send: the whole body must arrive
/// within `unauthenticated_timeout_secs` of its headers, however steadily
/// it trickles (a byte a second never trips `body_timeout_secs`).
async fn read_unauthenticated_body(
    collector: &Collector,
    req: Request<Incoming>,
    stall: Duration,
) -> Result<Vec<u8>, Reply> {
    let total = collector.config.unauthenticated_timeout_secs;
    match tokio::time::timeout(
        Duration::from_secs(total),
        read_body(req, MAX_SMALL_BODY, stall),
    )
    .await
    {
        Ok(read) => read,
        Err(_) => {
            let mut reply = error(
                408,
                "request_timeout",
                format!("request body not complete within {total}s (unauthenticated_timeout_secs)"),
            );
            reply
                .headers_mut()
                .insert(CONNECTION, HeaderValue::from_static("close"));
            Err(reply)
        }
    }
}

async fn renew(
    collector: &Arc<Collector>,
    id: &PeerIdentity,
    source: IpAddr,
    req: Request<Incoming>,
) -> Reply {
    // Counted before the body is read: a host renewing in a loop is refused before it costs a
    // signature or a database write. Like refused enrolments, refusals are counted in
    // /metrics rather than logged one by one.
    let counted = match collector.enroller.admit_renewal(&id.host) {
        Ok(c) => c,
        Err(e) => return enroll_error(collector, e),
    };
    let stall = Duration::from_secs(collector.config.body_timeout_secs);
    let body = match read_body(req, MAX_SMALL_BODY, stall).await {
        Ok(b) => b,
        Err(reply) => return reply,
    };
    let request: RenewRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return error(400, "bad_json", format!("renew request: {e}")),
    };
    let c = Arc::clone(collector);
    let (serial, host) = (id.serial.clone(), id.host.clone());
    match blocking(move || {
        c.enroller
            .renew(counted, &serial, &host, &request.csr, source)
    })
    .await
    {
        Ok(Ok(reply)) => {
            collector.metrics.renewals.fetch_add(1, Relaxed);
            json(200, &reply)
        }
        Ok(Err(e)) => enroll_error(collector, e),
        Err(reply) => reply,
    }
}
