//! The spool: an append-only log of received syslog records in the state dir, one per listener.
//! It is the input's stream: what the agent promises about a message starts when it is here.
//!
//! Layout: `<dir>/<START>.spool` segments, `START` the spool offset (20 digits) of the segment's
//! first byte, so offsets run on across segments and a segment is deleted whole once committed
//! past. One record on disk:
//!
//! ```text
//! u32 LE payload length | u64 LE xxh3-64 of the payload | payload
//! payload = i64 LE ts_ms | u8 part (0 whole, 1 head, 2 tail) | u64 LE whole length
//!         | u32 LE fields length | fields (a JSON object) | msg bytes
//! ```
//!
//! A kill -9 or a power cut can leave a torn last record: [`Spool::open`] checks the newest
//! segment's records and cuts the file after the last good one, so a torn tail is never read
//! back as garbage. The writer publishes `durable` only after `fdatasync`, and readers never
//! read past it: nothing is shipped that a power cut could take back.

use crate::frame::Part;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

const HEADER: usize = 12;
/// A payload longer than this is damage, not data (messages are cut at 64 MiB at most).
const MAX_PAYLOAD: u32 = 3 * (64 << 20);

#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("spool {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("spool segment {path} is damaged at byte {at}: {what}")]
    Damaged {
        path: PathBuf,
        at: u64,
        what: &'static str,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> SpoolError + '_ {
    move |source| SpoolError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// One record as spooled and read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpoolRecord {
    pub ts_ms: i64,
    pub part: Part,
    /// The whole message's length (differs from `msg.len()` for a cut message's parts).
    pub len: u64,
    /// A JSON object (see the record format's `fields`).
    pub fields: Vec<u8>,
    pub msg: Vec<u8>,
}

impl SpoolRecord {
    /// Appends this record in its on-disk form.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        let payload_len = 8 + 1 + 8 + 4 + self.fields.len() + self.msg.len();
        let start = out.len();
        out.extend_from_slice(&(payload_len as u32).to_le_bytes());
        out.extend_from_slice(&[0u8; 8]);
        out.extend_from_slice(&self.ts_ms.to_le_bytes());
        out.push(match self.part {
            Part::Whole => 0,
            Part::Head => 1,
            Part::Tail => 2,
        });
        out.extend_from_slice(&self.len.to_le_bytes());
        out.extend_from_slice(&(self.fields.len() as u32).to_le_bytes());
        out.extend_from_slice(&self.fields);
        out.extend_from_slice(&self.msg);
        let sum = xxhash_rust::xxh3::xxh3_64(&out[start + HEADER..]);
        out[start + 4..start + HEADER].copy_from_slice(&sum.to_le_bytes());
    }

    fn decode(payload: &[u8]) -> Option<SpoolRecord> {
        let ts_ms = i64::from_le_bytes(payload.get(..8)?.try_into().ok()?);
        let part = match payload.get(8)? {
            0 => Part::Whole,
            1 => Part::Head,
            2 => Part::Tail,
            _ => return None,
        };
        let len = u64::from_le_bytes(payload.get(9..17)?.try_into().ok()?);
        let flen = u32::from_le_bytes(payload.get(17..21)?.try_into().ok()?) as usize;
        let fields = payload.get(21..21 + flen)?.to_vec();
        let msg = payload.get(21 + flen..)?.to_vec();
        Some(SpoolRecord {
            ts_ms,
            part,
            len,
            fields,
            msg,
        })
    }
}

/// What the writer, the readers and status share about one spool.
#[derive(Debug, Default)]
pub struct SpoolState {
    /// Spool offset up to which every byte is fsync'd: readers stop here.
    pub durable: AtomicU64,
    /// Spool offset up to which the sink has acknowledged (set by the input after commit).
    pub committed: AtomicU64,
    /// Bytes in segment files now (what `spool_max_bytes` limits).
    pub disk_bytes: AtomicU64,
    /// Set while `disk_bytes` ≥ the limit: TCP/TLS stop reading, UDP datagrams are dropped.
    pub full: AtomicBool,
    /// Set while `disk_bytes` ≤ half the limit: a full episode ends only here, so a spool
    /// refilling to its limit while it drains one segment at a time is one episode, not many.
    pub low: AtomicBool,
    /// Bytes cut from a torn tail when the spool was opened.
    pub torn_bytes: AtomicU64,
}

