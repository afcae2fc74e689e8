//! How one batch becomes `POST /v1/ingest` requests: cut at line ends so that no request is over
//! the collector's `max_batch_bytes` (413 `too_large`) or names more distinct streams than its
//! `max_new_streams_per_batch` (400 `too_many_new_streams`). Either refusal is final for that
//! request: sent again as it is, it would be refused again, and shipping would stop for good. So
//! each refusal lowers its cap ([`ByteCap`], [`StreamCap`]) and the batch goes again, cut finer;
//! only a single line over the collector's byte limit cannot be cut, and its refusal names it
//! ([`LoneRecord`]).

use crate::batch::Batch;
use std::ops::Range;
use std::sync::Arc;

/// Largest NDJSON body per request: well under the collector's default `max_batch_bytes`
/// (64 MiB, counted after gzip decoding), whatever `batch.max_bytes` is.
pub const MAX_REQUEST_BYTES: usize = 16 << 20;

/// Distinct streams per request until the collector says otherwise: its default
/// `max_new_streams_per_batch`. A request naming at most this many streams cannot create more
/// new ones than that, whichever of them the collector already knows.
pub const DEFAULT_MAX_STREAMS: usize = 1024;

/// The byte cap never goes lower when the collector states no limit and keeps refusing: below
/// the NDJSON that fits its smallest `max_batch_bytes` (1024, see [`fits_under`]), so a stated
/// limit is always followed, and a request still holds a line or two of a typical log.
pub const MIN_REQUEST_BYTES: usize = 512;

/// The batch's NDJSON (one line per record, in record order, as [`Batch::write_ndjson`] makes
/// it) cut into requests of at most `max_bytes` (a longer line is a request of its own) and at
/// most `max_streams` distinct streams.
pub fn cut(
    ndjson: &[u8],
    batch: &Batch,
    max_bytes: usize,
    max_streams: usize,
) -> Vec<Range<usize>> {
    // The common batch names few streams: then only bytes decide, and no line is looked at.
    if batch.streams.len() <= max_streams {
        return by_bytes(ndjson, max_bytes);
    }
    by_streams(
        ndjson,
        batch.slots(),
        batch.streams.len(),
        max_bytes,
        max_streams,
    )
}

/// Cut at line ends into pieces of at most `max` bytes (a longer line is a piece of its own).
fn by_bytes(ndjson: &[u8], max: usize) -> Vec<Range<usize>> {
    let mut out = Vec::new();
    let mut start = 0;
    while start < ndjson.len() {
        let mut end = (start + max).min(ndjson.len());
        if end < ndjson.len() {
            end = match ndjson[start..end].iter().rposition(|&b| b == b'\n') {
                Some(i) => start + i + 1,
                None => memchr::memchr(b'\n', &ndjson[end..])
                    .map(|i| end + i + 1)
                    .unwrap_or(ndjson.len()),
            };
        }
        out.push(start..end);
        start = end;
    }
    out
}

/// Walks the lines in step with their records' stream slots (O(records), no JSON parsing) and
/// ends a piece before the line that would be one stream or one byte too many.
fn by_streams(
    ndjson: &[u8],
    slots: impl Iterator<Item = u32>,
    nslots: usize,
    max_bytes: usize,
    max_streams: usize,
) -> Vec<Range<usize>> {
    let max_streams = max_streams.max(1);
    // The piece that last named each slot: no clearing between pieces.
    let mut named_in = vec![usize::MAX; nslots];
    let mut out = Vec::new();
    let (mut piece, mut start, mut pos, mut distinct) = (0usize, 0usize, 0usize, 0usize);
    for slot in slots {
        if pos >= ndjson.len() {
            break;
        }
        let slot = slot as usize;
        let end = memchr::memchr(b'\n', &ndjson[pos..])
            .map(|i| pos + i + 1)
            .unwrap_or(ndjson.len());
        let new_here = named_in[slot] != piece;
        if pos > start && ((new_here && distinct == max_streams) || end - start > max_bytes) {
            out.push(start..pos);
            start = pos;
            piece += 1;
            distinct = 0;
        }
        if named_in[slot] != piece {
            named_in[slot] = piece;
            distinct += 1;
        }
        pos = end;
    }
    // Lines past the last record cannot happen (one line per record); were there any, they
    // would travel with the last piece rather than be lost.
    if start < ndjson.len() {
        out.push(start..ndjson.len());
    }
    out
}

