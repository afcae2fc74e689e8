//! Just enough HTTP/1.1 for a monitoring endpoint: one request per connection, read with a
//! deadline and a size cap, answered with `Connection: close`. Written by hand so the agent does
//! not carry an async runtime for four read-only pages; every request is parsed strictly and
//! anything this server cannot answer correctly gets the matching 4xx/5xx.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// A parsed request head. The monitor never reads bodies: GET and HEAD carry none, and the
/// connection is closed after the answer, so a body sent anyway cannot be taken for a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    /// The request target as sent (origin form `/path?query`, or absolute form).
    pub target: String,
    /// The path the request is routed by: the target without scheme, authority and query.
    pub path: String,
    /// `HTTP/1.0` or `HTTP/1.1`.
    pub version: String,
    /// Header names lower-cased, values trimmed, in the order sent.
    pub headers: Vec<(String, String)>,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error("request head is larger than {limit} bytes")]
    TooLarge { limit: usize },
    #[error("malformed request line {line:?}")]
    BadRequestLine { line: String },
    #[error("HTTP version {version:?} is not supported (HTTP/1.0 and HTTP/1.1 are)")]
    Version { version: String },
    #[error("malformed header line {line:?}")]
    BadHeader { line: String },
    #[error("an HTTP/1.1 request needs exactly one Host header, found {count}")]
    Host { count: usize },
    #[error("no complete request head within {0:?}")]
    Timeout(Duration),
    #[error("the client closed the connection before the request head was complete")]
    Closed,
    #[error("reading the request: {0}")]
    Io(#[from] std::io::Error),
}

impl RequestError {
    /// The status to answer with; None when nobody is left to answer.
    pub fn status(&self) -> Option<u16> {
        match self {
            RequestError::TooLarge { .. } => Some(431),
            RequestError::BadRequestLine { .. }
            | RequestError::BadHeader { .. }
            | RequestError::Host { .. } => Some(400),
            RequestError::Version { .. } => Some(505),
            RequestError::Timeout(_) => Some(408),
            RequestError::Closed | RequestError::Io(_) => None,
        }
    }
}

/// Reads one request head from `conn`: at most `max_bytes`, all of it within `timeout` (a total,
/// not per read, so a client trickling a byte at a time cannot hold the thread either).
pub fn read_request(
    conn: &mut TcpStream,
    max_bytes: usize,
    timeout: Duration,
) -> Result<Request, RequestError> {
    let deadline = Instant::now() + timeout;
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 2048];
    loop {
        if let Some(end) = head_end(&buf) {
            return parse_head(&buf[..end]);
        }
        if buf.len() >= max_bytes {
            return Err(RequestError::TooLarge { limit: max_bytes });
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(RequestError::Timeout(timeout));
        }
        conn.set_read_timeout(Some(left))?;
        let want = chunk.len().min(max_bytes - buf.len());
        match conn.read(&mut chunk[..want]) {
            Ok(0) => return Err(RequestError::Closed),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                return Err(RequestError::Timeout(timeout))
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(RequestError::Io(e)),
        }
    }
}

/// Where the head ends (just past its empty line), once it is all in `buf`. Lines end in CRLF;
/// a bare LF is accepted too, as RFC 9112 §2.2 allows.
fn head_end(buf: &[u8]) -> Option<usize> {
    let mut start = 0;
    let mut seen_line = false;
    while let Some(nl) = memchr::memchr(b'\n', &buf[start..]) {
        let line = &buf[start..start + nl];
        let empty = line.is_empty() || line == b"\r";
        start += nl + 1;
        if empty && seen_line {
            return Some(start);
        }
        // Empty lines before the request line are skipped (RFC 9112 §2.2).
        seen_line |= !empty;
    }
    None
}

