//! The collector sink: batches as NDJSON (lz4 where the collector accepts it, else gzip, by
//! default: see `encoding`) in `POST /v1/ingest` over mutual TLS.
//!
//! Only the collector's `200` reply acknowledges a batch: with TLS 1.3 a refused client sees its
//! writes succeed and learns of the refusal on its first read, so a write proves nothing. The
//! requests go over the blocking HTTP/1.1 client of [`crate::http`], pipelined on one keep-alive
//! connection.
//!
//! The certificate is renewed at `renew_at` (two thirds by default) of its lifetime by a thread of
//! its own, so an idle agent renews too; the files are re-read whenever they change on disk, so a
//! re-enrolment (`log-sensor enroll`) applies to a running agent without a restart (see
//! `certificate`).
//!
//! With several URLs (`sink.urls`) the sink talks to one collector at a time, starting at the
//! host's home URL, and moves to the next when one fails for a reason that says nothing about
//! the batch (see `failover`). Moving is always between batches' tries: whatever was in flight
//! on the lost connection is unacknowledged and sent again, whole, to the next collector, and
//! is committed only once that one acknowledges it. The collectors deduplicate by (host,
//! stream, offset): a JetStream tier stores it once; two embedded collectors each keep their own
//! marks, so a batch whose reply was lost is stored again by the second (at least once across
//! them).

mod certificate;
mod encoding;
mod failover;
mod requests;

use super::{Sink, SinkError};
use crate::batch::Batch;
use crate::config::CollectorOptions;
use crate::http::{HttpConn, HttpError, Response};
use certificate::{renewal_loop, Shared};
use encoding::Encoder;
use failover::Failover;
use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The collector closes connections idle for 75 s; ours are retired before that, so a request
/// never races the server's close.
const MAX_IDLE: Duration = Duration::from_secs(60);
/// Replies owed on the connection before the next request waits for one: a batch cut into
/// thousands of small requests (a low stream cap) would otherwise fill the collector's send
/// buffer with unread replies, stop it reading, and stall both sides until the timeout.
const MAX_OWED: usize = 16;

pub struct CollectorSink {
    /// URL, files and identity, shared with the renewal thread.
    shared: Arc<Shared>,
    /// `sink.compression`, and what the connection's collector accepts.
    encoder: Encoder,
    /// `sink.timeout`.
    timeout: Duration,
    /// The open connection and the certificate generation it was made with.
    conn: Option<(HttpConn, u64)>,
    /// Replies owed on `conn`, per batch submitted and not yet confirmed, oldest first.
    pending: VecDeque<usize>,
    /// Replies already read (all 200) for the oldest of `pending`, to bound those owed.
    read_ahead: usize,
    /// Distinct streams per request, lowered when the collector's limit is lower.
    streams: requests::StreamCap,
    /// NDJSON bytes per request, lowered when the collector's `max_batch_bytes` is lower.
    bytes: requests::ByteCap,
    /// Every request whose reply is owed, oldest first (replies come in order): a 413 says which
    /// request it refuses, and so which record when that request is one line.
    sent: VecDeque<requests::Sent>,
    /// Reused between batches: NDJSON when the batch was not encoded ahead.
    body: Vec<u8>,
    /// Which URL the next connection goes to, and the outage's alert.
    failover: Failover,
    /// `opts.describe()`, for errors and logs.
    name: String,
}

/// Why the sink does not start without its identity, and the fix: files that are not there mean
/// no enrolment yet, which no retry would change.
fn no_identity(e: &crate::tls::TlsError) -> String {
    // The sink does not know its name here: the hint fits `[sink]` and `[sinks.NAME]` alike.
    format!("{e} (run `log-sensor enroll` first, or set the sink's ca, cert and key)")
}

/// Batches in flight: one being stored by the collector while the next one travels. More would
/// only queue in the collector (it handles a connection's requests in order) and cost memory.
const WINDOW: usize = 2;

