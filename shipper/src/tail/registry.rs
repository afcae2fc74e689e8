//! Every stream the agent knows, open or not: the in-memory mirror of the store's streams table
//! plus where reading of each would resume.
//!
//! Lookups by fingerprint and by device+inode go through indexes, never a pass over every
//! stream: a file is identified on every adoption, and with 100,000 streams a pass per adoption
//! made finding 100,000 files quadratic. The indexes follow every change: a stream handed out by
//! [`Registry::get_mut`] is filed again before the next lookup.

use crate::store::{StreamRow, StreamState};
use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, HashMap};

#[derive(Debug, Clone)]
pub struct Known {
    pub row: StreamRow,
    /// Where reading resumes: everything before it was handed to a batch.
    pub resume: u64,
    /// Hash of the bytes before `resume`.
    pub resume_marker: Option<u64>,
}

/// What the indexes file a stream under; compared before and after a change.
#[derive(Clone, PartialEq, Eq)]
struct Keys {
    source: u64,
    fp_bytes: u64,
    fingerprint: Option<u64>,
    file: (u64, u64),
}

impl Keys {
    fn of(row: &StreamRow) -> Keys {
        Keys {
            source: source_key(&row.source),
            fp_bytes: row.fp_bytes,
            fingerprint: row.fingerprint,
            file: (row.device, row.inode),
        }
    }
}

/// Source names hashed: the indexes then hold no copy of the name per stream.
fn source_key(source: &str) -> u64 {
    crate::file::head::hash(source.as_bytes())
}

#[derive(Default)]
struct Index {
    /// (source, fp_bytes, fingerprint) → streams.
    by_fp: HashMap<(u64, u64, u64), Vec<String>>,
    /// (device, inode) → streams.
    by_file: HashMap<(u64, u64), Vec<String>>,
    /// source → every fp_bytes its streams were fingerprinted with, and how many streams each.
    lengths: HashMap<u64, BTreeMap<u64, usize>>,
    /// source → its provisional streams (no fingerprint yet), for short archives, which have
    /// nothing else to be found by.
    provisional: HashMap<u64, BTreeSet<String>>,
}

impl Index {
    fn add(&mut self, id: &str, k: &Keys) {
        if let Some(fp) = k.fingerprint {
            self.by_fp
                .entry((k.source, k.fp_bytes, fp))
                .or_default()
                .push(id.to_string());
        } else {
            self.provisional
                .entry(k.source)
                .or_default()
                .insert(id.to_string());
        }
        self.by_file.entry(k.file).or_default().push(id.to_string());
        *self
            .lengths
            .entry(k.source)
            .or_default()
            .entry(k.fp_bytes)
            .or_default() += 1;
    }

    fn remove(&mut self, id: &str, k: &Keys) {
        fn drop_id<K: std::hash::Hash + Eq>(m: &mut HashMap<K, Vec<String>>, key: K, id: &str) {
            if let Some(v) = m.get_mut(&key) {
                v.retain(|x| x != id);
                if v.is_empty() {
                    m.remove(&key);
                }
            }
        }
        if let Some(fp) = k.fingerprint {
            drop_id(&mut self.by_fp, (k.source, k.fp_bytes, fp), id);
        } else if let Some(p) = self.provisional.get_mut(&k.source) {
            p.remove(id);
            if p.is_empty() {
                self.provisional.remove(&k.source);
            }
        }
        drop_id(&mut self.by_file, k.file, id);
        if let Some(l) = self.lengths.get_mut(&k.source) {
            if let Some(n) = l.get_mut(&k.fp_bytes) {
                *n -= 1;
                if *n == 0 {
                    l.remove(&k.fp_bytes);
                }
            }
            if l.is_empty() {
                self.lengths.remove(&k.source);
            }
        }
    }
}

#[derive(Default)]
pub struct Registry {
    streams: HashMap<String, Known>,
    /// Behind a RefCell so lookups (`&self`) can first file what `get_mut` changed.
    index: RefCell<Pending>,
}

#[derive(Default)]
struct Pending {
    index: Index,
    /// Streams handed out by `get_mut` since the last lookup, with the keys they were filed
    /// under then (the first ones, if handed out twice).
    touched: HashMap<String, Keys>,
}

