//! The collector sink: batches as NDJSON (gzip by default) in `POST /v1/ingest` over mutual TLS.
//!
//! Only the collector's `200` reply acknowledges a batch: with TLS 1.3 a refused client sees its
//! writes succeed and learns of the refusal on its first read, so a write proves nothing. The
//! client is blocking (std `TcpStream` + rustls `StreamOwned`) and speaks the little HTTP/1.1 the
//! collector needs (Content-Length bodies, keep-alive): the sink runs on its own thread, and an
//! async runtime there would cost memory and buy nothing.
//!
//! The certificate is renewed at `renew_at` (two thirds by default) of its lifetime by a thread of
//! its own, so an idle agent renews too; the files are re-read whenever they change on disk, so a
//! re-enrolment (`log-sensor enroll`) applies to a running agent without a restart.

mod requests;

use super::{Sink, SinkError};
use crate::batch::Batch;
use crate::tls::{self, ServerTrust, TlsError};
use rustls::{ClientConfig, ClientConnection, StreamOwned};
use std::collections::VecDeque;
use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a request may go unanswered by default (`sink.timeout`): the collector answers after
/// its fsync, and a slow disk under a 4 MiB batch stays well inside this. A silent network cut is
/// noticed after this long, and a stopping agent (which cannot interrupt a request) waits at most
/// this long.
pub const IO_TIMEOUT: Duration = Duration::from_secs(60);
/// The collector closes connections idle for 75 s; ours are retired before that, so a request
/// never races the server's close.
const MAX_IDLE: Duration = Duration::from_secs(60);
/// A failed renewal is tried again after this long (the current certificate still works).
const RENEW_RETRY: Duration = Duration::from_secs(60);
/// At most one renewal this often, even if the clock or `renew_at` says one is due at once.
const RENEW_MIN_GAP: Duration = Duration::from_secs(10);
const MAX_RESPONSE_BYTES: usize = 1 << 20;
/// Replies owed on the connection before the next request waits for one: a batch cut into
/// thousands of small requests (a low stream cap) would otherwise fill the collector's send
/// buffer with unread replies, stop it reading, and stall both sides until the timeout.
const MAX_OWED: usize = 16;

/// `https://host[:port]`, as the config and `enroll --server` give it.
#[derive(Debug, Clone)]
pub struct Url {
    pub host: String,
    pub port: u16,
}

impl Url {
    pub fn parse(s: &str) -> Result<Url, String> {
        let rest = s
            .strip_prefix("https://")
            .ok_or_else(|| format!("{s:?} must start with https://"))?;
        let authority = rest.split('/').next().unwrap_or("");
        if rest.len() > authority.len() + 1 {
            return Err(format!(
                "{s:?}: give only https://host:port, without a path"
            ));
        }
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) if !p.contains(']') => (
                h,
                p.parse::<u16>()
                    .map_err(|_| format!("{s:?}: bad port {p:?}"))?,
            ),
            _ => (authority, 443),
        };
        if host.is_empty() {
            return Err(format!("{s:?} has no host"));
        }
        tls::server_name(host).map_err(|e| e.to_string())?;
        Ok(Url {
            host: host.to_string(),
            port,
        })
    }
}

impl std::fmt::Display for Url {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "https://{}:{}", self.host, self.port)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("cannot connect to {url}: {message}")]
    Connect { url: String, message: String },
    #[error("TLS with {url}: {}", tls::describe(source))]
    Tls { url: String, source: rustls::Error },
    #[error("connection to {url} lost: {source}")]
    Io { url: String, source: std::io::Error },
    #[error("{url} closed the connection before replying")]
    Closed { url: String },
    #[error("no answer from {url} within {secs}s (sink.timeout): the network or the collector went silent")]
    Silent { url: String, secs: f64 },
    #[error("{url} sent a malformed HTTP reply: {message}")]
    Protocol { url: String, message: String },
}

/// A reply: status and body (bodies here are small JSON documents).
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub body: Vec<u8>,
    /// `Retry-After` in seconds (the collector sends no HTTP-date form).
    pub retry_after: Option<u64>,
}

