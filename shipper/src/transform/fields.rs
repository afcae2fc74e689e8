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

/// Text for a field from bytes that may not be UTF-8 (invalid sequences become U+FFFD).
pub fn text(b: &[u8]) -> Value {
    Value::String(String::from_utf8_lossy(b).into_owned())
}
