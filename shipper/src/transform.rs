//! Transforms: the one hook between the inputs and the batch being built.
//!
//! Every record an input produces goes through `batch::Intake::push`, and that is the
//! only way into a batch; it runs the chain of the record's source here first. A transform may
//! change the record's bytes and `fields` or drop the record. A dropped record still moves its
//! stream's position: the input has consumed it, so the slot's acknowledgement commits past it
//! (it is not counted as shipped). The chain is per source, so the scripts issue adds parsers
//! and Lua per source as new [`Transform`]s without touching an input.
//!
//! Today no source configures a transform, and the chain costs one branch per record.

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
    /// A serialized JSON object (`{…}`), or None; see `batch::Intake::push`.
    pub fields: Option<Cow<'a, [u8]>>,
}

/// What a transform decided about a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Keep,
    /// Not shipped; its offset still commits.
    Drop,
}

/// One step of a source's chain. Runs on the pipeline thread, for every record of its source.
pub trait Transform: Send {
    /// For logs and status: what it does (`drop lines matching "^DEBUG"`).
    fn describe(&self) -> String;
    fn apply(&mut self, rec: &mut Draft<'_>) -> Verdict;
}

/// Every source's chain of transforms; a source without one is passed through as it is.
#[derive(Default)]
pub struct Transforms {
    chains: Vec<Vec<Box<dyn Transform>>>,
    /// Source name → index into `chains`.
    by_source: HashMap<String, usize>,
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

    /// Runs chain `i` over `rec`; the first transform to drop the record ends it.
    pub(crate) fn run(&mut self, i: usize, rec: &mut Draft<'_>) -> Verdict {
        for t in &mut self.chains[i] {
            if t.apply(rec) == Verdict::Drop {
                return Verdict::Drop;
            }
        }
        Verdict::Keep
    }
}
