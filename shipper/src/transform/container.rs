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
}
