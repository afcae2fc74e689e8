//! The one way into a batch: an input's turn gets an [`Intake`] over the batch being built,
//! opens a stream slot per stream it has records for, and pushes records into it; each goes
//! through its source's transforms first.
//!
//! Records of a source with transforms are staged into a run (`transform::run`) and go through
//! their chain together: when a record of another stream comes, when the run is at its size,
//! and when the Intake ends (it is dropped at the end of the input's turn, before the batch
//! can be looked at or handed over, so no staged record is ever left behind).

use super::{Ack, Batch, StreamMeta};
use crate::frame::Rec;
use crate::transform::Transforms;
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
///
/// Whether a record was kept is known only once its run has gone through the chain; an input
/// has no use for it (its acknowledgement moves past every record it consumed, kept or not).
pub struct Intake<'a> {
    batch: &'a mut Batch,
    /// None: no transform anywhere ([`Intake::plain`]).
    transforms: Option<&'a mut Transforms>,
    limits: Limits,
}

impl<'a> Intake<'a> {
    pub fn new(batch: &'a mut Batch, transforms: &'a mut Transforms, limits: Limits) -> Self {
        debug_assert!(transforms.staged().is_empty(), "a run outlived its Intake");
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
    /// no bad input ever makes a line the collector refuses. A transform may drop the record;
    /// the input moves its acknowledgement past it anyway.
    pub fn push(&mut self, slot: Slot, rec: &Rec<'_>, ts_ms: i64, fields: Option<&[u8]>) {
        let chain = self.batch.streams[slot as usize].chain;
        let (Some(_), Some(transforms)) = (chain, self.transforms.as_deref_mut()) else {
            // Behind any staged record, so the batch keeps the order records came in.
            self.run_staged();
            let fields = fields.map(checked);
            let f = fields.as_deref();
            self.batch
                .push_kept(slot, rec.offset, rec.len, rec.part, rec.bytes, f, ts_ms);
            return;
        };
        if transforms.staged().slot().is_some_and(|s| s != slot) {
            self.run_staged();
        }
        let transforms = self.transforms.as_deref_mut().expect("matched above");
        // Checked as it comes in; what the chain makes of it is trusted (every transform writes
        // `fields` through a JSON serializer), which spares a parse of every record's fields.
        let fields = fields.map(checked);
        transforms.stage(slot, rec, ts_ms, fields.as_deref());
        if transforms.staged().full() {
            self.run_staged();
        }
    }

    /// Runs the staged records through their chain into the batch.
    fn run_staged(&mut self) {
        let Some(transforms) = self.transforms.as_deref_mut() else {
            return;
        };
        let Some(slot) = transforms.staged().slot() else {
            return;
        };
        let stream = &self.batch.streams[slot as usize];
        let chain = stream.chain.expect("only records with a chain are staged");
        let meta = stream.meta.clone();
        let batch = &mut *self.batch;
        transforms.drain(chain, &meta, |d, ts_ms| {
            let f = d.fields.as_deref();
            debug_assert!(f.is_none_or(|f| matches!(checked(f), Cow::Borrowed(_))));
            batch.push_kept(slot, d.offset, d.len, d.part, &d.bytes, f, ts_ms);
        });
    }

    /// Records in the batch or staged for it (counted as if kept: a run may drop some).
    pub fn len(&self) -> usize {
        self.batch.len() + self.transforms.as_ref().map_or(0, |t| t.staged().len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Message bytes in the batch or staged for it.
    pub fn data_bytes(&self) -> usize {
        let staged = self
            .transforms
            .as_ref()
            .map_or(0, |t| t.staged().data_bytes());
        self.batch.data_bytes() + staged
    }

    /// How many more records fit before the batch is full.
    pub fn room(&self) -> usize {
        if self.full() {
            return 0;
        }
        self.limits.max_records - self.len()
    }

    /// The batch is at a limit (staged records counted as kept): stop pushing and end the turn.
    pub fn full(&self) -> bool {
        self.len() >= self.limits.max_records || self.data_bytes() >= self.limits.max_bytes
    }
}

impl Drop for Intake<'_> {
    /// The end of the input's turn: what is staged goes into the batch before anyone else can
    /// see the batch (the Intake borrows it until now).
    fn drop(&mut self) {
        self.run_staged();
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::Part;
    use crate::store::Checkpoint;
    use crate::transform::{Draft, Transform, Verdict};

    /// Drops the records whose message starts with `d`.
    struct DropD;

    impl Transform for DropD {
        fn describe(&self) -> String {
            "drop d".into()
        }
        fn apply(&mut self, rec: &mut Draft<'_>) -> Verdict {
            if rec.bytes.starts_with(b"d") {
                Verdict::Drop
            } else {
                Verdict::Keep
            }
        }
    }

    fn meta(id: &str, source: &str) -> StreamMeta {
        StreamMeta {
            id: id.into(),
            source: source.into(),
            fingerprint: None,
            path: format!("/l/{id}.log").into(),
        }
    }

    /// Staged records count towards the batch's limits, and records of a source with a chain
    /// and of one without keep the order they were pushed in.
    #[test]
    fn staged_records_count_and_keep_their_order_among_other_streams() {
        let mut transforms = Transforms::none();
        transforms.add("app", Box::new(DropD));
        let mut batch = Batch::new("h".into(), 0);
        let limits = Limits {
            max_records: 5,
            max_bytes: 1 << 20,
        };
        let mut out = Intake::new(&mut batch, &mut transforms, limits);
        let cp = |id: &str| {
            Ack::Store(Checkpoint {
                stream: id.into(),
                ..Checkpoint::default()
            })
        };
        let app = out.open_stream(meta("a", "app"), cp("a"));
        let plain = out.open_stream(meta("p", "other"), cp("p"));
        let push = |out: &mut Intake<'_>, slot, msg: &str| {
            let rec = Rec {
                offset: 0,
                len: 1,
                part: Part::Whole,
                bytes: msg.as_bytes(),
            };
            out.push(slot, &rec, 0, None);
        };
        push(&mut out, app, "a1");
        push(&mut out, app, "d2");
        push(&mut out, plain, "p3");
        // a1 and p3 are in the batch (d2 was dropped as p3 came), a4 is staged.
        push(&mut out, app, "a4");
        assert_eq!(out.room(), 2, "a staged record counts as if kept");
        push(&mut out, app, "a5");
        push(&mut out, app, "a6");
        assert!(out.full());
        drop(out);
        let msgs: Vec<_> = batch.records().map(|r| r.bytes.to_vec()).collect();
        assert_eq!(msgs, [&b"a1"[..], b"p3", b"a4", b"a5", b"a6"]);
    }
}
