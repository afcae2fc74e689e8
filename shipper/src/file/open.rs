//! Reading a stream's file from an offset: plain files by pread from our own offset, gzip archives decompress and skip.
//! Also the guard on resumed offsets: the hash of the bytes just before an offset.

use super::head::{hash, read_at_most, GZIP_MAGIC};
use flate2::read::MultiGzDecoder;
use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom};
use std::os::unix::fs::FileExt;

/// Bytes before an offset that its guard hash covers.
pub const MARKER_BYTES: u64 = 64;

/// Opens a file to follow it, without updating its access time where the kernel allows it
/// (`O_NOATIME`: the file's owner, or root). A log being written is newer than its atime, so
/// under `relatime` every read after a write updated the inode and journalled it: a fifth of
/// the tail thread with 10,000 files each growing by a line a second. A read by the agent is
/// not an access anyone asked for. Where the flag is refused (`EPERM`: another user's file and
/// no `CAP_FOWNER`), the file is opened as usual.
pub fn open_to_follow(path: &std::path::Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOATIME)
        .open(path)
    {
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => File::open(path),
        r => r,
    }
}

pub enum Reader {
    /// A plain file read with pread from our own position, so a resumed read can fetch the
    /// guard bytes before the position and the new bytes in one call ([`Reader::read_from`]).
    Plain {
        file: File,
        offset: u64,
    },
    Gzip(Box<MultiGzDecoder<BufReader<File>>>),
}

#[derive(Debug, thiserror::Error)]
pub enum OpenAtError {
    #[error("{0}")]
    Io(#[from] io::Error),
    /// The (decompressed) file ends before the offset.
    #[error("file ends at {end}, before offset {offset}")]
    Short { end: u64, offset: u64 },
    /// A gzip file still being written ends before the offset: wait for it, it is not short.
    #[error("gzip file still being written ends before offset {offset}")]
    Incomplete { offset: u64 },
}

impl Reader {
    /// Positions a reader at logical offset `offset`; `file` is a fresh handle owned by it.
    pub fn open_at(mut file: File, compressed: bool, offset: u64) -> Result<Reader, OpenAtError> {
        if !compressed {
            let end = file.metadata()?.len();
            if end < offset {
                return Err(OpenAtError::Short { end, offset });
            }
            return Ok(Reader::Plain { file, offset });
        }
        file.seek(SeekFrom::Start(0))?;
        let mut dec = Box::new(MultiGzDecoder::new(BufReader::with_capacity(
            64 << 10,
            file,
        )));
        let skipped = match io::copy(&mut (&mut *dec).take(offset), &mut io::sink()) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                return Err(OpenAtError::Incomplete { offset })
            }
            Err(e) => return Err(e.into()),
        };
        if skipped < offset {
            return Err(OpenAtError::Short {
                end: skipped,
                offset,
            });
        }
        Ok(Reader::Gzip(dec))
    }

    /// The handle being read, for fstat and pread (which leave the read position alone): a
    /// stream then holds one descriptor, not two.
    pub fn file(&self) -> &File {
        match self {
            Reader::Plain { file, .. } => file,
            Reader::Gzip(d) => d.get_ref().get_ref(),
        }
    }

    /// Plain files: one pread from `from` into `buf`, leaving the read position alone. Fewer
    /// than `buf.len()` bytes only at the end of the file (a regular file reads short nowhere
    /// else). Archives cannot be read at an offset.
    pub fn read_at(&self, from: u64, buf: &mut [u8]) -> io::Result<usize> {
        let Reader::Plain { file, .. } = self else {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "a compressed stream is only read forward",
            ));
        };
        loop {
            match file.read_at(buf, from) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                other => return other,
            }
        }
    }

    /// Plain files: what [`Reader::read_at`] returned up to `to` was taken; reading goes on
    /// from there.
    pub fn taken_to(&mut self, to: u64) {
        if let Reader::Plain { offset, .. } = self {
            *offset = (*offset).max(to);
        }
    }

    pub fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let r = match self {
                Reader::Plain { file, offset } => file.read_at(buf, *offset).map(|n| {
                    *offset += n as u64;
                    n
                }),
                Reader::Gzip(d) => d.read(buf),
            };
            match r {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                other => return other,
            }
        }
    }
}

/// Hash of the up to [`MARKER_BYTES`] bytes before `offset` in a plain file.
pub fn marker_at(file: &File, offset: u64) -> io::Result<Option<u64>> {
    if offset == 0 {
        return Ok(None);
    }
    let k = offset.min(MARKER_BYTES) as usize;
    // On the stack: this runs for every stream a scan or a commit looks at.
    let mut buf = [0u8; MARKER_BYTES as usize];
    let got = read_at_most(file, offset - k as u64, &mut buf[..k])?;
    if got < k {
        return Ok(None);
    }
    Ok(Some(hash(&buf[..k])))
}

