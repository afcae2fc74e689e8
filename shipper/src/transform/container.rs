//! `type = "cri"` and `type = "docker"`: Kubernetes container log lines
//! (`/var/log/containers/*.log`) → `time` and `stream` (and CRI's `logtag`) in `fields`, the
//! container's own output as the message. Partial lines are joined before they get here, by
//! the framer (see `frame::container` for why there), so each record is one whole write.

use super::fields::{merge, text};
use super::{Draft, Fault, Transform, Verdict};
use crate::frame::cri_parts;
use serde::Deserialize;
use serde_json::{Map, Value};
use std::borrow::Cow;

/// CRI-O / containerd: `TIME STREAM TAG MSG`.
#[derive(Default)]
pub struct Cri {
    fault: Fault,
}

impl Transform for Cri {
    fn describe(&self) -> String {
        "cri (CRI-O / containerd log lines)".into()
    }

    fn apply(&mut self, rec: &mut Draft<'_>) -> Verdict {
        let Some((tag_start, _, msg_start)) = cri_parts(&rec.bytes) else {
            self.fault = Fault::Unparsed;
            return Verdict::Keep;
        };
        self.fault = Fault::None;
        let b = &rec.bytes;
        let sp1 = b
            .iter()
            .position(|&c| c == b' ')
            .expect("cri_parts found it");
        let tag_end = b[tag_start..]
            .iter()
            .position(|&c| c == b' ')
            .map_or(b.len(), |i| tag_start + i);
        let mut m = Map::new();
        m.insert("time".into(), text(&b[..sp1]));
        m.insert("stream".into(), text(&b[sp1 + 1..tag_start - 1]));
        m.insert("logtag".into(), text(&b[tag_start..tag_end]));
        let msg = b[msg_start..].to_vec();
        rec.bytes = Cow::Owned(msg);
        merge(rec, m);
        Verdict::Keep
    }

    fn fault(&self) -> Fault {
        self.fault
    }
}

/// Docker's json-file driver: `{"log":"…\n","stream":"stdout","time":"…"}`.
#[derive(Default)]
pub struct Docker {
    fault: Fault,
}

#[derive(Deserialize)]
struct Line {
    log: String,
    #[serde(default)]
    stream: Option<String>,
    #[serde(default)]
    time: Option<String>,
}

impl Transform for Docker {
    fn describe(&self) -> String {
        "docker (json-file log lines)".into()
    }

    fn apply(&mut self, rec: &mut Draft<'_>) -> Verdict {
        let Ok(line) = serde_json::from_slice::<Line>(&rec.bytes) else {
            self.fault = Fault::Unparsed;
            return Verdict::Keep;
        };
        self.fault = Fault::None;
        let mut log = line.log;
        // The newline ends the write; it is the record's delimiter, not its content.
        if log.ends_with('\n') {
            log.pop();
            if log.ends_with('\r') {
                log.pop();
            }
        }
        let mut m = Map::new();
        if let Some(t) = line.time {
            m.insert("time".into(), Value::String(t));
        }
        if let Some(s) = line.stream {
            m.insert("stream".into(), Value::String(s));
        }
        rec.bytes = Cow::Owned(log.into_bytes());
        merge(rec, m);
        Verdict::Keep
    }