impl Response {
    /// `code` and `error` of the collector's JSON error body, or the body as text.
    pub fn reason(&self) -> String {
        match serde_json::from_slice::<serde_json::Value>(&self.body) {
            Ok(v) if v.get("code").is_some() => format!(
                "{} ({})",
                v["code"].as_str().unwrap_or(""),
                v["error"].as_str().unwrap_or("")
            ),
            _ => String::from_utf8_lossy(&self.body)
                .chars()
                .take(200)
                .collect(),
        }
    }

    pub fn code(&self) -> Option<String> {
        serde_json::from_slice::<serde_json::Value>(&self.body)
            .ok()
            .and_then(|v| v["code"].as_str().map(str::to_string))
    }

    /// A number field of the JSON body (the `limit` of a `too_many_new_streams` refusal).
    pub fn number(&self, field: &str) -> Option<u64> {
        serde_json::from_slice::<serde_json::Value>(&self.body)
            .ok()
            .and_then(|v| v[field].as_u64())
    }
}

/// One keep-alive HTTPS connection.
pub struct HttpConn {
    stream: StreamOwned<ClientConnection, TcpStream>,
    url: String,
    host_header: String,
    /// Bytes read past the previous reply (none with a well-behaved server, but kept honest).
    rbuf: Vec<u8>,
    /// For each read and write.
    timeout: Duration,
    pub last_used: Instant,
    /// The server said `Connection: close`.
    pub closing: bool,
}

impl HttpConn {
    pub fn connect(url: &Url, config: Arc<ClientConfig>) -> Result<HttpConn, HttpError> {
        Self::connect_with(url, config, IO_TIMEOUT)
    }

    /// Connects with `timeout` for each read and write (the handshake's included).
    pub fn connect_with(
        url: &Url,
        config: Arc<ClientConfig>,
        timeout: Duration,
    ) -> Result<HttpConn, HttpError> {
        let name = url.to_string();
        let connect_err = |message: String| HttpError::Connect {
            url: name.clone(),
            message,
        };
        let addrs: Vec<_> = (
            url.host.trim_start_matches('[').trim_end_matches(']'),
            url.port,
        )
            .to_socket_addrs()
            .map_err(|e| connect_err(format!("cannot resolve: {e}")))?
            .collect();
        let tcp = super::connect_first(addrs, CONNECT_TIMEOUT).map_err(connect_err)?;
        let io = |source| HttpError::Io {
            url: name.clone(),
            source,
        };
        tcp.set_nodelay(true).map_err(io)?;
        tcp.set_read_timeout(Some(timeout)).map_err(io)?;
        tcp.set_write_timeout(Some(timeout)).map_err(io)?;
        let server = tls::server_name(&url.host).map_err(|e| connect_err(e.to_string()))?;
        let mut conn = ClientConnection::new(config, server).map_err(|source| HttpError::Tls {
            url: name.clone(),
            source,
        })?;
        // rustls encrypts at most its buffer limit a call (64 KiB by default): a batch's body
        // then goes out in 1 MiB rounds rather than 64 KiB ones.
        conn.set_buffer_limit(Some(1 << 20));
        let mut stream = StreamOwned::new(conn, tcp);
        // The handshake now, so a refused server certificate is reported as such.
        while stream.conn.is_handshaking() {
            stream
                .conn
                .complete_io(&mut stream.sock)
                .map_err(|e| classify(&name, e, timeout))?;
        }
        let host_header = if url.port == 443 {
            url.host.clone()
        } else {
            format!("{}:{}", url.host, url.port)
        };
        Ok(HttpConn {
            stream,
            url: name,
            host_header,
            rbuf: Vec::new(),
            timeout,
            last_used: Instant::now(),
            closing: false,
        })
    }

    /// Sends one request and reads its whole reply.
    pub fn request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<Response, HttpError> {
        self.write_request(method, path, headers, body)?;
        self.read_response()
    }

