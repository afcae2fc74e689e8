//! How one batch becomes `POST /v1/ingest` requests: cut at line ends so that no request is over
//! the collector's `max_batch_bytes` (413) or names more distinct streams than its
//! `max_new_streams_per_batch` (400 `too_many_new_streams`). Either refusal is final for that
//! request: sent again as it is, it would be refused again, and shipping would stop for good.

use crate::batch::Batch;
use std::ops::Range;

/// Largest NDJSON body per request: well under the collector's default `max_batch_bytes`
/// (64 MiB, counted after gzip decoding), whatever `batch.max_bytes` is.
pub const MAX_REQUEST_BYTES: usize = 16 << 20;

/// Distinct streams per request until the collector says otherwise: its default
/// `max_new_streams_per_batch`. A request naming at most this many streams cannot create more
/// new ones than that, whichever of them the collector already knows.
pub const DEFAULT_MAX_STREAMS: usize = 1024;

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
}
