//! A stream's identity: the xxh3 hash of its first N bytes, taken over the decompressed bytes
//! when the file is gzip, so `app.log.1.gz` is recognised as the `app.log` already read.

use flate2::read::MultiGzDecoder;
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::Path;

pub const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

pub fn hash(bytes: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(bytes)
}

/// The first bytes of a file, decompressed if it is gzip.
#[derive(Debug)]
pub struct Head {
    pub bytes: Vec<u8>,
    pub compressed: bool,
}

/// A stream's identity as far as it is known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fingerprint {
    /// Over the first `bytes` bytes.
    Checksum { hash: u64, bytes: usize },
    /// Shorter than N so far: identified by the file itself until it grows (promotion).
    Provisional,
}

impl Head {
    pub fn fingerprint(&self, n: usize) -> Fingerprint {
        if self.bytes.len() >= n {
            Fingerprint::Checksum {
                hash: hash(&self.bytes[..n]),
                bytes: n,
            }
        } else {
            Fingerprint::Provisional
        }
    }
}

/// How a file's bytes are taken: as they are, or decompressed when the file is gzip.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decoding {
    /// `detect_compression = false`: every byte is the stream's, gzip or not.
    Raw,
    /// A file starting with the gzip magic is decompressed. `named_gzip` (a `.gz` name) says it
    /// must be gzip: such a file is never read as text, whatever its first bytes are so far.
    Detect { named_gzip: bool },
}

impl Decoding {
    pub fn for_path(detect_compression: bool, path: &Path) -> Decoding {
        if detect_compression {
            Decoding::Detect {
                named_gzip: named_gzip(path),
            }
        } else {
            Decoding::Raw
        }
    }
}

/// Why a file's head cannot be taken now.
#[derive(Debug, thiserror::Error)]
pub enum HeadError {
    /// Nothing to identify yet. Not an error: the file is looked at again once it has bytes,
    /// so a file that `gzip` is about to fill is never mistaken for an empty text file.
    #[error("file is empty")]
    Empty,
    /// A gzip file still being written: shorter than its header, or its deflate stream cut
    /// short. Waited for, never read as text.
    #[error("gzip file still being written")]
    GzipIncomplete,
    /// Named `.gz` but not gzip: shipping it as text would ship binary junk, and decompressing
    /// it is impossible.
    #[error("named .gz but does not start with the gzip magic bytes 1f 8b (set detect_compression = false to ship such files as bytes)")]
    NotGzip,
    /// Starts as gzip but cannot be decompressed.
    #[error("gzip data is corrupt: {0}")]
    CorruptGzip(io::Error),
    #[error("{0}")]
    Io(#[from] io::Error),
}

/// Does the name say gzip? (`logrotate`'s `compress` names its archives `*.gz`.)
pub fn named_gzip(path: &Path) -> bool {
    path.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("gz"))
}

/// Reads up to `n` bytes from the start of `file` without moving its position, decompressed
/// when `decoding` says the file is gzip.
///
/// A file in the making is waited for, not guessed at: `gzip` (and so `logrotate`'s `compress`)
/// creates its output empty and fills it over milliseconds to seconds, and a file identified as
/// text in that window would ship its compressed bytes as records.
pub fn read_head(file: &File, n: usize, decoding: Decoding) -> Result<Head, HeadError> {
    let mut magic = [0u8; 2];
    let got = read_at_most(file, 0, &mut magic)?;
    if got == 0 {
        return Err(HeadError::Empty);
    }
    if let Decoding::Detect { named_gzip } = decoding {
        // One byte that may be the start of the magic is a gzip file whose first write is
        // still coming (or a name that promises one).
        if got == 1 && (named_gzip || magic[0] == GZIP_MAGIC[0]) {
            return Err(HeadError::GzipIncomplete);
        }
        if got == 2 && magic == GZIP_MAGIC {
            let mut dec = MultiGzDecoder::new(PositionedReader { file, pos: 0 });
            let mut bytes = Vec::with_capacity(n);
            match (&mut dec).take(n as u64).read_to_end(&mut bytes) {
                Ok(_) => {}
                // flate2 reports a stream cut anywhere (header, deflate body, trailer) as an
                // unexpected end; only a complete member ends cleanly.
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                    return Err(HeadError::GzipIncomplete)
                }
                Err(e) => return Err(HeadError::CorruptGzip(e)),
            }
            return Ok(Head {
                bytes,
                compressed: true,
            });
        }
        if named_gzip {
            return Err(HeadError::NotGzip);
        }
    }
    let mut bytes = vec![0u8; n];
    let got = read_at_most(file, 0, &mut bytes)?;
    bytes.truncate(got);
    Ok(Head {
        bytes,
        compressed: false,
    })
}

