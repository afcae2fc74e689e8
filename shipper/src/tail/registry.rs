//! Every stream the agent knows, open or not: the in-memory mirror of the store's streams table
//! plus where reading of each would resume.

use crate::store::{StreamRow, StreamState};
use std::collections::HashMap;

#[derive(Debug, Clone)]
pub struct Known {
    pub row: StreamRow,
    /// Where reading resumes: everything before it was handed to a batch.
    pub resume: u64,
    /// Hash of the bytes before `resume`.
    pub resume_marker: Option<u64>,
}

#[derive(Default)]
pub struct Registry {
    streams: HashMap<String, Known>,
}

impl Registry {
    pub fn load(rows: Vec<StreamRow>) -> Self {
        let streams = rows
            .into_iter()
            .map(|row| {
                // After a restart only what was committed counts: in-flight batches were lost.
                let k = Known {
                    resume: row.committed_offset,
                    resume_marker: row.committed_hash,
                    row,
                };
                (k.row.stream.clone(), k)
            })
            .collect();
        Registry { streams }
    }

    pub fn get(&self, id: &str) -> Option<&Known> {
        self.streams.get(id)
    }

    pub fn get_mut(&mut self, id: &str) -> Option<&mut Known> {
        self.streams.get_mut(id)
    }

    pub fn insert(&mut self, k: Known) {
        self.streams.insert(k.row.stream.clone(), k);
    }

    pub fn retain(&mut self, mut keep: impl FnMut(&str) -> bool) {
        self.streams.retain(|id, _| keep(id));
    }

    pub fn iter(&self) -> impl Iterator<Item = &Known> {
        self.streams.values()
    }

    /// Streams of `source` whose fingerprint over their own N is `fp_of(N)`.
    pub fn by_fingerprint(
        &self,
        source: &str,
        mut fp_of: impl FnMut(usize) -> Option<u64>,
    ) -> Vec<&Known> {
        let mut cache: HashMap<u64, Option<u64>> = HashMap::new();
        let mut out: Vec<&Known> = self
            .streams
            .values()
            .filter(|k| k.row.source == source)
            .filter(|k| match k.row.fingerprint {
                Some(fp) => {
                    *cache
                        .entry(k.row.fp_bytes)
                        .or_insert_with(|| fp_of(k.row.fp_bytes as usize))
                        == Some(fp)
                }
                None => false,
            })
            .collect();
        out.sort_by(|a, b| {
            b.row
                .first_seen
                .cmp(&a.row.first_seen)
                .then(a.row.stream.cmp(&b.row.stream))
        });
        out
    }

    /// Provisional (still short) streams of `source` on this device and inode.
    pub fn provisional_on(&self, source: &str, device: u64, inode: u64) -> Option<&Known> {
        self.streams.values().find(|k| {
            k.row.source == source
                && k.row.fingerprint.is_none()
                && k.row.device == device
                && k.row.inode == inode
                && !matches!(k.row.state, StreamState::Truncated | StreamState::Done)
        })
    }
}
