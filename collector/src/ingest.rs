//! Turning an ingest body into a checked batch: gzip decoding, NDJSON
//! parsing of the agent's record format, and the rule that a host writes
//! only as itself. Nothing here touches disk.
//!
//! Lines are read by `scan` when they are plain enough for it to be sure,
//! and by serde_json otherwise; both give the same `WireRecord`.

use std::borrow::Cow;
use std::collections::HashMap;
use std::io::Read;
use std::ops::Range;

use serde::Deserialize;

use crate::names::{self, IdError};

mod scan;

/// Which piece of the original record a wire record carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Part {
    Whole,
    Head,
    Tail,
}

/// The fields the collector acts on; everything else in the line is kept
/// verbatim because the line itself is what gets stored.
#[derive(Debug, PartialEq, Deserialize)]
struct WireRecord<'a> {
    #[serde(borrow)]
    host: Cow<'a, str>,
    #[serde(borrow)]
    stream: Cow<'a, str>,
    offset: u64,
    part: Part,
}

/// The part of a record that `path` alerts want, parsed only when an alert
/// fires so the hot path does not copy paths.
#[derive(Debug, Deserialize)]
struct PathOnly<'a> {
    #[serde(borrow, default)]
    path: Option<Cow<'a, str>>,
}

/// One record of a batch: where its line sits in the decoded body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub offset: u64,
    pub part: Part,
    /// Byte range of the line (without its newline) in [`Batch::body`].
    pub line: Range<usize>,
}

/// The records of one stream, in the order they arrived.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamRecords {
    pub stream: String,
    pub records: Vec<Record>,
}

/// A parsed, host-checked batch.
#[derive(Debug)]
pub struct Batch {
    /// The decoded body; records point into it.
    pub body: Vec<u8>,
    pub streams: Vec<StreamRecords>,
    pub record_count: usize,
}

impl Batch {
    pub fn line(&self, r: &Record) -> &[u8] {
        &self.body[r.line.clone()]
    }

    /// The `path` field of a record, if it has one.
    pub fn path_of(&self, r: &Record) -> Option<String> {
        serde_json::from_slice::<PathOnly<'_>>(self.line(r))
            .ok()
            .and_then(|p| p.path.map(Cow::into_owned))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("body is not valid gzip: {0}")]
    Gzip(std::io::Error),
    #[error("body is larger than {limit} bytes once decoded")]
    TooLarge { limit: u64 },
    #[error("unsupported Content-Encoding {0:?} (use gzip or none)")]
    Encoding(String),
    #[error("line {line}: not a JSON object")]
    NotObject { line: usize },
    #[error("line {line}: not UTF-8 at byte {at} (bytes that are not text go in `msg_b64`)")]
    NotUtf8 { line: usize, at: usize },
    #[error("line {line}: {source}")]
    Json {
        line: usize,
        source: serde_json::Error,
    },
    #[error("line {line}: `{field}` {source}")]
    BadId {
        line: usize,
        field: &'static str,
        source: IdError,
    },
    #[error("line {line}: record host {record:?} is not the certificate's host {cert:?}; a host may only write as itself")]
    HostMismatch {
        line: usize,
        record: String,
        cert: String,
    },
}

impl IngestError {
    /// Only a host writing as another is a 403; the rest are the body's
    /// fault (400, 413, 415).
    pub fn status(&self) -> u16 {
        match self {
            IngestError::HostMismatch { .. } => 403,
            IngestError::TooLarge { .. } => 413,
            IngestError::Encoding(_) => 415,
            _ => 400,
        }
    }
}

/// Decodes the body per `Content-Encoding`, refusing more than `limit`
/// decoded bytes.
pub fn decode_body(
    body: Vec<u8>,
    encoding: Option<&str>,
    limit: u64,
) -> Result<Vec<u8>, IngestError> {
    let out = match encoding.map(str::trim) {
        None | Some("") | Some("identity") => body,
        Some(e) if e.eq_ignore_ascii_case("gzip") || e.eq_ignore_ascii_case("x-gzip") => {
            let mut out = Vec::with_capacity(gzip_size_hint(&body, limit));
            flate2::read::MultiGzDecoder::new(&body[..])
                .take(limit + 1)
                .read_to_end(&mut out)
                .map_err(IngestError::Gzip)?;
            out
        }
        Some(other) => return Err(IngestError::Encoding(other.to_owned())),
    };
    if out.len() as u64 > limit {
        return Err(IngestError::TooLarge { limit });
    }
    Ok(out)
}

