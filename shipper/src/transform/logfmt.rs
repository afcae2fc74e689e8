//! `type = "logfmt"`: `key=value key2="quoted \" value"` as Go services write it (logrus,
//! go-kit/log, slog's TextHandler) → `fields`, every value a string. A key with no `=` (a bare
//! key) gets `""`. A line without a single `key=value` pair, or with a broken quoted value,
//! is not logfmt: it passes unchanged. With `message_key` (`msg` for those libraries), that
//! key's value becomes the record's message.
//!
//! Followed: the grammar of `github.com/go-logfmt/logfmt`'s decoder (a key is any run of
//! bytes above space except `=` and `"`; quoted values use Go's escapes, which JSON's cover
//! for what these encoders write).

use super::fields::{merge, text};
use super::{Draft, Fault, Transform, Verdict};
use serde_json::{Map, Value};
use std::borrow::Cow;

pub struct Logfmt {
    message_key: Option<String>,
    fault: Fault,
}

impl Logfmt {
    pub fn new(message_key: Option<String>) -> Logfmt {
        Logfmt {
            message_key,
            fault: Fault::None,
        }
    }
}

/// The pairs of a logfmt line, or None when it is not one.
pub fn parse(b: &[u8]) -> Option<Map<String, Value>> {
    let mut out = Map::new();
    let mut pairs = 0;
    let mut i = 0;
    while i < b.len() {
        if b[i] <= b' ' {
            i += 1;
            continue;
        }
        let k0 = i;
        while i < b.len() && b[i] > b' ' && b[i] != b'=' && b[i] != b'"' {
            i += 1;
        }
        if i == k0 {
            return None; // `=` or `"` where a key should start
        }
        let key = String::from_utf8_lossy(&b[k0..i]).into_owned();
        if i >= b.len() || b[i] != b'=' {
            if i < b.len() && b[i] == b'"' {
                return None;
            }
            out.insert(key, Value::String(String::new()));
            continue;
        }
        i += 1; // '='
        let value = if i < b.len() && b[i] == b'"' {
            let v0 = i;
            i += 1;
            loop {
                match b.get(i)? {
                    b'\\' => i += 2,
                    b'"' => break,
                    _ => i += 1,
                }
            }
            i += 1;
            match serde_json::from_slice::<String>(&b[v0..i]) {
                Ok(s) => Value::String(s),
                // Go's `\x..` or `\a` escapes JSON lacks: keep the text between the quotes.
                Err(_) => text(&b[v0 + 1..i - 1]),
            }
        } else {
            let v0 = i;
            while i < b.len() && b[i] > b' ' {
                if b[i] == b'"' {
                    return None;
                }
                i += 1;
            }
            text(&b[v0..i])
        };
        pairs += 1;
        out.insert(key, value);
    }
    (pairs > 0).then_some(out)
}

impl Transform for Logfmt {
    fn describe(&self) -> String {
        match &self.message_key {
            Some(k) => format!("logfmt, message from {k:?}"),
            None => "logfmt".into(),
        }
    }

    fn apply(&mut self, rec: &mut Draft<'_>) -> Verdict {
        let Some(mut map) = parse(&rec.bytes) else {
            self.fault = Fault::Unparsed;
            return Verdict::Keep;
        };
        self.fault = Fault::None;
        if let Some(k) = &self.message_key {
            if let Some(Value::String(s)) = map.remove(k) {
                rec.bytes = Cow::Owned(s.into_bytes());
            }
        }
        merge(rec, map);
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
    fn go_services_lines_parse() {
        // logrus's TextFormatter, as a Go service in production writes it.
        let logrus = br#"time="2024-03-05T10:11:12Z" level=info msg="user \"bob\" logged in" user_id=42 took=1.2ms"#;
        let m = parse(logrus).unwrap();
        assert_eq!(m["time"], "2024-03-05T10:11:12Z");
        assert_eq!(m["msg"], "user \"bob\" logged in");
        assert_eq!(m["user_id"], "42");
        assert_eq!(m["took"], "1.2ms");
        // go-kit/log and slog's TextHandler, with an empty quoted value and a bare key.
        let slog = br#"time=2024-03-05T10:11:12.345+01:00 level=WARN source=main.go:42 msg="disk \\ almost full" path="" retry"#;
        let m = parse(slog).unwrap();
        assert_eq!(m["source"], "main.go:42");
        assert_eq!(m["msg"], "disk \\ almost full");
        assert_eq!(m["path"], "");
        assert_eq!(m["retry"], "");
    }

    #[test]
    fn message_key_becomes_the_message() {
        let meta = meta();
        let mut t = Logfmt::new(Some("msg".into()));
        let mut d = draft(
            &meta,
            br#"level=error msg="connection refused" peer=10.0.0.7:5432"#,
        );
        t.apply(&mut d);
        assert_eq!(&*d.bytes, b"connection refused");
        let f = fields_of(&d);
        assert_eq!(f["peer"], "10.0.0.7:5432");
        assert!(f.get("msg").is_none());
    }

    #[test]
    fn what_is_not_logfmt_passes_unchanged() {
        let meta = meta();
        let mut t = Logfmt::new(None);
        for line in [
            &b"just a sentence without pairs"[..],
            b"msg=\"unterminated",
            b"a=b\"c",
            b"=value",
            b"",
        ] {
            let mut d = draft(&meta, line);
            assert_eq!(t.apply(&mut d), Verdict::Keep);
            assert_eq!(
                t.fault(),
                Fault::Unparsed,
                "{:?}",
                String::from_utf8_lossy(line)
            );
            assert_eq!(&*d.bytes, line);
            assert!(d.fields.is_none());
        }
    }
}
