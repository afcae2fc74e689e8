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
                    "ack_wait": 30_000_000_000u64,
                    "max_ack_pending": 1000,
                },
            });
            api::request(
                &self.client,
                &format!("creating consumer {consumer}"),
                format!("$JS.API.CONSUMER.CREATE.{stream}.{consumer}"),
                None,
                serde_json::to_vec(&config).expect("JSON").into(),
                self.timeout,
            )
            .await
            .map_err(JetStreamError::from)?;
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
            let mut written = 0;
            while !stop.load(Ordering::SeqCst) {
                self.client
                    .publish_with_reply(next.clone(), inbox.clone(), Bytes::from(ask.clone()))
                    .await
                    .map_err(|source| {
                        JetStreamError::Api(api::ApiError::Publish {
                            what: format!("fetching from consumer {consumer}"),
                            source,
                        })
                    })?;
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
                // 404 (nothing yet) and 408 (the wait expired) are the
                // empty answers of a pull.
                if msg
                    .status
                    .is_some_and(|s| s.as_u16() == 404 || s.as_u16() == 408)
                {
                    continue;
                }
                if let Some(status) = msg.status {
                    return Err(JetStreamError::Api(api::ApiError::JetStream {
                        what: format!("fetching from consumer {consumer}"),
                        code: u64::from(status.as_u16()),
                        err_code: 0,
                        description: msg.description.unwrap_or_default(),
                    })
                    .into());
                }
                out(&msg.payload).map_err(ExportError::Write)?;
                if let Some(reply) = msg.reply {
                    // The ack waits for the server's answer, so "written and
                    // acknowledged" is known before the next fetch.
                    let ack = async_nats::Request::new()
                        .payload(Bytes::from_static(b"+ACK"))
                        .timeout(Some(self.timeout));
                    self.client
                        .send_request(reply, ack)
                        .await
                        .map_err(|source| {
                            JetStreamError::Api(api::ApiError::Request {
                                what: "acknowledging an exported message".to_owned(),
                                source,
                            })
                        })?;
                }
                written += 1;
            }
            Ok(written)
        })
    }
}