    fn fault(&self) -> Fault {
        self.fault
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::transforms::ContainerFormat;
    use crate::frame::testing::{framing, run};
    use crate::frame::Part;
    use crate::transform::tests::{draft, fields_of, meta};

    #[test]
    fn containerd_lines_parse() {
        let meta = meta();
        let mut t = Cri::default();
        let mut d = draft(
            &meta,
            b"2024-03-05T10:11:12.123456789Z stderr F level=info msg=\"started\"",
        );
        t.apply(&mut d);
        assert_eq!(t.fault(), Fault::None);
        assert_eq!(&*d.bytes, b"level=info msg=\"started\"");
        let f = fields_of(&d);
        assert_eq!(f["time"], "2024-03-05T10:11:12.123456789Z");
        assert_eq!(f["stream"], "stderr");
        assert_eq!(f["logtag"], "F");
        // An empty write: the line ends after the tag.
        let mut d = draft(&meta, b"2024-03-05T10:11:12.1Z stdout F");
        t.apply(&mut d);
        assert_eq!(t.fault(), Fault::None);
        assert_eq!(&*d.bytes, b"");
        let mut d = draft(&meta, b"no cri line here");
        t.apply(&mut d);
        assert_eq!(t.fault(), Fault::Unparsed);
        assert_eq!(&*d.bytes, b"no cri line here");
    }

    #[test]
    fn docker_json_file_lines_parse() {
        let meta = meta();
        let mut t = Docker::default();
        let mut d = draft(
            &meta,
            br#"{"log":"GET /healthz 200\n","stream":"stdout","time":"2024-03-05T10:11:12.123456789Z"}"#,
        );
        t.apply(&mut d);
        assert_eq!(t.fault(), Fault::None);
        assert_eq!(&*d.bytes, b"GET /healthz 200");
        let f = fields_of(&d);
        assert_eq!(f["stream"], "stdout");
        assert_eq!(f["time"], "2024-03-05T10:11:12.123456789Z");
        let mut d = draft(&meta, br#"{"msg":"no log key"}"#);
        t.apply(&mut d);
        assert_eq!(t.fault(), Fault::Unparsed);
    }

    /// What the source's `cri` / `docker` transform makes of each record: its part, offset,
    /// `fields` (None: it could not parse the record) and message.
    fn transformed(
        format: ContainerFormat,
        recs: &[(u64, Part, String)],
    ) -> Vec<(Part, u64, Option<serde_json::Value>, String)> {
        let meta = meta();
        recs.iter()
            .map(|(off, part, b)| {
                let mut t: Box<dyn Transform> = match format {
                    ContainerFormat::Cri => Box::new(Cri::default()),
                    ContainerFormat::Docker => Box::new(Docker::default()),
                };
                let mut d = draft(&meta, b.as_bytes());
                t.apply(&mut d);
                let fields = (t.fault() == Fault::None)
                    .then(|| serde_json::from_slice(d.fields.as_deref().expect("fields")).unwrap());
                let msg = String::from_utf8(d.bytes.to_vec()).unwrap();
                (*part, *off, fields, msg)
            })
            .collect()
    }

    /// One write of `msg` as containerd's CRI logger and Docker's json-file driver put it in
    /// the file: cut every 16 KiB into lines (`P` … `F`; `log` without its `\n` until the
    /// last), each line with its own time. Docker's JSON is Go's: `<`, `>`, `&` as `\u003c`….
    fn runtime_lines(format: ContainerFormat, stream: &str, msg: &str) -> Vec<Vec<u8>> {
        let chunks: Vec<&str> = {
            let mut v = Vec::new();
            let mut rest = msg;
            while rest.len() > 16384 {
                let mut at = 16384;
                while !rest.is_char_boundary(at) {
                    at -= 1;
                }
                v.push(&rest[..at]);
                rest = &rest[at..];
            }
            v.push(rest);
            v
        };
        let last = chunks.len() - 1;
        chunks
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let time = format!("2024-03-05T10:11:12.{:09}Z", 123456789 + i);
                match format {
                    ContainerFormat::Cri => {
                        let tag = if i == last { "F" } else { "P" };
                        format!("{time} {stream} {tag} {c}\n").into_bytes()
                    }
                    ContainerFormat::Docker => {
                        let log = if i == last {
                            format!("{c}\n")
                        } else {
                            c.to_string()
                        };
                        let log = serde_json::to_string(&log)
                            .unwrap()
                            .replace('<', "\\u003c")
                            .replace('>', "\\u003e")
                            .replace('&', "\\u0026");
                        format!("{{\"log\":{log},\"stream\":\"{stream}\",\"time\":\"{time}\"}}\n")
                            .into_bytes()
                    }
                }
            })
            .collect()
    }

    /// An application's JSON log line of about 100 KiB, with quotes, backslashes, a tab, an
    /// ANSI colour, `<`/`&` and non-ASCII text for the runtimes to escape.
    fn big_app_line() -> String {
        let mut s = String::from("{\"level\":\"error\",\"msg\":\"upstream said\",\"body\":\"");
        let mut i = 0;
        while s.len() < 100 << 10 {
            s.push_str(&format!(
                "<row id={i} path=\\\"C:\\\\srv\\\\caf\u{e9}\\\" tab=\t \u{1b}[31mred\u{1b}[0m a&b \u{4e2d}> "
            ));
            i += 1;
        }
        s.push_str("\"}");
        s
    }