/// pread until `buf` is full or the file ends.
pub fn read_at_most(file: &File, mut offset: u64, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match file.read_at(&mut buf[filled..], offset) {
            Ok(0) => break,
            Ok(k) => {
                filled += k;
                offset += k as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// Reads a file through pread, leaving the descriptor's own position alone.
pub struct PositionedReader<'a> {
    pub file: &'a File,
    pub pos: u64,
}

impl Read for PositionedReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.file.read_at(buf, self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::{write::GzEncoder, Compression};
    use std::io::Write;

    #[test]
    fn gzip_head_hashes_like_the_plain_file() {
        let dir = tempfile::tempdir().unwrap();
        let text: Vec<u8> = (0..200)
            .flat_map(|i| format!("line {i}\n").into_bytes())
            .collect();
        std::fs::write(dir.path().join("a.log"), &text).unwrap();
        let mut enc = GzEncoder::new(Vec::new(), Compression::default());
        enc.write_all(&text).unwrap();
        std::fs::write(dir.path().join("a.log.1.gz"), enc.finish().unwrap()).unwrap();
        let detect = Decoding::Detect { named_gzip: false };
        let plain =
            read_head(&File::open(dir.path().join("a.log")).unwrap(), 1024, detect).unwrap();
        let gz = read_head(
            &File::open(dir.path().join("a.log.1.gz")).unwrap(),
            1024,
            Decoding::for_path(true, &dir.path().join("a.log.1.gz")),
        )
        .unwrap();
        assert!(!plain.compressed && gz.compressed);
        assert_eq!(plain.fingerprint(1024), gz.fingerprint(1024));
        assert!(matches!(
            plain.fingerprint(1024),
            Fingerprint::Checksum { .. }
        ));
        // With detection off the gzip file is just bytes.
        let raw = read_head(
            &File::open(dir.path().join("a.log.1.gz")).unwrap(),
            1024,
            Decoding::for_path(false, &dir.path().join("a.log.1.gz")),
        )
        .unwrap();
        assert!(!raw.compressed);
    }

    #[test]
    fn short_files_are_provisional_and_empty_ones_wait() {
        let dir = tempfile::tempdir().unwrap();
        let detect = Decoding::Detect { named_gzip: false };
        std::fs::write(dir.path().join("s"), b"tiny\n").unwrap();
        let h = read_head(&File::open(dir.path().join("s")).unwrap(), 1024, detect).unwrap();
        assert_eq!(h.fingerprint(1024), Fingerprint::Provisional);
        std::fs::write(dir.path().join("e"), b"").unwrap();
        let e = File::open(dir.path().join("e")).unwrap();
        assert!(matches!(read_head(&e, 1024, detect), Err(HeadError::Empty)));
        assert!(matches!(
            read_head(&e, 1024, Decoding::Raw),
            Err(HeadError::Empty)
        ));
    }

    /// `gzip` fills its output over time: at every length short of the whole file, the head is
    /// "still being written", never text and never a short archive.
    #[test]
    fn gzip_cut_anywhere_is_incomplete_never_text() {
        let dir = tempfile::tempdir().unwrap();
        let text: Vec<u8> = (0..40)
            .flat_map(|i| format!("line {i} of the archive\n").into_bytes())
            .collect();
        let mut enc = GzEncoder::new(Vec::new(), Compression::default());
        enc.write_all(&text).unwrap();
        let gz = enc.finish().unwrap();
        for name in ["a.log.1.gz", "a.log.1"] {
            let p = dir.path().join(name);
            for cut in 1..gz.len() {
                std::fs::write(&p, &gz[..cut]).unwrap();
                let r = read_head(&File::open(&p).unwrap(), 4096, Decoding::for_path(true, &p));
                assert!(
                    matches!(r, Err(HeadError::GzipIncomplete)),
                    "{name} cut at {cut} of {}: {r:?}",
                    gz.len()
                );
            }
            std::fs::write(&p, &gz).unwrap();
            let whole =
                read_head(&File::open(&p).unwrap(), 4096, Decoding::for_path(true, &p)).unwrap();
            assert!(whole.compressed);
            assert_eq!(whole.bytes, text);
        }
    }

    #[test]
    fn a_gz_name_with_text_inside_is_refused_unless_detection_is_off() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("app.log.2.gz");
        std::fs::write(&p, b"plain text in a .gz name\n").unwrap();
        let f = File::open(&p).unwrap();
        assert!(matches!(
            read_head(&f, 1024, Decoding::for_path(true, &p)),
            Err(HeadError::NotGzip)
        ));
        let raw = read_head(&f, 1024, Decoding::for_path(false, &p)).unwrap();
        assert!(!raw.compressed && raw.bytes.starts_with(b"plain"));
        // The magic, then bytes no deflate stream starts with: corrupt, not "still coming".
        std::fs::write(
            &p,
            b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03\xff\xff\xff\xff",
        )
        .unwrap();
        assert!(matches!(
            read_head(&File::open(&p).unwrap(), 1024, Decoding::for_path(true, &p)),
            Err(HeadError::CorruptGzip(_))
        ));
        // A file not named .gz is text unless it starts with the magic.
        let q = dir.path().join("app.log");
        std::fs::write(&q, b"\x1f").unwrap();
        assert!(matches!(
            read_head(&File::open(&q).unwrap(), 1024, Decoding::for_path(true, &q)),
            Err(HeadError::GzipIncomplete)
        ));
        std::fs::write(&q, b"x").unwrap();
        assert!(read_head(&File::open(&q).unwrap(), 1024, Decoding::for_path(true, &q)).is_ok());
    }
}
