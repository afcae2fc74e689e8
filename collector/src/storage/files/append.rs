//! One stream's share of a batch, written straight from the batch body.
//!
//! A stored record is its line plus `\n`. Copying each line into a buffer
//! before `write` was a tenth of the ingest CPU; instead the lines are kept
//! as slices of the body, adjacent ones merged (in a plain agent batch the
//! whole run is one slice), and written with `writev`. The kernel's copy
//! into the page cache is then the only one.

use std::io::{self, IoSlice, Write};
use std::ops::Range;

/// Most slices one `writev` takes on Linux (`IOV_MAX`).
const MAX_SLICES: usize = 1024;

/// A piece of what gets appended.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    /// Bytes of the body, newlines included.
    Body(Range<usize>),
    /// A newline the body does not have at that place: the line ended in
    /// `\r\n` (parsing dropped the `\r`, and the stored line never had it)
    /// or was the body's last, unterminated one.
    Newline,
}

/// The bytes a stream file gains: stored lines, each with its newline, in
/// order, as pieces of the body.
#[derive(Debug)]
pub(super) struct Append<'a> {
    body: &'a [u8],
    pieces: Vec<Piece>,
    len: u64,
}

impl<'a> Append<'a> {
    pub(super) fn new(body: &'a [u8]) -> Self {
        Append {
            body,
            pieces: Vec::new(),
            len: 0,
        }
    }

    /// Starts over for the next stream.
    pub(super) fn clear(&mut self) {
        self.pieces.clear();
        self.len = 0;
    }

    /// Adds a line (a range of the body without its line ending).
    pub(super) fn push_line(&mut self, line: Range<usize>) {
        self.len += line.len() as u64 + 1;
        let has_newline = self.body.get(line.end) == Some(&b'\n');
        let bytes = match has_newline {
            true => line.start..line.end + 1,
            false => line,
        };
        match self.pieces.last_mut() {
            Some(Piece::Body(last)) if last.end == bytes.start => last.end = bytes.end,
            _ => self.pieces.push(Piece::Body(bytes)),
        }
        if !has_newline {
            self.pieces.push(Piece::Newline);
        }
    }

    pub(super) fn len(&self) -> u64 {
        self.len
    }

    pub(super) fn is_empty(&self) -> bool {
        self.pieces.is_empty()
    }

    /// Writes everything, however little each `writev` takes: at most
    /// [`MAX_SLICES`] slices a call, resuming mid-slice after a short write,
    /// retrying when interrupted.
    pub(super) fn write_all_to(&self, out: &mut impl Write) -> io::Result<()> {
        let mut slices: Vec<IoSlice<'_>> = self
            .pieces
            .iter()
            .map(|p| match p {
                Piece::Body(r) => IoSlice::new(&self.body[r.clone()]),
                Piece::Newline => IoSlice::new(b"\n"),
            })
            .collect();
        let mut rest = &mut slices[..];
        while !rest.is_empty() {
            let n = rest.len().min(MAX_SLICES);
            match out.write_vectored(&rest[..n]) {
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::WriteZero,
                        "writev wrote nothing",
                    ))
                }
                Ok(written) => IoSlice::advance_slices(&mut rest, written),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A writer that takes at most `max_slices` slices and `max_bytes`
    /// bytes a call, and is interrupted every third call.
    struct Stingy {
        out: Vec<u8>,
        max_slices: usize,
        max_bytes: usize,
        calls: usize,
    }

    impl Write for Stingy {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.write_vectored(&[IoSlice::new(buf)])
        }

        fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
            assert!(bufs.len() <= MAX_SLICES);
            self.calls += 1;
            if self.calls % 3 == 0 {
                return Err(io::ErrorKind::Interrupted.into());
            }
            let mut room = self.max_bytes;
            for b in bufs.iter().take(self.max_slices) {
                let n = b.len().min(room);
                self.out.extend_from_slice(&b[..n]);
                room -= n;
                if room == 0 {
                    break;
                }
            }
            Ok(self.max_bytes - room)
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    /// Lines of a body as parsing finds them: split at `\n`, one `\r`
    /// dropped, blank lines skipped.
    fn lines(body: &[u8]) -> Vec<Range<usize>> {
        let mut out = Vec::new();
        let mut start = 0;
        while start < body.len() {
            let end = body[start..]
                .iter()
                .position(|b| *b == b'\n')
                .map_or(body.len(), |i| start + i);
            let mut r = start..end;
            start = end + 1;
            if body[r.clone()].ends_with(b"\r") {
                r.end -= 1;
            }
            if !r.is_empty() {
                out.push(r);
            }
        }
        out
    }

    #[test]
    fn adjacent_lines_are_one_slice_and_odd_endings_get_their_newline() {
        let body = b"a\nbb\nc\r\nd\n\ne";
        let mut a = Append::new(body);
        for r in lines(body) {
            a.push_line(r);
        }
        assert_eq!(
            a.pieces,
            vec![
                Piece::Body(0..6),
                Piece::Newline,
                Piece::Body(8..10),
                Piece::Body(11..12),
                Piece::Newline,
            ]
        );
        let mut out = Vec::new();
        a.write_all_to(&mut out).unwrap();
        assert_eq!(out, b"a\nbb\nc\nd\ne\n");
        assert_eq!(a.len(), out.len() as u64);
    }

    #[test]
    fn more_slices_than_one_writev_takes() {
        let body = b"x\r\n".repeat(3 * MAX_SLICES);
        let mut a = Append::new(&body);
        for r in lines(&body) {
            a.push_line(r);
        }
        let mut w = Stingy {
            out: Vec::new(),
            max_slices: usize::MAX,
            max_bytes: usize::MAX,
            calls: 0,
        };
        a.write_all_to(&mut w).unwrap();
        assert_eq!(w.out, b"x\n".repeat(3 * MAX_SLICES));
    }

    proptest! {
        /// Whatever the body, the lines kept and the writer's appetite,
        /// the file gets exactly the kept lines, each with one `\n`.
        #[test]
        fn writes_exactly_the_kept_lines(
            body in proptest::collection::vec(prop_oneof![Just(b'a'), Just(b'\n'), Just(b'\r')], 0..200),
            keep in proptest::collection::vec(any::<bool>(), 200),
            max_slices in 1..5usize,
            max_bytes in 1..9usize,
        ) {
            let mut a = Append::new(&body);
            let mut want = Vec::new();
            for (r, keep) in lines(&body).into_iter().zip(keep) {
                if keep {
                    want.extend_from_slice(&body[r.clone()]);
                    want.push(b'\n');
                    a.push_line(r);
                }
            }
            let mut w = Stingy { out: Vec::new(), max_slices, max_bytes, calls: 0 };
            a.write_all_to(&mut w).unwrap();
            prop_assert_eq!(a.len(), want.len() as u64);
            prop_assert_eq!(a.is_empty(), want.is_empty());
            prop_assert_eq!(w.out, want);
        }
    }
}