impl CollectorSink {
    pub fn open(opts: &CollectorOptions) -> Result<CollectorSink, SinkError> {
        let shared = Arc::new(Shared::new(opts));
        let sink = CollectorSink {
            shared: shared.clone(),
            encoder: Encoder::new(opts.compression),
            timeout: opts.timeout,
            conn: None,
            pending: VecDeque::new(),
            read_ahead: 0,
            streams: requests::StreamCap::new(),
            bytes: requests::ByteCap::new(),
            sent: VecDeque::new(),
            body: Vec::new(),
            failover: Failover::new(opts.urls.len(), opts.alert_after, opts.failback_after),
            name: opts.describe(),
        };
        // Missing files are reported at start (not enrolled yet?), rather than as retries.
        shared.identity().map_err(|e| sink.fail(no_identity(&e)))?;
        let weak = Arc::downgrade(&shared);
        std::thread::Builder::new()
            .name("cert-renewal".into())
            .spawn(move || renewal_loop(weak))
            .map_err(|e| sink.fail(format!("cannot start the renewal thread: {e}")))?;
        Ok(sink)
    }

    /// Whether [`CollectorSink::open`] would start: the CA, certificate and key it connects with
    /// load. Reads those files and nothing else, so `log-sensor check` fails where `run` would.
    pub fn check(opts: &CollectorOptions) -> Result<(), SinkError> {
        Shared::new(opts)
            .identity()
            .map(drop)
            .map_err(|e| SinkError::Failed {
                sink: opts.describe(),
                message: no_identity(&e),
            })
    }

    fn fail(&self, message: String) -> SinkError {
        SinkError::Failed {
            sink: self.describe(),
            message,
        }
    }

    /// The URL the next connection goes to.
    fn url(&self) -> &crate::config::Url {
        &self.shared.order[self.failover.current()]
    }

    /// The error for a failure of the current collector that is no reason to stop trying (see
    /// `failover`): the next URL becomes current. `Unavailable` (counted, not alerted) until the
    /// outage outlasts `sink.alert_after`; then once `Failed`, which the shipping loop alerts.
    /// A TLS refusal of a certificate (`refusal`: revoked, expired, an unknown CA) is no stall:
    /// it is alerted at once, once per outage, however the URLs take turns answering it.
    fn away(&mut self, message: String, refusal: Option<&'static str>) -> SinkError {
        let from = self.url().to_string();
        let now = Instant::now();
        let lasted = self.failover.failed(now);
        let alert_refusal = refusal.is_some_and(|r| self.failover.first_refusal(r));
        self.shared
            .current
            .store(self.failover.current(), Ordering::Relaxed);
        let to = self.url().to_string();
        let next = if to == from {
            String::new()
        } else {
            tracing::info!(from = %from, to = %to, error = %message, "collector failed; its batches go to the next collector URL");
            format!("; trying {to} next")
        };
        match lasted {
            _ if alert_refusal => self.fail(format!("{message}{next}")),
            Some(d) => self.fail(format!(
                "{message}{next}; no collector has acknowledged a batch for {:.1}s (sink.alert_after)",
                d.as_secs_f64()
            )),
            None => SinkError::Unavailable {
                sink: self.describe(),
                message: format!("{message}{next}"),
            },
        }
    }

    /// Away from home and its time has come: a new connection to the home URL, kept if it
    /// works. Only between batches (nothing owed on the open connection), so a batch's requests
    /// never straddle two collectors.
    fn try_failback(&mut self, generation: u64) {
        if !self.failover.failback_due(Instant::now()) {
            return;
        }
        let Ok((config, _, _)) = self.shared.identity() else {
            return;
        };
        let home = self.shared.order[0].clone();
        match HttpConn::connect_with(&home, config, self.timeout) {
            Ok(conn) => {
                tracing::info!(home = %home, from = %self.url(), "back on this host's home collector");
                self.failover.failed_back();
                self.shared.current.store(0, Ordering::Relaxed);
                self.conn = Some((conn, generation));
                self.encoder.reconnected();
            }
            Err(e) => {
                self.failover.failback_refused(Instant::now());
                tracing::info!(home = %home, staying_on = %self.url(), error = %e, "home collector still unreachable");
            }
        }
    }

    /// Forgets the connection and everything in flight on it (the caller sends it again).
    fn lost(&mut self) {
        self.conn = None;
        self.pending.clear();
        self.read_ahead = 0;
        self.sent.clear();
    }

