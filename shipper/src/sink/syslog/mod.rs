//! The syslog sink: RFC 5424 messages, RFC 5425 octet-counted framing (`LEN SP MSG`), over TLS
//! or plain TCP, for the rsyslog and syslog-ng relays fleets already run.
//!
//! Each record is one message (`encode`: the header, and the structured data the operator
//! chose); `conn` owns the connection and the checks a confirmation rests on.
//!
//! RFC 5425 has no acknowledgement, so a batch is confirmed (see README, "The syslog sink's
//! guarantee") once every byte was written, the receiver's TCP stack acknowledged all of them up
//! to the batch's last byte, and afterwards the connection was still open (no EOF, reset or TLS
//! alert). Two batches may be in flight: the next one is written while the receiver's stack
//! acknowledges the previous one, so the wait for that acknowledgement costs no throughput. A fresh TLS connection additionally waits for a refusal after its handshake (250 ms
//! plus twice the handshake's duration) before the first byte of data: with TLS 1.3 a receiver that refuses our certificate (rsyslog's
//! `x509/name`) does so only after the client already believes the handshake done.

mod conn;
mod encode;
mod fields_sd;

use super::{Sink, SinkError};
use crate::batch::Batch;
use crate::config::SyslogOptions;
use crate::tls;
use conn::{check_alive, connect, io_failure, wait_acknowledged, Conn};
use encode::Encoder;
use std::collections::VecDeque;
use std::time::Instant;

/// Frames are written in pieces of about this size: memory stays flat whatever the batch
/// (this buffer and rustls's ciphertext of it). 1 MiB rather than 256 KiB: 4.7% more MiB/s
/// over 11 interleaved pairs of the syslog bench, for 2 MiB more RSS.
const CHUNK: usize = 1024 * 1024;

pub struct SyslogSink {
    opts: SyslogOptions,
    /// Re-read when the CA, certificate or key change on disk.
    config: Option<tls::Reloading>,
    conn: Option<Conn>,
    /// For each batch in flight on `conn`, oldest first: the count of bytes written to the
    /// socket once its last frame was (None for a batch without records: nothing to wait for).
    inflight: VecDeque<Option<u64>>,
    /// The first connection, made on a thread of its own from the start: its handshake and
    /// verdict wait overlap the agent's start-up instead of delaying the first batch.
    ahead: Option<std::sync::mpsc::Receiver<Result<Conn, String>>>,
    /// Frames waiting to be written (up to about `CHUNK`).
    buf: Vec<u8>,
    /// The base64 of a record that is not UTF-8.
    msg: Vec<u8>,
}

impl SyslogSink {
    pub fn open(opts: &SyslogOptions) -> Result<SyslogSink, SinkError> {
        let config = Self::tls_files(opts)?;
        let mut sink = SyslogSink {
            opts: opts.clone(),
            config,
            conn: None,
            inflight: VecDeque::new(),
            ahead: None,
            buf: Vec::with_capacity(CHUNK + 64 * 1024),
            msg: Vec::new(),
        };
        let config = match &mut sink.config {
            Some(r) => r.get().ok(),
            None => None,
        };
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let opts = opts.clone();
        let spawned = std::thread::Builder::new()
            .name("syslog-connect".into())
            .spawn(move || {
                let _ = tx.send(connect(&opts, config));
            });
        if spawned.is_ok() {
            sink.ahead = Some(rx);
        }
        Ok(sink)
    }

    /// Whether [`SyslogSink::open`] would start: its TLS files (if any) load. Reads those files
    /// and nothing else, so `log-sensor check` fails where `run` would.
    pub fn check(opts: &SyslogOptions) -> Result<(), SinkError> {
        Self::tls_files(opts).map(drop)
    }

    /// The TLS files, loaded once: unreadable ones are a start-up error, not a retry loop.
    fn tls_files(opts: &SyslogOptions) -> Result<Option<tls::Reloading>, SinkError> {
        let Some(t) = &opts.tls else {
            return Ok(None);
        };
        let mut r = tls::Reloading::new(t.ca.clone(), t.identity.clone());
        r.get().map_err(|e| SinkError::Failed {
            sink: describe(opts),
            message: e.to_string(),
        })?;
        Ok(Some(r))
    }

    fn fail(&self, message: String) -> SinkError {
        SinkError::Failed {
            sink: self.describe(),
            message,
        }
    }

    /// A new connection with the current TLS files.
    fn connect(&mut self) -> Result<Conn, String> {
        let config = match &mut self.config {
            Some(r) => Some(r.get().map_err(|e| e.to_string())?),
            None => None,
        };
        connect(&self.opts, config)
    }

