//! Container runtimes' partial lines joined into one record, in the framer.
//!
//! A runtime cuts a long write into several lines (CRI-O / containerd: `TIME STREAM P MSG` …
//! `TIME STREAM F MSG`; Docker json-file: `{"log":"…"}` lines whose `log` lacks the final `\n`).
//! Joining happens here, like a multiline record, and not in a transform: the framer's
//! `consumed` stays at the first part until the last one arrives, so the store never commits
//! past a part whose record has not shipped. A transform holding parts back could not promise
//! that (its input would already have moved the acknowledgement past them), and a kill -9
//! between the parts would lose the first ones. The joined record has the first part's offset
//! and is written back in the runtime's own format, one complete line (`TIME STREAM F MSG…`,
//! or a Docker object with the joined `log`), which the `cri` / `docker` transform then parses
//! like any other line. A joined record longer than `max_record_bytes` is cut into a head and
//! a tail part that are each written back that way ([`Joined::emit_cut`]), so both carry the
//! record's `stream` and `time`.
//!
//! A runtime writes stdout and stderr into the same file from two writers, so their lines
//! interleave. Only parts of the open record's own stream join it: a line of the other stream
//! ends the open record, which goes out as it stands before that line (so records still leave
//! in offset order and `consumed` never passes a part not yet shipped), and the first stream's
//! later parts start a new record. Holding the other stream's records back until the open one
//! completes would keep its parts together, but needs a second record and a queue per file.
//!
//! Followed: the CRI log format of kubelet (`pkg/kubelet/kuberuntime/logs`: tags split by `:`,
//! the first is `P` or `F`) and Fluent Bit's `multiline.parser docker, cri`.

use super::{emit_line, escaped, Framer, LineBytes, Part, Rec};
use crate::config::transforms::ContainerFormat;
use serde::Deserialize;
use std::borrow::Cow;

/// One line of a container log, as far as joining needs it.
struct Piece<'a> {
    /// What the joined record starts with (CRI: `TIME STREAM F `; Docker: `{"log":"`).
    opening: Cow<'a, [u8]>,
    /// The message bytes to append (Docker: already escaped as JSON string content).
    msg: Cow<'a, [u8]>,
    /// What closes the joined record (Docker: the first part's `stream` and `time`).
    closing: Vec<u8>,
    /// The line continues in the next one.
    partial: bool,
    /// Which of the runtime's writers the line comes from (CRI: `stdout` / `stderr`; Docker:
    /// the `,"stream":"…"` that starts `closing` after its `"`, empty without a `stream`).
    stream: Cow<'a, [u8]>,
}

#[derive(Deserialize)]
struct DockerLine<'a> {
    #[serde(borrow)]
    log: Cow<'a, str>,
    #[serde(borrow, default)]
    stream: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    time: Option<Cow<'a, str>>,
}

fn split(format: ContainerFormat, line: &[u8]) -> Option<Piece<'_>> {
    match format {
        ContainerFormat::Cri => cri(line),
        ContainerFormat::Docker => docker(line),
    }
}

/// `TIME STREAM TAG MSG`: the index where TAG starts, whether it marks a partial line, and
/// where MSG starts (the end when the line stops after TAG).
pub fn cri_parts(line: &[u8]) -> Option<(usize, bool, usize)> {
    let sp1 = line.iter().position(|&c| c == b' ')?;
    let sp2 = sp1 + 1 + line[sp1 + 1..].iter().position(|&c| c == b' ')?;
    let tag_start = sp2 + 1;
    let rest = &line[tag_start..];
    let tag_len = rest.iter().position(|&c| c == b' ').unwrap_or(rest.len());
    let tag = &rest[..tag_len];
    let first = tag.split(|&c| c == b':').next()?;
    let partial = match first {
        b"P" => true,
        b"F" => false,
        _ => return None,
    };
    if sp1 == 0 || !matches!(&line[sp1 + 1..sp2], b"stdout" | b"stderr") {
        return None;
    }
    let msg_start = (tag_start + tag_len + 1).min(line.len());
    Some((tag_start, partial, msg_start))
}

fn cri(line: &[u8]) -> Option<Piece<'_>> {
    let (tag_start, partial, msg_start) = cri_parts(line)?;
    let mut opening = line[..tag_start].to_vec();
    opening.extend_from_slice(b"F ");
    Some(Piece {
        opening: Cow::Owned(opening),
        msg: Cow::Borrowed(&line[msg_start..]),
        closing: Vec::new(),
        partial,
        stream: Cow::Borrowed(cri_stream(line)?),
    })
}