    #[test]
    fn both_parts_of_an_overlong_joined_record_carry_its_container_fields() {
        // A ~100 KiB write at the default max_record_bytes: 7 runtime lines, one record of
        // about 100 KiB, cut into a head and a tail part.
        let max = 65536;
        let msg = big_app_line();
        for format in [ContainerFormat::Cri, ContainerFormat::Docker] {
            let lines = runtime_lines(format, "stderr", &msg);
            assert_eq!(lines.len(), 7);
            let chunks: Vec<&[u8]> = lines.iter().map(|l| &l[..]).collect();
            let (recs, _) = run(&framing(format, max), &chunks);
            let parts = transformed(format, &recs);
            assert_eq!(parts.len(), 2, "{format:?}: {:?}", &recs);
            let mut want = serde_json::json!({
                "stream": "stderr",
                "time": "2024-03-05T10:11:12.123456789Z",
            });
            if format == ContainerFormat::Cri {
                want["logtag"] = "F".into();
            }
            let (head, tail) = (&parts[0], &parts[1]);
            assert_eq!((head.0, head.1), (Part::Head, 0), "{format:?}");
            assert_eq!(tail.0, Part::Tail, "{format:?}");
            assert_eq!(head.2.as_ref(), Some(&want), "{format:?} head");
            assert_eq!(tail.2.as_ref(), Some(&want), "{format:?} tail");
            // Each part fills `max`, less what a Docker cut between escapes leaves out.
            for r in &recs {
                assert!(
                    r.2.len() <= max && r.2.len() > max - 6,
                    "{format:?}: {}",
                    r.2.len()
                );
            }
            // The head's message starts the write, the tail's ends it (Docker: less its `\n`).
            assert!(msg.starts_with(&head.3), "{format:?}");
            assert!(msg.ends_with(&tail.3), "{format:?}");
            assert!(
                tail.1 > 0,
                "{format:?}: head and tail never share an offset"
            );
        }
    }

    #[test]
    fn a_docker_part_is_cut_between_escapes_wherever_the_cut_falls() {
        // The message shifted a byte at a time, so the cut falls inside every kind of escape
        // and character in turn.
        let max = 512;
        // Parts that lost bytes to a cut inside an escape or character.
        let mut short = 0;
        for pad in 0..24 {
            let msg = format!(
                "{}{}",
                "p".repeat(pad),
                "\"q\\\" \t\u{1b}[0m \u{e9}\u{4e2d}\u{1f600} <&> ".repeat(60)
            );
            let mut lines = Vec::new();
            for (i, c) in msg
                .split_inclusive(' ')
                .collect::<Vec<_>>()
                .chunks(8)
                .enumerate()
            {
                let text: String = c.concat();
                let time = format!("2024-03-05T10:11:12.{i:09}Z");
                let log = serde_json::to_string(&text).unwrap();
                lines.push(format!(
                    "{{\"log\":{log},\"stream\":\"stdout\",\"time\":\"{time}\"}}\n"
                ));
            }
            let last = lines
                .pop()
                .unwrap()
                .replacen("\",\"stream\"", "\\n\",\"stream\"", 1);
            lines.push(last);
            let chunks: Vec<&[u8]> = lines.iter().map(|l| l.as_bytes()).collect();
            let (recs, _) = run(&framing(ContainerFormat::Docker, max), &chunks);
            let parts = transformed(ContainerFormat::Docker, &recs);
            assert_eq!(parts.len(), 2, "pad {pad}");
            for ((part, _, fields, _), r) in parts.iter().zip(&recs) {
                let fields = fields
                    .as_ref()
                    .unwrap_or_else(|| panic!("pad {pad}: {part:?}"));
                assert_eq!(fields["stream"], "stdout");
                assert_eq!(fields["time"], "2024-03-05T10:11:12.000000000Z");
                assert!(
                    r.2.len() <= max && r.2.len() > max - 6,
                    "pad {pad}: {}",
                    r.2.len()
                );
                short += usize::from(r.2.len() < max);
            }
            assert!(msg.starts_with(&parts[0].3), "pad {pad}");
            assert!(msg.ends_with(&parts[1].3), "pad {pad}");
        }
        assert!(short > 10, "only {short} cuts fell inside an escape");
    }
}
