//! NDJSON appended to a file, one record per line; fsync'd before acknowledging when `sync`.
//!
//! The file only ever holds whole lines: a batch that fails part-way (ENOSPC after a partial
//! write, a failed fsync) is cut off again before the error is returned, as the collector does
//! with its stream files; the retry then starts where the failed batch started. A line torn by a
//! crash mid-write is cut at the next open: that batch was never acknowledged, so it comes again.
//!
//! The path is looked at again before every batch (one stat): when it is gone (deleted) or names
//! another file (renamed away by logrotate, then recreated or not), the sink opens the path anew,
//! creating it with its `mode`, and writes there. Without that, every batch after a rotation went
//! into a file nobody reads (or a deleted one) and was still acknowledged. A truncation in place
//! (copytruncate) needs nothing: the handle is O_APPEND, so the next write lands at the new end.

use super::{Sink, SinkError};
use crate::batch::Batch;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};

pub struct FileSink {
    path: PathBuf,
    file: File,
    sync: bool,
    /// Kept for the files this creates after a rotation: they get the mode the first one got.
    mode: u32,
    buf: Vec<u8>,
    /// A regular file, which a failed batch can be cut off; a pipe or device cannot be unwritten.
    regular: bool,
    /// The length a failed batch must be cut back to, when cutting it failed too: done before
    /// anything else is written, so nothing ever lands behind a torn line.
    cut_to: Option<u64>,
}

impl FileSink {
    /// `mode` is given to a file this creates; one that exists keeps the mode its owner chose.
    pub fn open(path: &Path, sync: bool, mode: u32) -> Result<FileSink, SinkError> {
        let (file, regular) = open_output(path, mode).map_err(|message| SinkError::Failed {
            sink: format!("file {}", path.display()),
            message,
        })?;
        let mut sink = FileSink {
            path: path.to_path_buf(),
            file,
            sync,
            mode,
            buf: Vec::new(),
            regular,
            cut_to: None,
        };
        sink.cut_torn_line()?;
        Ok(sink)
    }

    /// What [`FileSink::open`] would refuse, found without creating anything: `check` must not
    /// leave folders or empty files behind, and a reload must know before it stops the running
    /// sink. Errors are worded as `open` words them.
    pub fn check(path: &Path) -> Result<(), SinkError> {
        check_output(path).map_err(|message| SinkError::Failed {
            sink: format!("file {}", path.display()),
            message,
        })
    }

