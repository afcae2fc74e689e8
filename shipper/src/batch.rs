//! Records gathered for one trip to the sink, with what acknowledging them commits.

use crate::frame::{Part, Rec};
use crate::record;
use crate::store::Checkpoint;
use std::sync::Arc;
use std::time::Instant;

/// What every record of a stream carries besides its own fields.
#[derive(Debug, Clone)]
pub struct StreamMeta {
    pub id: Arc<str>,
    pub source: Arc<str>,
    pub fingerprint: Option<u64>,
    pub path: Arc<str>,
}

#[derive(Debug)]
pub struct BatchStream {
    pub meta: StreamMeta,
    /// Committed when the sink acknowledges this batch.
    pub checkpoint: Checkpoint,
}

#[derive(Debug, Clone, Copy)]
struct RecordMeta {
    stream: u32,
    offset: u64,
    len: u64,
    part: Part,
    ts_ms: i64,
    start: u32,
    end: u32,
    /// Checked once, as the record is framed on the tailer's thread: the sink's thread is the
    /// busier one.
    utf8: bool,
}

/// A record as sinks see it.
#[derive(Debug, Clone, Copy)]
pub struct RecordRef<'a> {
    pub host: &'a str,
    pub stream: &'a StreamMeta,
    pub offset: u64,
    pub len: u64,
    pub part: Part,
    pub ts_ms: i64,
    pub bytes: &'a [u8],
    /// The bytes are valid UTF-8 (else sinks carry them in base64).
    pub utf8: bool,
}

#[derive(Debug)]
pub struct Batch {
    pub host: Arc<str>,
    pub streams: Vec<BatchStream>,
    records: Vec<RecordMeta>,
    data: Vec<u8>,
    pub created: Instant,
    /// Distinguishes batches so a stream knows whether its slot is still valid.
    pub generation: u64,
    /// The records as NDJSON, made on the tailer's thread when the sink wants NDJSON, so the
    /// shipping thread only writes: the two threads then share the work on two cores.
    ndjson: Option<Vec<u8>>,
    /// The highest osquery outbox row in this batch: deleted from the outbox once acknowledged.
    pub outbox_upto: Option<i64>,
}

impl Batch {
    pub fn new(host: Arc<str>, generation: u64) -> Self {
        Batch {
            host,
            streams: Vec::new(),
            records: Vec::new(),
            data: Vec::new(),
            created: Instant::now(),
            generation,
            ndjson: None,
            outbox_upto: None,
        }
    }

    pub fn reserve(&mut self, data_bytes: usize) {
        self.data.reserve_exact(data_bytes);
    }

    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// Nothing to send and nothing to commit.
    pub fn is_idle(&self) -> bool {
        self.records.is_empty() && self.streams.is_empty() && self.outbox_upto.is_none()
    }

    pub fn data_bytes(&self) -> usize {
        self.data.len()
    }

    pub fn add_stream(&mut self, meta: StreamMeta, checkpoint: Checkpoint) -> u32 {
        if self.streams.is_empty() {
            // max_wait counts from the batch's first content, not from when it was made.
            self.created = Instant::now();
        }
        self.streams.push(BatchStream { meta, checkpoint });
        (self.streams.len() - 1) as u32
    }

    pub fn push(&mut self, slot: u32, rec: &Rec<'_>, ts_ms: i64) {
        let start = self.data.len() as u32;
        self.data.extend_from_slice(rec.bytes);
        self.records.push(RecordMeta {
            stream: slot,
            offset: rec.offset,
            len: rec.len,
            part: rec.part,
            ts_ms,
            start,
            end: self.data.len() as u32,
            utf8: std::str::from_utf8(rec.bytes).is_ok(),
        });
        let c = &mut self.streams[slot as usize].checkpoint;
        c.records += 1;
        c.bytes += rec.bytes.len() as u64;
        if rec.part == Part::Head {
            c.overlong += 1;
        }
    }

