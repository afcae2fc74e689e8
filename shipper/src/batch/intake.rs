//! The one way into a batch: an input's turn gets an [`Intake`] over the batch being built,
//! opens a stream slot per stream it has records for, and pushes records into it; each goes
//! through its source's transforms first.

use super::{Ack, Batch, StreamMeta};
use crate::frame::Rec;
use crate::transform::{Draft, Transforms, Verdict};
use std::borrow::Cow;

/// A stream's place in one batch: valid while [`Intake::generation`] stays the same. Inputs keep
/// `(generation, slot)` per stream and open a new slot when the generation moved on.
pub type Slot = u32;

/// How big a batch may grow before it is handed over (`[batch]` in the config).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_records: usize,
    pub max_bytes: usize,
}

/// The batch being built, lent to one input for one turn.
///
/// The contract for an input:
/// - open a slot with [`Intake::open_stream`] for each stream it pushes records of, giving the
///   [`Ack`] acknowledging this batch must commit for that stream; update it as the turn goes
///   ([`Intake::ack_mut`]) to say how far the stream is consumed, dropped records included;
/// - push records with [`Intake::push`], never into the batch by another way;
/// - stop pushing once [`Intake::full`] says so and return from its turn: the pipeline hands the
///   batch over and gives the input another turn with a fresh one.
pub struct Intake<'a> {
    batch: &'a mut Batch,
    /// None: no transform anywhere ([`Intake::plain`]).
    transforms: Option<&'a mut Transforms>,
    limits: Limits,
}

impl<'a> Intake<'a> {
    pub fn new(batch: &'a mut Batch, transforms: &'a mut Transforms, limits: Limits) -> Self {
        Intake {
            batch,
            transforms: Some(transforms),
            limits,
        }
    }

    /// An intake without transforms or limits: for building batches by hand (tests, tools).
    pub fn plain(batch: &'a mut Batch) -> Self {
        Intake {
            batch,
            transforms: None,
            limits: Limits {
                max_records: usize::MAX,
                max_bytes: usize::MAX,
            },
        }
    }

    /// Which batch this is: a slot from an earlier generation is not valid here.
    pub fn generation(&self) -> u64 {
        self.batch.generation
    }

    /// Opens a slot for a stream's records in this batch, with what acknowledging it commits.
    pub fn open_stream(&mut self, meta: StreamMeta, ack: Ack) -> Slot {
        let chain = match &self.transforms {
            Some(t) if !t.is_empty() => t.chain_of(&meta.source),
            _ => None,
        };
        self.batch.add_stream(meta, ack, chain)
    }

    /// The acknowledgement of `slot`, to move it forward as the stream is consumed.
    pub fn ack_mut(&mut self, slot: Slot) -> &mut Ack {
        &mut self.batch.streams[slot as usize].ack
    }

    /// Puts one record into the batch, through its source's transforms. `fields`, when given,
    /// is one serialized JSON object (`{…}`), carried to sinks as the record's `fields`; one
    /// that is not is kept as the string `fields_invalid` inside a valid object instead, so
    /// no bad input ever makes a line the collector refuses. Returns whether the record was
    /// kept (a transform may drop it; the input moves its acknowledgement past it anyway).
    pub fn push(
        &mut self,
        slot: Slot,
        rec: &Rec<'_>,
        ts_ms: i64,
        fields: Option<&[u8]>,
    ) -> Verdict {
        let chain = self.batch.streams[slot as usize].chain;
        let (Some(i), Some(transforms)) = (chain, self.transforms.as_deref_mut()) else {
            let fields = fields.map(checked);
            let f = fields.as_deref();
            self.batch
                .push_kept(slot, rec.offset, rec.len, rec.part, rec.bytes, f, ts_ms);
            return Verdict::Keep;
        };
        let meta = self.batch.streams[slot as usize].meta.clone();
        let mut draft = Draft {
            stream: &meta,
            offset: rec.offset,
            len: rec.len,
            part: rec.part,
            bytes: Cow::Borrowed(rec.bytes),
            fields: fields.map(Cow::Borrowed),
        };
        let verdict = transforms.run(i, &mut draft);
        if verdict == Verdict::Keep {
            let fields = draft.fields.as_deref().map(checked);
            let f = fields.as_deref();
            let b = &draft.bytes;
            self.batch
                .push_kept(slot, draft.offset, draft.len, draft.part, b, f, ts_ms);
        }
        verdict
    }

    pub fn len(&self) -> usize {
        self.batch.len()
    }

    pub fn is_empty(&self) -> bool {
        self.batch.is_empty()
    }

    pub fn data_bytes(&self) -> usize {
        self.batch.data_bytes()
    }

    /// How many more records fit before the batch is full.
    pub fn room(&self) -> usize {
        if self.full() {
            return 0;
        }
        self.limits.max_records - self.batch.len()
    }

    /// The batch is at a limit: stop pushing and end the turn.
    pub fn full(&self) -> bool {
        self.batch.len() >= self.limits.max_records
            || self.batch.data_bytes() >= self.limits.max_bytes
    }
}

/// `fields` as given when it is one JSON object, else a valid object naming the fault and
/// carrying the bytes (lossily as text), so nothing is lost and no line is malformed.
fn checked(f: &[u8]) -> Cow<'_, [u8]> {
    let is_object = f.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{')
        && serde_json::from_slice::<serde::de::IgnoredAny>(f).is_ok();
    if is_object {
        return Cow::Borrowed(f);
    }
    let v = serde_json::json!({ "fields_invalid": String::from_utf8_lossy(f) });
    Cow::Owned(serde_json::to_vec(&v).expect("a JSON value serializes"))
}
