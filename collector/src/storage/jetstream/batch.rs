//! One batch into JetStream: its records gathered as the body arrives,
//! then, at the commit, one atomic publish of the records above each
//! stream's mark, the moved marks and the alerts, retried after re-reading
//! the marks whenever another collector moved one first.

use std::ops::Range;

use async_nats::HeaderMap;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::api::{self, code, ApiError};
use super::{JetStream, JetStreamError, MAX_BATCH_MESSAGES};
use crate::alerts::Streak;
use crate::db::AlertRow;
use crate::ingest::{path_of_line, Part, StreamRecords};
use crate::names::encode_subject_token;
use crate::storage::{BatchWrite, StoreError, StoreOutcome};
use log_sensor_common::clock::now_secs as unix_now;

/// Commits tried before the batch is refused as contended: each lost race
/// means another collector stored some of these records, so a handful
/// always suffices unless the same batch is being sent everywhere at once.
const MAX_TRIES: u32 = 16;
/// Commits whose answer did not come that are tried again: one covers a
/// leader election; past that the cluster is down or without quorum, and
/// the agent (which keeps the batch) is told so.
const MAX_TIMEOUTS: u32 = 1;
/// Before re-reading marks that a write still being replicated holds
/// (error 10164): the milliseconds a commit takes with a quorum.
const IN_FLIGHT_PAUSE: std::time::Duration = std::time::Duration::from_millis(20);

/// Headers on every record message, for consumers: the host and stream
/// (encoded as in the subject, so no id can inject a header line) and the
/// offsets the message covers, to deduplicate on.
pub const HOST_HEADER: &str = "Log-Sensor-Host";
pub const STREAM_HEADER: &str = "Log-Sensor-Stream";
pub const FIRST_OFFSET_HEADER: &str = "Log-Sensor-First-Offset";
pub const LAST_OFFSET_HEADER: &str = "Log-Sensor-Last-Offset";
pub const RECORDS_HEADER: &str = "Log-Sensor-Records";

/// A stream's mark as stored on its mark subject.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Mark {
    /// Offset of the last stored record.
    high_water: u64,
    streak: u64,
    alerted: bool,
}

/// One stream's records in the batch, copied out of the body (which is
/// gone by the commit).
struct Pending {
    stream: String,
    /// The agent's lines, each followed by `\n`.
    lines: Vec<u8>,
    /// Offset, part and the line's range in `lines` (without the `\n`).
    records: Vec<(u64, Part, Range<usize>)>,
    /// Of the stream's records in the batch, how many were taken.
    seen: usize,
}

/// A batch being gathered; see the module's introduction.
pub struct JsBatch<'s> {
    js: &'s JetStream,
    host: String,
    pending: Vec<Pending>,
}

/// A message of an atomic batch.
pub(super) struct Outgoing {
    pub(super) subject: String,
    pub(super) headers: HeaderMap,
    pub(super) body: Bytes,
}

/// What one try at the commit would store.
struct Plan {
    messages: Vec<Outgoing>,
    outcome: StoreOutcome,
}

