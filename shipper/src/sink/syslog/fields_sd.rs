//! A record's `fields` as RFC 5424 structured data, for `structured_data = "full"`:
//! `[fields@32473 facility="user" hostname="web1" peer="10.0.0.1:514" …]`, and a syslog
//! message's own STRUCTURED-DATA (`fields.structured_data`, as the syslog input parsed it)
//! forwarded as the elements it arrived as, so a relay chain keeps them.
//!
//! Every name is made a valid SD-NAME (1 to 32 printable ASCII, no `=`, space, `]` or `"`;
//! others become `_`), every value is escaped, and an SD-ID that would repeat one already in the
//! message is left out (RFC 5424 §6.3.2 forbids a repeat): the message stays valid whatever the
//! fields hold. A value that is not a string is carried as its JSON text.

use serde_json::{Map, Value};

/// The SD-ID of the agent's own fields.
const FIELDS_ID: &str = "fields@32473";
/// The agent's per-record element (see `encode`): never repeated by a forwarded element.
const OWN_ID: &str = "logsensor@32473";

/// Appends the SD elements for `fields` (a JSON object) to `out`; nothing when it holds none.
pub fn append(out: &mut Vec<u8>, fields: &[u8]) {
    let Ok(Value::Object(map)) = serde_json::from_slice::<Value>(fields) else {
        return;
    };
    let mut own: Vec<(&String, &Value)> = Vec::new();
    let mut forwarded: Option<&Map<String, Value>> = None;
    for (k, v) in &map {
        match (k.as_str(), v) {
            ("structured_data", Value::Object(sd)) => forwarded = Some(sd),
            _ => own.push((k, v)),
        }
    }
    let mut ids: Vec<String> = vec![OWN_ID.to_string()];
    if !own.is_empty() {
        element(out, FIELDS_ID, own.into_iter());
        ids.push(FIELDS_ID.to_string());
    }
    for (id, params) in forwarded.into_iter().flatten() {
        let id = sd_name(id);
        if ids.contains(&id) {
            continue;
        }
        let params: Vec<(&String, &Value)> = match params {
            Value::Object(p) => p.iter().collect(),
            _ => Vec::new(),
        };
        element(out, &id, params.into_iter());
        ids.push(id);
    }
}

fn element<'a>(out: &mut Vec<u8>, id: &str, params: impl Iterator<Item = (&'a String, &'a Value)>) {
    out.push(b'[');
    out.extend_from_slice(id.as_bytes());
    for (k, v) in params {
        out.push(b' ');
        out.extend_from_slice(sd_name(k).as_bytes());
        out.extend_from_slice(b"=\"");
        match v {
            Value::String(s) => super::encode::sd_escape(out, s.as_bytes()),
            other => super::encode::sd_escape(out, other.to_string().as_bytes()),
        }
        out.push(b'"');
    }
    out.push(b']');
}

/// An SD-NAME from any text: printable ASCII but `=`, space, `]`, `"`; 1 to 32 characters.
fn sd_name(s: &str) -> String {
    let name: String = s
        .bytes()
        .take(32)
        .map(|b| match b {
            b'=' | b' ' | b']' | b'"' => '_',
            33..=126 => b as char,
            _ => '_',
        })
        .collect();
    if name.is_empty() {
        "_".into()
    } else {
        name
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sd(fields: &str) -> String {
        let mut out = Vec::new();
        append(&mut out, fields.as_bytes());
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn fields_become_one_element_and_forwarded_sd_keeps_its_ids() {
        assert_eq!(
            sd(
                r#"{"facility":"user","peer":"10.0.0.1:514","structured_data":{"ex@1":{"a":"q\"b]"}},"n":3}"#
            ),
            r#"[fields@32473 facility="user" n="3" peer="10.0.0.1:514"][ex@1 a="q\"b\]"]"#
        );
    }

    #[test]
    fn names_are_made_valid_and_ids_never_repeat() {
        assert_eq!(
            sd(
                r#"{"a b=c":"v","structured_data":{"logsensor@32473":{"x":"1"},"fields@32473":{"y":"2"},"ok@2":{}}}"#
            ),
            r#"[fields@32473 a_b_c="v"][ok@2]"#
        );
        assert_eq!(
            sd(r#"{"structured_data":{"only@1":{"k":"v"}}}"#),
            r#"[only@1 k="v"]"#
        );
        assert_eq!(sd("{}"), "");
        assert_eq!(sd("not json"), "");
    }
}