impl SpoolState {
    /// Puts the spool's size and fullness where status reads them.
    pub fn report_to(&self, c: &crate::status::ListenerCounters) {
        c.set_spool(
            self.disk_bytes.load(Ordering::Relaxed),
            self.full.load(Ordering::Relaxed),
            self.durable.load(Ordering::Acquire),
        );
    }
}

fn segment_name(start: u64) -> String {
    format!("{start:020}.spool")
}

/// The segments in `dir`, oldest first, as (start offset, path).
fn segments(dir: &Path) -> Result<Vec<(u64, PathBuf)>, SpoolError> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_err(dir))? {
        let entry = entry.map_err(io_err(dir))?;
        let name = entry.file_name();
        let Some(stem) = name.to_str().and_then(|n| n.strip_suffix(".spool")) else {
            continue;
        };
        if let Ok(start) = stem.parse::<u64>() {
            out.push((start, entry.path()));
        }
    }
    out.sort();
    Ok(out)
}

fn sync_dir(dir: &Path) -> Result<(), SpoolError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

/// The length of the valid prefix of a segment: where the first torn or damaged record starts.
fn valid_prefix(path: &Path) -> Result<u64, SpoolError> {
    let mut r = BufReader::new(File::open(path).map_err(io_err(path))?);
    let mut at = 0u64;
    let mut payload = Vec::new();
    loop {
        match read_one(&mut r, &mut payload) {
            Ok(Some(n)) => at += n,
            Ok(None) | Err(_) => return Ok(at),
        }
    }
}

/// Reads one record's payload into `buf` → its size on disk; `None` at a clean end of file.
fn read_one(r: &mut impl Read, buf: &mut Vec<u8>) -> Result<Option<u64>, &'static str> {
    let mut header = [0u8; HEADER];
    let mut got = 0;
    while got < HEADER {
        match r.read(&mut header[got..]) {
            Ok(0) if got == 0 => return Ok(None),
            Ok(0) => return Err("a torn record header"),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return Err("a read error"),
        }
    }
    let len = u32::from_le_bytes(header[..4].try_into().expect("4 bytes"));
    if !(21..=MAX_PAYLOAD).contains(&len) {
        return Err("an impossible record length");
    }
    buf.resize(len as usize, 0);
    r.read_exact(buf).map_err(|_| "a torn record")?;
    let sum = u64::from_le_bytes(header[4..].try_into().expect("8 bytes"));
    if xxhash_rust::xxh3::xxh3_64(buf) != sum {
        return Err("a checksum mismatch");
    }
    Ok(Some(HEADER as u64 + len as u64))
}

/// The spool of one listener: opened (and repaired) once, then written by one writer.
pub struct Spool {
    dir: PathBuf,
    segment_bytes: u64,
    max_bytes: u64,
    state: Arc<SpoolState>,
    file: File,
    /// Start offset of the segment being written.
    seg_start: u64,
    /// Spool offset after the last byte written (durable or not).
    end: u64,
}