    /// Cuts a last line torn by an interrupted write off the file just opened.
    fn cut_torn_line(&mut self) -> Result<(), SinkError> {
        let path = self.path.clone();
        let fail = |message: String| SinkError::Failed {
            sink: format!("file {}", path.display()),
            message,
        };
        // Read through a handle of its own: the sink's is write-only, which is all it may need.
        let whole = match self.regular.then(|| File::open(&path)) {
            Some(Ok(f)) => whole_lines_len(&f).map_err(|e| fail(format!("cannot read: {e}")))?,
            Some(Err(e)) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot read the sink file to check its last line");
                None
            }
            None => None,
        };
        if let Some(len) = whole {
            tracing::warn!(path = %path.display(), len, "cutting a line torn by an interrupted write; its batch is sent again");
            self.cut(len)
                .map_err(|e| fail(format!("cannot cut a torn last line: {e}")))?;
        }
        Ok(())
    }

    /// Whether the path still names the open file. Gone (deleted, or renamed with nothing in
    /// its place yet) or another file (renamed and recreated): no.
    fn still_at_path(&self) -> std::io::Result<bool> {
        let open = self.file.metadata()?;
        // Deleted while open: a new file of the same name could even reuse the inode.
        if open.nlink() == 0 {
            return Ok(false);
        }
        match std::fs::metadata(&self.path) {
            Ok(now) => Ok(now.dev() == open.dev() && now.ino() == open.ino()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Opens the path anew after a rotation, in place of the handle on the file that left it.
    fn reopen(&mut self) -> Result<(), SinkError> {
        let name = self.describe();
        // A failed cut pending on the old file stays there: that file is no longer written, and
        // the batch the torn line belonged to is retried into the new one.
        if let Some(len) = self.cut_to.take() {
            if let Err(e) = self.file.set_len(len) {
                tracing::warn!(path = %self.path.display(), len, error = %e, "cannot cut a failed batch off the rotated file; it keeps a torn last line");
            }
        }
        let (file, regular) =
            open_output(&self.path, self.mode).map_err(|message| SinkError::Failed {
                sink: name,
                message,
            })?;
        tracing::info!(path = %self.path.display(), "the sink file was rotated or deleted; writing to the file now at its path");
        self.file = file;
        self.regular = regular;
        self.cut_torn_line()
    }

    /// Truncates the file back to `len` (and syncs that when `sync`); remembers it on failure.
    fn cut(&mut self, len: u64) -> std::io::Result<()> {
        if !self.regular {
            return Ok(());
        }
        let r = self.file.set_len(len).and_then(|()| {
            if self.sync {
                self.file.sync_data()
            } else {
                Ok(())
            }
        });
        self.cut_to = r.is_err().then_some(len);
        r
    }

    fn append(&mut self, batch: &Batch) -> std::io::Result<()> {
        // Encoded on the pipeline's thread already; this thread only writes.
        let bytes = batch.ndjson(&mut self.buf);
        self.file.write_all(bytes)?;
        if self.sync {
            self.file.sync_data()?;
        }
        Ok(())
    }
}

impl Sink for FileSink {
    fn encoding(&self) -> super::Encoding {
        super::Encoding::Ndjson
    }

    fn send(&mut self, batch: &Batch) -> Result<(), SinkError> {
        if batch.is_empty() {
            return Ok(());
        }
        let name = self.describe();
        let fail = |message: String| SinkError::Failed {
            sink: name.clone(),
            message,
        };
        // One stat per batch: a rotation is seen before the batch is written, not after.
        let here = self
            .still_at_path()
            .map_err(|e| fail(format!("cannot stat: {e}")))?;
        if !here {
            self.reopen()?;
        }
        if let Some(len) = self.cut_to {
            self.cut(len).map_err(|e| {
                fail(format!(
                    "cannot cut a failed batch off at byte {len}, so nothing is written behind it: {e}"
                ))
            })?;
        }
        // Taken each time, not remembered: the file may have been rotated or truncated since.
        let mut before = self.file.metadata().map_err(|e| fail(e.to_string()))?.len();
        let mut written = self.append(batch);
        // Deleted between the stat and the write: the batch went where nobody can read it, so it
        // is written again into the new file before it is acknowledged.
        if written.is_ok() && self.file.metadata().is_ok_and(|m| m.nlink() == 0) {
            self.reopen()?;
            before = self.file.metadata().map_err(|e| fail(e.to_string()))?.len();
            written = self.append(batch);
        }
        if self.buf.capacity() > 64 << 20 {
            self.buf = Vec::new();
        }
        written.map_err(|e| match self.cut(before) {
            Ok(()) => fail(e.to_string()),
            Err(c) => fail(format!(
                "{e}; cutting the batch off failed too ({c}), retried before the next write"
            )),
        })
    }

    fn describe(&self) -> String {
        format!("file {}", self.path.display())
    }
}

/// Opens (creating with `mode`) the file to append to, and says whether it is a regular file.
fn open_output(path: &Path, mode: u32) -> Result<(File, bool), String> {
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create folder {}: {e}", dir.display()))?;
    }
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(mode)
        .open(path)
        .map_err(|e| format!("cannot open: {e}"))?;
    let regular = file
        .metadata()
        .map_err(|e| format!("cannot stat: {e}"))?
        .is_file();
    Ok((file, regular))
}

/// What [`open_output`] would fail on, asked with stat(2) and access(2) along the path only.
/// Each error is the one `create_dir_all` or `open` would have met there.
fn check_output(path: &Path) -> Result<(), String> {
    use std::io::{Error, ErrorKind};
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let folder_err = |e: Error| format!("cannot create folder {}: {e}", dir.display());
    match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => {}
        // create_dir_all meets the thing in the way: mkdir says EEXIST and it is no folder.
        Ok(_) => return Err(folder_err(Error::from_raw_os_error(libc::EEXIST))),
        Err(e) if e.kind() == ErrorKind::NotFound => {
            // The folders would be made from the nearest one that exists: it must let us.
            let mut up = dir;
            while let Some(parent) = up.parent() {
                let parent = if parent.as_os_str().is_empty() {
                    Path::new(".")
                } else {
                    parent
                };
                match std::fs::metadata(parent) {
                    Ok(m) if m.is_dir() => {
                        return creatable(parent).map_err(folder_err);
                    }
                    Ok(_) => return Err(folder_err(Error::from_raw_os_error(libc::ENOTDIR))),
                    Err(e) if e.kind() == ErrorKind::NotFound => up = parent,
                    Err(e) => return Err(folder_err(e)),
                }
            }
            return Ok(());
        }
        Err(e) => return Err(folder_err(e)),
    }
    let open_err = |e: Error| format!("cannot open: {e}");
    match std::fs::metadata(path) {
        Ok(m) if m.is_dir() => Err(open_err(Error::from_raw_os_error(libc::EISDIR))),
        Ok(_) => access(path, libc::W_OK).map_err(open_err),
        Err(e) if e.kind() == ErrorKind::NotFound => creatable(dir).map_err(open_err),
        Err(e) => Err(open_err(e)),
    }
}

