//! Replies and request bodies: JSON errors with a code, and reading a body
//! bounded in size and in how long it may stall.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONNECTION, CONTENT_TYPE};
use hyper::{Request, Response, StatusCode};
use serde::Serialize;

pub(super) type Reply = Response<Full<Bytes>>;

#[derive(Serialize)]
pub(super) struct ErrorBody<'a> {
    pub(super) error: String,
    pub(super) code: &'a str,
    /// The limit a refusal is about, as a number an agent can adapt to (`too_many_new_streams`:
    /// `max_new_streams_per_batch`; `too_large`: `max_batch_bytes`), so it need not parse the
    /// message.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) limit: Option<usize>,
}

pub(super) fn json<T: Serialize>(status: u16, body: &T) -> Reply {
    let bytes = serde_json::to_vec(body).expect("serialisable reply");
    Response::builder()
        .status(StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
        .header(CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(bytes)))
        .expect("valid response")
}

pub(super) fn error(status: u16, code: &str, message: impl ToString) -> Reply {
    json(
        status,
        &ErrorBody {
            error: message.to_string(),
            code,
            limit: None,
        },
    )
}

/// 413 `too_large`, with `max_batch_bytes` as `limit`: an agent then cuts its batches into
/// requests that fit, rather than sending the refused one again for ever.
pub(super) fn too_large(limit: u64, message: impl ToString) -> Reply {
    json(
        413,
        &ErrorBody {
            error: message.to_string(),
            code: "too_large",
            limit: Some(limit as usize),
        },
    )
}

pub(super) fn text(status: u16, content_type: &str, body: String) -> Reply {
    Response::builder()
        .status(status)
        .header(CONTENT_TYPE, content_type)
        .body(Full::new(Bytes::from(body)))
        .expect("valid response")
}

/// Reads a whole (small) body into one `Vec`, sized up front from
/// Content-Length (which `Limited` caps at `limit`), so each frame is
/// copied once.
pub(super) async fn read_body(
    req: Request<Incoming>,
    limit: usize,
    stall: Duration,
) -> Result<Vec<u8>, Reply> {
    let mut body = Limited::new(req.into_body(), limit);
    let expected = hyper::body::Body::size_hint(&body).lower();
    let mut out = Vec::with_capacity(usize::try_from(expected).unwrap_or(limit).min(limit));
    while let Some(data) = next_data(&mut body, limit as u64, stall).await? {
        out.extend_from_slice(&data);
    }
    Ok(out)
}

/// The body's next bytes, None at its end; the reply when it is too large,
/// broken, or silent for `stall` (`body_timeout_secs`: a client trickling
/// nothing holds no task, slot or descriptor for longer).
pub(super) async fn next_data(
    body: &mut Limited<Incoming>,
    limit: u64,
    stall: Duration,
) -> Result<Option<Bytes>, Reply> {
    loop {
        let Ok(next) = tokio::time::timeout(stall, body.frame()).await else {
            let mut reply = error(
                408,
                "body_timeout",
                format!("no body bytes for {}s (body_timeout_secs)", stall.as_secs()),
            );
            reply
                .headers_mut()
                .insert(CONNECTION, HeaderValue::from_static("close"));
            return Err(reply);
        };
        match next {
            None => return Ok(None),
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    return Ok(Some(data));
                }
            }
            Some(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
                return Err(too_large(limit, format!("body larger than {limit} bytes")))
            }
            Some(Err(e)) => return Err(error(400, "bad_body", format!("reading body: {e}"))),
        }
    }
}

/// Runs blocking work (argon2, fsync) off the async workers.
pub(super) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, Reply> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| error(500, "internal", format!("worker failed: {e}")))
}