impl Spool {
    /// Opens the spool in `dir` (made 0700 if missing), cutting a torn tail off the newest
    /// segment. An empty spool starts at offset `start` (the store's committed offset), so a
    /// spool deleted by hand never restarts below what the store says was delivered.
    /// `segment_bytes`: when to start a new segment; `max_bytes`: when it is full.
    pub fn open(
        dir: &Path,
        start: u64,
        segment_bytes: u64,
        max_bytes: u64,
    ) -> Result<Spool, SpoolError> {
        use std::os::unix::fs::DirBuilderExt;
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io_err(dir))?;
        let segs = segments(dir)?;
        let state = Arc::new(SpoolState::default());
        let mut disk = 0;
        for (_, p) in &segs {
            disk += fs::metadata(p).map_err(io_err(p))?.len();
        }
        let (seg_start, path) = match segs.last() {
            Some((start, p)) => (*start, p.clone()),
            None => (start, dir.join(segment_name(start))),
        };
        let file = OpenOptions::new()
            .create(true)
            .read(true)
            .write(true)
            .truncate(false)
            .open(&path)
            .map_err(io_err(&path))?;
        let size = file.metadata().map_err(io_err(&path))?.len();
        let valid = valid_prefix(&path)?;
        if valid < size {
            file.set_len(valid).map_err(io_err(&path))?;
            file.sync_all().map_err(io_err(&path))?;
            state.torn_bytes.store(size - valid, Ordering::Relaxed);
            disk -= size - valid;
        }
        if segs.is_empty() {
            sync_dir(dir)?;
        }
        let mut file = file;
        file.seek(SeekFrom::End(0)).map_err(io_err(&path))?;
        let end = seg_start + valid;
        state.durable.store(end, Ordering::Release);
        state.disk_bytes.store(disk, Ordering::Relaxed);
        let spool = Spool {
            dir: dir.to_path_buf(),
            segment_bytes: segment_bytes.max(1),
            max_bytes,
            state,
            file,
            seg_start,
            end,
        };
        spool.update_full();
        Ok(spool)
    }

    pub fn state(&self) -> &Arc<SpoolState> {
        &self.state
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The oldest offset still on disk.
    pub fn first_offset(&self) -> Result<u64, SpoolError> {
        Ok(segments(&self.dir)?
            .first()
            .map(|s| s.0)
            .unwrap_or(self.seg_start))
    }

    fn update_full(&self) {
        let disk = self.state.disk_bytes.load(Ordering::Relaxed);
        self.state
            .low
            .store(disk <= self.max_bytes / 2, Ordering::Release);
        self.state
            .full
            .store(disk >= self.max_bytes, Ordering::Release);
    }

    /// Writes already-encoded records (see [`SpoolRecord::encode_into`]). Not durable until
    /// [`Spool::sync`].
    pub fn append(&mut self, encoded: &[u8]) -> Result<(), SpoolError> {
        if encoded.is_empty() {
            return Ok(());
        }
        if self.end - self.seg_start >= self.segment_bytes {
            self.roll()?;
        }
        let path = self.dir.join(segment_name(self.seg_start));
        if let Err(e) = self.file.write_all(encoded) {
            // A part written (a full disk) must not stay: a retry would append after it and
            // leave damage in the middle of the segment.
            let keep = self.end - self.seg_start;
            let _ = self.file.set_len(keep);
            let _ = self.file.seek(SeekFrom::Start(keep));
            return Err(io_err(&path)(e));
        }
        self.end += encoded.len() as u64;
        self.state
            .disk_bytes
            .fetch_add(encoded.len() as u64, Ordering::Relaxed);
        self.update_full();
        Ok(())
    }

    /// Makes everything appended durable, then lets readers see it.
    pub fn sync(&mut self) -> Result<(), SpoolError> {
        if self.state.durable.load(Ordering::Acquire) == self.end {
            return Ok(());
        }
        let path = self.dir.join(segment_name(self.seg_start));
        self.file.sync_data().map_err(io_err(&path))?;
        self.state.durable.store(self.end, Ordering::Release);
        Ok(())
    }

    fn roll(&mut self) -> Result<(), SpoolError> {
        self.sync()?;
        let path = self.dir.join(segment_name(self.end));
        self.file = OpenOptions::new()
            .create_new(true)
            .write(true)
            .open(&path)
            .map_err(io_err(&path))?;
        sync_dir(&self.dir)?;
        self.seg_start = self.end;
        Ok(())
    }

    /// Deletes the segments wholly before `committed` (never the one being written), so space
    /// comes back only for what the sink acknowledged.
    pub fn reclaim(&mut self, committed: u64) -> Result<u64, SpoolError> {
        self.state.committed.store(committed, Ordering::Release);
        // Everything delivered: start a fresh segment so the written one can go too. Otherwise
        // a spool smaller than a few segments could be full with nothing left to deliver.
        if committed >= self.end && self.end > self.seg_start {
            self.roll()?;
        }
        let segs = segments(&self.dir)?;
        let mut freed = 0;
        for w in segs.windows(2) {
            let (start, path) = &w[0];
            let next = w[1].0;
            if next > committed || *start == self.seg_start {
                break;
            }
            let len = fs::metadata(path).map(|m| m.len()).unwrap_or(0);
            fs::remove_file(path).map_err(io_err(path))?;
            freed += len;
        }
        if freed > 0 {
            self.state.disk_bytes.fetch_sub(freed, Ordering::Relaxed);
            self.update_full();
        }
        Ok(freed)
    }
}