/// Parses a complete request head (request line, headers, the empty line).
pub fn parse_head(head: &[u8]) -> Result<Request, RequestError> {
    let mut lines = head
        .split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
        .skip_while(|l| l.is_empty());
    let line = lines.next().unwrap_or_default();
    let bad_line = || RequestError::BadRequestLine {
        line: String::from_utf8_lossy(line).into_owned(),
    };
    let text = std::str::from_utf8(line).map_err(|_| bad_line())?;
    // Exactly three parts separated by single spaces: anything else is how request smuggling
    // and confused proxies start, so it is refused rather than guessed at.
    let parts: Vec<&str> = text.split(' ').collect();
    let [method, target, version] = parts[..] else {
        return Err(bad_line());
    };
    if method.is_empty() || !method.bytes().all(is_tchar) {
        return Err(bad_line());
    }
    if target.is_empty() || !target.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(bad_line());
    }
    let Some(digits) = version.strip_prefix("HTTP/") else {
        return Err(bad_line());
    };
    let vb = digits.as_bytes();
    if vb.len() != 3 || !vb[0].is_ascii_digit() || vb[1] != b'.' || !vb[2].is_ascii_digit() {
        return Err(bad_line());
    }
    if digits != "1.1" && digits != "1.0" {
        return Err(RequestError::Version {
            version: version.to_string(),
        });
    }
    let path = route_path(target).ok_or_else(bad_line)?;

    let mut headers = Vec::new();
    for line in lines {
        if line.is_empty() {
            break;
        }
        let bad = || RequestError::BadHeader {
            line: String::from_utf8_lossy(line).into_owned(),
        };
        // Obsolete line folding (a line starting with whitespace) must be refused or unfolded;
        // refusing is the safe choice (RFC 9112 §5.2).
        if line[0] == b' ' || line[0] == b'\t' {
            return Err(bad());
        }
        let colon = memchr::memchr(b':', line).ok_or_else(bad)?;
        let name = &line[..colon];
        // No whitespace between the name and the colon (RFC 9112 §5.1).
        if name.is_empty() || !name.iter().copied().all(is_tchar) {
            return Err(bad());
        }
        let value = &line[colon + 1..];
        if value.iter().any(|&b| b == 0 || b == b'\r' || b == b'\n') {
            return Err(bad());
        }
        headers.push((
            String::from_utf8_lossy(name).to_ascii_lowercase(),
            String::from_utf8_lossy(value)
                .trim_matches([' ', '\t'])
                .to_string(),
        ));
    }
    let hosts = headers.iter().filter(|(n, _)| n == "host").count();
    if (digits == "1.1" && hosts != 1) || hosts > 1 {
        return Err(RequestError::Host { count: hosts });
    }
    Ok(Request {
        method: method.to_string(),
        target: target.to_string(),
        path,
        version: version.to_string(),
        headers,
    })
}

/// The path a target is routed by, without its query; None for a target that names no path.
fn route_path(target: &str) -> Option<String> {
    let rest = if target.starts_with('/') || target == "*" {
        target
    } else {
        // Absolute form (`http://host:port/path`), which servers must accept (RFC 9112 §3.2.2).
        let (scheme, rest) = target.split_once("://")?;
        if !scheme.eq_ignore_ascii_case("http") && !scheme.eq_ignore_ascii_case("https") {
            return None;
        }
        match rest.find('/') {
            Some(i) => &rest[i..],
            None => "/",
        }
    };
    let end = rest.find(['?', '#']).unwrap_or(rest.len());
    Some(rest[..end].to_string())
}

/// Token characters of RFC 9110 §5.6.2: what methods and header names are made of.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// An answer, written with its length and closed after.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub headers: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn new(status: u16, content_type: &'static str, body: impl Into<Vec<u8>>) -> Response {
        Response {
            status,
            content_type,
            headers: Vec::new(),
            body: body.into(),
        }
    }

    /// A plain-text answer; the body ends in a newline so `curl` output reads well.
    pub fn text(status: u16, body: &str) -> Response {
        let mut b = body.to_string();
        if !b.ends_with('\n') {
            b.push('\n');
        }
        Response::new(status, "text/plain; charset=utf-8", b)
    }

    pub fn with_header(mut self, name: &'static str, value: impl Into<String>) -> Response {
        self.headers.push((name, value.into()));
        self
    }

    /// The bytes on the wire. A HEAD answer carries the headers of the GET, body left out.
    pub fn to_bytes(&self, head_only: bool) -> Vec<u8> {
        let mut out = Vec::with_capacity(256 + self.body.len());
        let _ = write!(
            out,
            "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\n",
            self.status,
            reason(self.status),
            self.content_type,
            self.body.len()
        );
        for (n, v) in &self.headers {
            let _ = write!(out, "{n}: {v}\r\n");
        }
        // Every answer is live data: a cached one would show a stale agent. nosniff keeps a
        // browser from reading an error that echoes the request as anything but text.
        out.extend_from_slice(
            b"Cache-Control: no-store\r\nX-Content-Type-Options: nosniff\r\nConnection: close\r\n\r\n",
        );
        if !head_only {
            out.extend_from_slice(&self.body);
        }
        out
    }
}

