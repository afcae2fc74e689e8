//! Bytes → records: delimiters (multi-byte allowed, CR of CRLF dropped), multiline joins
//! (break-before / break-after), container runtimes' partial lines ([`container`]), and
//! over-long records cut into a head part and a tail part.
//!
//! The framer also tracks `consumed`: the offset before which every byte belongs to a record
//! already handed out. That, not the read position, is what may be committed.

mod accum;
mod container;
mod escaped;

use crate::config::transforms::ContainerFormat;
use crate::config::{Framing, MultilineMode};
use accum::{Accum, Content, SLACK};
pub use container::cri_parts;
use memchr::memmem;

pub use log_sensor_common::record::Part;

/// One record, or one part of an over-long one.
#[derive(Debug, PartialEq, Eq)]
pub struct Rec<'a> {
    /// Where this part's bytes start in the stream.
    pub offset: u64,
    /// The whole record's length.
    pub len: u64,
    pub part: Part,
    pub bytes: &'a [u8],
}

pub struct Framer {
    delim: Vec<u8>,
    finder: memmem::Finder<'static>,
    max: usize,
    strip_cr: bool,
    multiline: Option<MultilineMode>,
    /// Join a container runtime's partial lines (exclusive with `multiline`).
    container: Option<ContainerFormat>,
    /// What opens the container record being joined (already its first bytes), written again
    /// before the tail of a record cut for length.
    join_opening: Vec<u8>,
    /// What closes the container record being joined, added when it goes out.
    join_suffix: Vec<u8>,
    /// Which of the runtime's writers (stdout, stderr) the record being joined comes from:
    /// only its parts join it.
    join_stream: Vec<u8>,
    /// The partial line carried across reads.
    line: Accum,
    line_start: u64,
    /// Offset of the next byte to be pushed.
    pos: u64,
    consumed: u64,
    /// Multiline: the record being joined, and where it started.
    record: Accum,
    record_start: u64,
    /// A multiline record has at least one line (possibly empty ones, which add no bytes).
    record_open: bool,
    scratch: Vec<u8>,
    scratch2: Vec<u8>,
    tail_bytes: Vec<u8>,
}

enum LineBytes<'a> {
    Whole(&'a [u8]),
    Cut {
        head: &'a [u8],
        tail: &'a [u8],
        len: u64,
    },
}

impl Framer {
    /// A framer whose next byte is at stream offset `start`.
    pub fn new(framing: &Framing, start: u64) -> Self {
        let delim = framing.delimiter.clone();
        Framer {
            finder: memmem::Finder::new(&delim).into_owned(),
            strip_cr: delim == b"\n",
            delim,
            max: framing.max_record_bytes,
            multiline: framing.multiline.as_ref().map(|m| m.mode.clone()),
            container: framing.container,
            join_opening: Vec::new(),
            join_suffix: Vec::new(),
            join_stream: Vec::new(),
            line: Accum::new(framing.max_record_bytes),
            line_start: start,
            pos: start,
            consumed: start,
            record: Accum::new(framing.max_record_bytes),
            record_start: start,
            record_open: false,
            scratch: Vec::new(),
            scratch2: Vec::new(),
            tail_bytes: Vec::new(),
        }
    }

    pub fn position(&self) -> u64 {
        self.pos
    }

    pub fn consumed(&self) -> u64 {
        self.consumed
    }

    /// Heap bytes held for records not yet complete (a partial line, a multiline record, their
    /// scratch space): what the tailer's total budget for partial lines counts.
    pub fn held_bytes(&self) -> usize {
        self.line.held()
            + self.record.held()
            + self.scratch.capacity()
            + self.scratch2.capacity()
            + self.tail_bytes.capacity()
    }

    /// Bytes are kept for a record not yet complete (a partial line, a multiline record).
    pub fn has_partial(&self) -> bool {
        !self.line.is_empty() || self.record_open
    }

    /// Gives back buffers kept for reuse that hold nothing now.
    pub fn shrink(&mut self) {
        self.line.shrink();
        if !self.record_open {
            self.record.shrink();
        }
        self.scratch = Vec::new();
        self.scratch2 = Vec::new();
        self.tail_bytes = Vec::new();
    }

    /// A multiline record is waiting for its next line (or for the timeout).
    pub fn has_pending_record(&self) -> bool {
        self.record_open
    }

