//! A run: records of one stream staged on their way into the batch, so that they go through
//! their chain together. A transform that pays per crossing (a Lua script: the crossing between
//! Rust and Lua costs more than a short script) then pays once per run, not once per record.
//!
//! The records are copied here: the input's buffer they come from does not outlive its push.
//! A run lives within one `batch::Intake` (which runs it through the chain when the stream
//! changes, when it is at its size, and when the Intake ends), so its slot always names a
//! stream of the batch being built.

use super::{Draft, Transform, Verdict};
use crate::frame::{Part, Rec};
use crate::record::StreamMeta;
use std::borrow::Cow;

/// Records a run holds at most: a few hundred amortize a crossing to well under its cost,
/// and a run this long is a fraction of a batch, so full batches come out as before.
pub const MAX_RECORDS: usize = 256;
/// Bytes a run holds at most (messages and fields): the Lua driver copies a run into its
/// state in one string, which counts against the script's memory limit.
pub const MAX_BYTES: usize = 256 << 10;

/// One staged record: where its bytes and fields are in [`Run::data`].
#[derive(Debug, Clone, Copy)]
struct Staged {
    offset: u64,
    len: u64,
    part: Part,
    ts_ms: i64,
    start: usize,
    end: usize,
    /// The end of its fields in `data` (they follow the message), None when it has none.
    fields_end: Option<usize>,
}

/// The records of one stream waiting for their chain, kept between runs for its buffers.
#[derive(Debug, Default)]
pub struct Run {
    /// The batch slot (one stream) the staged records are of; None while empty.
    slot: Option<u32>,
    /// Messages and fields, back to back.
    data: Vec<u8>,
    records: Vec<Staged>,
    /// The messages' bytes in `data`, as a batch counts them.
    msg_bytes: usize,
}

impl Run {
    /// The slot the staged records belong to, if any are staged.
    pub fn slot(&self) -> Option<u32> {
        self.slot
    }

    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// Bytes staged, as a batch would count them (messages only).
    pub fn data_bytes(&self) -> usize {
        self.msg_bytes
    }

    /// At its size: time to run it through its chain.
    pub fn full(&self) -> bool {
        self.records.len() >= MAX_RECORDS || self.data.len() >= MAX_BYTES
    }

    /// Stages `rec` of `slot`; the caller has emptied a run of another slot first.
    pub fn stage(&mut self, slot: u32, rec: &Rec<'_>, ts_ms: i64, fields: Option<&[u8]>) {
        debug_assert!(self.slot.is_none_or(|s| s == slot), "one stream per run");
        self.slot = Some(slot);
        let start = self.data.len();
        self.data.extend_from_slice(rec.bytes);
        let end = self.data.len();
        self.msg_bytes += rec.bytes.len();
        let fields_end = fields.map(|f| {
            self.data.extend_from_slice(f);
            self.data.len()
        });
        self.records.push(Staged {
            offset: rec.offset,
            len: rec.len,
            part: rec.part,
            ts_ms,
            start,
            end,
            fields_end,
        });
    }

    /// Runs the staged records through `chain` (records of `meta`'s stream), in order, the
    /// first transform to drop a record ending it; hands each kept record to `keep` with its
    /// timestamp, in order, and empties the run.
    pub fn drain(
        &mut self,
        chain: &mut [Box<dyn Transform>],
        meta: &StreamMeta,
        mut keep: impl FnMut(&Draft<'_>, i64),
    ) {
        let data = &self.data;
        let mut drafts: Vec<Draft<'_>> = self
            .records
            .iter()
            .map(|r| Draft {
                stream: meta,
                offset: r.offset,
                len: r.len,
                part: r.part,
                bytes: Cow::Borrowed(&data[r.start..r.end]),
                fields: r.fields_end.map(|e| Cow::Borrowed(&data[r.end..e])),
            })
            .collect();
        // Which staged record each draft is, kept beside them as drops thin the run out.
        let mut origin: Vec<usize> = (0..drafts.len()).collect();
        let mut outcomes = Vec::with_capacity(drafts.len());
        for t in chain.iter_mut() {
            if drafts.is_empty() {
                break;
            }
            outcomes.clear();
            t.apply_run(&mut drafts, &mut outcomes);
            assert_eq!(outcomes.len(), drafts.len(), "one outcome per record");
            let mut i = 0;
            drafts.retain(|_| {
                i += 1;
                outcomes[i - 1].verdict == Verdict::Keep
            });
            let mut i = 0;
            origin.retain(|_| {
                i += 1;
                outcomes[i - 1].verdict == Verdict::Keep
            });
        }
        for (d, &o) in drafts.iter().zip(&origin) {
            keep(d, self.records[o].ts_ms);
        }
        drop(drafts);
        self.records.clear();
        self.data.clear();
        self.msg_bytes = 0;
        self.slot = None;
    }
}