    /// Writes one request without waiting for its reply: requests may be pipelined (RFC 9112
    /// section 9.3.2), their replies then come back in order through [`HttpConn::read_response`].
    pub fn write_request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<(), HttpError> {
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nContent-Length: {}\r\n",
            self.host_header,
            body.len()
        );
        for (k, v) in headers {
            head.push_str(k);
            head.push_str(": ");
            head.push_str(v);
            head.push_str("\r\n");
        }
        head.push_str("\r\n");
        let url = self.url.clone();
        self.stream
            .write_all(head.as_bytes())
            .and_then(|_| self.stream.write_all(body))
            .and_then(|_| self.stream.flush())
            .map_err(|e| classify(&url, e, self.timeout))?;
        self.last_used = Instant::now();
        Ok(())
    }

    /// Err with the reason when the server has closed the connection (an idle timeout, a
    /// restart) or sent something unasked: checked before an idle connection is used again, so a
    /// routine close costs a reconnect rather than a failed batch.
    fn peer_check(&mut self) -> Result<(), String> {
        if !self.rbuf.is_empty() {
            return Err("the collector sent data nobody asked for".into());
        }
        self.stream
            .sock
            .set_nonblocking(true)
            .map_err(|e| e.to_string())?;
        let result = super::tls_peer_check(&mut self.stream);
        self.stream
            .sock
            .set_nonblocking(false)
            .map_err(|e| e.to_string())?;
        result
    }

    fn fill(&mut self) -> Result<usize, HttpError> {
        let mut tmp = [0u8; 16 * 1024];
        let n = self
            .stream
            .read(&mut tmp)
            .map_err(|e| classify(&self.url, e, self.timeout))?;
        self.rbuf.extend_from_slice(&tmp[..n]);
        Ok(n)
    }

    /// Reads the reply to the oldest request written and not yet answered.
    pub fn read_response(&mut self) -> Result<Response, HttpError> {
        let protocol = |url: &str, message: &str| HttpError::Protocol {
            url: url.to_string(),
            message: message.to_string(),
        };
        let head_end = loop {
            if let Some(i) = find(&self.rbuf, b"\r\n\r\n") {
                break i;
            }
            if self.rbuf.len() > 64 * 1024 {
                return Err(protocol(&self.url, "headers too long"));
            }
            if self.fill()? == 0 {
                return Err(HttpError::Closed {
                    url: self.url.clone(),
                });
            }
        };
        let head = String::from_utf8_lossy(&self.rbuf[..head_end]).into_owned();
        self.rbuf.drain(..head_end + 4);
        let mut lines = head.split("\r\n");
        let status: u16 = lines
            .next()
            .and_then(|l| l.split(' ').nth(1))
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| protocol(&self.url, "bad status line"))?;
        let mut length = None;
        let mut chunked = false;
        let mut retry_after = None;
        for l in lines {
            let Some((k, v)) = l.split_once(':') else {
                continue;
            };
            let v = v.trim();
            match k.trim().to_ascii_lowercase().as_str() {
                "content-length" => length = v.parse::<usize>().ok(),
                "transfer-encoding" => chunked = v.eq_ignore_ascii_case("chunked"),
                "connection" => self.closing |= v.eq_ignore_ascii_case("close"),
                "retry-after" => retry_after = v.parse::<u64>().ok(),
                _ => {}
            }
        }
        let body = if chunked {
            self.read_chunked()?
        } else {
            let n = length.unwrap_or(0);
            if n > MAX_RESPONSE_BYTES {
                return Err(protocol(&self.url, "reply body too large"));
            }
            while self.rbuf.len() < n {
                if self.fill()? == 0 {
                    return Err(HttpError::Closed {
                        url: self.url.clone(),
                    });
                }
            }
            self.rbuf.drain(..n).collect()
        };
        Ok(Response {
            status,
            body,
            retry_after,
        })
    }

    fn read_chunked(&mut self) -> Result<Vec<u8>, HttpError> {
        let mut body = Vec::new();
        loop {
            let line_end = loop {
                if let Some(i) = find(&self.rbuf, b"\r\n") {
                    break i;
                }
                if self.fill()? == 0 {
                    return Err(HttpError::Closed {
                        url: self.url.clone(),
                    });
                }
            };
            let size_text = String::from_utf8_lossy(&self.rbuf[..line_end]).into_owned();
            let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
                .map_err(|_| HttpError::Protocol {
                    url: self.url.clone(),
                    message: "bad chunk size".into(),
                })?;
            self.rbuf.drain(..line_end + 2);
            if body.len() + size > MAX_RESPONSE_BYTES {
                return Err(HttpError::Protocol {
                    url: self.url.clone(),
                    message: "reply body too large".into(),
                });
            }
            while self.rbuf.len() < size + 2 {
                if self.fill()? == 0 {
                    return Err(HttpError::Closed {
                        url: self.url.clone(),
                    });
                }
            }
            body.extend(self.rbuf.drain(..size));
            self.rbuf.drain(..2);
            if size == 0 {
                return Ok(body);
            }
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn classify(url: &str, e: std::io::Error, timeout: Duration) -> HttpError {
    match tls::rustls_error(&e) {
        Some(r) => HttpError::Tls {
            url: url.to_string(),
            source: r.clone(),
        },
        None if e.kind() == std::io::ErrorKind::UnexpectedEof => HttpError::Closed {
            url: url.to_string(),
        },
        // A blocking socket's timeout (EAGAIN): nothing came back at all, which a cable cut, a
        // firewall dropping packets or a stuck collector all look like.
        None if matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ) =>
        {
            HttpError::Silent {
                url: url.to_string(),
                secs: timeout.as_secs_f64(),
            }
        }
        None => HttpError::Io {
            url: url.to_string(),
            source: e,
        },
    }
}

/// Where the sink's certificate, key and CA live.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// The client config built from one version of the files, and the certificate's validity.
struct Identity {
    config: Arc<ClientConfig>,
    stamp: tls::Stamp,
    not_before: i64,
    not_after: i64,
}

/// State the sink and its renewal thread share.
struct Shared {
    url: Url,
    files: TlsFiles,
    /// Fraction of the certificate's lifetime after which it is renewed.
    renew_at: f64,
    identity: Mutex<Option<Identity>>,
    /// Bumped when a renewal wrote a new certificate, so the sink reconnects with it.
    generation: AtomicU64,
}

impl Shared {
    /// The current client config, re-read if a file changed (renewal, re-enrolment).
    fn identity(&self) -> Result<(Arc<ClientConfig>, i64, i64), TlsError> {
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
    fn renew(&self) -> Result<i64, String> {
        let (config, _, _) = self.identity().map_err(|e| e.to_string())?;
        let key_pem = std::fs::read_to_string(&self.files.key)
            .map_err(|e| format!("cannot read {}: {e}", self.files.key.display()))?;
        let csr = crate::enroll::csr_for(&key_pem).map_err(|e| e.to_string())?;
        let mut conn = HttpConn::connect(&self.url, config).map_err(|e| e.to_string())?;
        let body = serde_json::json!({ "csr": csr }).to_string();
        let resp = conn
            .request(
                "POST",
                "/v1/renew",
                &[("Content-Type", "application/json")],
                body.as_bytes(),
            )
            .map_err(|e| e.to_string())?;
        if resp.status != 200 {
            return Err(format!(
                "collector replied {} {}",
                resp.status,
                resp.reason()
            ));
        }
        let reply: serde_json::Value =
            serde_json::from_slice(&resp.body).map_err(|e| format!("bad renew reply: {e}"))?;
        let cert = reply["cert"]
            .as_str()
            .ok_or("renew reply has no certificate")?;
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

/// Renews when due; exits when the sink is gone.
fn renewal_loop(shared: Weak<Shared>) {
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
                tracing::warn!(error = %e, retry_in_s = RENEW_RETRY.as_secs(), "certificate renewal failed; the current certificate is still used");
                next_try = Instant::now() + RENEW_RETRY;
            }
        }
    }
}

/// Options of a collector sink, from `[sink]`.
#[derive(Debug, Clone)]
pub struct CollectorOptions {
    pub url: Url,
    pub files: TlsFiles,
    pub gzip: bool,
    pub renew_at: f64,
    /// For each read and write of a request (`sink.timeout`).
    pub timeout: Duration,
}

pub struct CollectorSink {
    /// URL, files and identity, shared with the renewal thread.
    shared: Arc<Shared>,
    /// `compression = "gzip"`.
    gzip: bool,
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
    /// Reused between batches: NDJSON when the batch was not encoded ahead, and the gzip form.
    body: Vec<u8>,
    gz: Vec<u8>,
}

/// Batches in flight: one being stored by the collector while the next one travels. More would
/// only queue in the collector (it handles a connection's requests in order) and cost memory.
const WINDOW: usize = 2;

impl CollectorSink {
    pub fn open(opts: &CollectorOptions) -> Result<CollectorSink, SinkError> {
        let shared = Arc::new(Shared {
            url: opts.url.clone(),
            files: opts.files.clone(),
            renew_at: opts.renew_at,
            identity: Mutex::new(None),
            generation: AtomicU64::new(0),
        });
        let sink = CollectorSink {
            shared: shared.clone(),
            gzip: opts.gzip,
            timeout: opts.timeout,
            conn: None,
            pending: VecDeque::new(),
            read_ahead: 0,
            streams: requests::StreamCap::new(),
            body: Vec::new(),
            gz: Vec::new(),
        };
        // Missing files are reported at start (not enrolled yet?), rather than as retries.
        shared.identity().map_err(|e| {
            sink.fail(format!(
                "{e} (run `log-sensor enroll` first, or set sink.ca, sink.cert and sink.key)"
            ))
        })?;
        let weak = Arc::downgrade(&shared);
        std::thread::Builder::new()
            .name("cert-renewal".into())
            .spawn(move || renewal_loop(weak))
            .map_err(|e| sink.fail(format!("cannot start the renewal thread: {e}")))?;
        Ok(sink)
    }

    fn fail(&self, message: String) -> SinkError {
        SinkError::Failed {
            sink: self.describe(),
            message,
        }
    }

    /// Forgets the connection and everything in flight on it (the caller sends it again).
    fn lost(&mut self) {
        self.conn = None;
        self.pending.clear();
        self.read_ahead = 0;
    }

    /// The connection to write the next request on: the open one while replies are owed on it
    /// (requests are answered in order on one connection, which keeps the collector's
    /// high-water marks in step); otherwise the open one if still good, or a new one.
    fn connection(&mut self) -> Result<&mut HttpConn, SinkError> {
        let generation = self.shared.generation.load(Ordering::SeqCst);
        let stale = match &mut self.conn {
            _ if !self.pending.is_empty() => false,
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
            let conn = HttpConn::connect_with(&self.shared.url, config, self.timeout)
                .map_err(|e| self.fail(format!("{e}{}", self.expiry_note())))?;
            self.conn = Some((conn, generation));
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

    /// Writes one NDJSON piece (gzipped when configured) as a `POST /v1/ingest`.
    fn write_piece(&mut self, ndjson: &[u8]) -> Result<(), SinkError> {
        let mut gz = std::mem::take(&mut self.gz);
        let body: &[u8] = if self.gzip {
            gz.clear();
            // Level 1: most of gzip's saving on log text at a fraction of its CPU.
            let mut enc = flate2::write::GzEncoder::new(gz, flate2::Compression::fast());
            enc.write_all(ndjson)
                .map_err(|e| self.fail(format!("gzip: {e}")))?;
            gz = enc.finish().map_err(|e| self.fail(format!("gzip: {e}")))?;
            &gz
        } else {
            ndjson
        };
        let mut headers = vec![("Content-Type", "application/x-ndjson")];
        if self.gzip {
            headers.push(("Content-Encoding", "gzip"));
        }
        let result = self
            .connection()
            .map(|c| c.write_request("POST", "/v1/ingest", &headers, body));
        self.gz = gz;
        match result? {
            Ok(()) => Ok(()),
            Err(e) => {
                // A refusal of an earlier request closes the connection under this write: its
                // reply, if it made it here, says why better than the broken pipe does. (Not
                // after a timeout: a silent peer would only make us wait a second time.)
                let silent = matches!(e, HttpError::Silent { .. });
                let refusal = match (&mut self.conn, self.pending.is_empty() || silent) {
                    (Some((c, _)), false) => match c.read_response() {
                        Ok(resp) if resp.status != 200 => Some(self.refused(&resp)),
                        _ => None,
                    },
                    _ => None,
                };
                self.lost();
                Err(refusal.unwrap_or_else(|| {
                    self.fail(format!("{e}{}; nothing is committed", self.expiry_note()))
                }))
            }
        }
    }

    /// The error for a reply other than 200.
    fn refused(&mut self, resp: &Response) -> SinkError {
        let cap_note;
        let why = match resp.code().as_deref() {
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
            _ => "the batch was not acknowledged",
        };
        self.fail(format!(
            "collector replied {} {}: {why}; nothing is committed",
            resp.status,
            resp.reason()
        ))
    }

    /// Reads one reply; Ok only for the collector's 200.
    fn read_ack(&mut self) -> Result<(), SinkError> {
        let result = match &mut self.conn {
            Some((c, _)) => c.read_response(),
            None => return Err(self.fail("connection lost; nothing is committed".into())),
        };
        match result {
            Ok(resp) if resp.status == 200 => {
                if let Some((c, _)) = &mut self.conn {
                    c.last_used = Instant::now();
                }
                Ok(())
            }
            Ok(resp) => {
                self.lost();
                Err(self.refused(&resp))
            }
            Err(e) => {
                self.lost();
                Err(self.fail(format!("{e}{}; nothing is committed", self.expiry_note())))
            }
        }
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
        let cut = requests::cut(
            ndjson,
            batch,
            requests::MAX_REQUEST_BYTES,
            self.streams.get(),
        );
        for r in cut {
            let owed = self.pending.iter().sum::<usize>() + requests - self.read_ahead;
            if owed >= MAX_OWED {
                result = self.read_ack();
                if result.is_err() {
                    break;
                }
                self.read_ahead += 1;
            }
            result = self.write_piece(&ndjson[r]);
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
        tracing::debug!(requests, "batch acknowledged by the collector");
        Ok(())
    }

    fn describe(&self) -> String {
        format!("collector {}", self.shared.url)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn urls() {
        let u = Url::parse("https://collector.example:8443").unwrap();
        assert_eq!((u.host.as_str(), u.port), ("collector.example", 8443));
        let u = Url::parse("https://10.0.0.1/").unwrap();
        assert_eq!((u.host.as_str(), u.port), ("10.0.0.1", 443));
        let u = Url::parse("https://[::1]:9").unwrap();
        assert_eq!((u.host.as_str(), u.port), ("[::1]", 9));
        assert!(Url::parse("http://x").is_err());
        assert!(Url::parse("https://x:99999").is_err());
        assert!(Url::parse("https://x/v1/ingest").is_err());
    }

    fn parse(sink: &str) -> Result<crate::config::Config, String> {
        crate::config::Config::parse(
            Path::new("/etc/ls/agent.toml"),
            &format!("state_dir = \"/var/lib/ls\"\n[sink]\n{sink}"),
        )
        .map_err(|e| e.to_string())
    }

    #[test]
    fn config_defaults_to_the_enrolled_files_and_gzip() {
        let c = parse("type = \"collector\"\nurl = \"https://c.example:8443\"").unwrap();
        let crate::config::SinkConfig::Collector(o) = c.sink else {
            panic!("not a collector sink")
        };
        assert_eq!(o.files.cert, Path::new("/var/lib/ls/tls/cert.pem"));
        assert_eq!(o.files.key, Path::new("/var/lib/ls/tls/key.pem"));
        assert_eq!(o.files.ca, Path::new("/var/lib/ls/tls/ca.pem"));
        assert!(o.gzip);
        assert!((o.renew_at - 2.0 / 3.0).abs() < 1e-9);
        assert_eq!(o.timeout, Duration::from_secs(60));
        let c = parse("type = \"collector\"\nurl = \"https://c:1\"\ncompression = \"none\"\nca = \"ca.pem\"\nrenew_at = 0.5").unwrap();
        let crate::config::SinkConfig::Collector(o) = c.sink else {
            panic!("not a collector sink")
        };
        assert!(!o.gzip);
        assert_eq!(o.files.ca, Path::new("/etc/ls/ca.pem"));
        assert_eq!(o.renew_at, 0.5);
    }

    #[test]
    fn config_errors_name_their_keys() {
        let e = parse("type = \"collector\"\nurl = \"http://x\"\ncompression = \"zstd\"\nrenew_at = 1.5\nbogus = 1\ntimeout = \"0s\"").unwrap_err();
        for key in [
            "sink.url",
            "sink.compression",
            "sink.renew_at",
            "sink.bogus",
            "sink.timeout",
        ] {
            assert!(e.contains(key), "{key} missing in {e}");
        }
        let e = parse("type = \"collector\"").unwrap_err();
        assert!(e.contains("sink.url: required"), "{e}");
        let e = parse("type = \"file\"\npath = \"x\"\nrenew_at = 0.5").unwrap_err();
        assert!(e.contains("sink.renew_at"), "{e}");
    }
}
