//! Reading a reply: the status line, the headers the client acts on, and a Content-Length or
//! chunked body, from bytes that may arrive in any pieces.

use super::{classify, HttpConn, HttpError};
use std::io::Read;

const MAX_RESPONSE_BYTES: usize = 1 << 20;

/// A reply: status and body (bodies here are small JSON documents).
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub body: Vec<u8>,
    /// `Retry-After` in seconds (the collector sends no HTTP-date form).
    pub retry_after: Option<u64>,
    /// `Accept-Encoding`: the request encodings the server announces it accepts (RFC 9110
    /// section 12.5.3); None from a server that announces none.
    pub accept_encoding: Option<String>,
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

impl HttpConn {
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
        let mut accept_encoding = None;
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
                "accept-encoding" => accept_encoding = Some(v.to_string()),
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
            accept_encoding,
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