    /// The connection to write the next request on: the open one while replies are owed on it
    /// (requests are answered in order on one connection, which keeps the collector's
    /// high-water marks in step); otherwise the open one if still good, or a new one.
    /// `batch_start`: the request is a batch's first, so no reply of this batch is owed yet.
    fn connection(&mut self, batch_start: bool) -> Result<&mut HttpConn, SinkError> {
        let generation = self.shared.generation.load(Ordering::SeqCst);
        let owed = !batch_start || !self.pending.is_empty();
        if !owed {
            self.try_failback(generation);
        }
        let stale = match &mut self.conn {
            _ if owed => false,
            Some((c, g)) => {
                *g != generation
                    || c.closing
                    || c.last_used.elapsed() > MAX_IDLE
                    || c.peer_check().is_err()
            }
            None => true,
        };
        if stale {
            self.conn = None;
            let (config, _, _) = self
                .shared
                .identity()
                .map_err(|e| self.fail(e.to_string()))?;
            // No local refusal of an expired certificate: the collector's clock decides (an agent
            // whose clock runs ahead must not stop itself); its refusal is explained below.
            let conn = match HttpConn::connect_with(self.url(), config, self.timeout) {
                Ok(c) => c,
                Err(e) => {
                    let note = self.expiry_note();
                    return Err(self.away(format!("{e}{note}"), certificate_refusal(&e)));
                }
            };
            self.conn = Some((conn, generation));
            self.encoder.reconnected();
        }
        if self.conn.is_none() {
            return Err(self.fail("connection lost; nothing is committed".into()));
        }
        Ok(&mut self.conn.as_mut().expect("checked above").0)
    }

    /// Names the likely cause of a failure when our certificate has expired by our clock.
    fn expiry_note(&self) -> String {
        match self.shared.identity() {
            Ok((_, _, not_after)) if crate::store::now_secs() >= not_after => format!(
                " (our client certificate {} EXPIRED at {}; re-enrol with `log-sensor enroll`)",
                self.shared.files.cert.display(),
                crate::record::rfc3339_ms(not_after.saturating_mul(1000))
            ),
            _ => String::new(),
        }
    }

    /// Writes one NDJSON piece, encoded as `encoding` says, as a `POST /v1/ingest`;
    /// `batch_start` for a batch's first piece; `sent` describes it.
    fn write_piece(
        &mut self,
        ndjson: &[u8],
        batch_start: bool,
        sent: requests::Sent,
    ) -> Result<(), SinkError> {
        // Connected first: a new connection starts over in the encoding every collector reads.
        self.connection(batch_start)?;
        let result = match self.encoder.encode(ndjson) {
            Ok((body, encoding)) => {
                let mut headers = vec![("Content-Type", "application/x-ndjson")];
                if let Some(name) = encoding.header() {
                    headers.push(("Content-Encoding", name));
                }
                let (conn, _) = self.conn.as_mut().expect("connected above");
                // Owed before it is written: a collector refusing its Content-Length answers
                // before reading it, and the write may then fail under that reply.
                self.sent.push_back(sent);
                conn.write_request("POST", "/v1/ingest", &headers, body)
            }
            Err(e) => {
                let encoding = self.encoder.current();
                return Err(self.fail(format!("cannot encode the body as {encoding:?}: {e}")));
            }
        };
        self.encoder.shrink(64 << 20);
        match result {
            Ok(()) => Ok(()),
            Err(e) => {
                // A refusal of an earlier request closes the connection under this write: its
                // reply, if it made it here, says why better than the broken pipe does; so does
                // a TLS alert refusing our certificate, which TLS 1.3 delivers only after the
                // handshake seemed to succeed. (Not after a timeout: a silent peer would only
                // make us wait a second time.)
                let silent = matches!(e, HttpError::Silent { .. });
                let after = match (&mut self.conn, silent) {
                    (Some((c, _)), false) => Some(c.read_response()),
                    _ => None,
                };
                let refusal = match after {
                    Some(Ok(resp)) if resp.status != 200 => {
                        self.announced(&resp);
                        let request = self.sent.pop_front();
                        Some(self.refused(&resp, request))
                    }
                    Some(Err(tls)) if certificate_refusal(&tls).is_some() => {
                        let note = self.expiry_note();
                        Some(self.away(
                            format!("{tls}{note}; nothing is committed"),
                            certificate_refusal(&tls),
                        ))
                    }
                    _ => None,
                };
                self.lost();
                Err(match refusal {
                    Some(r) => r,
                    None => {
                        let note = self.expiry_note();
                        self.away(
                            format!("{e}{note}; nothing is committed"),
                            certificate_refusal(&e),
                        )
                    }
                })
            }
        }
    }

