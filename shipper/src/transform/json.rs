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
    fn a_line_that_is_not_an_object_passes_unchanged() {
        let meta = crate::transform::tests::meta();
        let mut t = Json::new(None);
        for line in [&b"plain text"[..], b"[1,2]", b"{\"cut\": \"of", b"\xff\xfe"] {
            let mut d = draft(&meta, line);
            assert_eq!(t.apply(&mut d), Verdict::Keep);
            assert_eq!(t.fault(), Fault::Unparsed);
            assert_eq!(&*d.bytes, line);
            assert!(d.fields.is_none());
        }
    }
}
