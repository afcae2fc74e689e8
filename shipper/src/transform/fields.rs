//! Writing a parser's output into a record's `fields`: the keys it found join those already
//! there (from the input or an earlier transform), a later transform's value winning.

use super::Draft;
use serde_json::{Map, Value};
use std::borrow::Cow;

/// Merges `found` into `rec.fields`. Fields that are not a JSON object (they come checked from
/// the inputs, so this is defensive) are kept whole under `fields_invalid`.
pub fn merge(rec: &mut Draft<'_>, found: Map<String, Value>) {
    if found.is_empty() {
        return;
    }
    let merged = match rec.fields.as_deref() {
        None => found,
        Some(old) => {
            let mut map = match serde_json::from_slice::<Value>(old) {
                Ok(Value::Object(m)) => m,
                _ => {
                    let mut m = Map::new();
                    let text = String::from_utf8_lossy(old).into_owned();
                    m.insert("fields_invalid".into(), Value::String(text));
                    m
                }
            };
            map.extend(found);
            map
        }
    };
    let bytes = serde_json::to_vec(&Value::Object(merged)).expect("a JSON map serializes");
    rec.fields = Some(Cow::Owned(bytes));
}

/// A `fields` object written key by key into a record that has none yet: no map in between
/// (building and then serializing one was most of what a parser cost per line). The caller
/// gives each key once and in sorted order, which is what the map would have written.
pub struct Writer {
    out: Vec<u8>,
}

impl Writer {
    pub fn new(capacity: usize) -> Writer {
        let mut out = Vec::with_capacity(capacity);
        out.push(b'{');
        Writer { out }
    }

    /// Adds `key` (already a JSON string, quotes included: see [`key`]) with `value` as text.
    pub fn text(&mut self, key: &[u8], value: &[u8]) {
        if self.out.len() > 1 {
            self.out.push(b',');
        }
        self.out.extend_from_slice(key);
        self.out.push(b':');
        let lossy = String::from_utf8_lossy(value);
        serde_json::to_writer(&mut self.out, &*lossy).expect("writing to a Vec cannot fail");
    }

    /// Sets the object as `rec.fields`, unless no key was given (then the record has none).
    pub fn finish(mut self, rec: &mut Draft<'_>) {
        debug_assert!(
            rec.fields.is_none(),
            "a Writer is for records without fields"
        );
        if self.out.len() > 1 {
            self.out.push(b'}');
            rec.fields = Some(Cow::Owned(self.out));
        }
    }
}

/// `name` as a JSON string, quotes included, for [`Writer::text`].
pub fn key(name: &str) -> Vec<u8> {
    serde_json::to_vec(name).expect("a string serializes")
}

/// Text for a field from bytes that may not be UTF-8 (invalid sequences become U+FFFD).
pub fn text(b: &[u8]) -> Value {
    Value::String(String::from_utf8_lossy(b).into_owned())
}
