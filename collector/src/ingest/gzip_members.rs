//! Where a gzip body's members begin and end, and what follows the last one.
//!
//! A gzip body may be several members one after another (RFC 1952, 2.2: what `cat a.gz b.gz`
//! and some HTTP clients send); they decode to their contents joined. flate2's
//! `MultiGzDecoder` reads them, but takes any byte after a member for the start of another:
//! a body followed by a few stray bytes was refused as "unexpected end of file" (the next
//! header's ten bytes never came), and longer junk as "invalid gzip header", neither naming the
//! fault. [`Members`] decodes one member at a time and looks at what follows each: the body's
//! end, another member (its magic number, `1f 8b`), or bytes that are no member, which are
//! counted to the body's end and refused as [`TrailingBytes`]. Decoding and every checksum stay
//! flate2's.

use std::io::{self, BufRead, Read};

use flate2::bufread::GzDecoder;

/// The two bytes every gzip member starts with (RFC 1952, ID1 and ID2).
const MAGIC: [u8; 2] = [0x1f, 0x8b];

/// Bytes after the body's last gzip member that do not start another.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{len} trailing bytes after the gzip stream (from byte {at}), which do not start another gzip member")]
pub struct TrailingBytes {
    /// Where they start in the body as sent.
    pub at: u64,
    /// How many there are, to the body's end.
    pub len: u64,
}

/// What follows a member's end.
enum Next {
    End,
    Member,
    Trailing,
}

/// The compressed body: its bytes counted (for the messages), and able to look two bytes past
/// a member's end even when the body's pieces split them.
struct Source<R> {
    inner: R,
    /// Bytes of the body handed to the decoder so far.
    consumed: u64,
    /// A member's first byte taken out of `inner` to see the second: served before `inner`.
    held: Option<u8>,
}

impl<R: BufRead> Source<R> {
    fn next(&mut self) -> io::Result<Next> {
        debug_assert!(self.held.is_none(), "looked at only between members");
        let first = match self.inner.fill_buf()? {
            [] => return Ok(Next::End),
            [a, b, ..] => {
                return Ok(if [*a, *b] == MAGIC {
                    Next::Member
                } else {
                    Next::Trailing
                })
            }
            [one] => *one,
        };
        if first != MAGIC[0] {
            return Ok(Next::Trailing);
        }
        // The piece ends after this byte: hold it and look at the next piece.
        self.inner.consume(1);
        self.held = Some(first);
        Ok(match self.inner.fill_buf()?.first() {
            Some(&b) if b == MAGIC[1] => Next::Member,
            _ => Next::Trailing,
        })
    }

    /// Counts what is left of the body, reading it to its end.
    fn trailing(&mut self) -> io::Result<TrailingBytes> {
        let at = self.consumed;
        loop {
            let n = self.fill_buf()?.len();
            if n == 0 {
                return Ok(TrailingBytes {
                    at,
                    len: self.consumed - at,
                });
            }
            self.consume(n);
        }
    }
}

impl<R: BufRead> BufRead for Source<R> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        match &self.held {
            Some(b) => Ok(std::slice::from_ref(b)),
            None => self.inner.fill_buf(),
        }
    }

    fn consume(&mut self, n: usize) {
        if n == 0 {
            return;
        }
        self.consumed += n as u64;
        match self.held.take() {
            Some(_) => debug_assert_eq!(n, 1, "the held byte is handed out alone"),
            None => self.inner.consume(n),
        }
    }
}

impl<R: BufRead> Read for Source<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let chunk = self.fill_buf()?;
        let n = chunk.len().min(buf.len());
        buf[..n].copy_from_slice(&chunk[..n]);
        self.consume(n);
        Ok(n)
    }
}

/// A gzip body decoded member after member, refusing what follows the last one unless it is
/// the body's end.
pub(super) struct Members<R: BufRead> {
    /// Only empty while one member's decoder hands its source to the next.
    decoder: Option<GzDecoder<Source<R>>>,
    /// Members begun so far (for the messages).
    members: u64,
}

impl<R: BufRead> Members<R> {
    pub(super) fn new(inner: R) -> Members<R> {
        let source = Source {
            inner,
            consumed: 0,
            held: None,
        };
        Members {
            decoder: Some(GzDecoder::new(source)),
            members: 1,
        }
    }
}