/// The most NDJSON bytes of a request that a collector whose `max_batch_bytes` is `limit` takes.
/// It refuses a body over `limit` twice: as sent (Content-Length, so encoded) and decoded (the
/// NDJSON itself); `limit` bytes of NDJSON pass the second exactly. The margin is for the first:
/// incompressible NDJSON grows a little when encoded (gzip's stored blocks: 5 bytes per 64 KiB and
/// 18 in all; LZ4's: 4 bytes per 256 KiB block and 11 in all), so it stays under `limit` too.
pub fn fits_under(limit: u64) -> usize {
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    limit.saturating_sub(limit / 1024 + 64)
}

/// The record behind a request that is its line alone: no cut makes that request smaller, so a
/// 413 for it is final until the collector takes more or the source cuts its records shorter.
#[derive(Debug, Clone, PartialEq)]
pub struct LoneRecord {
    /// The `[sources.NAME]` whose `max_record_bytes` bounds the line.
    pub source: Arc<str>,
    /// Stream id and path, to find the record.
    pub stream: Arc<str>,
    pub path: Arc<str>,
    /// Where the record starts in its stream.
    pub offset: u64,
}

/// One request as written, kept until its reply: what a refusal needs to know of it.
#[derive(Debug, Clone, PartialEq)]
pub struct Sent {
    /// NDJSON bytes, before encoding: what the collector's limit is checked against decoded.
    pub bytes: usize,
    /// Set when the request is a single line.
    pub lone: Option<LoneRecord>,
}

/// What each of `pieces` (from [`cut`], in order) carries. Walks the batch's records once, and
/// only as far as the last single-line piece: a piece of several lines costs one look at its
/// first line end.
pub fn describe(ndjson: &[u8], batch: &Batch, pieces: &[Range<usize>]) -> Vec<Sent> {
    let mut records = batch.records();
    // Lines before `counted_to` are consumed from `records`.
    let mut counted_to = 0;
    pieces
        .iter()
        .map(|r| {
            let body = &ndjson[r.clone()];
            let one_line = memchr::memchr(b'\n', body).is_none_or(|i| i + 1 == body.len());
            let lone = if one_line && r.start >= counted_to {
                let skip = memchr::memchr_iter(b'\n', &ndjson[counted_to..r.start]).count();
                counted_to = r.end;
                records.nth(skip).map(|rec| LoneRecord {
                    source: rec.stream.source.clone(),
                    stream: rec.stream.id.clone(),
                    path: rec.stream.path.clone(),
                    offset: rec.offset,
                })
            } else {
                None
            };
            Sent {
                bytes: body.len(),
                lone,
            }
        })
        .collect()
}

/// The most NDJSON bytes one request carries: [`MAX_REQUEST_BYTES`] at first, lowered to what a
/// collector configured lower takes, so that one still gets everything.
#[derive(Debug)]
pub struct ByteCap {
    max: usize,
}

impl ByteCap {
    pub fn new() -> ByteCap {
        ByteCap {
            max: MAX_REQUEST_BYTES,
        }
    }

    pub fn get(&self) -> usize {
        self.max
    }