/// STREAM of a line that starts `TIME STREAM `.
fn cri_stream(line: &[u8]) -> Option<&[u8]> {
    let sp1 = line.iter().position(|&c| c == b' ')?;
    let len = line[sp1 + 1..].iter().position(|&c| c == b' ')?;
    Some(&line[sp1 + 1..sp1 + 1 + len])
}

fn docker(line: &[u8]) -> Option<Piece<'_>> {
    let d: DockerLine<'_> = serde_json::from_slice(line).ok()?;
    let partial = !d.log.ends_with('\n');
    let escaped = serde_json::to_vec(d.log.as_ref()).ok()?;
    let mut closing = b"\"".to_vec();
    let mut stream_end = closing.len();
    for (k, v) in [("stream", &d.stream), ("time", &d.time)] {
        if let Some(v) = v {
            closing.extend_from_slice(format!(",\"{k}\":").as_bytes());
            closing.extend_from_slice(&serde_json::to_vec(v.as_ref()).ok()?);
            if k == "stream" {
                stream_end = closing.len();
            }
        }
    }
    let stream = closing[1..stream_end].to_vec();
    closing.push(b'}');
    Some(Piece {
        opening: Cow::Borrowed(b"{\"log\":\""),
        msg: Cow::Owned(escaped[1..escaped.len() - 1].to_vec()),
        closing,
        partial,
        stream: Cow::Owned(stream),
    })
}

/// A joined record as it goes out: `opening`, the message, `closing`, `len` bytes in all.
pub(super) struct Joined<'a> {
    pub format: ContainerFormat,
    pub opening: &'a [u8],
    pub closing: &'a [u8],
    pub len: u64,
}

impl Joined<'_> {
    /// The joined record longer than `max`, of which `head` and `tail` are the first and last
    /// `max` bytes, goes out as a head and a tail part that are each a complete line of the
    /// runtime's format, with the record's own opening and closing around the message bytes
    /// they keep. Cut out of the joined line as it stands, the tail would start inside the
    /// message and a Docker head would be unclosed JSON: the `cri` / `docker` transform would
    /// give them no `fields`, and routing on `fields.stream` would lose them. A part is at
    /// most `max` bytes, like any record, unless the opening and closing alone are longer (a
    /// Docker part may be a few bytes shorter: it is cut between JSON escapes). The tail's
    /// offset is where its message bytes start in the joined record.
    pub fn emit_cut(
        &self,
        start: u64,
        head: &[u8],
        tail: &[u8],
        max: usize,
        out: &mut dyn FnMut(Rec<'_>),
    ) {
        let (open, close) = (self.opening.len(), self.closing.len());
        let keep = max.saturating_sub(open + close);
        // The record is longer than `max`, so its message is longer than `keep`: the head
        // holds its first `keep` bytes after the opening, the tail its last before the closing.
        let head_msg = &head[open.min(head.len())..];
        let head_msg = &head_msg[..keep.min(head_msg.len())];
        let tail_msg = &tail[..tail.len().saturating_sub(close)];
        let tail_msg = &tail_msg[tail_msg.len().saturating_sub(keep)..];
        let (head_msg, tail_msg) = match self.format {
            ContainerFormat::Cri => (head_msg, tail_msg),
            ContainerFormat::Docker => (
                &head_msg[..escaped::prefix_end(head_msg)],
                &tail_msg[escaped::suffix_start(tail_msg)..],
            ),
        };
        let (head_msg, tail_msg) = super::utf8_cut(head_msg, tail_msg);
        let tail_at = self.len - (close + tail_msg.len()) as u64;
        let mut line = Vec::with_capacity(max.max(open + close));
        for (offset, part, msg) in [
            (start, Part::Head, head_msg),
            (start + tail_at, Part::Tail, tail_msg),
        ] {
            line.clear();
            line.extend_from_slice(self.opening);
            line.extend_from_slice(msg);
            line.extend_from_slice(self.closing);
            out(Rec {
                offset,
                len: self.len,
                part,
                bytes: &line,
            });
        }
    }
}

impl Framer {
    /// Whether `p` comes from the writer of the record being joined.
    fn same_stream(&self, p: &Piece<'_>) -> bool {
        self.join_stream[..] == p.stream[..]
    }