impl<'s> JsBatch<'s> {
    pub(super) fn new(js: &'s JetStream, host: &str) -> JsBatch<'s> {
        JsBatch {
            js,
            host: host.to_owned(),
            pending: Vec::new(),
        }
    }

    /// Takes the records of `streams` not seen yet.
    pub fn take(&mut self, body: &[u8], streams: &[StreamRecords]) {
        for (i, sr) in streams.iter().enumerate() {
            if self.pending.len() <= i {
                self.pending.push(Pending {
                    stream: sr.stream.clone(),
                    lines: Vec::new(),
                    records: Vec::new(),
                    seen: 0,
                });
            }
            let p = &mut self.pending[i];
            for r in &sr.records[p.seen..] {
                let start = p.lines.len();
                p.lines.extend_from_slice(&body[r.line.clone()]);
                p.records.push((r.offset, r.part, start..p.lines.len()));
                p.lines.push(b'\n');
            }
            p.seen = sr.records.len();
        }
    }

    /// Stores the batch; see the module's introduction.
    pub fn store(self) -> Result<StoreOutcome, JetStreamError> {
        let js = self.js;
        js.block(async {
            let mut timeouts = 0;
            let mut unanswered = None;
            for _ in 0..MAX_TRIES {
                let marks = self.read_marks().await?;
                let plan = self.plan(&marks)?;
                if plan.messages.is_empty() {
                    return Ok(plan.outcome);
                }
                match publish_atomic(js, &js.names.stream, plan.messages).await {
                    Ok(()) => return Ok(plan.outcome),
                    // Another collector moved a mark first, or the cluster
                    // did not answer and the batch may or may not be
                    // stored: the marks read next say which records remain.
                    Err(e @ ApiError::Timeout { .. }) if timeouts < MAX_TIMEOUTS => {
                        timeouts += 1;
                        tracing::debug!(host = %self.host, error = %e, "batch retried after re-reading marks");
                        unanswered = Some(e);
                    }
                    Err(e) if is_conflict(&e) => {
                        tracing::debug!(host = %self.host, error = %e, "batch retried after re-reading marks");
                        // A write to one of these marks is still being
                        // replicated: re-read at once, the marks would be
                        // the same.
                        if e.err_code() == Some(code::WRONG_LAST_SEQUENCE_CLUSTERED) {
                            tokio::time::sleep(IN_FLIGHT_PAUSE).await;
                        }
                    }
                    // Refused before anything was staged: a limit of the
                    // moment, which the sender is told to retry after.
                    Err(e) if e.err_code() == Some(code::TOO_MANY_OPEN_BATCHES) => {
                        return Err(JetStreamError::TooManyOpenBatches {
                            stream: js.names.stream.clone(),
                        })
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            // Our own commit went unanswered and the tries since kept
            // finding a write in flight: most likely that very commit,
            // waiting for a quorum. Say so rather than blame a race.
            if let Some(e) = unanswered {
                return Err(e.into());
            }
            Err(JetStreamError::Contended {
                host: self.host.clone(),
                tries: MAX_TRIES,
            })
        })
    }

    /// Each stream's mark and the sequence it is stored at (0: none yet,
    /// which `Nats-Expected-Last-Subject-Sequence: 0` expects).
    async fn read_marks(&self) -> Result<Vec<(u64, Option<Mark>)>, JetStreamError> {
        let js = self.js;
        let mut marks = Vec::with_capacity(self.pending.len());
        for p in &self.pending {
            let subject = js.names.mark(&self.host, &p.stream);
            let last =
                api::last_on_subject(&js.client, &js.names.stream, &subject, js.timeout).await?;
            marks.push(match last {
                None => (0, None),
                Some((seq, data)) => {
                    let mark = serde_json::from_slice(&data).map_err(|e| ApiError::BadAnswer {
                        what: format!("the mark on {subject}"),
                        detail: e.to_string(),
                    })?;
                    (seq, Some(mark))
                }
            });
        }
        Ok(marks)
    }

    /// The messages that store what is above each mark, and what that does.
    fn plan(&self, marks: &[(u64, Option<Mark>)]) -> Result<Plan, JetStreamError> {
        let js = self.js;
        let mut plan = Plan {
            messages: Vec::new(),
            outcome: StoreOutcome::default(),
        };
        for (p, (seq, mark)) in self.pending.iter().zip(marks) {
            let mut high_water = mark.map(|m| m.high_water);
            let mut streak = mark.map_or(Streak::default(), |m| Streak {
                count: m.streak,
                alerted: m.alerted,
            });
            let mut chunk = Chunk::default();
            let mut moved = false;
            for (offset, part, line) in &p.records {
                if high_water.is_some_and(|h| *offset <= h) {
                    plan.outcome.duplicates += 1;
                    continue;
                }
                let len = line.len() + 1;
                if len > js.max_body {
                    return Err(JetStreamError::RecordTooLarge {
                        host: self.host.clone(),
                        stream: p.stream.clone(),
                        offset: *offset,
                        len,
                        limit: js.max_body,
                    });
                }
                if chunk.body.len() + len > js.max_body {
                    plan.messages.push(chunk.finish(js, &self.host, &p.stream));
                    chunk = Chunk::default();
                }
                chunk.push(*offset, &p.lines[line.start..line.end + 1]);
                plan.outcome.stored += 1;
                plan.outcome.bytes_written += len as u64;
                high_water = Some(*offset);
                moved = true;
                if streak.observe(*part, js.alert_after) {
                    let alert = AlertRow {
                        at: unix_now(),
                        kind: "overlong_streak",
                        host_id: self.host.clone(),
                        stream: p.stream.clone(),
                        path: path_of_line(&p.lines[line.clone()]),
                        at_offset: *offset,
                        count: streak.count,
                    };
                    plan.messages.push(alert_message(js, &alert));
                    plan.outcome.alerts.push(alert);
                }
            }
            if !chunk.body.is_empty() {
                plan.messages.push(chunk.finish(js, &self.host, &p.stream));
            }
            if moved {
                let mark = Mark {
                    high_water: high_water.expect("moved means a record was stored"),
                    streak: streak.count,
                    alerted: streak.alerted,
                };
                let mut headers = HeaderMap::new();
                headers.insert("Nats-Expected-Last-Subject-Sequence", seq.to_string());
                // Only the newest mark of a stream is kept.
                headers.insert("Nats-Rollup", "sub");
                plan.messages.push(Outgoing {
                    subject: js.names.mark(&self.host, &p.stream),
                    headers,
                    body: serde_json::to_vec(&mark).expect("a mark serialises").into(),
                });
            }
        }
        if plan.messages.len() > MAX_BATCH_MESSAGES {
            return Err(JetStreamError::BatchTooLarge {
                needed: plan.messages.len(),
                limit: MAX_BATCH_MESSAGES,
            });
        }
        Ok(plan)
    }
}

/// Records of one stream gathered into one message.
#[derive(Default)]
struct Chunk {
    body: Vec<u8>,
    first: u64,
    last: u64,
    count: usize,
}

impl Chunk {
    fn push(&mut self, offset: u64, line_and_newline: &[u8]) {
        if self.count == 0 {
            self.first = offset;
        }
        self.last = offset;
        self.count += 1;
        self.body.extend_from_slice(line_and_newline);
    }

    fn finish(self, js: &JetStream, host: &str, stream: &str) -> Outgoing {
        let mut headers = HeaderMap::new();
        headers.insert(HOST_HEADER, encode_subject_token(host));
        headers.insert(STREAM_HEADER, encode_subject_token(stream));
        headers.insert(FIRST_OFFSET_HEADER, self.first.to_string());
        headers.insert(LAST_OFFSET_HEADER, self.last.to_string());
        headers.insert(RECORDS_HEADER, self.count.to_string());
        Outgoing {
            subject: js.names.records(host, stream),
            headers,
            body: self.body.into(),
        }
    }
}

fn alert_message(js: &JetStream, alert: &AlertRow) -> Outgoing {
    let body = serde_json::json!({
        "at": alert.at,
        "kind": alert.kind,
        "host_id": alert.host_id,
        "stream": alert.stream,
        "path": alert.path,
        "at_offset": alert.at_offset,
        "count": alert.count,
    });
    Outgoing {
        subject: js.names.alert(&alert.host_id, &alert.stream),
        headers: HeaderMap::new(),
        body: serde_json::to_vec(&body).expect("JSON serialises").into(),
    }
}

pub(super) fn is_conflict(e: &ApiError) -> bool {
    matches!(
        e.err_code(),
        Some(code::WRONG_LAST_SEQUENCE | code::WRONG_LAST_SEQUENCE_CLUSTERED)
    )
}

/// Publishes `messages` as one atomic batch (ADR-50): the first as a
/// request (the server answers when the batch is open), the middle ones
/// plainly, the last with `Nats-Batch-Commit` as a request whose answer is
/// the batch's acknowledgement, checked to be `stream`'s for this batch.
/// A fresh batch id per try, so a try whose answer was lost can never be
/// completed by the next.
pub(super) async fn publish_atomic(
    js: &JetStream,
    stream: &str,
    messages: Vec<Outgoing>,
) -> Result<(), ApiError> {
    let id = batch_id();
    let n = messages.len();
    for (i, mut m) in messages.into_iter().enumerate() {
        m.headers.insert("Nats-Batch-Id", id.as_str());
        m.headers.insert("Nats-Batch-Sequence", (i + 1).to_string());
        let last = i + 1 == n;
        if last {
            m.headers.insert("Nats-Batch-Commit", "1");
        }
        if i == 0 || last {
            let what = if last {
                format!("committing a batch of {n} messages")
            } else {
                "opening a batch".to_owned()
            };
            let answer = api::request_raw(
                &js.client,
                &what,
                m.subject,
                Some(m.headers),
                m.body,
                js.timeout,
            )
            .await?;
            if last {
                check_commit_ack(&what, &answer, stream, &id, n)?;
            } else if !answer.is_empty() {
                // The server stages an opening message with an empty
                // answer; anything else is an error, or not the server.
                api::parse(&what, &answer)?;
                return Err(ApiError::BadAnswer {
                    what,
                    detail: format!(
                        "expected an empty answer, got {}",
                        String::from_utf8_lossy(&answer[..answer.len().min(200)])
                    ),
                });
            }
        } else {
            js.client
                .publish_with_headers(m.subject, m.headers, m.body)
                .await
                .map_err(|source| ApiError::Publish {
                    what: "publishing a batch message".to_owned(),
                    source,
                })?;
        }
    }
    Ok(())
}

/// The acknowledgement a committed atomic batch gets (the server's
/// `JSPubAckResponse` with `batch` and `count`, ADR-50).
#[derive(Deserialize)]
struct BatchAck {
    stream: String,
    seq: u64,
    batch: String,
    count: usize,
}

/// Accepts `answer` only as the acknowledgement of this very batch: a
/// JetStream error is returned as such, and anything else that is not a
/// PubAck naming our stream, our batch id and all `count` messages (a
/// plain PubAck, `{}`, a reply from something that is not the stream) is
/// refused, since taking it for an acknowledgement would tell the agent
/// its records are stored when nothing says so.
pub(super) fn check_commit_ack(
    what: &str,
    answer: &[u8],
    stream: &str,
    batch: &str,
    count: usize,
) -> Result<u64, ApiError> {
    let value = api::parse(what, answer)?;
    let bad = |detail: String| ApiError::BadAnswer {
        what: what.to_owned(),
        detail,
    };
    let ack: BatchAck = serde_json::from_value(value.clone())
        .map_err(|e| bad(format!("not a batch acknowledgement ({e}): {value}")))?;
    if ack.stream != stream || ack.batch != batch || ack.count != count || ack.seq == 0 {
        return Err(bad(format!(
            "acknowledges stream {:?} batch {:?} of {} messages at seq {}, not stream {stream:?} batch {batch:?} of {count}",
            ack.stream, ack.batch, ack.count, ack.seq
        )));
    }
    Ok(ack.seq)
}

fn batch_id() -> String {
    use rand::Rng;
    let mut rng = rand::rng();
    (0..22)
        .map(|_| char::from(b"0123456789abcdefghijklmnopqrstuvwxyz"[rng.random_range(0..36)]))
        .collect()
}

impl BatchWrite for JsBatch<'_> {
    fn append(&mut self, body: &[u8], streams: &[StreamRecords]) -> Result<(), StoreError> {
        self.take(body, streams);
        Ok(())
    }

    fn commit(self: Box<Self>) -> Result<StoreOutcome, StoreError> {
        Ok(self.store()?)
    }
}

impl Drop for JsBatch<'_> {
    fn drop(&mut self) {
        self.js.done(&self.host);
    }
}
