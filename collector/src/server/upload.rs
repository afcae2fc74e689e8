//! `/v1/ingest`: a batch's body read here and parsed and stored on a
//! blocking thread as it arrives, acknowledged once durable.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Limited;
use hyper::body::Incoming;
use hyper::header::CONTENT_ENCODING;
use hyper::Request;
use serde::Serialize;
use tokio::sync::mpsc;

use super::reply::{error, json, next_data, too_large, ErrorBody, Reply};
use super::Collector;
use crate::db::CertState;
use crate::ingest::{read_batch_with, BodyCut, IngestError};
use crate::metrics::Metrics;
use crate::storage::jetstream::JetStreamError;
use crate::storage::{StoreError, StoreOutcome};
use crate::tls::PeerIdentity;

/// Counts a batch in `batches_in_progress` while it lives.
struct InProgress(Arc<Metrics>);

impl InProgress {
    fn count(metrics: &Arc<Metrics>) -> InProgress {
        metrics.batches_in_progress.fetch_add(1, Relaxed);
        InProgress(Arc::clone(metrics))
    }
}

impl Drop for InProgress {
    fn drop(&mut self) {
        self.0.batches_in_progress.fetch_sub(1, Relaxed);
    }
}

/// A piece of an ingest body on its way to the worker parsing it; `End`
/// says the body arrived whole (without it the worker stores nothing).
enum Piece {
    Data(Vec<Bytes>),
    End,
}

/// Hands the body's frames to the worker in pieces of at least this much:
/// a wake-up per TLS record would cost more than the parsing it overlaps.
const PIECE: usize = 256 * 1024;

/// Reads the body and hands it over. Err is the reply when the body was too
/// large, broken, or stopped arriving for `stall`; Ok also when the worker
/// stopped taking it (its result says why).
async fn pump_body(
    mut body: Limited<Incoming>,
    limit: u64,
    stall: Duration,
    tx: mpsc::Sender<Piece>,
) -> Result<(), Reply> {
    let mut group = Vec::new();
    let mut size = 0;
    while let Some(data) = next_data(&mut body, limit, stall).await? {
        size += data.len();
        group.push(data);
        if size >= PIECE {
            size = 0;
            if tx
                .send(Piece::Data(std::mem::take(&mut group)))
                .await
                .is_err()
            {
                return Ok(());
            }
        }
    }
    if !group.is_empty() && tx.send(Piece::Data(group)).await.is_err() {
        return Ok(());
    }
    let _ = tx.send(Piece::End).await;
    Ok(())
}

/// The worker's side of the body: `Read` over the pieces as they come.
struct Pieces {
    rx: mpsc::Receiver<Piece>,
    queue: std::collections::VecDeque<Bytes>,
    ended: bool,
}

impl Pieces {
    fn new(rx: mpsc::Receiver<Piece>) -> Pieces {
        Pieces {
            rx,
            queue: Default::default(),
            ended: false,
        }
    }
}

impl std::io::BufRead for Pieces {
    fn fill_buf(&mut self) -> std::io::Result<&[u8]> {
        while self.queue.is_empty() && !self.ended {
            match self.rx.blocking_recv() {
                Some(Piece::Data(pieces)) => self
                    .queue
                    .extend(pieces.into_iter().filter(|b| !b.is_empty())),
                Some(Piece::End) => self.ended = true,
                None => return Err(std::io::Error::other(BodyCut)),
            }
        }
        Ok(self.queue.front().map_or(&[][..], |b| &b[..]))
    }

    fn consume(&mut self, n: usize) {
        if let Some(front) = self.queue.front_mut() {
            bytes::Buf::advance(front, n);
            if front.is_empty() {
                self.queue.pop_front();
            }
        }
    }
}

impl std::io::Read for Pieces {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        use std::io::BufRead;
        let chunk = self.fill_buf()?;
        let n = chunk.len().min(buf.len());
        buf[..n].copy_from_slice(&chunk[..n]);
        self.consume(n);
        Ok(n)
    }
}

/// Reply to an acknowledged batch.
#[derive(Serialize)]
struct IngestReply {
    /// Records in the batch.
    records: usize,
    /// Newly stored.
    stored: usize,
    /// At or below their stream's mark: acknowledged, not stored again.
    duplicates: usize,
}

