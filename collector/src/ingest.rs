//! Turning an ingest body into a checked batch: lz4 or gzip decoding, NDJSON
//! parsing of the agent's record format, and the rule that a host writes
//! only as itself. Nothing here touches disk.
//!
//! Lines are read by `scan` when they are plain enough for it to be sure,
//! and by serde_json otherwise; both give the same `WireRecord`.

use std::borrow::Cow;
use std::collections::HashMap;
use std::io::{BufRead, Read};
use std::ops::Range;

use serde::Deserialize;

use crate::names::{self, IdError};

mod gzip_members;
mod lz4_frames;
mod scan;

/// The `Accept-Encoding` of every ingest reply: the request encodings read here, fastest first.
/// An agent with `compression = "auto"` moves from gzip to lz4 when it sees lz4 here; an
/// older collector sends no such header, and its agents stay on gzip.
pub const ACCEPTED_ENCODINGS: &str = "lz4, gzip";

/// Which piece of the original record a wire record carries: the agent's own type.
pub use log_sensor_common::record::Part;

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
        path_of_line(self.line(r))
    }
}

/// The `path` field of a record's line, if it has one.
pub fn path_of_line(line: &[u8]) -> Option<String> {
    serde_json::from_slice::<PathOnly<'_>>(line)
        .ok()
        .and_then(|p| p.path.map(Cow::into_owned))
}

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("body is not valid gzip (Content-Encoding: gzip): {0}")]
    Gzip(std::io::Error),
    #[error("body has {len} trailing bytes after the gzip stream (from byte {at}), which do not start another gzip member (Content-Encoding: gzip)")]
    GzipTrailing { at: u64, len: u64 },
    #[error("body is not a valid LZ4 frame (Content-Encoding: lz4): {0}")]
    Lz4(std::io::Error),
    #[error("body is larger than {limit} bytes once decoded")]
    TooLarge { limit: u64 },
    #[error("unsupported Content-Encoding {0:?} (use lz4, gzip or none)")]
    Encoding(String),
    #[error("the body ended before its end")]
    Cut,
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

/// Parses NDJSON records, grouping them by stream, and refuses the whole
/// batch if any record is malformed or claims a host other than
/// `cert_host`.
pub fn parse_batch(body: Vec<u8>, cert_host: &str) -> Result<Batch, IngestError> {
    BatchParser::new(cert_host).finish(body)
}

/// Decodes (per `Content-Encoding`) and parses a body while it is still
/// arriving through `src`: each piece of up to 256 KiB of decoded bytes is
/// parsed as soon as it is read, so parsing overlaps receiving and
/// decrypting instead of following them. At most `limit` decoded bytes.
/// `sent` is the body's length as sent (Content-Length, 0 if unknown): the
/// room made up front, times a typical ratio for its encoding. Nothing is stored
/// here, so a body refused at its last line leaves no trace.
pub fn read_batch(
    src: impl BufRead,
    encoding: Option<&str>,
    limit: u64,
    sent: u64,
    cert_host: &str,
) -> Result<Batch, IngestError> {
    read_batch_with(src, encoding, limit, sent, cert_host, |_, _| Ok(()))
}

/// [`read_batch`], handing the records parsed so far to `parsed` after
/// each piece (the body so far, and each stream's records so far, whose
/// lists only grow), so they can be written while the rest arrives. The
/// returned batch's records were not all handed over yet.
pub fn read_batch_with<E: From<IngestError>>(
    src: impl BufRead,
    encoding: Option<&str>,
    limit: u64,
    sent: u64,
    cert_host: &str,
    parsed: impl FnMut(&[u8], &[StreamRecords]) -> Result<(), E>,
) -> Result<Batch, E> {
    read_batch_in_pieces(src, encoding, limit, sent, cert_host, 256 * 1024, parsed)
}

