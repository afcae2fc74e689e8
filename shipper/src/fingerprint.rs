//! A stream's identity: the xxh3 hash of its first N bytes, taken over the decompressed bytes
//! when the file is gzip, so `app.log.1.gz` is recognised as the `app.log` already read.

use flate2::read::MultiGzDecoder;
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;

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

/// Reads up to `n` bytes from the start of `file` without moving its position.
/// A gzip file that ends early (still being written) is an `UnexpectedEof` error: retry later.
pub fn read_head(file: &File, n: usize, detect_compression: bool) -> io::Result<Head> {
    let mut magic = [0u8; 2];
    let got = read_at_most(file, 0, &mut magic)?;
    if detect_compression && got == 2 && magic == GZIP_MAGIC {
        let mut dec = MultiGzDecoder::new(PositionedReader { file, pos: 0 });
        let mut bytes = Vec::with_capacity(n);
        (&mut dec).take(n as u64).read_to_end(&mut bytes)?;
        return Ok(Head {
            bytes,
            compressed: true,
        });
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
        let plain = read_head(&File::open(dir.path().join("a.log")).unwrap(), 1024, true).unwrap();
        let gz = read_head(
            &File::open(dir.path().join("a.log.1.gz")).unwrap(),
            1024,
            true,
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
            false,
        )
        .unwrap();
        assert!(!raw.compressed);
    }

    #[test]
    fn short_files_are_provisional_and_truncated_gzip_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("s"), b"tiny\n").unwrap();
        let h = read_head(&File::open(dir.path().join("s")).unwrap(), 1024, true).unwrap();
        assert_eq!(h.fingerprint(1024), Fingerprint::Provisional);
        let mut enc = GzEncoder::new(Vec::new(), Compression::default());
        enc.write_all(&vec![b'x'; 5000]).unwrap();
        let gz = enc.finish().unwrap();
        std::fs::write(dir.path().join("p.gz"), &gz[..gz.len() / 2]).unwrap();
        let err = read_head(&File::open(dir.path().join("p.gz")).unwrap(), 4096, true).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    }
}