/// How much room to make for a gzip body once decoded. Log lines compress
/// ten to twenty times, so a guess from the compressed size left the
/// buffer to double (and copy) several times. The gzip trailer ends with
/// the last member's decoded size (mod 4 GiB); it comes from the peer, so
/// it is only a first allocation, capped by `limit`, and a wrong one (a
/// lie, several members) costs a regrowth, never a wrong result.
fn gzip_size_hint(body: &[u8], limit: u64) -> usize {
    let announced = match body.len().checked_sub(4) {
        Some(at) => u32::from_le_bytes([body[at], body[at + 1], body[at + 2], body[at + 3]]),
        None => 0,
    };
    let cap = usize::try_from(limit.saturating_add(1)).unwrap_or(usize::MAX);
    (announced as usize).max(body.len()).min(cap)
}

/// Parses NDJSON records, grouping them by stream, and refuses the whole
/// batch if any record is malformed or claims a host other than
/// `cert_host`.
pub fn parse_batch(body: Vec<u8>, cert_host: &str) -> Result<Batch, IngestError> {
    let mut streams: Vec<StreamRecords> = Vec::new();
    let mut by_stream: HashMap<String, usize> = HashMap::new();
    // Batches hold one stream or a few, in runs: checking the last one
    // first saves hashing the id on every line.
    let mut last_stream = 0;
    let mut record_count = 0;
    let mut start = 0;
    let mut line_no = 0;
    while start < body.len() {
        line_no += 1;
        let end = memchr::memchr(b'\n', &body[start..]).map_or(body.len(), |i| start + i);
        let mut range = start..end;
        start = end + 1;
        if body[range.clone()].ends_with(b"\r") {
            range.end -= 1;
        }
        let line = &body[range.clone()];
        let Some(first) = line.iter().position(|b| !b.is_ascii_whitespace()) else {
            continue;
        };
        if line[first] != b'{' {
            return Err(IngestError::NotObject { line: line_no });
        }
        let rec = match scan::wire_record(line) {
            Some(rec) => rec,
            None => {
                // serde_json checks UTF-8 only where it decodes (keys, host, stream, part), not
                // in the values it skips; a stored line must be JSON, and JSON is UTF-8.
                if let Err(e) = std::str::from_utf8(line) {
                    return Err(IngestError::NotUtf8 {
                        line: line_no,
                        at: e.valid_up_to(),
                    });
                }
                serde_json::from_slice(line).map_err(|source| IngestError::Json {
                    line: line_no,
                    source,
                })?
            }
        };
        if rec.host != cert_host {
            return Err(IngestError::HostMismatch {
                line: line_no,
                record: rec.host.into_owned(),
                cert: cert_host.to_owned(),
            });
        }
        names::check_id(&rec.stream).map_err(|source| IngestError::BadId {
            line: line_no,
            field: "stream",
            source,
        })?;
        let idx = match streams.get(last_stream) {
            Some(s) if s.stream == rec.stream => last_stream,
            _ => match by_stream.get(rec.stream.as_ref()) {
                Some(i) => *i,
                None => {
                    streams.push(StreamRecords {
                        stream: rec.stream.clone().into_owned(),
                        records: Vec::new(),
                    });
                    by_stream.insert(rec.stream.into_owned(), streams.len() - 1);
                    streams.len() - 1
                }
            },
        };
        last_stream = idx;
        streams[idx].records.push(Record {
            offset: rec.offset,
            part: rec.part,
            line: range,
        });
        record_count += 1;
    }
    Ok(Batch {
        body,
        streams,
        record_count,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(host: &str, stream: &str, offset: u64, part: &str) -> String {
        format!(
            r#"{{"host":"{host}","source":"s","stream":"{stream}","path":"/var/log/x","offset":{offset},"len":5,"part":"{part}","ts":"2026-01-01T00:00:00Z","msg":"hello","extra":[1,2]}}"#
        )
    }

    #[test]
    fn groups_by_stream_and_keeps_lines_verbatim() {
        let body = format!(
            "{}\n{}\r\n\n{}",
            rec("h", "a", 0, "whole"),
            rec("h", "b", 0, "head"),
            rec("h", "a", 6, "whole")
        );
        let batch = parse_batch(body.into_bytes(), "h").unwrap();
        assert_eq!(batch.record_count, 3);
        assert_eq!(batch.streams.len(), 2);
        assert_eq!(batch.streams[0].stream, "a");
        assert_eq!(batch.streams[0].records.len(), 2);
        assert_eq!(batch.streams[1].records[0].part, Part::Head);
        let line = batch.line(&batch.streams[0].records[1]);
        assert_eq!(line, rec("h", "a", 6, "whole").as_bytes());
        assert_eq!(
            batch.path_of(&batch.streams[0].records[0]).as_deref(),
            Some("/var/log/x")
        );
    }

    #[test]
    fn another_host_refuses_the_whole_batch() {
        let body = format!(
            "{}\n{}\n",
            rec("h", "a", 0, "whole"),
            rec("other", "a", 6, "whole")
        );
        let err = parse_batch(body.into_bytes(), "h").unwrap_err();
        assert!(
            matches!(err, IngestError::HostMismatch { line: 2, .. }),
            "{err}"
        );
        assert_eq!(err.status(), 403);
    }

    #[test]
    fn malformed_lines_name_the_line() {
        let err = parse_batch(b"{\"host\":\"h\"}\n".to_vec(), "h").unwrap_err();
        assert!(err.to_string().starts_with("line 1:"), "{err}");
        let mut bad = rec("h", "a", 0, "whole").into_bytes();
        let at = bad.len() - 20;
        bad[at] = 0xff;
        let err = parse_batch(bad, "h").unwrap_err();
        assert!(matches!(err, IngestError::NotUtf8 { line: 1, .. }), "{err}");
        assert!(err.to_string().contains("not UTF-8"), "{err}");
        let err = parse_batch(b"[1]\n".to_vec(), "h").unwrap_err();
        assert!(matches!(err, IngestError::NotObject { line: 1 }));
        let body = rec("h", "", 0, "whole");
        assert!(matches!(
            parse_batch(body.into_bytes(), "h"),
            Err(IngestError::BadId { .. })
        ));
    }

    #[test]
    fn a_line_with_bad_utf8_in_a_skipped_field_is_refused() {
        // serde_json does not check the UTF-8 of values it skips; a stored
        // line must still be JSON, which is UTF-8.
        let mut body = rec("h", "a", 0, "whole").into_bytes();
        body.push(b'\n');
        let second = rec("h", "a", 9, "whole").into_bytes();
        let msg = body.len() + second.windows(5).position(|w| w == b"hello").unwrap();
        body.extend_from_slice(&second);
        body.splice(msg..msg, *b"\xff");
        let err = parse_batch(body, "h").unwrap_err();
        assert!(matches!(err, IngestError::NotUtf8 { line: 2, .. }), "{err}");
    }

    /// `parse_batch` without the fast path: a whole-line UTF-8 check, then
    /// serde_json for every line. The model the property test below compares
    /// with.
    fn parse_with_serde_only(
        body: &[u8],
        cert_host: &str,
    ) -> Result<(Vec<StreamRecords>, usize), IngestError> {
        let mut streams: Vec<StreamRecords> = Vec::new();
        let mut count = 0;
        let mut start = 0;
        let mut line_no = 0;
        while start < body.len() {
            line_no += 1;
            let end = body[start..]
                .iter()
                .position(|b| *b == b'\n')
                .map_or(body.len(), |i| start + i);
            let mut range = start..end;
            start = end + 1;
            if body[range.clone()].ends_with(b"\r") {
                range.end -= 1;
            }
            let text = &body[range.clone()];
            let Some(first) = text.iter().position(|b| !b.is_ascii_whitespace()) else {
                continue;
            };
            if text[first] != b'{' {
                return Err(IngestError::NotObject { line: line_no });
            }
            if let Err(e) = std::str::from_utf8(text) {
                return Err(IngestError::NotUtf8 {
                    line: line_no,
                    at: e.valid_up_to(),
                });
            }
            let rec: WireRecord<'_> =
                serde_json::from_slice(text).map_err(|source| IngestError::Json {
                    line: line_no,
                    source,
                })?;
            if rec.host != cert_host {
                return Err(IngestError::HostMismatch {
                    line: line_no,
                    record: rec.host.into_owned(),
                    cert: cert_host.to_owned(),
                });
            }
            names::check_id(&rec.stream).map_err(|source| IngestError::BadId {
                line: line_no,
                field: "stream",
                source,
            })?;
            let record = Record {
                offset: rec.offset,
                part: rec.part,
                line: range,
            };
            match streams.iter_mut().find(|s| s.stream == rec.stream) {
                Some(s) => s.records.push(record),
                None => streams.push(StreamRecords {
                    stream: rec.stream.into_owned(),
                    records: vec![record],
                }),
            }
            count += 1;
        }
        Ok((streams, count))
    }

    mod model {
        use super::*;
        use proptest::prelude::*;

        /// A body line: an agent record (any message, sometimes another host
        /// or a bad stream id), maybe with a byte changed or inserted.
        fn line() -> impl Strategy<Value = Vec<u8>> {
            let host = prop_oneof![8 => Just("h"), 1 => Just("other"), 1 => Just("h\\u0000")];
            let stream = prop_oneof![4 => Just("a".to_owned()), 4 => Just("b".to_owned()), 1 => Just(String::new()), 1 => "[a-z]{79,82}"];
            let msg = any::<String>().prop_map(|m| serde_json::to_string(&m).unwrap());
            let edit = prop_oneof![
                6 => Just(None),
                1 => (any::<proptest::sample::Index>(), any::<u8>()).prop_map(Some),
                1 => (any::<proptest::sample::Index>(), prop_oneof![Just(0xffu8), Just(0xc3), Just(b'"'), Just(b'\\'), Just(1)]).prop_map(Some),
            ];
            (host, stream, any::<u32>(), msg, edit, any::<bool>()).prop_map(
                |(host, stream, offset, msg, edit, replace)| {
                    let mut b = format!(
                        r#"{{"host":"{host}","stream":"{stream}","offset":{offset},"part":"whole","msg":{msg}}}"#
                    )
                    .into_bytes();
                    if let Some((at, x)) = edit {
                        let at = at.index(b.len());
                        if replace {
                            b[at] = x;
                        } else {
                            b.insert(at, x);
                        }
                    }
                    b
                },
            )
        }

        fn body() -> impl Strategy<Value = Vec<u8>> {
            let sep = prop_oneof![6 => Just(&b"\n"[..]), 1 => Just(&b"\r\n"[..]), 1 => Just(&b"\n \n"[..])];
            (
                proptest::collection::vec((line(), sep), 0..6),
                any::<bool>(),
            )
                .prop_map(|(lines, last_newline)| {
                    let mut body = Vec::new();
                    for (line, sep) in &lines {
                        body.extend_from_slice(line);
                        body.extend_from_slice(sep);
                    }
                    if !last_newline && body.ends_with(b"\n") {
                        body.pop();
                    }
                    body
                })
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 5_000, ..ProptestConfig::default() })]
            #[test]
            fn parse_batch_agrees_with_serde_only(body in body()) {
                let want = parse_with_serde_only(&body, "h").map_err(|e| e.to_string());
                let got = parse_batch(body.clone(), "h")
                    .map(|b| (b.streams, b.record_count))
                    .map_err(|e| e.to_string());
                prop_assert_eq!(got, want, "{:?}", String::from_utf8_lossy(&body));
            }
        }
    }

    #[test]
    fn gzip_is_decoded_and_bounded() {
        use std::io::Write;
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(&vec![b'a'; 5000]).unwrap();
        let gz = enc.finish().unwrap();
        assert_eq!(
            decode_body(gz.clone(), Some("gzip"), 5000).unwrap().len(),
            5000
        );
        assert!(matches!(
            decode_body(gz, Some("gzip"), 4999),
            Err(IngestError::TooLarge { .. })
        ));
        assert!(matches!(
            decode_body(vec![1, 2], Some("br"), 10),
            Err(IngestError::Encoding(_))
        ));
    }

    #[test]
    fn gzip_room_comes_from_the_trailer_within_the_limit() {
        use std::io::Write;
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(&vec![b'a'; 5000]).unwrap();
        let gz = enc.finish().unwrap();
        assert_eq!(gzip_size_hint(&gz, 1 << 20), 5000);
        assert_eq!(gzip_size_hint(&gz, 4000), 4001, "capped by the limit");
        assert_eq!(
            gzip_size_hint(&[0; 100], 1 << 20),
            100,
            "never below the body"
        );
        assert_eq!(gzip_size_hint(&[0xff; 8], 1 << 20), (1 << 20) + 1, "a lie");
        assert_eq!(gzip_size_hint(&[1, 2, 3], 1 << 20), 3);
    }
}
