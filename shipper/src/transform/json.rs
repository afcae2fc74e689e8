//! `type = "json"`: a line that is one JSON object has its keys put into `fields`; nested
//! values stay JSON. With `message_key`, that key's string value becomes the record's message
//! (and leaves `fields`); without it the message stays the line as read.

use super::fields::merge;
use super::{Draft, Fault, Transform, Verdict};
use serde_json::{Map, Value};
use std::borrow::Cow;

pub struct Json {
    message_key: Option<String>,
    fault: Fault,
}

impl Json {
    pub fn new(message_key: Option<String>) -> Json {
        Json {
            message_key,
            fault: Fault::None,
        }
    }
}

impl Transform for Json {
    fn describe(&self) -> String {
        match &self.message_key {
            Some(k) => format!("json, message from {k:?}"),
            None => "json".into(),
        }
    }

    fn apply(&mut self, rec: &mut Draft<'_>) -> Verdict {
        // The common case: the line is the fields as they are, once checked. Building the map
        // and writing it out again was most of this parser's cost.
        if self.message_key.is_none() && rec.fields.is_none() {
            if !is_object(&rec.bytes) {
                self.fault = Fault::Unparsed;
                return Verdict::Keep;
            }
            self.fault = Fault::None;
            rec.fields = Some(rec.bytes.clone());
            return Verdict::Keep;
        }
        let mut map = match serde_json::from_slice::<Map<String, Value>>(&rec.bytes) {
            Ok(m) => m,
            Err(_) => {
                self.fault = Fault::Unparsed;
                return Verdict::Keep;
            }
        };
        self.fault = Fault::None;
        if let Some(k) = &self.message_key {
            if let Some(Value::String(s)) = map.get(k) {
                rec.bytes = Cow::Owned(s.clone().into_bytes());
                map.remove(k);
            }
        }
        merge(rec, map);
        Verdict::Keep
    }

    fn fault(&self) -> Fault {
        self.fault
    }
}

/// `b` is one JSON object, as strictly as a full parse reads it (a string's escapes and UTF-8
/// included, which `serde::de::IgnoredAny` skips: the collector would refuse a line whose
/// fields hold a lone surrogate), without building anything.
fn is_object(b: &[u8]) -> bool {
    b.iter().find(|c| !c.is_ascii_whitespace()) == Some(&b'{')
        && serde_json::from_slice::<Checked>(b).is_ok()
}

/// A JSON value read only to be checked.
struct Checked;

impl<'de> serde::Deserialize<'de> for Checked {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Checked, D::Error> {
        d.deserialize_any(Checked)
    }
}

impl<'de> serde::de::Visitor<'de> for Checked {
    type Value = Checked;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, _: bool) -> Result<Checked, E> {
        Ok(Checked)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Checked, E> {
        Ok(Checked)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Checked, E> {
        Ok(Checked)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Checked, E> {
        Ok(Checked)
    }
    fn visit_str<E>(self, _: &str) -> Result<Checked, E> {
        Ok(Checked)
    }
    fn visit_unit<E>(self) -> Result<Checked, E> {
        Ok(Checked)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut a: A) -> Result<Checked, A::Error> {
        while a.next_element::<Checked>()?.is_some() {}
        Ok(Checked)
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut a: A) -> Result<Checked, A::Error> {
        while a.next_entry::<Checked, Checked>()?.is_some() {}
        Ok(Checked)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transform::tests::{draft, fields_of};

    #[test]
    fn keys_of_a_json_line_go_into_fields() {
        // A line as a Node service with pino writes it.
        let line = br#"{"level":30,"time":1709633472123,"pid":7,"hostname":"web-1","req":{"method":"GET","url":"/a"},"msg":"request completed"}"#;
        let (meta, mut t) = (
            crate::transform::tests::meta(),
            Json::new(Some("msg".into())),
        );
        let mut d = draft(&meta, line);
        assert_eq!(t.apply(&mut d), Verdict::Keep);
        assert_eq!(t.fault(), Fault::None);
        assert_eq!(&*d.bytes, b"request completed");
        let f = fields_of(&d);
        assert_eq!(f["level"], 30);
        assert_eq!(f["req"]["method"], "GET");
        assert!(f.get("msg").is_none());
    }

    #[test]
    fn without_a_message_key_the_object_is_the_fields_as_written() {
        let meta = crate::transform::tests::meta();
        let line = br#" {"b":[1,{"c":"\u00e9\n"}],"a":null,"t":true}"#;
        let mut d = draft(&meta, line);
        let mut t = Json::new(None);
        assert_eq!(t.apply(&mut d), Verdict::Keep);
        assert_eq!(t.fault(), Fault::None);
        assert_eq!(&*d.bytes, &line[..], "the message stays the line");
        assert_eq!(d.fields.as_deref(), Some(&line[..]));
        assert_eq!(fields_of(&d)["b"][1]["c"], "\u{e9}\n");
    }

    #[test]
    fn a_line_that_is_not_an_object_passes_unchanged() {
        let meta = crate::transform::tests::meta();
        let mut t = Json::new(None);
        for line in [
            &b"plain text"[..],
            b"[1,2]",
            b"{\"cut\": \"of",
            b"\xff\xfe",
            b"{\"a\":1} trailing",
            // What a scan for the end of each string lets by, and a full parse does not.
            br#"{"lone":"\ud800"}"#,
            b"{\"bad\":\"\xff\"}",
            br#"{"esc":"\q"}"#,
            b"{\"n\":1e999}",
        ] {
            let mut d = draft(&meta, line);
            assert_eq!(t.apply(&mut d), Verdict::Keep);
            assert_eq!(t.fault(), Fault::Unparsed);
            assert_eq!(&*d.bytes, line);
            assert!(d.fields.is_none());
        }
    }
}