    /// A complete line `start..self.pos` of a container log: a part of the open record's
    /// stream is added to it; any other line (one of the other stream, or no part at all) ends
    /// the open record, which goes out as it stands first. A partial line then starts a
    /// record, a whole one goes out as it is.
    pub(super) fn container_line(
        &mut self,
        format: ContainerFormat,
        start: u64,
        line: LineBytes<'_>,
        out: &mut dyn FnMut(Rec<'_>),
    ) {
        let end = self.pos;
        // A line cut for length cannot be read as a part: it ships as head and tail.
        let piece = match &line {
            LineBytes::Whole(b) => split(format, b),
            LineBytes::Cut { .. } => None,
        };
        if self.record_open && !piece.as_ref().is_some_and(|p| self.same_stream(p)) {
            // The runtime never finished it (a restart mid-write), or the other writer's line
            // came between its parts: what came goes out, before this line.
            self.flush_record(out);
            self.consumed = start;
        }
        match piece {
            Some(p) if p.partial || self.record_open => {
                if !self.record_open {
                    self.record_start = start;
                    self.record_open = true;
                    self.record.push(&p.opening);
                    self.join_opening.clear();
                    self.join_opening.extend_from_slice(&p.opening);
                    self.join_suffix = p.closing;
                    self.join_stream.clear();
                    self.join_stream.extend_from_slice(&p.stream);
                }
                self.record.push(&p.msg);
                if !p.partial {
                    self.flush_record(out);
                    self.consumed = end;
                }
            }
            _ => {
                emit_line(start, &line, out);
                self.consumed = end;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{framing, run};
    use super::super::Part;
    use crate::config::transforms::ContainerFormat;

    // containerd's own output for one 40 KiB write cut at 16 KiB (shortened).
    const CRI_P1: &[u8] = b"2024-03-05T10:11:12.123456789Z stdout P first half, \n";
    const CRI_P2: &[u8] = b"2024-03-05T10:11:12.123456790Z stdout P second, \n";
    const CRI_F: &[u8] = b"2024-03-05T10:11:12.123456791Z stdout F end\n";
    const CRI_WHOLE: &[u8] = b"2024-03-05T10:11:13.000000001Z stderr F plain line\n";

    #[test]
    fn cri_parts_join_at_the_first_offset_and_hold_consumed_until_the_last() {
        let f = framing(ContainerFormat::Cri, 65536);
        let (recs, consumed) = run(&f, &[CRI_WHOLE, CRI_P1, CRI_P2, CRI_F, CRI_WHOLE]);
        let w = CRI_WHOLE.len() as u64;
        let joined_end = w + (CRI_P1.len() + CRI_P2.len() + CRI_F.len()) as u64;
        assert_eq!(
            recs,
            vec![
                (
                    0,
                    Part::Whole,
                    "2024-03-05T10:11:13.000000001Z stderr F plain line".into()
                ),
                (
                    w,
                    Part::Whole,
                    "2024-03-05T10:11:12.123456789Z stdout F first half, second, end".into()
                ),
                (
                    joined_end,
                    Part::Whole,
                    "2024-03-05T10:11:13.000000001Z stderr F plain line".into()
                ),
            ]
        );
        // While parts wait, nothing past the first part may be committed.
        assert_eq!(consumed, vec![w, w, w, joined_end, joined_end + w]);
    }

    #[test]
    fn a_cri_record_never_finished_goes_out_before_the_next_line() {
        let f = framing(ContainerFormat::Cri, 65536);
        let (recs, consumed) = run(&f, &[CRI_P1, b"not a cri line\n"]);
        assert_eq!(recs[0].0, 0);
        assert_eq!(
            recs[0].2,
            "2024-03-05T10:11:12.123456789Z stdout F first half, "
        );
        assert_eq!(
            recs[1],
            (CRI_P1.len() as u64, Part::Whole, "not a cri line".into())
        );
        assert_eq!(consumed[1], (CRI_P1.len() + 15) as u64);
    }

    #[test]
    fn docker_lines_without_newline_join_into_one_object() {
        let f = framing(ContainerFormat::Docker, 65536);
        let a: &[u8] = b"{\"log\":\"GET /a \\\"q\\\" \",\"stream\":\"stdout\",\"time\":\"2024-03-05T10:11:12.1Z\"}\n";
        let b: &[u8] =
            b"{\"log\":\"200\\n\",\"stream\":\"stdout\",\"time\":\"2024-03-05T10:11:12.2Z\"}\n";
        let c: &[u8] =
            b"{\"log\":\"whole\\n\",\"stream\":\"stderr\",\"time\":\"2024-03-05T10:11:13Z\"}\n";
        let (recs, consumed) = run(&f, &[a, b, c]);
        assert_eq!(recs.len(), 2);
        assert_eq!(recs[0].0, 0);
        let v: serde_json::Value = serde_json::from_str(&recs[0].2).unwrap();
        assert_eq!(v["log"], "GET /a \"q\" 200\n");
        assert_eq!(v["time"], "2024-03-05T10:11:12.1Z");
        assert_eq!(v["stream"], "stdout");
        assert_eq!(recs[1].0, (a.len() + b.len()) as u64);
        assert_eq!(recs[1].2.as_bytes(), &c[..c.len() - 1]);
        assert_eq!(
            consumed,
            vec![
                0,
                (a.len() + b.len()) as u64,
                (a.len() + b.len() + c.len()) as u64
            ]
        );
    }

    #[test]
    fn an_overlong_joined_record_is_cut_into_head_and_tail() {
        let f = framing(ContainerFormat::Cri, 64);
        let p = format!("2024-03-05T10:11:12Z stdout P {}\n", "a".repeat(25));
        let l = format!("2024-03-05T10:11:12Z stdout F {}\n", "b".repeat(25));
        let (recs, _) = run(&f, &[p.as_bytes(), l.as_bytes()]);
        assert_eq!(recs.len(), 2);
        assert_eq!((recs[0].0, recs[0].1), (0, Part::Head));
        assert!(recs[0].2.starts_with("2024-03-05T10:11:12Z stdout F aaa"));
        assert_eq!(recs[1].1, Part::Tail);
        assert!(recs[1].2.ends_with("bbbb"));
    }

    /// Every record's offset, stream field (CRI: STREAM; Docker: `stream`) and message.
    fn streams(
        format: ContainerFormat,
        recs: &[(u64, Part, String)],
    ) -> Vec<(u64, String, String)> {
        recs.iter()
            .map(|(off, part, b)| {
                assert_eq!(*part, Part::Whole);
                let (stream, msg) = match format {
                    ContainerFormat::Cri => {
                        let (tag_start, partial, msg_start) =
                            super::cri_parts(b.as_bytes()).expect("a CRI line");
                        assert!(!partial, "a joined record is written back as F: {b}");
                        let stream = super::cri_stream(b.as_bytes()).unwrap();
                        assert_eq!(tag_start, b.find(" F").unwrap() + 1);
                        (
                            String::from_utf8_lossy(stream).into_owned(),
                            b[msg_start..].to_string(),
                        )
                    }
                    ContainerFormat::Docker => {
                        let v: serde_json::Value = serde_json::from_str(b).expect("JSON");
                        (
                            v["stream"].as_str().unwrap().to_string(),
                            v["log"].as_str().unwrap().to_string(),
                        )
                    }
                };
                (*off, stream, msg)
            })
            .collect()
    }

    fn offsets(lines: &[&[u8]]) -> Vec<u64> {
        let mut at = 0;
        lines
            .iter()
            .map(|l| {
                let o = at;
                at += l.len() as u64;
                o
            })
            .collect()
    }

    #[test]
    fn a_cri_line_of_the_other_stream_ends_the_open_record() {
        let lines: [&[u8]; 4] = [
            b"2024-01-01T00:00:00.1Z stdout P part1-\n",
            b"2024-01-01T00:00:00.2Z stderr F err-interleaved\n",
            b"2024-01-01T00:00:00.3Z stdout P part2-\n",
            b"2024-01-01T00:00:00.4Z stdout F part3\n",
        ];
        let o = offsets(&lines);
        let f = framing(ContainerFormat::Cri, 65536);
        let (recs, consumed) = run(&f, &lines);
        assert_eq!(
            streams(ContainerFormat::Cri, &recs),
            vec![
                (o[0], "stdout".into(), "part1-".into()),
                (o[1], "stderr".into(), "err-interleaved".into()),
                (o[2], "stdout".into(), "part2-part3".into()),
            ]
        );
        // The restarted record keeps its first part's time.
        assert!(recs[2].2.starts_with("2024-01-01T00:00:00.3Z stdout F "));
        // Never past a part not yet shipped.
        let end = o[3] + lines[3].len() as u64;
        assert_eq!(consumed, vec![0, o[2], o[2], end]);
    }

    #[test]
    fn a_docker_line_of_the_other_stream_ends_the_open_record() {
        let lines: [&[u8]; 3] = [
            br#"{"log":"partA-","stream":"stdout","time":"2024-01-01T00:00:00.1Z"}
"#,
            br#"{"log":"stderr-between\n","stream":"stderr","time":"2024-01-01T00:00:00.2Z"}
"#,
            br#"{"log":"partB\n","stream":"stdout","time":"2024-01-01T00:00:00.3Z"}
"#,
        ];
        let o = offsets(&lines);
        let f = framing(ContainerFormat::Docker, 65536);
        let (recs, consumed) = run(&f, &lines);
        assert_eq!(
            streams(ContainerFormat::Docker, &recs),
            vec![
                (o[0], "stdout".into(), "partA-".into()),
                (o[1], "stderr".into(), "stderr-between\n".into()),
                (o[2], "stdout".into(), "partB\n".into()),
            ]
        );
        let end = o[2] + lines[2].len() as u64;
        assert_eq!(consumed, vec![0, o[2], end]);
    }

    #[test]
    fn a_partial_line_of_the_other_stream_starts_its_own_record() {
        let cri: [&[u8]; 5] = [
            b"2024-01-01T00:00:00.1Z stdout P out1-\n",
            b"2024-01-01T00:00:00.2Z stderr P err1-\n",
            b"2024-01-01T00:00:00.3Z stderr F err2\n",
            b"2024-01-01T00:00:00.4Z stdout P out2-\n",
            b"2024-01-01T00:00:00.5Z stdout F out3\n",
        ];
        let o = offsets(&cri);
        let (recs, consumed) = run(&framing(ContainerFormat::Cri, 65536), &cri);
        assert_eq!(
            streams(ContainerFormat::Cri, &recs),
            vec![
                (o[0], "stdout".into(), "out1-".into()),
                (o[1], "stderr".into(), "err1-err2".into()),
                (o[3], "stdout".into(), "out2-out3".into()),
            ]
        );
        let end = o[4] + cri[4].len() as u64;
        assert_eq!(consumed, vec![0, o[1], o[3], o[3], end]);

        // Docker, the other stream's part arriving while the first one's waits; no `stream`
        // at all is a writer of its own too.
        let docker: [&[u8]; 5] = [
            br#"{"log":"out1-","stream":"stdout"}
"#,
            br#"{"log":"err1-","stream":"stderr"}
"#,
            br#"{"log":"err2\n","stream":"stderr"}
"#,
            br#"{"log":"none-"}
"#,
            br#"{"log":"out2\n","stream":"stdout"}
"#,
        ];
        let o = offsets(&docker);
        let (recs, _) = run(&framing(ContainerFormat::Docker, 65536), &docker);
        let got: Vec<(u64, Option<String>, String)> = recs
            .iter()
            .map(|(off, _, b)| {
                let v: serde_json::Value = serde_json::from_str(b).unwrap();
                (
                    *off,
                    v["stream"].as_str().map(String::from),
                    v["log"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![
                (o[0], Some("stdout".into()), "out1-".into()),
                (o[1], Some("stderr".into()), "err1-err2\n".into()),
                (o[3], None, "none-".into()),
                (o[4], Some("stdout".into()), "out2\n".into()),
            ]
        );
    }

    #[test]
    fn an_overlong_record_still_sees_the_other_stream() {
        // Past max_record_bytes the record is kept as head and ring; its stream still shows.
        let f = framing(ContainerFormat::Cri, 64);
        let p = format!("2024-03-05T10:11:12Z stdout P {}\n", "a".repeat(30));
        let e = "2024-03-05T10:11:12Z stderr F err\n";
        let l = format!("2024-03-05T10:11:12Z stdout F {}\n", "b".repeat(5));
        let p = p.as_bytes();
        let (recs, _) = run(&f, &[p, p, p, e.as_bytes(), l.as_bytes()]);
        let parts: Vec<(u64, Part)> = recs.iter().map(|r| (r.0, r.1)).collect();
        let at_e = 3 * p.len() as u64;
        // The joined record: a 30-byte opening and 90 bytes of message, of which each part
        // keeps the 34 that fit beside its own opening.
        let tail_off = 30 + 90 - 34;
        assert_eq!(
            parts,
            vec![
                (0, Part::Head),
                (tail_off, Part::Tail),
                (at_e, Part::Whole),
                (at_e + e.len() as u64, Part::Whole),
            ]
        );
        assert_eq!(
            recs[1].2,
            format!("2024-03-05T10:11:12Z stdout F {}", "a".repeat(34))
        );
        assert_eq!(recs[2].2, e.trim_end());
        assert!(recs[3].2.ends_with(" stdout F bbbbb"));
    }
}
