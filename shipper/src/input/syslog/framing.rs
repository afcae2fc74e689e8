//! A TCP/TLS byte stream → syslog frames, per connection.
//!
//! The framing is detected from the connection's first byte, as rsyslog's imtcp does: a digit
//! means octet counting (RFC 6587 §3.4.1 / RFC 5425 `MSG-LEN SP SYSLOG-MSG`), anything else
//! means LF-terminated frames (RFC 6587 §3.4.2; a CR before the LF is dropped). A frame longer
//! than `max` bytes is handed out as its first `max` bytes and its last `max` bytes with the
//! whole length, like an over-long file record (`Part::Head` / `Part::Tail`), so memory per
//! connection stays bounded by about 3 × `max` whatever a sender writes.
//!
//! What closes a connection ([`FramingError`]): in octet-counted mode, a count that is not
//! 1 to 9 digits followed by a space, or a frame that does not start with a digit (the stream
//! has lost its framing and everything after it would be misread); in LF mode, binary garbage:
//! a NUL byte, or a frame starting with a control character other than TAB. Text that is not
//! syslog is not garbage: it is kept whole (see `parse`).

/// One frame, whole or cut.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame<'a> {
    Whole(&'a [u8]),
    /// An over-long frame: its first and last `max` bytes and its whole length.
    Cut {
        head: &'a [u8],
        tail: &'a [u8],
        len: u64,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FramingError {
    #[error("bad octet count {found:?} at byte {at} of the connection (expected 1 to 9 digits and a space)")]
    BadOctetCount { found: String, at: u64 },
    #[error("binary garbage (byte 0x{byte:02x}) at byte {at} of the connection")]
    Garbage { byte: u8, at: u64 },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    OctetCounted,
    LfTerminated,
}

/// The body of the frame being read: the first `max` bytes, and a window on the last ones.
struct Body {
    max: usize,
    head: Vec<u8>,
    /// Bytes after the head; trimmed to its last `max` bytes whenever it reaches 2 × `max`.
    tail: Vec<u8>,
    len: u64,
}

impl Body {
    fn push(&mut self, mut bytes: &[u8]) {
        self.len += bytes.len() as u64;
        if self.head.len() < self.max {
            let take = (self.max - self.head.len()).min(bytes.len());
            self.head.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
        }
        if bytes.is_empty() {
            return;
        }
        if bytes.len() >= self.max {
            self.tail.clear();
            self.tail
                .extend_from_slice(&bytes[bytes.len() - self.max..]);
            return;
        }
        self.tail.extend_from_slice(bytes);
        if self.tail.len() >= 2 * self.max {
            self.tail.drain(..self.tail.len() - self.max);
        }
    }

    fn emit(&mut self, out: &mut dyn FnMut(Frame<'_>)) {
        if self.len as usize <= self.max {
            out(Frame::Whole(&self.head));
        } else {
            // The tail is the frame's last `max` bytes; it may overlap the head when the frame
            // is shorter than 2 × max, exactly like a cut file record.
            let mut last = Vec::new();
            let need = self.max;
            if self.tail.len() >= need {
                last.extend_from_slice(&self.tail[self.tail.len() - need..]);
            } else {
                let from_head = need - self.tail.len();
                last.extend_from_slice(&self.head[self.head.len() - from_head..]);
                last.extend_from_slice(&self.tail);
            }
            out(Frame::Cut {
                head: &self.head,
                tail: &last,
                len: self.len,
            });
        }
        self.head.clear();
        self.tail.clear();
        self.len = 0;
    }

    fn drop_cr(&mut self) {
        // Only called for LF mode, on the byte before the LF.
        if self.len == 0 {
            return;
        }
        let last = if !self.tail.is_empty() {
            self.tail.last()
        } else {
            self.head.last()
        };
        if last == Some(&b'\r') {
            if !self.tail.is_empty() {
                self.tail.pop();
            } else {
                self.head.pop();
            }
            self.len -= 1;
        }
    }

    fn held(&self) -> usize {
        self.head.capacity() + self.tail.capacity()
    }
}

enum State {
    /// Before the first byte: the framing is not known yet.
    Start,
    /// Octet counting: digits of the count read so far.
    Count(u32, u8),
    /// Octet counting: body bytes still to come.
    Counted(u64),
    /// LF mode: inside a frame (possibly empty so far).
    Line,
    /// A framing error was reported: nothing more is read.
    Failed,
}

pub struct Deframer {
    state: State,
    mode: Option<Mode>,
    body: Body,
    /// Bytes of the connection seen so far (for error positions).
    pos: u64,
}

impl Deframer {
    pub fn new(max: usize) -> Deframer {
        Deframer {
            state: State::Start,
            mode: None,
            body: Body {
                max: max.max(1),
                head: Vec::new(),
                tail: Vec::new(),
                len: 0,
            },
            pos: 0,
        }
    }

    pub fn mode(&self) -> Option<Mode> {
        self.mode
    }

    /// Memory held for the frame being read.
    pub fn held_bytes(&self) -> usize {
        self.body.held()
    }

    /// Feeds bytes read from the connection; complete frames go to `out`. After an error the
    /// connection must be closed; frames completed before the error were already handed out.
    pub fn push(
        &mut self,
        mut bytes: &[u8],
        out: &mut dyn FnMut(Frame<'_>),
    ) -> Result<(), FramingError> {
        while !bytes.is_empty() {
            match self.state {
                State::Failed => return Ok(()),
                State::Start => {
                    let mode = if bytes[0].is_ascii_digit() {
                        State::Count(0, 0)
                    } else {
                        State::Line
                    };
                    self.mode = Some(match mode {
                        State::Line => Mode::LfTerminated,
                        _ => Mode::OctetCounted,
                    });
                    self.state = mode;
                }
                State::Count(n, digits) => {
                    let c = bytes[0];
                    match c {
                        b'0'..=b'9' if digits < 9 && !(digits == 0 && c == b'0') => {
                            self.state = State::Count(n * 10 + (c - b'0') as u32, digits + 1);
                        }
                        // Some senders end each counted frame with a LF as well; tolerated
                        // between frames only.
                        b'\n' | b'\r' if digits == 0 => {}
                        b' ' if digits > 0 => {
                            self.state = State::Counted(n as u64);
                        }
                        _ => {
                            self.state = State::Failed;
                            return Err(FramingError::BadOctetCount {
                                found: describe_count(n, digits, c),
                                at: self.pos,
                            });
                        }
                    }
                    self.pos += 1;
                    bytes = &bytes[1..];
                }
                State::Counted(left) => {
                    let take = (left.min(bytes.len() as u64)) as usize;
                    self.body.push(&bytes[..take]);
                    self.pos += take as u64;
                    bytes = &bytes[take..];
                    let left = left - take as u64;
                    if left == 0 {
                        self.body.emit(out);
                        self.state = State::Count(0, 0);
                    } else {
                        self.state = State::Counted(left);
                    }
                }
                State::Line => {
                    if self.body.len == 0 {
                        let c = bytes[0];
                        if c < 0x20 && c != b'\t' && c != b'\n' && c != b'\r' {
                            self.state = State::Failed;
                            return Err(FramingError::Garbage {
                                byte: c,
                                at: self.pos,
                            });
                        }
                    }
                    let end = memchr::memchr(b'\n', bytes);
                    let chunk = &bytes[..end.unwrap_or(bytes.len())];
                    if let Some(i) = memchr::memchr(0, chunk) {
                        self.state = State::Failed;
                        return Err(FramingError::Garbage {
                            byte: 0,
                            at: self.pos + i as u64,
                        });
                    }
                    self.body.push(chunk);
                    self.pos += chunk.len() as u64;
                    bytes = &bytes[chunk.len()..];
                    if end.is_some() {
                        self.pos += 1;
                        bytes = &bytes[1..];
                        self.body.drop_cr();
                        // An empty line (a keep-alive, a CRLF pair) is no message.
                        if self.body.len > 0 {
                            self.body.emit(out);
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// The connection ended: a frame still open is handed out as it is (its bytes arrived;
    /// keeping them loses nothing a sender wrote).
    pub fn finish(&mut self, out: &mut dyn FnMut(Frame<'_>)) {
        match self.state {
            State::Line | State::Counted(_) if self.body.len > 0 => self.body.emit(out),
            _ => {}
        }
        self.state = State::Failed;
    }
}

fn describe_count(n: u32, digits: u8, c: u8) -> String {
    let mut s = if digits > 0 {
        n.to_string()
    } else {
        String::new()
    };
    if c.is_ascii_graphic() {
        s.push(c as char);
    } else {
        s.push_str(&format!("\\x{c:02x}"));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, PartialEq, Eq)]
    enum Out {
        W(Vec<u8>),
        C(Vec<u8>, Vec<u8>, u64),
    }

    fn run(max: usize, chunks: &[&[u8]]) -> (Vec<Out>, Result<(), FramingError>) {
        let mut d = Deframer::new(max);
        let mut got = Vec::new();
        let mut res = Ok(());
        for c in chunks {
            res = d.push(c, &mut |f| got.push(own(f)));
            if res.is_err() {
                break;
            }
        }
        if res.is_ok() {
            d.finish(&mut |f| got.push(own(f)));
        }
        (got, res)
    }

    fn own(f: Frame<'_>) -> Out {
        match f {
            Frame::Whole(b) => Out::W(b.to_vec()),
            Frame::Cut { head, tail, len } => Out::C(head.to_vec(), tail.to_vec(), len),
        }
    }

    #[test]
    fn lf_frames_split_anywhere_and_crlf() {
        let (got, res) = run(100, &[b"<13>a", b"b\r\n<14>c\n\n", b"last"]);
        res.unwrap();
        assert_eq!(
            got,
            vec![
                Out::W(b"<13>ab".to_vec()),
                Out::W(b"<14>c".to_vec()),
                Out::W(b"last".to_vec())
            ]
        );
    }

    #[test]
    fn octet_counted_frames_may_hold_newlines() {
        let (got, res) = run(100, &[b"5 ab\ncd", b"3 xyz\n2", b" ok"]);
        res.unwrap();
        assert_eq!(
            got,
            vec![
                Out::W(b"ab\ncd".to_vec()),
                Out::W(b"xyz".to_vec()),
                Out::W(b"ok".to_vec())
            ]
        );
    }

    #[test]
    fn over_long_frames_are_cut_into_head_and_tail() {
        let big: Vec<u8> = (0..25u8).map(|i| b'a' + i).collect();
        let mut lf = big.clone();
        lf.push(b'\n');
        let (got, _) = run(10, &[&lf[..7], &lf[7..]]);
        assert_eq!(
            got,
            vec![Out::C(big[..10].to_vec(), big[15..].to_vec(), 25)]
        );
        let counted = [b"25 ".as_slice(), &big].concat();
        let (got, _) = run(10, &[&counted]);
        assert_eq!(
            got,
            vec![Out::C(big[..10].to_vec(), big[15..].to_vec(), 25)]
        );
        // Shorter than 2 × max: head and tail overlap.
        let (got, _) = run(10, &[b"abcdefghijklm\n"]);
        assert_eq!(
            got,
            vec![Out::C(b"abcdefghij".to_vec(), b"defghijklm".to_vec(), 13)]
        );
    }

    #[test]
    fn bad_counts_and_garbage_are_errors() {
        let (got, res) = run(100, &[b"3 abc", b"x"]);
        assert_eq!(got, vec![Out::W(b"abc".to_vec())]);
        assert!(matches!(
            res,
            Err(FramingError::BadOctetCount { at: 5, .. })
        ));
        assert!(matches!(
            run(100, &[b"1234567890 x"]).1,
            Err(FramingError::BadOctetCount { .. })
        ));
        assert!(matches!(
            run(100, &[b"12x"]).1,
            Err(FramingError::BadOctetCount { .. })
        ));
        assert!(matches!(
            run(100, &[b"<13>ok\n\x01\x02"]).1,
            Err(FramingError::Garbage { byte: 1, at: 7 })
        ));
        assert!(matches!(
            run(100, &[b"<13>o\0k\n"]).1,
            Err(FramingError::Garbage { byte: 0, .. })
        ));
    }

    proptest! {
        #[test]
        fn any_bytes_any_split_are_bounded_and_never_panic(
            data in proptest::collection::vec(prop_oneof![Just(b'1'), Just(b' '), Just(b'\n'), Just(b'a'), any::<u8>()], 0..300),
            split in 0usize..300,
            max in 1usize..20,
        ) {
            let split = split.min(data.len());
            let mut d = Deframer::new(max);
            let mut check = |f: Frame<'_>| match f {
                Frame::Whole(b) => assert!(b.len() <= max),
                Frame::Cut { head, tail, len } => {
                    assert_eq!(head.len(), max);
                    assert_eq!(tail.len(), max);
                    assert!(len > max as u64);
                }
            };
            if d.push(&data[..split], &mut check).is_ok() && d.push(&data[split..], &mut check).is_ok() {
                d.finish(&mut check);
            }
            prop_assert!(d.held_bytes() <= 8 * max + 64);
        }

        #[test]
        fn split_points_do_not_change_lf_frames(
            lines in proptest::collection::vec("[<a-z][ -~]{0,29}", 1..8),
            split in 0usize..200,
        ) {
            let joined: Vec<u8> = lines.iter().flat_map(|l| format!("{l}\n").into_bytes()).collect();
            let split = split.min(joined.len());
            let (got, res) = run(1000, &[&joined[..split], &joined[split..]]);
            prop_assert!(res.is_ok());
            let want: Vec<Out> = lines.iter().map(|l| Out::W(l.clone().into_bytes())).collect();
            prop_assert_eq!(got, want);
        }
    }
}