/// Reads records back from a spool, from an offset up to what is durable.
pub struct SpoolReader {
    dir: PathBuf,
    state: Arc<SpoolState>,
    /// The open segment: its start, its path and a reader positioned at `pos`, limited to the
    /// durable bytes so a group being written is never half read.
    current: Option<(u64, PathBuf, BufReader<io::Take<File>>)>,
    pos: u64,
    payload: Vec<u8>,
}

impl SpoolReader {
    pub fn new(dir: &Path, state: Arc<SpoolState>, from: u64) -> SpoolReader {
        SpoolReader {
            dir: dir.to_path_buf(),
            state,
            current: None,
            pos: from,
            payload: Vec::new(),
        }
    }

    /// The spool offset up to which records are durable (and may be read).
    pub fn durable(&self) -> u64 {
        self.state.durable.load(Ordering::Acquire)
    }

    /// The offset of the next record to be read.
    pub fn position(&self) -> u64 {
        self.pos
    }

    /// The next durable record → (its offset, the offset after it, the record); `None` when
    /// caught up. A damaged record (the disk, not a torn tail: those were cut at open) is an
    /// error; the reader then skips to the next segment so one bad sector stops nothing else.
    pub fn next(&mut self) -> Result<Option<(u64, u64, SpoolRecord)>, SpoolError> {
        let durable = self.state.durable.load(Ordering::Acquire);
        if self.pos >= durable {
            return Ok(None);
        }
        if self.current.is_none() {
            self.open_at()?;
        }
        let Some((start, path, r)) = self.current.as_mut() else {
            return Ok(None);
        };
        // The underlying file is `buffered` bytes ahead of `pos`.
        let buffered = r.buffer().len() as u64;
        r.get_mut()
            .set_limit((durable - self.pos).saturating_sub(buffered));
        match read_one(r, &mut self.payload) {
            Ok(Some(n)) => {
                let at = self.pos;
                self.pos += n;
                let rec = SpoolRecord::decode(&self.payload).ok_or(SpoolError::Damaged {
                    path: path.clone(),
                    at: at - *start,
                    what: "a record that does not decode",
                })?;
                Ok(Some((at, self.pos, rec)))
            }
            Ok(None) => {
                // End of this segment: the next one starts here.
                self.current = None;
                let next = self.dir.join(segment_name(self.pos));
                if next.exists() {
                    self.next()
                } else {
                    Ok(None)
                }
            }
            Err(what) => {
                let err = SpoolError::Damaged {
                    path: path.clone(),
                    at: self.pos - *start,
                    what,
                };
                self.current = None;
                if let Some(&(s, _)) = segments(&self.dir)?.iter().find(|(s, _)| *s > self.pos) {
                    self.pos = s;
                } else {
                    self.pos = durable;
                }
                Err(err)
            }
        }
    }

    /// Opens the segment holding `pos` and seeks to it; a `pos` before the oldest segment (its
    /// records were reclaimed) moves to that segment's start.
    fn open_at(&mut self) -> Result<(), SpoolError> {
        let segs = segments(&self.dir)?;
        let Some((start, path)) = segs
            .iter()
            .rev()
            .find(|(s, _)| *s <= self.pos)
            .or(segs.first())
            .cloned()
        else {
            return Ok(());
        };
        if start > self.pos {
            self.pos = start;
        }
        let mut f = File::open(&path).map_err(io_err(&path))?;
        f.seek(SeekFrom::Start(self.pos - start))
            .map_err(io_err(&path))?;
        self.current = Some((start, path, BufReader::with_capacity(64 << 10, f.take(0))));
        Ok(())
    }

    /// Forget the open segment (after a rewind to an earlier offset, say).
    pub fn seek(&mut self, pos: u64) {
        self.pos = pos;
        self.current = None;
    }
}

#[cfg(test)]
mod tests;