/// Whether a file or folder can be made in the folder `dir`: access(2) says so for its mode (and
/// always for root), but /proc and /sys make nothing a process asks for, whoever it is. Their
/// refusals are the kernel's own: ENOENT from procfs, EACCES from sysfs.
fn creatable(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    const PROC_SUPER_MAGIC: i64 = 0x9fa0;
    const SYSFS_MAGIC: i64 = 0x6265_6572;
    access(dir, libc::W_OK | libc::X_OK)?;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: `c` is NUL-terminated and `fs` a plain struct the call fills in.
    let mut fs: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(c.as_ptr(), &mut fs) } != 0 {
        return Ok(());
    }
    match fs.f_type as i64 {
        PROC_SUPER_MAGIC => Err(std::io::Error::from_raw_os_error(libc::ENOENT)),
        SYSFS_MAGIC => Err(std::io::Error::from_raw_os_error(libc::EACCES)),
        _ => Ok(()),
    }
}

/// access(2): whether this process may do `how` to `path`, as open(2) and mkdir(2) would judge.
fn access(path: &Path, how: libc::c_int) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: `c` is a NUL-terminated string that outlives the call.
    if unsafe { libc::access(c.as_ptr(), how) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// How every line this sink writes starts.
const RECORD_START: &[u8] = b"{\"host\":\"";

/// The length up to the end of the file's last whole line, when the file ends in a torn record
/// of ours. A last line that does not start like one is not ours to cut (the sink was pointed
/// at a file that held something else): it is left alone.
fn whole_lines_len(file: &File) -> std::io::Result<Option<u64>> {
    let Some(whole) = last_line_start(file)? else {
        return Ok(None);
    };
    let len = file.metadata()?.len();
    let mut head = vec![0u8; RECORD_START.len().min((len - whole) as usize)];
    file.read_exact_at(&mut head, whole)?;
    Ok(RECORD_START.starts_with(&head).then_some(whole))
}

/// Where the file's last line starts, when that line has no end.
fn last_line_start(file: &File) -> std::io::Result<Option<u64>> {
    let len = file.metadata()?.len();
    let mut end = len;
    let mut chunk = vec![0u8; 64 << 10];
    while end > 0 {
        let start = end.saturating_sub(chunk.len() as u64);
        let part = &mut chunk[..(end - start) as usize];
        file.read_exact_at(part, start)?;
        if let Some(i) = part.iter().rposition(|&b| b == b'\n') {
            let whole = start + i as u64 + 1;
            return Ok((whole < len).then_some(whole));
        }
        end = start;
    }
    Ok((len > 0).then_some(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_created_file_gets_the_mode_and_an_existing_one_keeps_its_own() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        let new = dir.path().join("new.ndjson");
        FileSink::open(&new, false, 0o600).unwrap();
        assert_eq!(mode(&new), 0o600);
        let group = dir.path().join("group.ndjson");
        FileSink::open(&group, false, 0o640).unwrap();
        assert_eq!(mode(&group), 0o640);
        let old = dir.path().join("old.ndjson");
        std::fs::write(&old, b"").unwrap();
        std::fs::set_permissions(&old, std::fs::Permissions::from_mode(0o644)).unwrap();
        FileSink::open(&old, false, 0o600).unwrap();
        assert_eq!(mode(&old), 0o644);
    }

    #[test]
    fn whole_lines_len_finds_where_a_torn_record_starts() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        let cases: [(&[u8], Option<u64>); 7] = [
            (b"", None),
            (b"{}\n{}\n", None),
            (b"{}\n{\"host\":\"h\",\"ms", Some(3)),
            (b"{}\n{\"ho", Some(3)),
            (b"{\"host\":\"h", Some(0)),
            (b"\n", None),
            // Not a record of ours: someone else's file, left whole.
            (b"{}\nplain text without an end", None),
        ];
        for (text, want) in cases {
            std::fs::write(&p, text).unwrap();
            let f = File::open(&p).unwrap();
            assert_eq!(whole_lines_len(&f).unwrap(), want, "{text:?}");
        }
        // A torn line longer than one read.
        let mut long = b"{}\n{\"host\":\"".to_vec();
        long.extend(vec![b'x'; 200_000]);
        std::fs::write(&p, &long).unwrap();
        assert_eq!(whole_lines_len(&File::open(&p).unwrap()).unwrap(), Some(3));
    }

    #[test]
    fn check_refuses_what_open_refuses_and_creates_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::write(d.join("plain"), b"x").unwrap();
        std::fs::create_dir(d.join("folder")).unwrap();
        let refused = [
            d.join("plain/out.ndjson"),        // the folder is a file
            d.join("plain/deeper/out.ndjson"), // a folder on the way is a file
            d.join("folder"),                  // the file is a folder
            // Where nothing can be made, root or not (access(2) says yes to root).
            std::path::PathBuf::from("/proc/nope/out.ndjson"),
            std::path::PathBuf::from("/proc/out.ndjson"),
            std::path::PathBuf::from("/sys/out.ndjson"),
        ];
        for p in &refused {
            let checked = FileSink::check(p).err().map(|e| e.to_string());
            let opened = FileSink::open(p, false, 0o600).err().map(|e| e.to_string());
            assert!(checked.is_some(), "{}: check let it through", p.display());
            assert_eq!(checked, opened, "{}", p.display());
        }
        let fine = d.join("new/deeper/out.ndjson");
        FileSink::check(&fine).unwrap();
        FileSink::check(&d.join("plain")).unwrap();
        assert!(!d.join("new").exists(), "check created a folder");
        FileSink::open(&fine, false, 0o600).unwrap();
    }

    /// A batch of one record per message, each its own line in the file.
    fn batch(messages: &[&str]) -> Batch {
        use crate::batch::StreamMeta;
        use crate::frame::{Part, Rec};
        let mut b = Batch::new("h".into(), 0);
        let mut out = crate::batch::Intake::plain(&mut b);
        let slot = out.open_stream(
            StreamMeta {
                id: "s".into(),
                source: "app".into(),
                fingerprint: None,
                path: "/l/a.log".into(),
            },
            crate::batch::Ack::Store(crate::store::Checkpoint {
                stream: "s".into(),
                ..Default::default()
            }),
        );
        for (n, msg) in messages.iter().enumerate() {
            let rec = Rec {
                offset: n as u64,
                len: msg.len() as u64,
                part: Part::Whole,
                bytes: msg.as_bytes(),
            };
            out.push(slot, &rec, 0, None);
        }
        drop(out);
        b
    }

    fn lines(p: &Path) -> Vec<String> {
        std::fs::read_to_string(p)
            .unwrap()
            .lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                v["msg"].as_str().unwrap().to_string()
            })
            .collect()
    }

    #[test]
    fn a_deleted_file_is_created_again_at_the_next_batch_with_the_mode() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("out.ndjson");
        let mut sink = FileSink::open(&p, true, 0o640).unwrap();
        sink.send(&batch(&["one"])).unwrap();
        std::fs::remove_file(&p).unwrap();
        sink.send(&batch(&["two"])).unwrap();
        assert_eq!(lines(&p), ["two"]);
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o640);
    }

    #[test]
    fn a_renamed_file_keeps_what_it_had_and_the_path_gets_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("out.ndjson");
        let rotated = dir.path().join("out.ndjson.1");
        let mut sink = FileSink::open(&p, false, 0o600).unwrap();
        sink.send(&batch(&["one"])).unwrap();
        std::fs::rename(&p, &rotated).unwrap();
        sink.send(&batch(&["two", "three"])).unwrap();
        assert_eq!(lines(&rotated), ["one"]);
        assert_eq!(lines(&p), ["two", "three"]);
        // Renamed and replaced at once (logrotate `create`): the replacement is appended to.
        std::fs::rename(&p, &rotated).unwrap();
        std::fs::write(&p, b"").unwrap();
        sink.send(&batch(&["four"])).unwrap();
        assert_eq!(lines(&rotated), ["two", "three"]);
        assert_eq!(lines(&p), ["four"]);
    }

    #[test]
    fn a_truncated_file_is_written_from_its_new_end() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("out.ndjson");
        let mut sink = FileSink::open(&p, false, 0o600).unwrap();
        sink.send(&batch(&["one", "two"])).unwrap();
        // copytruncate: copy, then truncate in place; the handle is the same file.
        std::fs::OpenOptions::new()
            .write(true)
            .open(&p)
            .unwrap()
            .set_len(0)
            .unwrap();
        sink.send(&batch(&["three"])).unwrap();
        let text = std::fs::read(&p).unwrap();
        assert!(!text.contains(&0), "no hole of NULs before the new line");
        assert_eq!(lines(&p), ["three"]);
    }
}
