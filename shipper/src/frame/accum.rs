//! Keeps the first and last bytes of a record of any length in O(max) memory.
//!
//! While a record fits in `max + SLACK` bytes it is kept whole. Past that only its first `max`
//! bytes (the head) and its last `max + SLACK` bytes (a ring) are kept, so a 1 GiB line without a
//! delimiter costs two buffers of `max`. SLACK leaves room to drop a trailing CR or the start of a
//! multi-byte delimiter from the end without losing tail bytes.

pub const SLACK: usize = 16;

#[derive(Debug)]
pub struct Accum {
    max: usize,
    /// Every byte while `len <= cap`; afterwards the first `max` bytes.
    buf: Vec<u8>,
    /// The last `cap` bytes once `len > cap` (oldest at `start`).
    ring: Vec<u8>,
    start: usize,
    len: u64,
    /// Head + ring form (set once the record outgrew `cap`, or a gap of unknown bytes was added).
    cut: bool,
}

/// A record's bytes as the accumulator hands them out.
pub enum Content<'a> {
    Whole(&'a [u8]),
    Cut { head: &'a [u8], tail: &'a [u8] },
}

impl Accum {
    pub fn new(max: usize) -> Self {
        Accum {
            max,
            buf: Vec::new(),
            ring: Vec::new(),
            start: 0,
            len: 0,
            cut: false,
        }
    }