    /// Frames `chunk`, the bytes at `position()`, handing each record to `out`.
    pub fn push(&mut self, chunk: &[u8], out: &mut dyn FnMut(Rec<'_>)) {
        let k = self.delim.len();
        let mut rest = chunk;
        // A multi-byte delimiter may straddle the previous read and this one.
        if k > 1 && !self.line.is_empty() {
            let mut last = std::mem::take(&mut self.tail_bytes);
            self.line.last_bytes(k - 1, &mut last);
            let mut found = None;
            for j in (1..k).rev() {
                if last.len() >= j
                    && last[last.len() - j..] == self.delim[..j]
                    && rest.starts_with(&self.delim[j..])
                {
                    found = Some(j);
                    break;
                }
            }
            self.tail_bytes = last;
            if let Some(j) = found {
                let eff = self.line.len() - j as u64;
                self.pos += (k - j) as u64;
                rest = &rest[k - j..];
                self.finish_accum_line(eff, out);
            }
        }
        while !rest.is_empty() {
            let Some(i) = (if k == 1 {
                memchr::memchr(self.delim[0], rest)
            } else {
                self.finder.find(rest)
            }) else {
                self.line.push(rest);
                self.pos += rest.len() as u64;
                return;
            };
            let (body, after) = (&rest[..i], &rest[i + k..]);
            self.pos += (i + k) as u64;
            if self.line.is_empty() {
                let start = self.pos - (i + k) as u64;
                let body = if self.strip_cr && body.last() == Some(&b'\r') {
                    &body[..body.len() - 1]
                } else {
                    body
                };
                let line = if body.len() <= self.max {
                    LineBytes::Whole(body)
                } else {
                    LineBytes::Cut {
                        head: &body[..self.max],
                        tail: &body[body.len() - self.max..],
                        len: body.len() as u64,
                    }
                };
                self.line_done(start, line, out);
            } else {
                self.line.push(body);
                let eff = self.accum_line_len();
                self.finish_accum_line(eff, out);
            }
            rest = after;
        }
    }

    /// The carried line's length without the CR of a CRLF ending.
    fn accum_line_len(&mut self) -> u64 {
        let len = self.line.len();
        if self.strip_cr {
            self.line.last_bytes(1, &mut self.tail_bytes);
            if self.tail_bytes == b"\r" {
                return len - 1;
            }
        }
        len
    }

    fn finish_accum_line(&mut self, eff: u64, out: &mut dyn FnMut(Rec<'_>)) {
        let line = std::mem::replace(&mut self.line, Accum::new(0));
        let mut scratch = std::mem::take(&mut self.scratch);
        let start = self.line_start;
        let lb = match line.content(eff, &mut scratch) {
            Content::Whole(b) => LineBytes::Whole(b),
            Content::Cut { head, tail } => LineBytes::Cut {
                head,
                tail,
                len: eff,
            },
        };
        self.line_done(start, lb, out);
        self.line = line;
        self.line.clear();
        self.scratch = scratch;
    }

    /// A complete line `start..self.pos` (delimiter included in the span).
    fn line_done(&mut self, start: u64, line: LineBytes<'_>, out: &mut dyn FnMut(Rec<'_>)) {
        let end = self.pos;
        self.line_start = end;
        if let Some(format) = self.container {
            self.container_line(format, start, line, out);
            return;
        }
        let Some(mode) = &self.multiline else {
            emit_line(start, &line, out);
            self.consumed = end;
            return;
        };
        let text = match &line {
            LineBytes::Whole(b) => *b,
            LineBytes::Cut { head, .. } => *head,
        };
        match mode {
            MultilineMode::BreakBefore(re) => {
                if re.is_match(text) && self.record_open {
                    self.flush_record(out);
                    self.consumed = start;
                }
                self.append(start, &line);
            }
            MultilineMode::BreakAfter(re) => {
                let ends = re.is_match(text);
                self.append(start, &line);
                if ends {
                    self.flush_record(out);
                    self.consumed = end;
                }
            }
        }
    }

    fn append(&mut self, start: u64, line: &LineBytes<'_>) {
        if !self.record_open {
            self.record_start = start;
            self.record_open = true;
        } else {
            let delim = std::mem::take(&mut self.delim);
            self.record.push(&delim);
            self.delim = delim;
        }
        match line {
            LineBytes::Whole(b) => self.record.push(b),
            LineBytes::Cut { head, tail, len } => self.record.push_cut(head, tail, *len),
        }
    }

    fn flush_record(&mut self, out: &mut dyn FnMut(Rec<'_>)) {
        if !self.record_open {
            return;
        }
        self.record_open = false;
        let suffix = std::mem::take(&mut self.join_suffix);
        self.record.push(&suffix);
        if self.record.is_empty() {
            // Only empty lines: consumed, nothing to ship.
            return;
        }
        let mut scratch = std::mem::take(&mut self.scratch2);
        let len = self.record.len();
        match self.record.content(len, &mut scratch) {
            Content::Whole(b) => out(Rec {
                offset: self.record_start,
                len,
                part: Part::Whole,
                bytes: b,
            }),
            Content::Cut { head, tail } => match self.container {
                Some(format) => {
                    let joined = container::Joined {
                        format,
                        opening: &self.join_opening,
                        closing: &suffix,
                        len,
                    };
                    joined.emit_cut(self.record_start, head, tail, self.max, out)
                }
                None => emit_cut(self.record_start, head, tail, len, out),
            },
        }
        self.record.clear();
        self.scratch2 = scratch;
    }

    /// Multiline timeout: the record waiting for more lines goes out as it is.
    pub fn flush_pending_record(&mut self, out: &mut dyn FnMut(Rec<'_>)) {
        if self.record_open {
            self.flush_record(out);
            self.consumed = self.line_start;
        }
    }

    /// The file is finished (rotated away and drained, an archive at its end): everything left,
    /// including a last line without delimiter, goes out.
    pub fn finish(&mut self, out: &mut dyn FnMut(Rec<'_>)) {
        if !self.line.is_empty() {
            let eff = self.accum_line_len();
            self.finish_accum_line(eff, out);
        }
        self.flush_pending_record(out);
        self.consumed = self.pos;
    }
}

fn emit_line(start: u64, line: &LineBytes<'_>, out: &mut dyn FnMut(Rec<'_>)) {
    match line {
        // Empty lines carry nothing; they are consumed, not shipped.
        LineBytes::Whole([]) => {}
        LineBytes::Whole(b) => out(Rec {
            offset: start,
            len: b.len() as u64,
            part: Part::Whole,
            bytes: b,
        }),
        LineBytes::Cut { head, tail, len } => emit_cut(start, head, tail, *len, out),
    }
}

fn emit_cut(start: u64, head: &[u8], tail: &[u8], len: u64, out: &mut dyn FnMut(Rec<'_>)) {
    let (head, tail) = utf8_cut(head, tail);
    out(Rec {
        offset: start,
        len,
        part: Part::Head,
        bytes: head,
    });
    // The tail's offset is where its bytes start, so head and tail never share an offset
    // (a collector deduplicates on stream + offset).
    out(Rec {
        offset: start + len - tail.len() as u64,
        len,
        part: Part::Tail,
        bytes: tail,
    });
}

/// The head and tail of a cut record of text without the parts of the characters the cuts went
/// through. A line of Cyrillic or CJK text cut at `max_record_bytes` ended (and its tail began)
/// inside a UTF-8 sequence, so both parts shipped as `msg_b64` rather than text (found by a
/// probe). The head loses at most three bytes at its end, the tail at most three continuation
/// bytes at its start (its offset is then where the next character starts), and only when the
/// head is text and what is left of the tail is too: bytes that are not text are left as they
/// are.
pub fn utf8_cut<'a>(head: &'a [u8], tail: &'a [u8]) -> (&'a [u8], &'a [u8]) {
    let head = match std::str::from_utf8(head) {
        Ok(_) => head,
        Err(e) if e.error_len().is_none() && head.len() - e.valid_up_to() < 4 => {
            &head[..e.valid_up_to()]
        }
        Err(_) => return (head, tail),
    };
    let skip = tail
        .iter()
        .take(3)
        .take_while(|&&c| c & 0xC0 == 0x80)
        .count();
    if skip > 0 && std::str::from_utf8(&tail[skip..]).is_ok() {
        (head, &tail[skip..])
    } else {
        (head, tail)
    }
}

const _: () = assert!(SLACK >= 16);

#[cfg(test)]
mod tests;

#[cfg(test)]
pub(crate) mod testing;
