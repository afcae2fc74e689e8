//! A blocking HTTP/1.1 client over TLS, the little the collector's API needs: requests with
//! Content-Length bodies, pipelined on one keep-alive connection, replies with Content-Length or
//! chunked bodies, a timeout on every read and write. The collector sink ships batches with it,
//! and `enroll` and the certificate renewal call the enrolment API with it.
//!
//! Blocking (std `TcpStream` + rustls `StreamOwned`) because each user runs on a thread of its
//! own: an async runtime there would cost memory and buy nothing.

mod response;
#[cfg(test)]
mod tests;

pub use response::Response;

use crate::config::{Url, DEFAULT_COLLECTOR_TIMEOUT};
use crate::tls;
use rustls::{ClientConfig, ClientConnection, StreamOwned};
use std::io::Write;
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::{Duration, Instant};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// For each read and write of [`HttpConn::connect`]: the collector sink's default
/// `sink.timeout`, which enrolment and renewal (no setting of their own) use too.
const IO_TIMEOUT: Duration = DEFAULT_COLLECTOR_TIMEOUT;

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
        let tcp = crate::net::connect_first(addrs, CONNECT_TIMEOUT).map_err(connect_err)?;
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
    pub fn peer_check(&mut self) -> Result<(), String> {
        if !self.rbuf.is_empty() {
            return Err("the collector sent data nobody asked for".into());
        }
        self.stream
            .sock
            .set_nonblocking(true)
            .map_err(|e| e.to_string())?;
        let result = crate::net::tls_peer_check(&mut self.stream);
        self.stream
            .sock
            .set_nonblocking(false)
            .map_err(|e| e.to_string())?;
        result
    }
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