#[derive(Debug, thiserror::Error)]
enum IngestFailure {
    #[error("certificate is revoked")]
    Revoked,
    #[error(transparent)]
    Ingest(#[from] IngestError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// `Retry-After` when the cluster has no room for another open batch: a
/// batch stays open for the milliseconds of its publish, so room comes
/// back quickly.
const OPEN_BATCHES_RETRY_SECS: u64 = 1;

pub(super) async fn ingest(
    collector: &Arc<Collector>,
    id: &PeerIdentity,
    req: Request<Incoming>,
) -> Reply {
    // A body announced larger than the limit is refused before a byte of it is read: reading
    // on would only hold a slot until the limit was passed (or, for a sender that never sends
    // it, until `body_timeout_secs`). The rest of it is not read, so the connection closes.
    let limit = collector.config.max_batch_bytes;
    let announced = hyper::body::Body::size_hint(req.body()).lower();
    if announced > limit {
        collector.metrics.batches_refused.fetch_add(1, Relaxed);
        let mut reply = too_large(
            limit,
            format!("body larger than {limit} bytes (Content-Length {announced})"),
        );
        reply.headers_mut().insert(
            hyper::header::CONNECTION,
            hyper::header::HeaderValue::from_static("close"),
        );
        return reply;
    }
    // Taken before the body is read: waiting senders hold no memory here.
    // The host's own permit first, so a host waiting on itself holds no
    // global slot.
    let Ok(_host_slot) = collector.host_slots(&id.host).acquire_owned().await else {
        return error(503, "shutting_down", "collector is shutting down");
    };
    let Ok(_slot) = collector.ingest_slots.acquire().await else {
        return error(503, "shutting_down", "collector is shutting down");
    };
    let _in_progress = InProgress::count(&collector.metrics);
    let encoding = req
        .headers()
        .get(CONTENT_ENCODING)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    // The body is read here and parsed on a blocking thread as it arrives.
    let body = Limited::new(req.into_body(), limit as usize);
    let sent = hyper::body::Body::size_hint(&body).lower();
    let (tx, rx) = mpsc::channel(4);
    let c = Arc::clone(collector);
    let (serial, host) = (id.serial.clone(), id.host.clone());
    let work = tokio::task::spawn_blocking(
        move || -> Result<(usize, usize, StoreOutcome), IngestFailure> {
            // The cached revoked set may be half a second old; the store
            // is not.
            if c.store.cert_state(&serial)? == CertState::Revoked {
                return Err(IngestFailure::Revoked);
            }
            // Records are written as their pieces are parsed, and cut back
            // off if the body fails later; durable and indexed only at the
            // commit.
            let mut writing = c.store.begin(&host)?;
            let batch = read_batch_with(
                Pieces::new(rx),
                encoding.as_deref(),
                limit,
                sent,
                &host,
                |body, streams| writing.append(body, streams).map_err(IngestFailure::from),
            )?;
            writing.append(&batch.body, &batch.streams)?;
            let bytes = batch.body.len();
            let outcome = writing.commit()?;
            for alert in &outcome.alerts {
                c.metrics.alerts.fetch_add(1, Relaxed);
                tracing::warn!(host = %alert.host_id, stream = %alert.stream, offset = alert.at_offset, count = alert.count, "over-length streak");
                if let Err(e) = c.alert_log.write(alert) {
                    tracing::error!(error = %e, "cannot write alert");
                }
            }
            Ok((batch.record_count, bytes, outcome))
        },
    );
    let stall = Duration::from_secs(collector.config.body_timeout_secs);
    let pumped = pump_body(body, limit, stall, tx).await;
    let result = work
        .await
        .map_err(|e| error(500, "internal", format!("worker failed: {e}")));
    if let Err(reply) = pumped {
        // The worker saw the body cut short and stored nothing.
        collector.metrics.batches_refused.fetch_add(1, Relaxed);
        return reply;
    }
    let m = &collector.metrics;
    match result {
        Ok(Ok((records, bytes, outcome))) => {
            m.batches.fetch_add(1, Relaxed);
            m.records.fetch_add(records as u64, Relaxed);
            m.records_stored.fetch_add(outcome.stored as u64, Relaxed);
            m.duplicates.fetch_add(outcome.duplicates as u64, Relaxed);
            m.bytes.fetch_add(bytes as u64, Relaxed);
            json(
                200,
                &IngestReply {
                    records,
                    stored: outcome.stored,
                    duplicates: outcome.duplicates,
                },
            )
        }
        Ok(Err(e)) => {
            m.batches_refused.fetch_add(1, Relaxed);
            match e {
                IngestFailure::Revoked => {
                    error(403, "certificate_revoked", "certificate is revoked")
                }
                IngestFailure::Store(e @ StoreError::TooManyNewStreams { limit, .. }) => {
                    tracing::info!(host = %id.host, error = %e, "batch refused");
                    json(
                        400,
                        &ErrorBody {
                            error: e.to_string(),
                            code: "too_many_new_streams",
                            limit: Some(limit),
                        },
                    )
                }
                IngestFailure::Store(
                    e @ StoreError::JetStream(JetStreamError::TooManyOpenBatches { .. }),
                ) => {
                    tracing::info!(host = %id.host, error = %e, "batch refused for now");
                    let mut reply = error(503, "too_many_open_batches", e);
                    reply
                        .headers_mut()
                        .insert(hyper::header::RETRY_AFTER, OPEN_BATCHES_RETRY_SECS.into());
                    reply
                }
                IngestFailure::Ingest(e) if e.status() == 413 => {
                    tracing::info!(host = %id.host, error = %e, "batch refused");
                    too_large(collector.config.max_batch_bytes, e)
                }
                IngestFailure::Ingest(e) => {
                    let code = match e.status() {
                        403 => "host_mismatch",
                        413 => "too_large",
                        415 => "unsupported_encoding",
                        _ => "bad_batch",
                    };
                    tracing::info!(host = %id.host, error = %e, "batch refused");
                    error(e.status(), code, e)
                }
                e => {
                    tracing::error!(host = %id.host, error = %e, "cannot store batch");
                    error(500, "storage", e)
                }
            }
        }
        Err(reply) => reply,
    }
}