impl Pending {
    fn catch_up(&mut self, streams: &HashMap<String, Known>) {
        for (id, before) in self.touched.drain() {
            match streams.get(&id) {
                Some(k) => {
                    let after = Keys::of(&k.row);
                    if after != before {
                        self.index.remove(&id, &before);
                        self.index.add(&id, &after);
                    }
                }
                None => self.index.remove(&id, &before),
            }
        }
    }
}

impl Registry {
    pub fn load(rows: Vec<StreamRow>) -> Self {
        let mut r = Registry::default();
        for row in rows {
            // After a restart only what was committed counts: in-flight batches were lost.
            r.insert(Known {
                resume: row.committed_offset,
                resume_marker: row.committed_hash,
                row,
            });
        }
        r
    }

    /// The indexes, up to date with every change made through `get_mut`.
    fn index(&self) -> std::cell::Ref<'_, Index> {
        self.index.borrow_mut().catch_up(&self.streams);
        std::cell::Ref::map(self.index.borrow(), |p| &p.index)
    }

    pub fn get(&self, id: &str) -> Option<&Known> {
        self.streams.get(id)
    }

    pub fn get_mut(&mut self, id: &str) -> Option<&mut Known> {
        let k = self.streams.get_mut(id)?;
        self.index
            .get_mut()
            .touched
            .entry(id.to_string())
            .or_insert_with(|| Keys::of(&k.row));
        Some(k)
    }

    pub fn insert(&mut self, k: Known) {
        let p = self.index.get_mut();
        p.catch_up(&self.streams);
        if let Some(old) = self.streams.remove(&k.row.stream) {
            p.index.remove(&old.row.stream, &Keys::of(&old.row));
        }
        p.index.add(&k.row.stream, &Keys::of(&k.row));
        self.streams.insert(k.row.stream.clone(), k);
    }

    pub fn retain(&mut self, mut keep: impl FnMut(&str) -> bool) {
        let p = self.index.get_mut();
        p.catch_up(&self.streams);
        let index = &mut p.index;
        self.streams.retain(|id, k| {
            let kept = keep(id);
            if !kept {
                index.remove(id, &Keys::of(&k.row));
            }
            kept
        });
    }

    pub fn iter(&self) -> impl Iterator<Item = &Known> {
        self.streams.values()
    }

    /// Every N the streams of `source` were fingerprinted with, ascending.
    pub fn fp_lengths(&self, source: &str) -> Vec<usize> {
        self.index()
            .lengths
            .get(&source_key(source))
            .map(|l| l.keys().map(|&n| n as usize).collect())
            .unwrap_or_default()
    }

    /// Streams of `source` whose fingerprint over their own N is `fp_of(N)`, newest first.
    pub fn by_fingerprint(
        &self,
        source: &str,
        mut fp_of: impl FnMut(usize) -> Option<u64>,
    ) -> Vec<&Known> {
        let sk = source_key(source);
        let index = self.index();
        let mut out: Vec<&Known> = Vec::new();
        for (&n, _) in index.lengths.get(&sk).into_iter().flatten() {
            let Some(fp) = fp_of(n as usize) else {
                continue;
            };
            let Some(ids) = index.by_fp.get(&(sk, n, fp)) else {
                continue;
            };
            out.extend(
                ids.iter()
                    .filter_map(|id| self.streams.get(id))
                    .filter(|k| {
                        k.row.source == source
                            && k.row.fingerprint == Some(fp)
                            && k.row.fp_bytes == n
                    }),
            );
        }
        out.sort_by(|a, b| {
            b.row
                .first_seen
                .cmp(&a.row.first_seen)
                .then(a.row.stream.cmp(&b.row.stream))
        });
        out
    }

    /// Streams last seen on this device and inode (any source, any state).
    pub fn on_file(&self, device: u64, inode: u64) -> Vec<&Known> {
        let index = self.index();
        index
            .by_file
            .get(&(device, inode))
            .into_iter()
            .flatten()
            .filter_map(|id| self.streams.get(id))
            .filter(|k| k.row.device == device && k.row.inode == inode)
            .collect()
    }

    /// Every provisional (still short) stream of `source`, in id order.
    pub fn provisional(&self, source: &str) -> Vec<&Known> {
        let index = self.index();
        index
            .provisional
            .get(&source_key(source))
            .into_iter()
            .flatten()
            .filter_map(|id| self.streams.get(id))
            .filter(|k| k.row.source == source && k.row.fingerprint.is_none())
            .collect()
    }

    /// Provisional (still short) streams of `source` on this device and inode, in id order.
    /// Several when the inode was reused: a short file let go (rotated away, then deleted)
    /// leaves its stream on an inode a new short file now owns. Only the bytes before each
    /// one's offset can tell which the file continues, so all are returned.
    pub fn provisional_on(&self, source: &str, device: u64, inode: u64) -> Vec<&Known> {
        let mut out: Vec<&Known> = self
            .on_file(device, inode)
            .into_iter()
            .filter(|k| {
                k.row.source == source
                    && k.row.fingerprint.is_none()
                    && !matches!(k.row.state, StreamState::Truncated | StreamState::Done)
            })
            .collect();
        out.sort_by(|a, b| a.row.stream.cmp(&b.row.stream));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: &str, source: &str, fp: Option<u64>, n: u64, file: (u64, u64)) -> Known {
        Known {
            row: StreamRow {
                stream: id.into(),
                source: source.into(),
                fingerprint: fp,
                fp_bytes: n,
                path: format!("/x/{id}"),
                device: file.0,
                inode: file.1,
                compressed: false,
                size: 0,
                read_offset: 0,
                committed_offset: 0,
                committed_hash: None,
                first_seen: 0,
                state: StreamState::Active,
                alerted_too_large: false,
            },
            resume: 0,
            resume_marker: None,
        }
    }

    /// The indexes agree with the rows after every kind of change: a change through
    /// `get_mut` (promotion, a stream moving to another inode), replacement and pruning.
    #[test]
    fn indexes_follow_changes() {
        let mut r = Registry::default();
        r.insert(row("a", "app", None, 1024, (1, 10)));
        r.insert(row("b", "app", Some(7), 1024, (1, 11)));
        r.insert(row("c", "web", Some(7), 512, (1, 12)));
        let ids = |v: Vec<&Known>| v.iter().map(|k| k.row.stream.clone()).collect::<Vec<_>>();
        assert_eq!(ids(r.provisional_on("app", 1, 10)), vec!["a"]);
        assert!(r.provisional_on("web", 1, 10).is_empty());
        assert_eq!(ids(r.provisional("app")), vec!["a"]);
        assert_eq!(ids(r.by_fingerprint("app", |_| Some(7))), vec!["b"]);
        assert_eq!(
            ids(r.by_fingerprint("web", |n| (n == 512).then_some(7))),
            vec!["c"]
        );
        // Promotion: "a" gains a fingerprint; then it moves to another inode.
        if let Some(k) = r.get_mut("a") {
            k.row.fingerprint = Some(7);
            k.row.fp_bytes = 2048;
        }
        assert!(r.provisional_on("app", 1, 10).is_empty());
        assert!(r.provisional("app").is_empty());
        assert_eq!(r.fp_lengths("app"), vec![1024, 2048]);
        assert_eq!(ids(r.by_fingerprint("app", |_| Some(7))), vec!["a", "b"]);
        if let Some(k) = r.get_mut("a") {
            k.row.inode = 99;
        }
        assert!(r.on_file(1, 10).is_empty());
        assert_eq!(ids(r.on_file(1, 99)), vec!["a"]);
        // Replacement and pruning drop the old keys.
        r.insert(row("b", "app", None, 1024, (1, 11)));
        assert_eq!(ids(r.by_fingerprint("app", |_| Some(7))), vec!["a"]);
        assert_eq!(ids(r.provisional("app")), vec!["b"]);
        r.retain(|id| id != "a");
        assert!(r.by_fingerprint("app", |_| Some(7)).is_empty());
        assert_eq!(r.fp_lengths("app"), vec![1024]);
        assert_eq!(r.iter().count(), 2);
    }
}
