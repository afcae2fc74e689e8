//! Records gathered for one trip to the sink, with what acknowledging them commits.
//!
//! A batch is built on the pipeline thread, one input's turn after another, through an
//! [`Intake`]: the only way a record enters it, running the source's transforms first. Each
//! stream slot carries the [`Ack`] its input defined; the shipping thread hands the acks back
//! once the sink has acknowledged the batch ([`ack`] says in which order). A batch knows no
//! input by name.

mod ack;
mod intake;
mod ndjson;
#[cfg(test)]
mod outcomes;

pub use crate::record::StreamMeta;
pub use ack::{Ack, AckError, Acknowledge};
pub use intake::{Intake, Limits, Slot};

use crate::frame::Part;
use crate::store::Checkpoint;
use std::sync::Arc;
use std::time::Instant;

#[derive(Debug)]
pub struct BatchStream {
    pub meta: StreamMeta,
    /// Given back to the stream's input when the sink acknowledges this batch.
    pub ack: Ack,
    /// The source's transform chain, looked up once per slot rather than once per record.
    chain: Option<usize>,
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
    /// The record's `fields` in `Batch::fields`; an empty range when it has none.
    fields_start: u32,
    fields_end: u32,
    /// Checked once, as the record is framed on the pipeline thread: the sink's thread is the
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
    /// The record's `fields`: one serialized JSON object (`{…}`), or None.
    pub fields: Option<&'a [u8]>,
}

#[derive(Debug)]
pub struct Batch {
    pub host: Arc<str>,
    pub streams: Vec<BatchStream>,
    records: Vec<RecordMeta>,
    data: Vec<u8>,
    /// Every record's `fields`, back to back, pre-encoded: a record without any costs nothing.
    fields: Vec<u8>,
    pub created: Instant,
    /// Distinguishes batches so a stream knows whether its slot is still valid.
    pub generation: u64,
    /// The records as NDJSON, made on the pipeline thread when the sink wants NDJSON, so the
    /// shipping thread only writes: the two threads then share the work on two cores.
    ndjson: Option<Vec<u8>>,
}

impl Batch {
    pub fn new(host: Arc<str>, generation: u64) -> Self {
        Batch {
            host,
            streams: Vec::new(),
            records: Vec::new(),
            data: Vec::new(),
            fields: Vec::new(),
            created: Instant::now(),
            generation,
            ndjson: None,
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

    /// Nothing to send and nothing to acknowledge.
    pub fn is_idle(&self) -> bool {
        self.records.is_empty() && self.streams.is_empty()
    }

    pub fn data_bytes(&self) -> usize {
        self.data.len()
    }

    fn add_stream(&mut self, meta: StreamMeta, ack: Ack, chain: Option<usize>) -> u32 {
        if self.streams.is_empty() {
            // max_wait counts from the batch's first content, not from when it was made.
            self.created = Instant::now();
        }
        self.streams.push(BatchStream { meta, ack, chain });
        (self.streams.len() - 1) as u32
    }

    /// Appends a record that passed its transforms (only [`Intake::push`] calls this).
    #[allow(clippy::too_many_arguments)]
    fn push_kept(
        &mut self,
        slot: u32,
        offset: u64,
        len: u64,
        part: Part,
        bytes: &[u8],
        fields: Option<&[u8]>,
        ts_ms: i64,
    ) {
        let start = self.data.len() as u32;
        self.data.extend_from_slice(bytes);
        let fields_start = self.fields.len() as u32;
        if let Some(f) = fields {
            self.fields.extend_from_slice(f);
        }
        self.records.push(RecordMeta {
            stream: slot,
            offset,
            len,
            part,
            ts_ms,
            start,
            end: self.data.len() as u32,
            fields_start,
            fields_end: self.fields.len() as u32,
            utf8: std::str::from_utf8(bytes).is_ok(),
        });
        if let Some(c) = self.streams[slot as usize].ack.checkpoint_mut() {
            c.records += 1;
            c.bytes += bytes.len() as u64;
            if part == Part::Head {
                c.overlong += 1;
            }
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
            fields: self.fields_of(m),
        })
    }

    fn fields_of(&self, m: &RecordMeta) -> Option<&[u8]> {
        (m.fields_end > m.fields_start)
            .then(|| &self.fields[m.fields_start as usize..m.fields_end as usize])
    }

    /// Each record's stream slot (an index into `streams`), in record order: the NDJSON has one
    /// line per record in this order, so a sink can cut it by streams without parsing it.
    pub fn slots(&self) -> impl Iterator<Item = u32> + '_ {
        self.records.iter().map(|m| m.stream)
    }

    /// The store checkpoints of the batch's slots, in slot order.
    pub fn checkpoints(&self) -> Vec<Checkpoint> {
        self.streams
            .iter()
            .filter_map(|s| s.ack.checkpoint().cloned())
            .collect()
    }

    /// Every slot's acknowledgement, in slot order, for the committer.
    pub fn acks_mut(&mut self) -> impl Iterator<Item = &mut Ack> {
        self.streams.iter_mut().map(|s| &mut s.ack)
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
    pub fn recycle(mut self, generation: u64, host: Arc<str>) -> Batch {
        self.host = host;
        self.streams.clear();
        self.records.clear();
        self.data.clear();
        self.fields.clear();
        if let Some(v) = &mut self.ndjson {
            v.clear();
        }
        self.created = Instant::now();
        self.generation = generation;
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::Rec;

    const LIMITS: Limits = Limits {
        max_records: 100,
        max_bytes: 1 << 20,
    };

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
        let mut none = crate::transform::Transforms::none();
        let mut out = Intake::new(&mut b, &mut none, LIMITS);
        let slot = out.open_stream(meta, Ack::Store(cp));
        let rec = |offset, len, part, bytes| Rec {
            offset,
            len,
            part,
            bytes,
        };
        out.push(slot, &rec(7, 3, Part::Whole, b"a\"b"), 0, None);
        out.push(
            slot,
            &rec(11, 90, Part::Head, b"\xff"),
            1000,
            Some(br#"{"facility":"user","n":[1]}"#),
        );
        out.push(
            slot,
            &rec(101, 1, Part::Whole, b"x"),
            1000,
            Some(b"{not json"),
        );
        drop(out);
        let mut out = Vec::new();
        b.write_ndjson(&mut out);
        let lines: Vec<serde_json::Value> = out
            .split(|&c| c == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| serde_json::from_slice(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 3);
        assert!(
            lines[0].get("fields").is_none(),
            "no fields key when a record has none"
        );
        assert_eq!(lines[1]["fields"]["facility"], "user");
        assert_eq!(lines[1]["fields"]["n"][0], 1);
        assert_eq!(
            lines[2]["fields"]["fields_invalid"], "{not json",
            "a bad fields object is kept, named, inside a valid one"
        );
        let refs: Vec<_> = b.records().collect();
        assert_eq!(refs[1].fields, Some(&br#"{"facility":"user","n":[1]}"#[..]));
        assert_eq!(refs[0].fields, None);
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
