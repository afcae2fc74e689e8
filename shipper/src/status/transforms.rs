//! What each named transform reports: counters its instances bump on the pipeline thread (one
//! set per `[transforms.NAME]`, shared by every source that lists it), and the snapshot
//! `status` and `/metrics` show.

use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// The transforms configured now, as status reads them (a reload may change the list).
pub type TransformList = Arc<Mutex<Vec<Arc<TransformCounters>>>>;

/// Live counters of one named transform.
#[derive(Debug, Default)]
pub struct TransformCounters {
    pub name: String,
    /// Its `type`: `json`, `regex`, `lua`, …
    pub kind: String,
    /// Records that entered it.
    pub records_in: AtomicU64,
    /// Records it dropped (their offsets still commit).
    pub dropped: AtomicU64,
    /// Records it could not parse, passed on unchanged.
    pub parse_failures: AtomicU64,
    /// Records on which it failed otherwise (a script's error or broken limit), passed on
    /// unchanged with `fields.transform_error`.
    pub errors: AtomicU64,
    /// Time spent in it, in nanoseconds.
    pub nanos: AtomicU64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct TransformStatus {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub records_in: u64,
    pub dropped: u64,
    pub parse_failures: u64,
    pub errors: u64,
    pub seconds: f64,
}

impl TransformCounters {
    pub fn new(name: &str, kind: &str) -> TransformCounters {
        TransformCounters {
            name: name.into(),
            kind: kind.into(),
            ..Default::default()
        }
    }

    pub fn snapshot(&self) -> TransformStatus {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        TransformStatus {
            name: self.name.clone(),
            kind: self.kind.clone(),
            records_in: g(&self.records_in),
            dropped: g(&self.dropped),
            parse_failures: g(&self.parse_failures),
            errors: g(&self.errors),
            seconds: g(&self.nanos) as f64 / 1e9,
        }
    }
}
