//! The few JetStream API calls the backend makes, spoken as the JSON
//! requests of the server's `$JS.API` (ADR-1 and the server's
//! `jetstream_api.go` define them), over the core NATS client.

use std::time::Duration;

use async_nats::{Client, HeaderMap};
use base64::Engine;
use bytes::Bytes;
use serde::Deserialize;
use serde_json::Value;

/// JetStream's error codes the backend acts on (the server's
/// `errors.json`).
pub mod code {
    /// `stream not found`.
    pub const STREAM_NOT_FOUND: u64 = 10059;
    /// `no message found`.
    pub const NO_MESSAGE: u64 = 10037;
    /// `wrong last sequence: N` (an expected-last-subject-sequence check).
    pub const WRONG_LAST_SEQUENCE: u64 = 10071;
    /// `wrong last sequence` as a clustered stream reports some races.
    pub const WRONG_LAST_SEQUENCE_CLUSTERED: u64 = 10164;
    /// `atomic publish too many inflight`: the stream has
    /// `max_inflight_per_stream` atomic batches open (50 by default), or
    /// the server `max_inflight_total` (1,000).
    pub const TOO_MANY_OPEN_BATCHES: u64 = 10210;
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The request got no answer in time (a leader election, a lost
    /// server, no quorum): its effect is unknown.
    #[error("{what}: no answer from the NATS cluster within {timeout:?}")]
    Timeout { what: String, timeout: Duration },
    #[error("{what}: {source}")]
    Request {
        what: String,
        source: async_nats::RequestError,
    },
    #[error("{what}: {source}")]
    Publish {
        what: String,
        source: async_nats::PublishError,
    },
    /// JetStream answered with an error.
    #[error("{what}: JetStream error {err_code} ({code}): {description}")]
    JetStream {
        what: String,
        code: u64,
        err_code: u64,
        description: String,
    },
    #[error("{what}: unreadable answer: {detail}")]
    BadAnswer { what: String, detail: String },
}

impl ApiError {
    /// JetStream's own error code, if it answered with one.
    pub fn err_code(&self) -> Option<u64> {
        match self {
            ApiError::JetStream { err_code, .. } => Some(*err_code),
            _ => None,
        }
    }
}

#[derive(Deserialize)]
struct ErrorBody {
    #[serde(default)]
    code: u64,
    #[serde(default)]
    err_code: u64,
    #[serde(default)]
    description: String,
}

/// Sends `payload` to `subject` and parses the JSON answer, turning
/// JetStream's `{"error": …}` into [`ApiError::JetStream`].
pub async fn request(
    client: &Client,
    what: &str,
    subject: String,
    headers: Option<HeaderMap>,
    payload: Bytes,
    timeout: Duration,
) -> Result<Value, ApiError> {
    let answer = request_raw(client, what, subject, headers, payload, timeout).await?;
    parse(what, &answer)
}

/// Sends `payload` to `subject` and returns the answer's body unread.
pub async fn request_raw(
    client: &Client,
    what: &str,
    subject: String,
    headers: Option<HeaderMap>,
    payload: Bytes,
    timeout: Duration,
) -> Result<Bytes, ApiError> {
    // "No responders": nothing took the message, so sending it again is safe. A stream's
    // server answers so for a moment while a new or moved stream's interest reaches it (seen
    // on a fresh R3 cluster under load); nats.go's JetStream publish retries it likewise
    // (js.go: DefaultPubRetryAttempts 2, DefaultPubRetryWait 250 ms).
    let mut tries = 0;
    let reply = loop {
        let mut req = async_nats::Request::new()
            .payload(payload.clone())
            .timeout(Some(timeout));
        if let Some(h) = &headers {
            req = req.headers(h.clone());
        }
        match client.send_request(subject.clone(), req).await {
            Err(e) if e.kind() == async_nats::RequestErrorKind::NoResponders && tries < 2 => {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            other => break other,
        }
    };
    let reply = reply.map_err(|source| {
        if source.kind() == async_nats::RequestErrorKind::TimedOut {
            ApiError::Timeout {
                what: what.to_owned(),
                timeout,
            }
        } else {
            ApiError::Request {
                what: what.to_owned(),
                source,
            }
        }
    })?;
    Ok(reply.payload)
}

/// An API answer as JSON, or the JetStream error it carries.
pub fn parse(what: &str, payload: &[u8]) -> Result<Value, ApiError> {
    let value: Value = serde_json::from_slice(payload).map_err(|e| ApiError::BadAnswer {
        what: what.to_owned(),
        detail: format!(
            "{e}: {}",
            String::from_utf8_lossy(&payload[..payload.len().min(200)])
        ),
    })?;
    if let Some(err) = value.get("error") {
        let e: ErrorBody =
            serde_json::from_value(err.clone()).map_err(|e| ApiError::BadAnswer {
                what: what.to_owned(),
                detail: e.to_string(),
            })?;
        return Err(ApiError::JetStream {
            what: what.to_owned(),
            code: e.code,
            err_code: e.err_code,
            description: e.description,
        });
    }
    Ok(value)
}

/// The last message stored on `subject`, with its stream sequence; None
/// when the subject holds none. Asked of the stream's leader
/// (`STREAM.MSG.GET`), so it is never older than the last acknowledged
/// publish.
pub async fn last_on_subject(
    client: &Client,
    stream: &str,
    subject: &str,
    timeout: Duration,
) -> Result<Option<(u64, Vec<u8>)>, ApiError> {
    let what = format!("reading the last message on {subject}");
    let body = serde_json::to_vec(&serde_json::json!({ "last_by_subj": subject }))
        .expect("a JSON object serialises");
    let answer = match request(
        client,
        &what,
        format!("$JS.API.STREAM.MSG.GET.{stream}"),
        None,
        body.into(),
        timeout,
    )
    .await
    {
        Ok(v) => v,
        Err(e) if e.err_code() == Some(code::NO_MESSAGE) => return Ok(None),
        Err(e) => return Err(e),
    };
    let bad = |detail: &str| ApiError::BadAnswer {
        what: what.clone(),
        detail: detail.to_owned(),
    };
    let message = answer.get("message").ok_or_else(|| bad("no message"))?;
    let seq = message
        .get("seq")
        .and_then(Value::as_u64)
        .ok_or_else(|| bad("no seq"))?;
    let data = match message.get("data").and_then(Value::as_str) {
        Some(b64) => base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map_err(|e| bad(&e.to_string()))?,
        None => Vec::new(),
    };
    Ok(Some((seq, data)))
}

/// Publishes one message and waits for its acknowledgement; returns the
/// sequence it was stored at.
pub async fn publish(
    client: &Client,
    what: &str,
    subject: String,
    headers: HeaderMap,
    body: Bytes,
    timeout: Duration,
) -> Result<u64, ApiError> {
    let ack = request(client, what, subject, Some(headers), body, timeout).await?;
    ack.get("seq")
        .and_then(Value::as_u64)
        .ok_or_else(|| ApiError::BadAnswer {
            what: what.to_owned(),
            detail: format!("no seq in {ack}"),
        })
}

/// The subjects of `stream` matching `filter` that hold a message, read
/// from the stream's state page by page.
pub async fn subjects(
    client: &Client,
    stream: &str,
    filter: &str,
    timeout: Duration,
) -> Result<Vec<String>, ApiError> {
    let what = format!("listing {filter}");
    let mut out = Vec::new();
    loop {
        let body = serde_json::to_vec(&serde_json::json!({
            "subjects_filter": filter,
            "offset": out.len(),
        }))
        .expect("a JSON object serialises");
        let info = request(
            client,
            &what,
            format!("$JS.API.STREAM.INFO.{stream}"),
            None,
            body.into(),
            timeout,
        )
        .await?;
        let page: Vec<String> = info["state"]["subjects"]
            .as_object()
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default();
        let total = info["total"].as_u64().unwrap_or(0) as usize;
        if page.is_empty() {
            return Ok(out);
        }
        out.extend(page);
        if out.len() >= total {
            return Ok(out);
        }
    }
}
