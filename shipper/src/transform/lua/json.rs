//! A record's `fields` (one JSON object) to a Lua table and back.
//!
//! Back to JSON, a table whose keys are exactly 1..n is a list, any other an object (integer
//! keys as their decimal text); an empty table is an empty object. Anything JSON cannot carry
//! (a function, a cycle, a float that is not finite, a key or string that is not UTF-8, the
//! keys `1` and `"1"` in one table) is an error naming the field, so the record ships
//! unchanged rather than with a guess: a mended string or a dropped value would ship as if the
//! script had meant it.

use mlua::{Lua, Table, Value};
use serde_json::{Map, Number, Value as Json};

/// Nesting a script's fields may have: deeper is taken for a cycle.
const MAX_DEPTH: usize = 32;

/// `fields` (a serialized JSON object) as a Lua table; not an object: an error.
pub fn to_lua(lua: &Lua, fields: &[u8]) -> Result<Value, String> {
    let v: Json =
        serde_json::from_slice(fields).map_err(|e| format!("the record's fields: {e}"))?;
    if !v.is_object() {
        return Err("the record's fields is not a JSON object".into());
    }
    value(lua, &v).map_err(|e| format!("the record's fields: {e}"))
}

fn value(lua: &Lua, v: &Json) -> mlua::Result<Value> {
    Ok(match v {
        Json::Null => Value::Nil,
        Json::Bool(b) => Value::Boolean(*b),
        Json::Number(n) => match n.as_i64() {
            Some(i) => Value::Integer(i),
            None => Value::Number(n.as_f64().unwrap_or(f64::NAN)),
        },
        Json::String(s) => Value::String(lua.create_string(s)?),
        Json::Array(a) => {
            let t = lua.create_table_with_capacity(a.len(), 0)?;
            for (i, item) in a.iter().enumerate() {
                t.raw_set(i + 1, value(lua, item)?)?;
            }
            Value::Table(t)
        }
        Json::Object(o) => {
            let t = lua.create_table_with_capacity(0, o.len())?;
            for (k, item) in o {
                t.raw_set(k.as_str(), value(lua, item)?)?;
            }
            Value::Table(t)
        }
    })
}

/// A script's `fields` table as a serialized JSON object, written straight from the table
/// (no `serde_json::Value` in between: that map was most of what an added field cost). Keys
/// come out sorted, as they did through the map, so a record's line does not depend on Lua's
/// table order.
pub fn from_lua(t: &Table) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(64);
    let mut path = String::from("fields");
    object(t, &mut out, &mut path, 0)?;
    Ok(out)
}

fn object(t: &Table, out: &mut Vec<u8>, path: &mut String, depth: usize) -> Result<(), String> {
    // Per entry: its key as JSON text, whether Lua had it as an integer, and its value.
    let mut entries: Vec<(String, bool, Value)> = Vec::new();
    let mut bad_key = None;
    // The smallest key that is not UTF-8, so the error does not depend on Lua's table order.
    let mut not_utf8: Option<Vec<u8>> = None;
    // for_each walks the table under one lock; pairs() re-pushes the key at every step.
    t.for_each::<Value, Value>(|k, v| {
        match &k {
            Value::String(s) => match s.to_str() {
                Ok(text) => entries.push((text.to_string(), false, v)),
                Err(_) => {
                    let bytes = s.as_bytes();
                    if not_utf8.as_deref().is_none_or(|min| *bytes < *min) {
                        not_utf8 = Some(bytes.to_vec());
                    }
                }
            },
            Value::Integer(i) => entries.push((i.to_string(), true, v)),
            other => bad_key = bad_key.or(Some(other.type_name())),
        }
        Ok(())
    })
    .map_err(|e| format!("{path}: {e}"))?;
    if let Some(kind) = bad_key {
        return Err(format!("{path} has {} key", a(kind)));
    }
    if let Some(key) = not_utf8 {
        return Err(format!(
            "{path} has the key {}, which is not UTF-8 (JSON cannot carry it)",
            escaped(&key)
        ));
    }
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    // `1` and `"1"` are two keys in Lua and one in JSON: keeping either would drop the other's
    // value unseen. Sorted, such a pair is adjacent.
    if let Some(w) = entries.windows(2).find(|w| w[0].0 == w[1].0) {
        let key = &w[0].0;
        return Err(format!(
            "{path} has both the integer key {key} and the string key \"{key}\", \
             which are one key in JSON"
        ));
    }
    out.push(b'{');
    for (i, (key, _, v)) in entries.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        string(out, key);
        out.push(b':');
        let len = path.len();
        path.push('.');
        path.push_str(key);
        json(v, out, path, depth + 1)?;
        path.truncate(len);
    }
    out.push(b'}');
    Ok(())
}