    /// After a 413 `too_large` for `refused`, whose reply gave the collector's `limit` (or none,
    /// from a collector older than that field, or a proxy): what fits under the limit when that
    /// is below the cap. Otherwise half the refused request, which a batch smaller than the cap
    /// needs to be cut at all (a refusal at or under the stated limit means the limit changed
    /// meanwhile), never below [`MIN_REQUEST_BYTES`]; but not for a single line, which no cap
    /// makes smaller: halving would only shrink every other request. Some(new cap) when it
    /// changed.
    pub fn lower(&mut self, limit: Option<u64>, refused: &Sent) -> Option<usize> {
        let new = match limit.map(fits_under) {
            Some(n) if n < self.max => n,
            _ if refused.lone.is_some() => self.max,
            _ => (refused.bytes.min(self.max) / 2).max(MIN_REQUEST_BYTES),
        };
        let new = new.min(self.max);
        let changed = new != self.max;
        self.max = new;
        changed.then_some(new)
    }
}

/// The most distinct streams one request names: the collector's default at first, lowered to
/// what a collector configured lower says in its refusal, so that one still gets everything.
#[derive(Debug)]
pub struct StreamCap {
    max: usize,
}

impl StreamCap {
    pub fn new() -> StreamCap {
        StreamCap {
            max: DEFAULT_MAX_STREAMS,
        }
    }

    pub fn get(&self) -> usize {
        self.max
    }