    pub fn records(&self) -> impl Iterator<Item = RecordRef<'_>> {
        self.records.iter().map(move |m| RecordRef {
            host: &self.host,
            stream: &self.streams[m.stream as usize].meta,
            offset: m.offset,
            len: m.len,
            part: m.part,
            ts_ms: m.ts_ms,
            bytes: &self.data[m.start as usize..m.end as usize],
            utf8: m.utf8,
        })
    }

    /// Each record's stream slot (an index into `streams`), in record order: the NDJSON has one
    /// line per record in this order, so a sink can cut it by streams without parsing it.
    pub fn slots(&self) -> impl Iterator<Item = u32> + '_ {
        self.records.iter().map(|m| m.stream)
    }

    pub fn checkpoints(&self) -> Vec<Checkpoint> {
        self.streams.iter().map(|s| s.checkpoint.clone()).collect()
    }

    /// Encodes the records as NDJSON now, for [`Batch::ndjson`] to hand out later.
    pub fn encode_ndjson(&mut self) {
        let mut out = self.ndjson.take().unwrap_or_default();
        out.clear();
        self.write_ndjson(&mut out);
        self.ndjson = Some(out);
    }

    /// Empties a delivered batch for reuse, keeping its buffers: a steady stream of batches then
    /// costs no allocation and the heap does not fragment between the two threads.
    pub fn recycle(mut self, generation: u64) -> Batch {
        self.streams.clear();
        self.records.clear();
        self.data.clear();
        if let Some(v) = &mut self.ndjson {
            v.clear();
        }
        self.created = Instant::now();
        self.generation = generation;
        self.outbox_upto = None;
        self
    }

    /// The records as NDJSON: encoded ahead by [`Batch::encode_ndjson`], or now into `scratch`.
    pub fn ndjson<'a>(&'a self, scratch: &'a mut Vec<u8>) -> &'a [u8] {
        match &self.ndjson {
            Some(v) if !v.is_empty() || self.records.is_empty() => v,
            _ => {
                scratch.clear();
                self.write_ndjson(scratch);
                scratch
            }
        }
    }

    /// The records as NDJSON, the format of the file sink and the collector.
    pub fn write_ndjson(&self, out: &mut Vec<u8>) {
        let mut prefixes: Vec<Vec<u8>> = Vec::with_capacity(self.streams.len());
        for s in &self.streams {
            let mut p = Vec::with_capacity(160);
            p.extend_from_slice(b"{\"host\":\"");
            record::escape_into(&mut p, self.host.as_bytes());
            p.extend_from_slice(b"\",\"source\":\"");
            record::escape_into(&mut p, s.meta.source.as_bytes());
            p.extend_from_slice(b"\",\"stream\":\"");
            p.extend_from_slice(s.meta.id.as_bytes());
            if let Some(fp) = s.meta.fingerprint {
                p.extend_from_slice(format!("\",\"fingerprint\":\"{fp:016x}").as_bytes());
            }
            p.extend_from_slice(b"\",\"path\":\"");
            record::escape_into(&mut p, s.meta.path.as_bytes());
            p.extend_from_slice(b"\",\"offset\":");
            prefixes.push(p);
        }
        // Sized once: the records, each one's prefix and fields (~90 bytes), and a sixteenth for
        // escapes. Doubling a multi-megabyte buffer would hold two of them at once.
        let fields: usize = self
            .records
            .iter()
            .map(|m| prefixes[m.stream as usize].len() + 90)
            .sum();
        let need = self.data.len() + fields;
        out.reserve_exact(need + need / 16);
        let mut last_ts = i64::MIN;
        let mut ts = String::new();
        let mut num = itoa::Buffer::new();
        for m in &self.records {
            if m.ts_ms != last_ts {
                last_ts = m.ts_ms;
                ts = record::rfc3339_ms(m.ts_ms);
            }
            out.extend_from_slice(&prefixes[m.stream as usize]);
            out.extend_from_slice(num.format(m.offset).as_bytes());
            out.extend_from_slice(b",\"len\":");
            out.extend_from_slice(num.format(m.len).as_bytes());
            out.extend_from_slice(b",\"part\":\"");
            out.extend_from_slice(m.part.as_str().as_bytes());
            out.extend_from_slice(b"\",\"ts\":\"");
            out.extend_from_slice(ts.as_bytes());
            out.extend_from_slice(b"\",");
            record::msg_field(out, &self.data[m.start as usize..m.end as usize], m.utf8);
            out.extend_from_slice(b"}\n");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ndjson_lines_parse_with_every_field() {
        let mut b = Batch::new("h\"1".into(), 0);
        let meta = StreamMeta {
            id: "00ff".into(),
            source: "app".into(),
            fingerprint: Some(0xabc),
            path: "/var/log/a b.log".into(),
        };
        let cp = Checkpoint {
            stream: "00ff".into(),
            ..Checkpoint::default()
        };
        let slot = b.add_stream(meta, cp);
        b.push(
            slot,
            &Rec {
                offset: 7,
                len: 3,
                part: Part::Whole,
                bytes: b"a\"b",
            },
            0,
        );
        b.push(
            slot,
            &Rec {
                offset: 11,
                len: 90,
                part: Part::Head,
                bytes: b"\xff",
            },
            1000,
        );
        let mut out = Vec::new();
        b.write_ndjson(&mut out);
        let lines: Vec<serde_json::Value> = out
            .split(|&c| c == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| serde_json::from_slice(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["host"], "h\"1");
        assert_eq!(lines[0]["fingerprint"], "0000000000000abc");
        assert_eq!(lines[0]["path"], "/var/log/a b.log");
        assert_eq!(lines[0]["offset"], 7);
        assert_eq!(lines[0]["msg"], "a\"b");
        assert_eq!(lines[0]["part"], "whole");
        assert_eq!(lines[1]["ts"], "1970-01-01T00:00:01.000Z");
        assert_eq!(lines[1]["msg_b64"], "/w==");
        assert_eq!(lines[1]["part"], "head");
        assert_eq!(b.checkpoints()[0].overlong, 1);
    }
}
