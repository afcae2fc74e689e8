//! Transforms: the one hook between the inputs and the batch being built.
//!
//! Every record an input produces goes through `batch::Intake::push`, and that is the
//! only way into a batch; it runs the chain of the record's source here first. A transform may
//! change the record's bytes and `fields` or drop the record. A dropped record still moves its
//! stream's position: the input has consumed it, so the slot's acknowledgement commits past it
//! (it is not counted as shipped). The chain is per source, so the scripts issue adds parsers
//! and Lua per source as new [`Transform`]s without touching an input.
//!
//! The parsers are one file each ([`json`], [`logfmt`], [`regex`], [`syslog`], [`container`]);
//! A user's script is [`lua`].
//! [`build`] makes every source's chain from the config, the one place that knows them all.
//! A parser writes into `fields` ([`fields`]) and passes a line it cannot parse unchanged,
//! saying so through [`Transform::fault`] so the chain counts it.
//! A source without transforms costs one branch per record.
//!
//! Records reach a chain in [`run`]s: several records of one stream at once, through
//! [`Transform::apply_run`], so a transform that pays per crossing (Lua) pays once per run.
//! Every transform sees a run's records in order and decides for each as if alone.

pub mod build;
pub mod container;
pub mod fields;
pub mod json;
pub mod logfmt;
pub mod lua;
pub mod regex;
pub mod run;
pub mod syslog;
pub mod syslog_parse;

use crate::frame::Part;
use crate::record::StreamMeta;
use std::borrow::Cow;
use std::collections::HashMap;

/// A record on its way into the batch, as a transform sees and may change it.
#[derive(Debug)]
pub struct Draft<'a> {
    /// The stream the record came from (its `source`, `id`, `path`, fingerprint).
    pub stream: &'a StreamMeta,
    /// Where the record (or this part of it) starts in its stream; committed even if dropped.
    pub offset: u64,
    /// The whole record's length in the stream.
    pub len: u64,
    pub part: Part,
    /// The message: what NDJSON carries as `msg` (or `msg_b64`).
    pub bytes: Cow<'a, [u8]>,
    /// A serialized JSON object (`{…}`), or None; see `batch::Intake::push`. The Intake checks
    /// what an input gives and trusts what a transform makes: write it with a JSON serializer.
    pub fields: Option<Cow<'a, [u8]>>,
}

/// What a transform decided about a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Keep,
    /// Not shipped; its offset still commits.
    Drop,
}

/// What went wrong with the last record a transform saw; the record went on unchanged (or,
/// for an error, with `fields.transform_error`). Only counted: never stops a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Fault {
    #[default]
    None,
    /// A parser's input was not in its format.
    Unparsed,
    /// A script raised an error or broke a limit.
    Error,
}

/// What a transform made of one record of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    pub verdict: Verdict,
    pub fault: Fault,
}

/// One step of a source's chain. Runs on the pipeline thread, for every record of its source.
pub trait Transform: Send {
    /// For logs and status: what it does (`drop lines matching "^DEBUG"`).
    fn describe(&self) -> String;
    fn apply(&mut self, rec: &mut Draft<'_>) -> Verdict;
    /// How the last `apply` went, for the per-transform counters.
    fn fault(&self) -> Fault {
        Fault::None
    }
    /// A run of records of one stream, in order: pushes one [`Outcome`] per record onto
    /// `out`. The same as `apply` on each in turn, which is what it does unless a transform
    /// can do the run at once for less.
    fn apply_run(&mut self, run: &mut [Draft<'_>], out: &mut Vec<Outcome>) {
        for rec in run {
            let verdict = self.apply(rec);
            out.push(Outcome {
                verdict,
                fault: self.fault(),
            });
        }
    }
}

/// Every source's chain of transforms; a source without one is passed through as it is.
#[derive(Default)]
pub struct Transforms {
    chains: Vec<Vec<Box<dyn Transform>>>,
    /// Source name → index into `chains`.
    by_source: HashMap<String, usize>,
    /// The records staged for a chain (see [`run`]); here, beside the chains, so its buffers
    /// are kept from one batch to the next. Empty between two `batch::Intake`s.
    run: run::Run,
}

impl Transforms {
    /// No transform anywhere: every record enters the batch as its input made it.
    pub fn none() -> Transforms {
        Transforms::default()
    }

    /// Appends `t` to the chain of `source`.
    pub fn add(&mut self, source: &str, t: Box<dyn Transform>) {
        let i = match self.by_source.get(source) {
            Some(&i) => i,
            None => {
                self.chains.push(Vec::new());
                self.by_source
                    .insert(source.to_string(), self.chains.len() - 1);
                self.chains.len() - 1
            }
        };
        self.chains[i].push(t);
    }

    pub fn is_empty(&self) -> bool {
        self.chains.is_empty()
    }

    /// The chain of `source`, as an index that stays valid while this set is unchanged.
    pub(crate) fn chain_of(&self, source: &str) -> Option<usize> {
        self.by_source.get(source).copied()
    }

    /// Runs chain `i` over `rec` alone; the first transform to drop the record ends it.
    #[cfg(test)]
    pub(crate) fn run(&mut self, i: usize, rec: &mut Draft<'_>) -> Verdict {
        for t in &mut self.chains[i] {
            if t.apply(rec) == Verdict::Drop {
                return Verdict::Drop;
            }
        }
        Verdict::Keep
    }

    /// The records staged for a chain.
    pub(crate) fn staged(&self) -> &run::Run {
        &self.run
    }

    /// Stages a record of `slot` for its chain (see [`run::Run::stage`]).
    pub(crate) fn stage(
        &mut self,
        slot: u32,
        rec: &crate::frame::Rec<'_>,
        ts_ms: i64,
        fields: Option<&[u8]>,
    ) {
        self.run.stage(slot, rec, ts_ms, fields);
    }

    /// Runs the staged records through chain `i` (see [`run::Run::drain`]).
    pub(crate) fn drain(&mut self, i: usize, meta: &StreamMeta, keep: impl FnMut(&Draft<'_>, i64)) {
        self.run.drain(&mut self.chains[i], meta, keep);
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::sync::Arc;

    pub fn meta() -> StreamMeta {
        StreamMeta {
            id: Arc::from("s1"),
            source: Arc::from("app"),
            fingerprint: None,
            path: Arc::from("/var/log/app.log"),
        }
    }

    pub fn draft<'a>(meta: &'a StreamMeta, line: &'a [u8]) -> Draft<'a> {
        Draft {
            stream: meta,
            offset: 0,
            len: line.len() as u64,
            part: Part::Whole,
            bytes: Cow::Borrowed(line),
            fields: None,
        }
    }

    pub fn fields_of(d: &Draft<'_>) -> serde_json::Value {
        serde_json::from_slice(d.fields.as_deref().expect("fields set")).expect("fields are JSON")
    }

    #[test]
    fn fields_from_the_input_are_kept_and_a_parser_adds_to_them() {
        let meta = meta();
        let mut d = draft(&meta, b"a=1");
        d.fields = Some(Cow::Borrowed(br#"{"peer":"10.0.0.1:514","a":"old"}"#));
        let mut t = logfmt::Logfmt::new(None);
        t.apply(&mut d);
        let f = fields_of(&d);
        assert_eq!(f["peer"], "10.0.0.1:514");
        assert_eq!(f["a"], "1");
    }
}