    /// After a 400 `too_many_new_streams` whose reply gave the collector's `limit` (or none, from
    /// a collector older than that field): the limit when it is below the cap, else half the
    /// cap (a refusal at or under the stated limit means the limit changed meanwhile); never
    /// below 1. Some(new cap) when it changed.
    pub fn lower(&mut self, limit: Option<u64>) -> Option<usize> {
        let new = match limit {
            Some(n) if (n as usize) < self.max => n as usize,
            _ => self.max / 2,
        }
        .max(1);
        let changed = new != self.max;
        self.max = new;
        changed.then_some(new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::StreamMeta;
    use crate::frame::{Part, Rec};
    use crate::store::Checkpoint;

    #[test]
    fn pieces_end_at_line_ends_and_cover_everything() {
        let text = b"aaaa\nbb\ncccccccccc\nd\n";
        let p = by_bytes(text, 6);
        assert_eq!(p, vec![0..5, 5..8, 8..19, 19..21]);
        assert_eq!(by_bytes(text, 1000), vec![0..text.len()]);
        assert!(by_bytes(b"", 10).is_empty());
        assert_eq!(by_bytes(b"no newline", 3), vec![0..10]);
    }

    /// A batch of `records` (stream slot, message), each slot its own stream.
    fn batch(nstreams: usize, records: &[(u32, &str)]) -> Batch {
        let mut b = Batch::new("h".into(), 0);
        let mut out = crate::batch::Intake::plain(&mut b);
        for i in 0..nstreams {
            let id: std::sync::Arc<str> = format!("{i:04x}").into();
            out.open_stream(
                StreamMeta {
                    id: id.clone(),
                    source: "app".into(),
                    fingerprint: None,
                    path: format!("/l/{i}.log").into(),
                },
                crate::batch::Ack::Store(Checkpoint {
                    stream: id.to_string(),
                    ..Checkpoint::default()
                }),
            );
        }
        for (n, (slot, msg)) in records.iter().enumerate() {
            let rec = Rec {
                offset: n as u64,
                len: msg.len() as u64,
                part: Part::Whole,
                bytes: msg.as_bytes(),
            };
            out.push(*slot, &rec, 0, None);
        }
        drop(out);
        b
    }

    /// The distinct streams of each piece, read back from its JSON lines.
    fn streams_per_piece(ndjson: &[u8], pieces: &[Range<usize>]) -> Vec<usize> {
        pieces
            .iter()
            .map(|r| {
                let ids: std::collections::HashSet<String> = ndjson[r.clone()]
                    .split(|&b| b == b'\n')
                    .filter(|l| !l.is_empty())
                    .map(|l| {
                        let v: serde_json::Value = serde_json::from_slice(l).unwrap();
                        v["stream"].as_str().unwrap().to_string()
                    })
                    .collect();
                ids.len()
            })
            .collect()
    }

    #[test]
    fn requests_name_at_most_the_cap_of_streams_and_cover_every_line_in_order() {
        // Slots revisited across the batch, as a tailer round-robining files makes them.
        let recs: Vec<(u32, &str)> = (0..1000u32).map(|i| ((i * 7) % 250, "m")).collect();
        let b = batch(250, &recs);
        let mut out = Vec::new();
        b.write_ndjson(&mut out);
        for cap in [1, 2, 3, 100, 249, 250, 1024] {
            let p = cut(&out, &b, MAX_REQUEST_BYTES, cap);
            assert_eq!(p.first().unwrap().start, 0);
            assert_eq!(p.last().unwrap().end, out.len());
            assert!(p.windows(2).all(|w| w[0].end == w[1].start), "cap {cap}");
            assert!(p.iter().all(|r| out[r.end - 1] == b'\n'), "cap {cap}");
            let per = streams_per_piece(&out, &p);
            assert!(
                per.iter().all(|&n| n >= 1 && n <= cap),
                "cap {cap}: {per:?}"
            );
            // Full pieces: a cut only where the next line's stream would be one too many.
            if cap < 250 {
                assert!(per[..per.len() - 1].iter().all(|&n| n == cap), "cap {cap}");
            }
        }
        assert_eq!(cut(&out, &b, MAX_REQUEST_BYTES, 250), vec![0..out.len()]);
    }

    #[test]
    fn a_stream_cut_still_keeps_requests_under_the_byte_limit() {
        let long = "x".repeat(100);
        let recs: Vec<(u32, &str)> = (0..40u32).map(|i| (i % 4, long.as_str())).collect();
        let b = batch(4, &recs);
        let mut out = Vec::new();
        b.write_ndjson(&mut out);
        let line = out.iter().position(|&c| c == b'\n').unwrap() + 1;
        let p = cut(&out, &b, line * 3, 2);
        assert!(p.iter().all(|r| r.len() <= line * 3 + 16), "{p:?}");
        assert!(streams_per_piece(&out, &p).iter().all(|&n| n <= 2));
        assert_eq!(p.last().unwrap().end, out.len());
        // A line longer than the byte limit is a request of its own.
        let p = cut(&out, &b, 10, 2);
        assert_eq!(p.len(), 40);
    }

    #[test]
    fn the_cap_follows_the_collectors_limit_or_halves_never_below_one() {
        let mut cap = StreamCap::new();
        assert_eq!(cap.get(), 1024);
        assert_eq!(cap.lower(Some(100)), Some(100));
        assert_eq!(
            cap.lower(Some(100)),
            Some(50),
            "refused at the limit: halve"
        );
        assert_eq!(
            cap.lower(Some(5000)),
            Some(25),
            "a higher limit never raises it"
        );
        assert_eq!(cap.lower(None), Some(12));
        assert_eq!(cap.lower(Some(0)), Some(1));
        assert_eq!(cap.lower(None), None, "already 1");
        assert_eq!(cap.get(), 1);
    }

    fn many_lines(n: usize) -> Sent {
        Sent {
            bytes: n,
            lone: None,
        }
    }

    #[test]
    fn the_byte_cap_follows_what_fits_under_the_collectors_limit() {
        let mut cap = ByteCap::new();
        assert_eq!(cap.get(), MAX_REQUEST_BYTES);
        let fit = fits_under(512 << 10);
        assert_eq!(cap.lower(Some(512 << 10), &many_lines(1 << 20)), Some(fit));
        assert!(fit < 512 << 10 && fit > 500 << 10, "{fit}");
        // Incompressible NDJSON of `fit` bytes, as gzip stores it, is still under the limit.
        let stored = fit + fit.div_ceil(65535) * 5 + 18;
        assert!(stored <= 512 << 10, "{stored}");
        assert_eq!(
            cap.lower(Some(512 << 10), &many_lines(fit)),
            Some(fit / 2),
            "refused at the limit: halve what was refused"
        );
        assert_eq!(
            cap.lower(Some(64 << 20), &many_lines(100)),
            Some(MIN_REQUEST_BYTES),
            "a higher limit never raises it; halving stops at the floor"
        );
        assert_eq!(cap.lower(None, &many_lines(MIN_REQUEST_BYTES)), None);
        assert_eq!(cap.get(), MIN_REQUEST_BYTES);
        // The collector's smallest max_batch_bytes is still followed.
        let mut cap = ByteCap::new();
        assert_eq!(
            cap.lower(Some(1024), &many_lines(4096)),
            Some(fits_under(1024))
        );
        assert!(fits_under(1024) >= MIN_REQUEST_BYTES);
        assert_eq!(fits_under(10), 0, "no underflow");
    }

    #[test]
    fn without_a_stated_limit_the_byte_cap_halves_the_refused_request() {
        let mut cap = ByteCap::new();
        // A 1 MiB batch under a 16 MiB cap: halving the cap would send the same request again.
        assert_eq!(cap.lower(None, &many_lines(1 << 20)), Some(512 << 10));
        assert_eq!(cap.lower(None, &many_lines(512 << 10)), Some(256 << 10));
        // A request is never over the cap unless it is one line; bounded by the cap regardless.
        assert_eq!(cap.lower(None, &many_lines(64 << 20)), Some(128 << 10));
    }

    #[test]
    fn a_single_line_lowers_the_byte_cap_only_to_a_stated_limit() {
        let lone = Sent {
            bytes: 40 << 10,
            lone: Some(LoneRecord {
                source: "app".into(),
                stream: "s".into(),
                path: "/l/a.log".into(),
                offset: 7,
            }),
        };
        let mut cap = ByteCap::new();
        assert_eq!(
            cap.lower(None, &lone),
            None,
            "halving would not cut the line"
        );
        assert_eq!(cap.lower(Some(32 << 10), &lone), Some(fits_under(32 << 10)));
        assert_eq!(cap.lower(Some(32 << 10), &lone), None);
    }

    #[test]
    fn single_line_requests_name_their_record_and_others_do_not() {
        let long = "x".repeat(100);
        let recs: Vec<(u32, &str)> = vec![
            (0, "a"),
            (1, "b"),
            (0, long.as_str()),
            (1, "c"),
            (1, "d"),
            (0, long.as_str()),
            (1, long.as_str()),
        ];
        let b = batch(2, &recs);
        let mut out = Vec::new();
        b.write_ndjson(&mut out);
        let line = |i: usize| {
            let starts: Vec<usize> = std::iter::once(0)
                .chain(memchr::memchr_iter(b'\n', &out).map(|p| p + 1))
                .collect();
            starts[i]..starts[i + 1]
        };
        let short = line(0).len();
        // Cut so that the short lines pair up and every long one is alone.
        let p = cut(&out, &b, short * 2 + 4, 1024);
        assert_eq!(
            p,
            vec![
                line(0).start..line(1).end,
                line(2),
                line(3).start..line(4).end,
                line(5),
                line(6),
            ]
        );
        let sent = describe(&out, &b, &p);
        assert_eq!(sent.len(), 5);
        assert!(sent.iter().zip(&p).all(|(s, r)| s.bytes == r.len()));
        let named: Vec<Option<(String, u64)>> = sent
            .iter()
            .map(|s| s.lone.as_ref().map(|l| (l.path.to_string(), l.offset)))
            .collect();
        // `batch` numbers records' offsets by their index.
        assert_eq!(
            named,
            vec![
                None,
                Some(("/l/0.log".into(), 2)),
                None,
                Some(("/l/0.log".into(), 5)),
                Some(("/l/1.log".into(), 6)),
            ]
        );
        // A batch that is one request of one line names its record too.
        let one = batch(1, &[(0, "only")]);
        let mut out = Vec::new();
        one.write_ndjson(&mut out);
        let sent = describe(&out, &one, &cut(&out, &one, MAX_REQUEST_BYTES, 1024));
        assert_eq!(sent[0].lone.as_ref().map(|l| l.offset), Some(0));
    }
}
