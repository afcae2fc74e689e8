//! Dotted keys over nested TOML tables (`sources.app.paths`), and values as an operator types
//! and reads them on one line: what `config get/set/del/list` and the layers work with.

pub use log_sensor_common::toml_inline::render;
use toml::{Table, Value};

/// A value as typed on the command line: TOML if it parses (`65536`, `true`, `["a"]`, `"x"`),
/// otherwise the text as a string (`web-01`).
pub fn parse_value(text: &str) -> Value {
    let doc = format!("v = {text}");
    match doc.parse::<Table>() {
        Ok(mut t) => t
            .remove("v")
            .unwrap_or_else(|| Value::String(text.to_string())),
        Err(_) => Value::String(text.to_string()),
    }
}

pub(super) fn flatten(prefix: &str, t: &Table, out: &mut Vec<(String, Value)>) {
    for (k, v) in t {
        let key = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        match v {
            Value::Table(sub) => flatten(&key, sub, out),
            other => out.push((key, other.clone())),
        }
    }
}

pub(super) fn merge_into(dst: &mut Table, src: &Table) {
    for (k, v) in src {
        match (dst.get_mut(k), v) {
            (Some(Value::Table(d)), Value::Table(s)) => merge_into(d, s),
            _ => {
                dst.insert(k.clone(), v.clone());
            }
        }
    }
}

pub(super) fn get_path<'a>(t: &'a Table, parts: &[&str]) -> Option<&'a Value> {
    let (first, rest) = parts.split_first()?;
    let v = t.get(*first)?;
    if rest.is_empty() {
        return Some(v);
    }
    get_path(v.as_table()?, rest)
}

pub(super) fn set_path(t: &mut Table, parts: &[&str], value: Value) {
    let Some((first, rest)) = parts.split_first() else {
        return;
    };
    if rest.is_empty() {
        t.insert(first.to_string(), value);
        return;
    }
    let sub = t
        .entry(first.to_string())
        .or_insert_with(|| Value::Table(Table::new()));
    if !sub.is_table() {
        *sub = Value::Table(Table::new());
    }
    if let Value::Table(st) = sub {
        set_path(st, rest, value);
    }
}

pub(super) fn remove_path(t: &mut Table, parts: &[&str]) -> Option<Value> {
    let (first, rest) = parts.split_first()?;
    if rest.is_empty() {
        return t.remove(*first);
    }
    remove_path(t.get_mut(*first)?.as_table_mut()?, rest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_parse_as_toml_or_as_text() {
        assert_eq!(parse_value("42"), Value::Integer(42));
        assert_eq!(parse_value("true"), Value::Boolean(true));
        assert_eq!(
            parse_value("[\"a\", \"b\"]"),
            Value::Array(vec!["a".into(), "b".into()])
        );
        assert_eq!(parse_value("web-01"), Value::String("web-01".into()));
        assert_eq!(parse_value("\"5s\""), Value::String("5s".into()));
        assert_eq!(render(&Value::String("x\"y\n".into())), "\"x\\\"y\\n\"");
        for v in [
            Value::String("a\\b\t\"c\u{1}".into()),
            parse_value("[\"a\", 1, true]"),
            parse_value("{ x = 1 }"),
        ] {
            assert_eq!(parse_value(&render(&v)), v, "{}", render(&v));
        }
    }
}