    /// Takes in what a reply says the collector accepts.
    fn announced(&mut self, resp: &Response) {
        if let Some(now) = self.encoder.announced(resp.accept_encoding.as_deref()) {
            tracing::info!(encoding = ?now, accept_encoding = ?resp.accept_encoding, "request bodies now go in the encoding the collector announces");
        }
    }

    /// The error for a reply other than 200 to `request`.
    fn refused(&mut self, resp: &Response, request: Option<requests::Sent>) -> SinkError {
        let cap_note;
        let code = resp.code();
        let why = match code.as_deref() {
            // Also a proxy's 413, without the collector's JSON: a body too large all the same.
            Some("too_large") | None if resp.status == 413 => {
                cap_note = self.too_large(resp, request);
                &cap_note
            }
            Some("too_many_new_streams") => {
                let limit = resp.number("limit");
                if let Some(cap) = self.streams.lower(limit) {
                    tracing::warn!(
                        limit = ?limit,
                        streams_per_request = cap,
                        "the collector refused a request naming more new streams than its max_new_streams_per_batch; requests now carry at most this many streams each, and the batch is sent again"
                    );
                }
                cap_note = format!(
                    "the batch is sent again in requests of at most {} streams",
                    self.streams.get()
                );
                &cap_note
            }
            Some("certificate_revoked") => {
                "our client certificate is REVOKED; re-enrol with `log-sensor enroll`"
            }
            Some("certificate_expired") => {
                "our client certificate is EXPIRED; re-enrol with `log-sensor enroll`"
            }
            Some("host_mismatch") => {
                "the config's host_id is not the host our certificate was issued for; re-enrol with `log-sensor enroll`"
            }
            Some("unsupported_encoding") => {
                "the collector does not read this sink.compression (an older collector reads only gzip and none; \"auto\" finds what it reads)"
            }
            _ => "the batch was not acknowledged",
        };
        let message = format!(
            "{} replied {} {}: {why}; nothing is committed",
            self.url(),
            resp.status,
            resp.reason()
        );
        // Overloaded, or its storage unavailable (a JetStream tier without quorum): another
        // collector may take the batch. Any other refusal would be the same everywhere.
        if resp.status >= 500 || resp.status == 429 {
            self.away(message, None)
        } else {
            self.fail(message)
        }
    }

    /// What a 413 means for the batch: requests now cut to fit, or, for a request that is one line
    /// already, the record no cut can bring under the collector's limit and how to let it through.
    /// That record is sent again like any refused batch, so it is neither lost nor committed, and
    /// the batches behind it wait until the limit or the source changes.
    fn too_large(&mut self, resp: &Response, request: Option<requests::Sent>) -> String {
        let limit = resp.number("limit");
        // Every reply has its request; were one missing, the whole cap counts as refused.
        let request = request.unwrap_or(requests::Sent {
            bytes: self.bytes.get(),
            lone: None,
        });
        if let Some(cap) = self.bytes.lower(limit, &request) {
            tracing::warn!(
                limit = ?limit,
                bytes_per_request = cap,
                "the collector refused a request larger than its max_batch_bytes; requests now carry at most this many bytes of NDJSON each, and the batch is sent again"
            );
        }
        let Some(record) = &request.lone else {
            return format!(
                "the batch is sent again in requests of at most {} bytes",
                self.bytes.get()
            );
        };
        let stated = match limit {
            Some(n) => format!("its max_batch_bytes is {n}"),
            None => "its reply does not say its max_batch_bytes".into(),
        };
        format!(
            "the record at offset {} of stream {} ({}, source {}) is one NDJSON line of {} bytes, more than the collector takes in a request ({stated}), and no cut makes it smaller: it is sent again as it is, holding back every source shipping to this sink, until the collector's max_batch_bytes is raised above {} or sources.{}.max_record_bytes (max_message_bytes for syslog) is lowered",
            record.offset,
            record.stream,
            record.path,
            record.source,
            request.bytes,
            request.bytes,
            record.source,
        )
    }