/// Bytes that are not UTF-8 as a quoted string for an error: the text that is UTF-8 as Rust
/// escapes it, each other byte as `\xNN`, cut after [`SHOWN`] bytes (a value may be long).
pub(super) fn escaped(bytes: &[u8]) -> String {
    let cut = bytes.len() > SHOWN;
    let mut s = String::from("\"");
    for chunk in bytes[..bytes.len().min(SHOWN)].utf8_chunks() {
        s.extend(chunk.valid().chars().flat_map(char::escape_debug));
        for b in chunk.invalid() {
            s.push_str(&format!("\\x{b:02x}"));
        }
    }
    s.push('"');
    if cut {
        s.push_str(&format!(" (first {SHOWN} of {} bytes)", bytes.len()));
    }
    s
}

/// How much of a string that is not UTF-8 an error shows.
const SHOWN: usize = 64;

pub(super) fn string(out: &mut Vec<u8>, s: &str) {
    serde_json::to_writer(&mut *out, s).expect("writing to a Vec cannot fail");
}

fn json(v: &Value, out: &mut Vec<u8>, path: &mut String, depth: usize) -> Result<(), String> {
    if depth > MAX_DEPTH {
        return Err(format!("{path} is nested over {MAX_DEPTH} deep (a cycle?)"));
    }
    match v {
        Value::Nil => out.extend_from_slice(b"null"),
        Value::Boolean(true) => out.extend_from_slice(b"true"),
        Value::Boolean(false) => out.extend_from_slice(b"false"),
        Value::Integer(i) => {
            serde_json::to_writer(&mut *out, i).expect("writing to a Vec cannot fail")
        }
        Value::Number(f) => match Number::from_f64(*f) {
            Some(n) => serde_json::to_writer(&mut *out, &n).expect("writing to a Vec cannot fail"),
            None => return Err(format!("{path} is {f}, which JSON cannot carry")),
        },
        Value::String(s) => {
            let bytes = s.as_bytes();
            match std::str::from_utf8(&bytes) {
                Ok(text) => string(out, text),
                Err(e) => {
                    return Err(format!(
                        "{path} is {}, which is not UTF-8 from byte {} (JSON cannot carry it)",
                        escaped(&bytes),
                        e.valid_up_to()
                    ))
                }
            }
        }
        Value::Table(t) => {
            let n = t.raw_len();
            let is_list = n > 0 && {
                let mut count = 0;
                t.for_each::<Value, Value>(|_, _| {
                    count += 1;
                    Ok(())
                })
                .map_err(|e| format!("{path}: {e}"))?;
                count == n
            };
            if !is_list {
                return object(t, out, path, depth);
            }
            out.push(b'[');
            for i in 1..=n {
                if i > 1 {
                    out.push(b',');
                }
                let item: Value = t.raw_get(i).map_err(|e| format!("{path}: {e}"))?;
                json(&item, out, path, depth + 1)?;
            }
            out.push(b']');
        }
        other => {
            return Err(format!(
                "{path} is a {}, which JSON cannot carry",
                other.type_name()
            ))
        }
    }
    Ok(())
}

/// A Lua type's name with its article, for errors: `an integer`, `a table`.
pub fn a(type_name: &str) -> String {
    let article = if type_name.starts_with(['a', 'e', 'i', 'o', 'u']) {
        "an"
    } else {
        "a"
    };
    format!("{article} {type_name}")
}

/// `fields` (or none) with `transform_error` set to `error`; an earlier transform's error on
/// the same record is kept in front of it.
pub fn with_error(fields: Option<&[u8]>, error: &str) -> Vec<u8> {
    let mut map = match fields.map(serde_json::from_slice::<Json>) {
        Some(Ok(Json::Object(m))) => m,
        None => Map::new(),
        // Not an object: kept whole beside the error, as the batch would keep it.
        Some(_) => {
            let mut m = Map::new();
            let text = String::from_utf8_lossy(fields.unwrap_or_default()).into_owned();
            m.insert("fields_invalid".into(), Json::String(text));
            m
        }
    };
    let text = match map.get("transform_error") {
        Some(Json::String(before)) => format!("{before}; {error}"),
        _ => error.to_string(),
    };
    map.insert("transform_error".into(), Json::String(text));
    serde_json::to_vec(&Json::Object(map)).expect("a JSON value serializes")
}