fn read_batch_in_pieces<E: From<IngestError>>(
    src: impl BufRead,
    encoding: Option<&str>,
    limit: u64,
    sent: u64,
    cert_host: &str,
    piece: u64,
    mut parsed: impl FnMut(&[u8], &[StreamRecords]) -> Result<(), E>,
) -> Result<Batch, E> {
    #[derive(Clone, Copy, PartialEq)]
    enum Coding {
        Identity,
        Gzip,
        Lz4,
    }
    let coding = match encoding.map(str::trim) {
        None | Some("") | Some("identity") => Coding::Identity,
        Some(e) if e.eq_ignore_ascii_case("gzip") || e.eq_ignore_ascii_case("x-gzip") => {
            Coding::Gzip
        }
        Some(e) if e.eq_ignore_ascii_case("lz4") => Coding::Lz4,
        Some(other) => return Err(IngestError::Encoding(other.to_owned()).into()),
    };
    let failed = |e: std::io::Error| {
        let inner = e.get_ref();
        if inner.is_some_and(|r| r.is::<BodyCut>()) {
            return IngestError::Cut;
        }
        if let Some(t) = inner.and_then(|r| r.downcast_ref::<gzip_members::TrailingBytes>()) {
            return IngestError::GzipTrailing {
                at: t.at,
                len: t.len,
            };
        }
        match coding {
            Coding::Gzip => IngestError::Gzip(e),
            Coding::Lz4 => IngestError::Lz4(e),
            Coding::Identity => IngestError::Cut,
        }
    };
    let mut parser = BatchParser::new(cert_host);
    // Log lines compress ten to twenty times with gzip, four to eight with
    // lz4; a room too small only costs a regrowth, and the limit caps what a
    // peer's Content-Length can ask.
    let ratio = match coding {
        Coding::Identity => 1,
        Coding::Gzip => 12,
        Coding::Lz4 => 6,
    };
    let room = sent.saturating_mul(ratio).min(limit + 1);
    let mut body = Vec::with_capacity(usize::try_from(room).unwrap_or(usize::MAX));
    // lz4 is read like a plain body: the decoder hands out each decoded
    // block through `BufRead`, so a block is copied once, into `body`. Its
    // input's frames are followed (`lz4_frames`): the decoder takes a body
    // cut between blocks for its end, and ends its output at each frame's. gzip's members are
    // followed likewise (`gzip_members`), so bytes after the last one are named, not guessed at.
    enum Decode<R: BufRead> {
        Plain(R),
        Lz4(lz4_flex::frame::FrameDecoder<lz4_frames::Frames<R>>),
        Gzip(gzip_members::Members<R>),
    }
    let mut src = match coding {
        Coding::Gzip => Decode::Gzip(gzip_members::Members::new(src)),
        Coding::Lz4 => Decode::Lz4(lz4_flex::frame::FrameDecoder::new(lz4_frames::Frames::new(
            src,
        ))),
        Coding::Identity => Decode::Plain(src),
    };
    loop {
        let room = (limit + 1).saturating_sub(body.len() as u64).min(piece);
        let n = match &mut src {
            Decode::Gzip(d) => d.take(room).read_to_end(&mut body).map_err(failed)?,
            // Plain bodies are appended straight from the source's buffers:
            // `read_to_end` would zero the room first.
            Decode::Plain(src) => append_from(src, &mut body, room as usize).map_err(failed)?,
            Decode::Lz4(src) => {
                let room = room as usize;
                let mut n = 0;
                // Each frame's end looks like the body's: go on while frames follow.
                while n < room {
                    let got = append_from(src, &mut body, room - n).map_err(failed)?;
                    n += got;
                    if got == 0 && !src.get_mut().more().map_err(failed)? {
                        break;
                    }
                }
                n
            }
        };
        if body.len() as u64 > limit {
            return Err(IngestError::TooLarge { limit }.into());
        }
        if n == 0 {
            return Ok(parser.finish(body)?);
        }
        parser.feed(&body)?;
        parsed(&body, &parser.streams)?;
    }
}

/// Appends up to `room` bytes of `src` to `body`, straight from its buffers.
fn append_from(src: &mut impl BufRead, body: &mut Vec<u8>, room: usize) -> std::io::Result<usize> {
    let mut n = 0;
    while n < room {
        let chunk = src.fill_buf()?;
        if chunk.is_empty() {
            break;
        }
        let take = chunk.len().min(room - n);
        body.extend_from_slice(&chunk[..take]);
        src.consume(take);
        n += take;
    }
    Ok(n)
}

/// What a body source returns when the body stopped before its end (the
/// connection failed, or the body was refused while it was read).
#[derive(Debug, thiserror::Error)]
#[error("the body ended before its end")]
pub struct BodyCut;

/// Parses a body line by line as it grows: `feed` reads the complete lines
/// not read yet, `finish` the last one, and hands over the batch.
pub struct BatchParser<'h> {
    cert_host: &'h str,
    streams: Vec<StreamRecords>,
    by_stream: HashMap<String, usize>,
    // Batches hold one stream or a few, in runs: checking the last one
    // first saves hashing the id on every line.
    last_stream: usize,
    record_count: usize,
    /// Where the next line starts.
    start: usize,
    line_no: usize,
}

impl<'h> BatchParser<'h> {
    pub fn new(cert_host: &'h str) -> BatchParser<'h> {
        BatchParser {
            cert_host,
            streams: Vec::new(),
            by_stream: HashMap::new(),
            last_stream: 0,
            record_count: 0,
            start: 0,
            line_no: 0,
        }
    }

    /// Parses the lines of `body` (the body so far) that end in a newline
    /// and were not parsed yet.
    pub fn feed(&mut self, body: &[u8]) -> Result<(), IngestError> {
        match memchr::memrchr(b'\n', &body[self.start.min(body.len())..]) {
            Some(i) => self.parse(body, self.start + i + 1),
            None => Ok(()),
        }
    }

    /// Parses what is left of the whole body and returns the batch.
    pub fn finish(mut self, body: Vec<u8>) -> Result<Batch, IngestError> {
        self.parse(&body, body.len())?;
        Ok(Batch {
            body,
            streams: self.streams,
            record_count: self.record_count,
        })
    }

    fn parse(&mut self, body: &[u8], upto: usize) -> Result<(), IngestError> {
        while self.start < upto {
            self.line_no += 1;
            let line_no = self.line_no;
            let start = self.start;
            let end = memchr::memchr(b'\n', &body[start..upto]).map_or(upto, |i| start + i);
            let mut range = start..end;
            self.start = end + 1;
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
            if rec.host != self.cert_host {
                return Err(IngestError::HostMismatch {
                    line: line_no,
                    record: rec.host.into_owned(),
                    cert: self.cert_host.to_owned(),
                });
            }
            names::check_id(&rec.stream).map_err(|source| IngestError::BadId {
                line: line_no,
                field: "stream",
                source,
            })?;
            let streams = &mut self.streams;
            let idx = match streams.get(self.last_stream) {
                Some(s) if s.stream == rec.stream => self.last_stream,
                _ => match self.by_stream.get(rec.stream.as_ref()) {
                    Some(i) => *i,
                    None => {
                        streams.push(StreamRecords {
                            stream: rec.stream.clone().into_owned(),
                            records: Vec::new(),
                        });
                        self.by_stream
                            .insert(rec.stream.into_owned(), streams.len() - 1);
                        streams.len() - 1
                    }
                },
            };
            self.last_stream = idx;
            streams[idx].records.push(Record {
                offset: rec.offset,
                part: rec.part,
                line: range,
            });
            self.record_count += 1;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