    /// Reads one reply; Ok only for the collector's 200.
    fn read_ack(&mut self) -> Result<(), SinkError> {
        let result = match &mut self.conn {
            Some((c, _)) => c.read_response(),
            None => return Err(self.fail("connection lost; nothing is committed".into())),
        };
        let request = self.sent.pop_front();
        if let Ok(resp) = &result {
            self.announced(resp);
        }
        match result {
            Ok(resp) if resp.status == 200 => {
                if let Some((c, _)) = &mut self.conn {
                    c.last_used = Instant::now();
                }
                Ok(())
            }
            Ok(resp) => {
                self.lost();
                Err(self.refused(&resp, request))
            }
            Err(e) => {
                self.lost();
                let note = self.expiry_note();
                Err(self.away(
                    format!("{e}{note}; nothing is committed"),
                    certificate_refusal(&e),
                ))
            }
        }
    }
}

/// What a TLS failure says about a certificate (ours refused, or the collector's not verified),
/// if that is what it is: no stall, and worth an alert at once.
fn certificate_refusal(e: &HttpError) -> Option<&'static str> {
    match e {
        HttpError::Tls { source, .. } => crate::tls::explain(source),
        _ => None,
    }
}

impl Sink for CollectorSink {
    fn encoding(&self) -> super::Encoding {
        super::Encoding::Ndjson
    }

    fn send(&mut self, batch: &Batch) -> Result<(), SinkError> {
        self.submit(batch)?;
        self.confirm()
    }

    fn window(&self) -> usize {
        WINDOW
    }

    fn submit(&mut self, batch: &Batch) -> Result<(), SinkError> {
        if batch.is_empty() {
            self.pending.push_back(0);
            return Ok(());
        }
        // Encoded ahead on the pipeline's thread (see `Sink::encoding`), so that work overlaps
        // the collector's handling of the previous batch; `body` is the fallback.
        let mut scratch = std::mem::take(&mut self.body);
        scratch.clear();
        let ndjson = batch.ndjson(&mut scratch);
        // In order on one connection, each piece a request: the collector answers them in
        // order, so its high-water marks make a re-sent piece harmless, and the batch is
        // acknowledged only once every piece is.
        let mut result = Ok(());
        let mut requests = 0;
        let cut = requests::cut(ndjson, batch, self.bytes.get(), self.streams.get());
        let sent = requests::describe(ndjson, batch, &cut);
        for (r, sent) in cut.into_iter().zip(sent) {
            let owed = self.pending.iter().sum::<usize>() + requests - self.read_ahead;
            if owed >= MAX_OWED {
                result = self.read_ack();
                if result.is_err() {
                    break;
                }
                self.read_ahead += 1;
            }
            result = self.write_piece(&ndjson[r], requests == 0, sent);
            if result.is_err() {
                break;
            }
            requests += 1;
        }
        if scratch.capacity() <= 64 << 20 {
            self.body = scratch;
        }
        if result.is_ok() {
            self.pending.push_back(requests);
        }
        result
    }

    fn confirm(&mut self) -> Result<(), SinkError> {
        let Some(requests) = self.pending.pop_front() else {
            return Ok(());
        };
        let early = self.read_ahead.min(requests);
        self.read_ahead -= early;
        for _ in early..requests {
            self.read_ack()?;
        }
        self.failover.acknowledged();
        tracing::debug!(requests, "batch acknowledged by the collector");
        Ok(())
    }

    fn describe(&self) -> String {
        self.name.clone()
    }

    fn destination(&self) -> Option<super::Destination> {
        (self.shared.order.len() > 1).then(|| super::Destination {
            url: self.url().to_string(),
            failovers: self.failover.failovers(),
        })
    }
}