/// Marker of the bytes before `offset`, when they are in `chunk` (which ends at `chunk_end`).
pub fn marker_in_chunk(chunk: &[u8], chunk_end: u64, offset: u64) -> Option<u64> {
    let k = offset.min(MARKER_BYTES);
    let chunk_start = chunk_end - chunk.len() as u64;
    if offset == 0 || offset > chunk_end || offset - k < chunk_start {
        return None;
    }
    let a = (offset - k - chunk_start) as usize;
    Some(hash(&chunk[a..a + k as usize]))
}

/// Does the content before `offset` still hash to `expected`? (Compressed files are decompressed.)
pub fn verify_marker(
    file: &File,
    compressed: bool,
    offset: u64,
    expected: Option<u64>,
) -> io::Result<bool> {
    let Some(expected) = expected else {
        return Ok(true);
    };
    if offset == 0 {
        return Ok(true);
    }
    if !compressed {
        return Ok(marker_at(file, offset)? == Some(expected));
    }
    let k = offset.min(MARKER_BYTES);
    let handle = file.try_clone()?;
    match Reader::open_at(handle, true, offset - k) {
        Ok(mut r) => {
            let mut buf = vec![0u8; k as usize];
            let mut filled = 0;
            while filled < buf.len() {
                let n = r.read(&mut buf[filled..])?;
                if n == 0 {
                    return Ok(false);
                }
                filled += n;
            }
            Ok(hash(&buf) == expected)
        }
        Err(OpenAtError::Short { .. }) => Ok(false),
        Err(OpenAtError::Incomplete { .. }) => Err(io::ErrorKind::UnexpectedEof.into()),
        Err(OpenAtError::Io(e)) => Err(e),
    }
}

pub fn is_gzip(head: &[u8]) -> bool {
    head.starts_with(&GZIP_MAGIC)
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::{write::GzEncoder, Compression};
    use std::io::Write;

    /// The access time a file had, after its atime was set an hour before its mtime.
    fn atime_after_read(path: &std::path::Path, open: impl Fn(&std::path::Path) -> File) -> i64 {
        use std::os::unix::fs::MetadataExt;
        let md = std::fs::metadata(path).unwrap();
        let times = [
            libc::timespec {
                tv_sec: md.mtime() - 3600,
                tv_nsec: 0,
            },
            libc::timespec {
                tv_sec: md.mtime(),
                tv_nsec: md.mtime_nsec(),
            },
        ];
        let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a NUL-terminated path and two timespecs we own.
        assert_eq!(
            unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), times.as_ptr(), 0) },
            0
        );
        let mut buf = [0u8; 16];
        open(path).read_at(&mut buf, 0).unwrap();
        std::fs::metadata(path).unwrap().atime()
    }

    /// Reading a followed file leaves its access time alone: under `relatime` a read of a file
    /// written since its last access rewrites the inode, once per line written.
    #[test]
    fn a_followed_file_is_read_without_touching_its_access_time() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.log");
        std::fs::write(&p, b"a line\n").unwrap();
        let mtime = {
            use std::os::unix::fs::MetadataExt;
            std::fs::metadata(&p).unwrap().mtime()
        };
        if atime_after_read(&p, |p| File::open(p).unwrap()) < mtime {
            // Mounted noatime (or the like): no read updates the atime, nothing to show here.
            return;
        }
        assert_eq!(
            atime_after_read(&p, |p| open_to_follow(p).unwrap()),
            mtime - 3600
        );
    }

    #[test]
    fn gzip_opens_at_a_decompressed_offset_and_markers_agree() {
        let dir = tempfile::tempdir().unwrap();
        let text: Vec<u8> = (0..500)
            .flat_map(|i| format!("line {i}\n").into_bytes())
            .collect();
        let plain = dir.path().join("a.log");
        std::fs::write(&plain, &text).unwrap();
        let mut enc = GzEncoder::new(Vec::new(), Compression::fast());
        enc.write_all(&text).unwrap();
        let gz = dir.path().join("a.log.gz");
        std::fs::write(&gz, enc.finish().unwrap()).unwrap();

        let mut r = Reader::open_at(File::open(&gz).unwrap(), true, 1000).unwrap();
        let mut rest = Vec::new();
        let mut buf = [0u8; 333];
        loop {
            let n = r.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            rest.extend_from_slice(&buf[..n]);
        }
        assert_eq!(rest, &text[1000..]);

        let m = marker_at(&File::open(&plain).unwrap(), 1000).unwrap();
        assert!(verify_marker(&File::open(&gz).unwrap(), true, 1000, m).unwrap());
        assert!(!verify_marker(&File::open(&gz).unwrap(), true, 1001, m).unwrap());
        assert_eq!(marker_in_chunk(&text[900..1100], 1100, 1000), m);
        assert!(matches!(
            Reader::open_at(File::open(&gz).unwrap(), true, 1 << 20),
            Err(OpenAtError::Short { .. })
        ));
        assert!(matches!(
            Reader::open_at(File::open(&plain).unwrap(), false, 1 << 20),
            Err(OpenAtError::Short { .. })
        ));
    }
}
