//! `log-sensor-collector export`: the records on `{prefix}.rec.>`, through
//! a durable pull consumer, written out at least once. A message is
//! acknowledged only after its records were written (and synced, for a
//! file), so a crash re-delivers at most what was written but not yet
//! acknowledged; every line carries its host, stream and offset to
//! deduplicate on.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use serde_json::json;

use super::api;
use super::{JetStream, JetStreamError};

/// How long one fetch waits for a record message before asking again (and
/// looking at the stop flag).
const FETCH_WAIT: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error(transparent)]
    JetStream(#[from] JetStreamError),
    #[error("writing records: {0}")]
    Write(std::io::Error),
}

impl JetStream {
    /// Hands record messages' bodies to `out` (which returns once they are
    /// written, and synced where that means anything) until `stop` is set,
    /// through the
    /// durable consumer `consumer` (created when absent, so a restart goes
    /// on where the last acknowledged message left off). Returns how many
    /// messages were written.
    ///
    /// What a node lost or an election causes (no answer, no responders, a
    /// leadership change) is waited out, as long as it lasts, with one
    /// warning per kind of failure: export runs as a service, and a service
    /// that exits on a restart of one NATS node leaves the records to pile
    /// up. A write that fails, or an answer that says the stream or the
    /// consumer's configuration is wrong, ends it.
    pub fn export(
        &self,
        consumer: &str,
        out: &mut dyn FnMut(&[u8]) -> std::io::Result<()>,
        stop: &AtomicBool,
    ) -> Result<u64, ExportError> {
        let stream = self.names.stream.clone();
        let filter = format!("{}.rec.>", self.names.prefix);
        self.block(async {
            let config = json!({
                "stream_name": stream,
                "config": {
                    "durable_name": consumer,
                    "filter_subject": filter,
                    "deliver_policy": "all",
                    "ack_policy": "explicit",
                    "ack_wait": ACK_WAIT.as_nanos() as u64,
                    "max_ack_pending": 1000,
                },
            });
            let create = serde_json::to_vec(&config).expect("JSON");
            let next = format!("$JS.API.CONSUMER.MSG.NEXT.{stream}.{consumer}");
            let ask = serde_json::to_vec(&json!({
                "batch": 1,
                "expires": FETCH_WAIT.as_nanos() as u64,
            }))
            .expect("JSON");
            // One inbox for the whole run: each fetch asks for one message
            // to be delivered there.
            let inbox = self.client.new_inbox();
            let mut replies = self.client.subscribe(inbox.clone()).await.map_err(|e| {
                JetStreamError::Api(api::ApiError::BadAnswer {
                    what: format!("subscribing to {inbox}"),
                    detail: e.to_string(),
                })
            })?;
            let mut trouble = Trouble::default();
            let mut written = 0;
            // The consumer is (re)made first, and again after an answer
            // that says it went away.
            let mut made = false;
            while !stop.load(Ordering::SeqCst) {
                if !made {
                    match api::request(
                        &self.client,
                        &format!("creating consumer {consumer}"),
                        format!("$JS.API.CONSUMER.CREATE.{stream}.{consumer}"),
                        None,
                        Bytes::from(create.clone()),
                        self.timeout,
                    )
                    .await
                    {
                        Ok(_) => made = true,
                        Err(e) if passing(&e) => {
                            trouble.wait(&e.to_string()).await;
                            continue;
                        }
                        Err(e) => return Err(JetStreamError::from(e).into()),
                    }
                }
                if let Err(e) = self
                    .client
                    .publish_with_reply(next.clone(), inbox.clone(), Bytes::from(ask.clone()))
                    .await
                {
                    trouble
                        .wait(&format!("fetching from consumer {consumer}: {e}"))
                        .await;
                    continue;
                }
                let msg =
                    match tokio::time::timeout(FETCH_WAIT + self.timeout, replies.next()).await {
                        Ok(Some(m)) => m,
                        // No answer at all (the cluster is electing, or away):
                        // ask again.
                        Err(_) => continue,
                        Ok(None) => {
                            return Err(JetStreamError::Api(api::ApiError::BadAnswer {
                                what: format!("fetching from consumer {consumer}"),
                                detail: "the client closed its subscription".to_owned(),
                            })
                            .into())
                        }
                    };
                match msg.status.map(|s| s.as_u16()) {
                    None => {}
                    // 404 (nothing yet) and 408 (the wait expired) are the
                    // empty answers of a pull.
                    Some(404 | 408) => continue,
                    // 409 (a leadership change, the consumer deleted, a
                    // server shutting down) and 503 (no responders: the
                    // consumer's leader is away): made again, or waited for.
                    Some(code @ (409 | 503)) => {
                        made = false;
                        let said = msg.description.unwrap_or_default();
                        trouble
                            .wait(&format!("fetching from consumer {consumer}: {code} {said}"))
                            .await;
                        continue;
                    }
                    Some(code) => {
                        return Err(JetStreamError::Api(api::ApiError::JetStream {
                            what: format!("fetching from consumer {consumer}"),
                            code: u64::from(code),
                            err_code: 0,
                            description: msg.description.unwrap_or_default(),
                        })
                        .into())
                    }
                }
                out(&msg.payload).map_err(ExportError::Write)?;
                written += 1;
                trouble.over();
                let Some(reply) = msg.reply else { continue };
                // The ack waits for the server's answer, so "written and
                // acknowledged" is known before the next fetch. One that
                // gets none is sent again (acknowledging twice is harmless)
                // until the server would deliver the message anew anyway.
                let since = std::time::Instant::now();
                loop {
                    let ack = async_nats::Request::new()
                        .payload(Bytes::from_static(b"+ACK"))
                        .timeout(Some(self.timeout));
                    match self.client.send_request(reply.clone(), ack).await {
                        Ok(_) => break,
                        Err(e) if since.elapsed() < ACK_WAIT && !stop.load(Ordering::SeqCst) => {
                            trouble
                                .wait(&format!("acknowledging an exported message: {e}"))
                                .await
                        }
                        // Unacknowledged, the message comes again: written
                        // twice, which the lines' host, stream and offset
                        // let a reader see.
                        Err(_) => break,
                    }
                }
            }
            Ok(written)
        })
    }
}

/// How long the server waits for an acknowledgement before it delivers a
/// message again.
const ACK_WAIT: Duration = Duration::from_secs(30);

/// How long export waits before asking again after a failure it waits out.
const RETRY_WAIT: Duration = Duration::from_secs(1);

/// A failure that a node coming back or an election ends: waited out.
fn passing(e: &api::ApiError) -> bool {
    match e {
        api::ApiError::Timeout { .. }
        | api::ApiError::Request { .. }
        | api::ApiError::Publish { .. } => true,
        // 503: `JetStream system temporarily unavailable`, no meta leader.
        api::ApiError::JetStream { code, .. } => *code == 503,
        api::ApiError::BadAnswer { .. } => false,
    }
}

/// The failure being waited out, so each kind is logged once and its end
/// once.
#[derive(Default)]
struct Trouble {
    last: Option<String>,
}

impl Trouble {
    async fn wait(&mut self, what: &str) {
        if self.last.as_deref() != Some(what) {
            tracing::warn!(error = %what, "export waits for the NATS cluster and asks again");
            self.last = Some(what.to_owned());
        }
        tokio::time::sleep(RETRY_WAIT).await;
    }

    fn over(&mut self) {
        if self.last.take().is_some() {
            tracing::info!("export is receiving records again");
        }
    }
}