pub fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        505 => "HTTP Version Not Supported",
        _ => "Unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Request, RequestError> {
        parse_head(s.as_bytes())
    }

    #[test]
    fn a_plain_get_is_parsed_and_the_query_is_not_part_of_the_path() {
        let r =
            parse("GET /metrics?x=1&y HTTP/1.1\r\nHost: a:5066\r\nUser-Agent:  curl/8 \r\n\r\n")
                .unwrap();
        assert_eq!(r.method, "GET");
        assert_eq!(r.path, "/metrics");
        assert_eq!(r.target, "/metrics?x=1&y");
        assert_eq!(r.version, "HTTP/1.1");
        assert_eq!(r.header("user-agent"), Some("curl/8"));
        assert_eq!(r.header("host"), Some("a:5066"));
    }

    #[test]
    fn bare_lf_lines_leading_empty_lines_and_http_1_0_without_host_are_accepted() {
        let r = parse("\r\nHEAD / HTTP/1.0\nAccept: */*\n\n").unwrap();
        assert_eq!((r.method.as_str(), r.path.as_str()), ("HEAD", "/"));
    }

    #[test]
    fn the_absolute_form_routes_by_its_path() {
        let r = parse("GET http://127.0.0.1:5066/healthz?v HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        assert_eq!(r.path, "/healthz");
        let r = parse("GET http://127.0.0.1:5066 HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        assert_eq!(r.path, "/");
    }

    #[test]
    fn malformed_request_lines_are_400() {
        for bad in [
            "GET  /metrics HTTP/1.1",
            "GET /metrics",
            "GET /metrics HTTP/1.1 extra",
            "G(T /metrics HTTP/1.1",
            "GET metrics HTTP/1.1",
            "GET /metrics HTTP/1",
            "GET /metrics FTP/1.1",
            "GET /m\u{e9}trics HTTP/1.1",
            "GET ftp://x/metrics HTTP/1.1",
        ] {
            let e = parse(&format!("{bad}\r\nHost: x\r\n\r\n")).unwrap_err();
            assert!(
                matches!(e, RequestError::BadRequestLine { .. }),
                "{bad:?}: {e}"
            );
            assert_eq!(e.status(), Some(400));
        }
    }

    #[test]
    fn other_http_versions_are_505() {
        let e = parse("GET / HTTP/2.0\r\nHost: x\r\n\r\n").unwrap_err();
        assert_eq!(e.status(), Some(505), "{e}");
    }

    #[test]
    fn malformed_headers_and_missing_or_repeated_hosts_are_400() {
        for bad in [
            "GET / HTTP/1.1\r\nHost: x\r\nNo colon here\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: x\r\nBad Name: v\r\n\r\n",
            "GET / HTTP/1.1\r\nHost : x\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: x\r\nX-A: 1\r\n  folded\r\n\r\n",
            "GET / HTTP/1.1\r\n: empty-name\r\nHost: x\r\n\r\n",
            "GET / HTTP/1.1\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n",
        ] {
            let e = parse(bad).unwrap_err();
            assert_eq!(e.status(), Some(400), "{bad:?}: {e}");
        }
    }

    #[test]
    fn the_head_ends_at_the_first_empty_line_after_the_request_line() {
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nHost: x\r\n"), None);
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nHost: x\r\n\r\nBODY"), Some(27));
        assert_eq!(head_end(b"\r\n\r\n"), None);
        assert_eq!(head_end(b"GET / HTTP/1.0\n\n"), Some(16));
    }

    #[test]
    fn responses_carry_type_length_and_close_and_head_drops_only_the_body() {
        let r = Response::text(404, "not found").with_header("Allow", "GET, HEAD");
        let get = String::from_utf8(r.to_bytes(false)).unwrap();
        assert!(get.starts_with("HTTP/1.1 404 Not Found\r\n"), "{get}");
        assert!(get.contains("\r\nContent-Type: text/plain; charset=utf-8\r\n"));
        assert!(get.contains("\r\nContent-Length: 10\r\n"));
        assert!(get.contains("\r\nAllow: GET, HEAD\r\n"));
        assert!(get.contains("\r\nConnection: close\r\n"));
        assert!(get.ends_with("\r\n\r\nnot found\n"));
        let head = String::from_utf8(r.to_bytes(true)).unwrap();
        assert!(head.contains("\r\nContent-Length: 10\r\n"));
        assert!(head.ends_with("\r\n\r\n"));
    }
}