    /// Appends one frame per record to `buf`, writing it out every `CHUNK` bytes.
    fn write_batch(&mut self, batch: &Batch) -> Result<(), String> {
        let mut enc = Encoder::new(
            self.opts.structured_data,
            self.opts.facility,
            &batch.host,
            &self.opts.app_name,
        );
        self.buf.clear();
        for rec in batch.records() {
            enc.append(&mut self.buf, &rec, &mut self.msg);
            if self.buf.len() >= CHUNK {
                write_buf(&mut self.conn, &mut self.buf)?;
            }
        }
        write_buf(&mut self.conn, &mut self.buf)?;
        let conn = self.conn.as_mut().ok_or("not connected")?;
        conn.flush().map_err(|e| io_failure("write", &e))
    }
}

/// Hands `buf` to the connection and empties it.
fn write_buf(conn: &mut Option<Conn>, buf: &mut Vec<u8>) -> Result<(), String> {
    let conn = conn.as_mut().ok_or("not connected")?;
    conn.write_all(buf).map_err(|e| io_failure("write", &e))?;
    buf.clear();
    Ok(())
}

pub fn describe(opts: &SyslogOptions) -> String {
    format!(
        "syslog {}{}",
        if opts.tls.is_some() {
            "tls://"
        } else {
            "tcp://"
        },
        opts.address
    )
}

impl SyslogSink {
    /// The connection to write the next batch on: the one in use, unless the receiver closed it
    /// while we were idle (replaced before it swallows a batch, the check rsyslog's own omfwd
    /// makes), else the one made ahead at start, else a new one.
    fn ready(&mut self) -> Result<(), String> {
        if self.inflight.is_empty() {
            if let Some(c) = self.conn.as_mut() {
                if check_alive(c).is_err() {
                    self.conn = None;
                }
            }
        }
        if self.conn.is_none() {
            let first = self.ahead.take().and_then(|rx| rx.recv().ok());
            let conn = match first {
                Some(Ok(mut c)) => match check_alive(&mut c) {
                    // Checked again: it may have idled since it was made.
                    Ok(()) => c,
                    Err(_) => self.connect()?,
                },
                Some(Err(m)) => return Err(m),
                None => self.connect()?,
            };
            self.conn = Some(conn);
        }
        Ok(())
    }

    /// After a failure nothing is in flight: the connection is dropped and the caller re-sends.
    fn lost(&mut self, m: String) -> SinkError {
        self.conn = None;
        self.inflight.clear();
        self.fail(format!(
            "{m}; the batch is not committed and will be re-sent"
        ))
    }
}

impl Sink for SyslogSink {
    fn send(&mut self, batch: &Batch) -> Result<(), SinkError> {
        self.submit(batch)?;
        self.confirm()
    }

    /// The next batch is written while the receiver's stack acknowledges the previous one.
    fn window(&self) -> usize {
        2
    }

    fn submit(&mut self, batch: &Batch) -> Result<(), SinkError> {
        if batch.is_empty() {
            // Only checkpoints to commit: no connection needed.
            self.inflight.push_back(None);
            return Ok(());
        }
        let written = self.ready().and_then(|()| {
            let started = Instant::now();
            self.write_batch(batch)?;
            tracing::debug!(
                records = batch.len(),
                write_ms = started.elapsed().as_secs_f64() * 1e3,
                "syslog batch written"
            );
            Ok(())
        });
        if self.buf.capacity() > 4 * CHUNK {
            self.buf = Vec::with_capacity(CHUNK + 64 * 1024);
        }
        match written {
            Ok(()) => {
                let upto = self.conn.as_ref().map(|c| c.counted().written);
                self.inflight.push_back(upto);
                Ok(())
            }
            Err(m) => Err(self.lost(m)),
        }
    }

    fn confirm(&mut self) -> Result<(), SinkError> {
        let Some(Some(upto)) = self.inflight.pop_front() else {
            return Ok(());
        };
        let started = Instant::now();
        let taken = match self.conn.as_mut() {
            Some(conn) => wait_acknowledged(conn, upto).and_then(|()| check_alive(conn)),
            None => Err("not connected".to_string()),
        };
        match taken {
            Ok(()) => {
                tracing::debug!(
                    wait_ms = started.elapsed().as_secs_f64() * 1e3,
                    "syslog batch taken by the receiver"
                );
                Ok(())
            }
            Err(m) => Err(self.lost(m)),
        }
    }

    fn describe(&self) -> String {
        describe(&self.opts)
    }
}