    fn cap(&self) -> usize {
        self.max + SLACK
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn clear(&mut self) {
        self.buf.clear();
        self.len = 0;
        self.start = 0;
        self.cut = false;
        // Give back the ring of a huge record; keep small buffers for reuse.
        if self.ring.capacity() > 0 {
            self.ring = Vec::new();
        }
        if self.buf.capacity() > 4 * 65536 {
            self.buf = Vec::new();
        }
    }

    /// Heap bytes this accumulator holds (its buffers' capacity, used or not).
    pub fn held(&self) -> usize {
        self.buf.capacity() + self.ring.capacity()
    }

    /// Gives the buffers back while no record is being kept.
    pub fn shrink(&mut self) {
        if self.len == 0 {
            self.buf = Vec::new();
            self.ring = Vec::new();
        }
    }

    fn ring_mode(&self) -> bool {
        self.cut
    }

    pub fn push(&mut self, s: &[u8]) {
        if s.is_empty() {
            return;
        }
        let cap = self.cap();
        if !self.ring_mode() {
            if self.len as usize + s.len() <= cap {
                self.buf.extend_from_slice(s);
                self.len += s.len() as u64;
                return;
            }
            // Switch to head + ring: the ring takes the last `cap` bytes of buf ++ s.
            let total = self.buf.len() + s.len();
            let mut ring = Vec::with_capacity(cap);
            if s.len() >= cap {
                ring.extend_from_slice(&s[s.len() - cap..]);
            } else {
                ring.extend_from_slice(&self.buf[total - cap..]);
                ring.extend_from_slice(s);
            }
            if self.buf.len() < self.max {
                let take = (self.max - self.buf.len()).min(s.len());
                self.buf.extend_from_slice(&s[..take]);
            }
            self.buf.truncate(self.max);
            self.ring = ring;
            self.start = 0;
            self.cut = true;
            self.len += s.len() as u64;
            return;
        }
        self.len += s.len() as u64;
        self.ring_write(s);
    }

    fn ring_write(&mut self, s: &[u8]) {
        let cap = self.cap();
        if s.len() >= cap {
            self.ring.copy_from_slice(&s[s.len() - cap..]);
            self.start = 0;
            return;
        }
        let first = (cap - self.start).min(s.len());
        self.ring[self.start..self.start + first].copy_from_slice(&s[..first]);
        self.ring[..s.len() - first].copy_from_slice(&s[first..]);
        self.start = (self.start + s.len()) % cap;
    }

    /// Appends a record part that was itself cut: its head, its tail and its full length.
    pub fn push_cut(&mut self, head: &[u8], tail: &[u8], len: u64) {
        self.push(head);
        let max2 = (head.len() + tail.len()) as u64;
        if len <= max2 {
            // Head and tail overlap or touch: the bytes are all known.
            let skip = (max2 - len) as usize;
            self.push(&tail[skip..]);
            return;
        }
        // A gap of unknown bytes: only the head (already full) and the last bytes matter.
        let gap = len - max2;
        if !self.ring_mode() {
            let cap = self.cap();
            self.buf.truncate(self.max);
            self.ring = vec![0; cap];
            self.start = 0;
            self.cut = true;
        }
        self.len += gap;
        self.len += tail.len() as u64;
        self.ring_write(tail);
    }

    /// The last `n` bytes (n <= SLACK), fewer if the record is shorter.
    pub fn last_bytes(&self, n: usize, out: &mut Vec<u8>) {
        out.clear();
        let n = n.min(self.len as usize);
        if !self.ring_mode() {
            out.extend_from_slice(&self.buf[self.buf.len() - n..]);
        } else {
            let cap = self.cap();
            for i in 0..n {
                out.push(self.ring[(self.start + cap - n + i) % cap]);
            }
        }
    }

    /// The record made of the first `eff` bytes (`len - SLACK <= eff <= len`).
    pub fn content<'a>(&'a self, eff: u64, scratch: &'a mut Vec<u8>) -> Content<'a> {
        debug_assert!(eff <= self.len && self.len - eff <= SLACK as u64);
        let max = self.max;
        if eff <= max as u64 {
            return Content::Whole(&self.buf[..eff as usize]);
        }
        if !self.ring_mode() {
            let eff = eff as usize;
            return Content::Cut {
                head: &self.buf[..max],
                tail: &self.buf[eff - max..eff],
            };
        }
        let cap = self.cap();
        scratch.clear();
        scratch.extend_from_slice(&self.ring[self.start..]);
        scratch.extend_from_slice(&self.ring[..self.start]);
        let drop = (self.len - eff) as usize;
        Content::Cut {
            head: &self.buf[..max],
            tail: &scratch[cap - drop - max..cap - drop],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn check(max: usize, pieces: &[Vec<u8>], drop: usize) {
        let all: Vec<u8> = pieces.concat();
        let mut a = Accum::new(max);
        for p in pieces {
            a.push(p);
        }
        assert_eq!(a.len(), all.len() as u64);
        let drop = drop.min(all.len()).min(SLACK);
        let eff = all.len() - drop;
        let mut scratch = Vec::new();
        match a.content(eff as u64, &mut scratch) {
            Content::Whole(b) => {
                assert!(eff <= max);
                assert_eq!(b, &all[..eff]);
            }
            Content::Cut { head, tail } => {
                assert!(eff > max);
                assert_eq!(head, &all[..max]);
                assert_eq!(tail, &all[eff - max..eff]);
            }
        }
        let mut last = Vec::new();
        a.last_bytes(3, &mut last);
        assert_eq!(last, &all[all.len().saturating_sub(3)..]);
    }

    proptest! {
        #[test]
        fn keeps_exact_head_and_tail(max in 1usize..40, pieces in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..120), 0..12), drop in 0usize..17) {
            check(max, &pieces, drop);
        }

        #[test]
        fn push_cut_keeps_head_and_tail(max in 2usize..30, before in proptest::collection::vec(any::<u8>(), 0..50), line in proptest::collection::vec(any::<u8>(), 0..200)) {
            let lmax = max;
            if line.len() <= lmax { return Ok(()); }
            let mut a = Accum::new(max);
            a.push(&before);
            a.push_cut(&line[..lmax], &line[line.len() - lmax..], line.len() as u64);
            let all = [before.clone(), line.clone()].concat();
            let mut scratch = Vec::new();
            match a.content(all.len() as u64, &mut scratch) {
                Content::Cut { head, tail } => {
                    prop_assert_eq!(head, &all[..max]);
                    prop_assert_eq!(tail, &all[all.len() - max..]);
                }
                Content::Whole(_) => prop_assert!(false, "must be cut"),
            }
        }
    }

    #[test]
    fn a_huge_record_stays_small() {
        let mut a = Accum::new(1000);
        let chunk = vec![b'x'; 1 << 16];
        for _ in 0..1000 {
            a.push(&chunk);
        }
        assert_eq!(a.len(), 1000 << 16);
        assert!(a.buf.capacity() <= 4096 && a.ring.capacity() <= 2048);
    }
}