impl<R: BufRead> Read for Members<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let decoder = self.decoder.as_mut().expect("a decoder between reads");
            let n = decoder.read(buf).map_err(|e| {
                // flate2 says only "unexpected end of file"; say where, as the lz4 decoder does.
                if e.kind() != io::ErrorKind::UnexpectedEof {
                    return e;
                }
                let at = decoder.get_ref().consumed;
                io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!(
                        "the body ends inside gzip member {} (after {at} bytes): it was cut short",
                        self.members
                    ),
                )
            })?;
            if n > 0 || buf.is_empty() {
                return Ok(n);
            }
            // This member ended, its checksum and length checked.
            let source = decoder.get_mut();
            match source.next()? {
                Next::End => return Ok(0),
                Next::Trailing => {
                    let trailing = source.trailing()?;
                    return Err(io::Error::new(io::ErrorKind::InvalidData, trailing));
                }
                Next::Member => {
                    let source = self.decoder.take().expect("just used").into_inner();
                    self.decoder = Some(GzDecoder::new(source));
                    self.members += 1;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(data).unwrap();
        enc.finish().unwrap()
    }

    /// Hands out `data` in pieces of `step` bytes, as a body arrives.
    struct Pieces<'a> {
        data: &'a [u8],
        step: usize,
    }

    impl Read for Pieces<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = self.step.min(buf.len()).min(self.data.len());
            buf[..n].copy_from_slice(&self.data[..n]);
            self.data = &self.data[n..];
            Ok(n)
        }
    }

    fn decode(body: &[u8], step: usize) -> io::Result<Vec<u8>> {
        // A buffer as small as the piece, so pieces split members anywhere (their magic
        // number too).
        let src = io::BufReader::with_capacity(step, Pieces { data: body, step });
        let mut out = Vec::new();
        Members::new(src).read_to_end(&mut out)?;
        Ok(out)
    }

    /// Members one after another decode to their contents joined, whatever pieces the body
    /// arrives in, even where a piece ends between the two bytes of a member's magic number.
    #[test]
    fn concatenated_members_are_one_body() {
        let (a, b, c) = (b"first\n".repeat(300), b"second\n".to_vec(), b"".to_vec());
        let body = [gzip(&a), gzip(&b), gzip(&c), gzip(&a)].concat();
        let want = [&a[..], &b, &c, &a].concat();
        for step in [1, 2, 3, 7, 19, 4096, 1 << 20] {
            assert_eq!(decode(&body, step).unwrap(), want, "pieces of {step}");
        }
    }

    /// The bug this pins: bytes after the last member were refused as "unexpected end of
    /// file" (fewer than a header's ten) or "invalid gzip header", never naming them.
    #[test]
    fn bytes_after_the_last_member_are_counted_and_named() {
        let member = gzip(b"a line\n");
        let two = [&member[..], &member[..]].concat();
        for junk in [
            &b"\n"[..],
            b"junk",
            &[0u8; 512],
            &[0x1f],
            &[0x1f, 0x00, 0x8b],
            b"{\"host\":\"h\",\"stream\":\"s\",\"offset\":1,\"part\":\"whole\"}\n",
        ] {
            for body in [&member, &two] {
                let sent = [&body[..], junk].concat();
                for step in [1, 2, 5, 4096] {
                    let err = decode(&sent, step).unwrap_err();
                    let got = err
                        .get_ref()
                        .and_then(|e| e.downcast_ref::<TrailingBytes>())
                        .unwrap_or_else(|| panic!("{junk:?} in pieces of {step}: {err}"));
                    assert_eq!(
                        *got,
                        TrailingBytes {
                            at: body.len() as u64,
                            len: junk.len() as u64
                        }
                    );
                    let says = format!("{} trailing bytes after the gzip stream", junk.len());
                    assert!(err.to_string().contains(&says), "{err}");
                }
            }
        }
    }

    /// A body cut inside a member (its header, its data or its trailer) says so and where;
    /// a member that starts like one but is not valid stays flate2's error.
    #[test]
    fn a_cut_or_broken_member_is_named() {
        let member = gzip(&b"some text\n".repeat(50));
        let two = [&member[..], &member[..]].concat();
        for cut in [1, 5, member.len() / 2, member.len() - 4, member.len() + 3] {
            let err = decode(&two[..cut], 4096).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof, "{cut}: {err}");
            assert!(err.to_string().contains("cut short"), "{cut}: {err}");
        }
        let bad_method = [&member[..], &[0x1f, 0x8b, 0x07][..], &[0; 20]].concat();
        let err = decode(&bad_method, 4096).unwrap_err();
        assert!(err
            .get_ref()
            .unwrap()
            .downcast_ref::<TrailingBytes>()
            .is_none());
        assert!(err.to_string().contains("invalid gzip header"), "{err}");
    }
}
