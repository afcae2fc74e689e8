//! The ingest hot path: reading the four fields the collector acts on from
//! a line without serde_json, for lines plain enough that the answer is
//! certain.
//!
//! serde_json was most of `parse_batch`'s time: it scans every byte of the
//! fields it then throws away (`msg` above all) one at a time. Here strings
//! are scanned many bytes at a time (`json_text`), and only what the agent writes is
//! understood: one object of strings, numbers, `true`, `false` and
//! `null`, and of nested objects and arrays under the keys the collector
//! does not read (a record's `fields`, up to [`MAX_DEPTH`] levels).
//! Everything else (a value nested deeper, an escape in a key or in
//! `host`/`stream`/`part`, a repeated field, an `offset` that is not a plain
//! `u64`, a missing field, stray bytes) returns `None`, and the caller
//! parses that line with serde_json, which gives the value or the error it
//! always gave. The one rule: `Some` only for a line serde_json reads into
//! the same [`WireRecord`]; the property test below holds us to it.
//!
//! UTF-8: serde_json refuses invalid UTF-8 in keys and in the values it
//! keeps, but not in the values it skips. Here a line must be UTF-8 all
//! through, or it goes to serde_json. Outside strings only ASCII is
//! accepted, so checking each string is checking the line; the scan notes
//! whether a string has a byte above 0x7f, and only such strings are
//! checked again with `from_utf8`. Log lines are mostly ASCII, so most of
//! a body is read once instead of twice.

use std::borrow::Cow;

use super::{Part, WireRecord};
use log_sensor_common::json_text::{plain_run, Run};
use log_sensor_common::record::field;

/// The record's fields, or `None` when the line must go to serde_json.
pub(super) fn wire_record(b: &[u8]) -> Option<WireRecord<'_>> {
    let mut i = skip_ws(b, 0);
    if b.get(i) != Some(&b'{') {
        return None;
    }
    i += 1;
    let (mut host, mut stream, mut offset, mut part) = (None, None, None, None);
    loop {
        i = skip_ws(b, i);
        if b.get(i) != Some(&b'"') {
            // Includes `{}` and a trailing comma; serde_json says which.
            return None;
        }
        let key_end = string_end(b, i + 1)?;
        if key_end.escaped {
            // `"ho\u0073t"` is `host` to serde_json; leave such keys to it.
            return None;
        }
        let key = &b[i + 1..key_end.quote];
        i = skip_ws(b, key_end.quote + 1);
        if b.get(i) != Some(&b':') {
            return None;
        }
        i = skip_ws(b, i + 1);
        // The record format's names (guards, since a `&str` constant is no byte pattern).
        i = match key {
            k if k == field::HOST.as_bytes() => set_once(&mut host, plain_string(b, i)?)?,
            k if k == field::STREAM.as_bytes() => set_once(&mut stream, plain_string(b, i)?)?,
            k if k == field::PART.as_bytes() => {
                let (s, next) = plain_string(b, i)?;
                set_once(&mut part, (Part::parse(s)?, next))?
            }
            k if k == field::OFFSET.as_bytes() => set_once(&mut offset, plain_u64(b, i)?)?,
            _ => skip_value(b, i)?,
        };
        i = skip_ws(b, i);
        match b.get(i) {
            Some(b',') => i += 1,
            Some(b'}') => break,
            _ => return None,
        }
    }
    if skip_ws(b, i + 1) != b.len() {
        return None;
    }
    Some(WireRecord {
        host: Cow::Borrowed(host?),
        stream: Cow::Borrowed(stream?),
        offset: offset?,
        part: part?,
    })
}

/// Stores a field's value, refusing a second one (serde's "duplicate
/// field" error); returns where the value ended.
fn set_once<T>(slot: &mut Option<T>, (value, next): (T, usize)) -> Option<usize> {
    if slot.is_some() {
        return None;
    }
    *slot = Some(value);
    Some(next)
}

/// Skips JSON whitespace, exactly serde_json's set (a form feed is not one).
fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while let Some(b' ' | b'\t' | b'\r' | b'\n') = b.get(i) {
        i += 1;
    }
    i
}

/// A string value without escapes at `i` (its opening quote), borrowed
/// from the line, and the index after its closing quote.
fn plain_string(b: &[u8], i: usize) -> Option<(&str, usize)> {
    if b.get(i) != Some(&b'"') {
        return None;
    }
    let end = find_special(b, i + 1)?.at;
    if b[end] != b'"' {
        return None;
    }
    Some((std::str::from_utf8(&b[i + 1..end]).ok()?, end + 1))
}

/// A `u64` exactly as serde_json accepts one: `0` or digits without a
/// leading zero, no sign, fraction or exponent, and no overflow (serde_json
/// turns those into floats, which a `u64` refuses).
fn plain_u64(b: &[u8], mut i: usize) -> Option<(u64, usize)> {
    let first = *b.get(i)?;
    if !first.is_ascii_digit() {
        return None;
    }
    let mut n = u64::from(first - b'0');
    i += 1;
    while let Some(d) = b.get(i).filter(|d| d.is_ascii_digit()) {
        if first == b'0' {
            return None;
        }
        n = n.checked_mul(10)?.checked_add(u64::from(d - b'0'))?;
        i += 1;
    }
    // A fraction or exponent that follows is refused by the caller's check
    // for `,` or `}`.
    Some((n, i))
}

/// Where a skipped string ended: the index of its closing quote, and
/// whether it held an escape.
struct StringEnd {
    quote: usize,
    escaped: bool,
}

/// Checks a string whose contents start at `i` as serde_json does for a
/// value it skips (no raw control bytes, escapes only `\" \\ \/ \b \f \n
/// \r \t \uXXXX`), and that it is UTF-8.
fn string_end(b: &[u8], start: usize) -> Option<StringEnd> {
    let (mut i, mut escaped, mut non_ascii) = (start, false, false);
    loop {
        let run = find_special(b, i)?;
        (i, non_ascii) = (run.at, non_ascii | run.non_ascii);
        match b[i] {
            b'"' => {
                if non_ascii {
                    std::str::from_utf8(&b[start..i]).ok()?;
                }
                return Some(StringEnd { quote: i, escaped });
            }
            b'\\' => {
                escaped = true;
                i += match *b.get(i + 1)? {
                    b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => 2,
                    b'u' if b.get(i + 2..i + 6)?.iter().all(u8::is_ascii_hexdigit) => 6,
                    _ => return None,
                };
            }
            _ => return None,
        }
    }
}

/// How deep the values the collector skips may nest and still be read
/// here: a record's `fields` holds an object or two (a syslog message's
/// `structured_data`), so 64 levels leave room, and the open levels fit one
/// `u64`. Deeper values go to serde_json, which skips values of any depth.
const MAX_DEPTH: u32 = 64;

/// Skips any value at `i`, nested or not, as serde_json checks one it
/// ignores (its `ignore_value`: no trailing commas, keys are strings, no
/// limit on repeated keys); returns the index after it.
///
/// Records with `fields` carry a nested object on every line: without this
/// they all left the fast path for serde_json.
fn skip_value(b: &[u8], mut i: usize) -> Option<usize> {
    // The open levels, innermost in the lowest bit: 1 an object, 0 an array.
    let (mut open, mut depth) = (0u64, 0u32);
    loop {
        // A value starts at `i`.
        i = skip_ws(b, i);
        let c = *b.get(i)?;
        if c == b'{' || c == b'[' {
            if depth == MAX_DEPTH {
                return None;
            }
            let object = c == b'{';
            i = skip_ws(b, i + 1);
            if b.get(i) == Some(if object { &b'}' } else { &b']' }) {
                i += 1;
            } else {
                (open, depth) = (open << 1 | u64::from(object), depth + 1);
                if object {
                    i = skip_key(b, i)?;
                }
                continue;
            }
        } else {
            i = skip_flat_value(b, i)?;
        }
        // A value ended at `i`: close levels until one goes on.
        loop {
            if depth == 0 {
                return Some(i);
            }
            i = skip_ws(b, i);
            let object = open & 1 == 1;
            match *b.get(i)? {
                b',' => {
                    i += 1;
                    if object {
                        i = skip_key(b, skip_ws(b, i))?;
                    }
                    break;
                }
                b'}' if object => {}
                b']' if !object => {}
                _ => return None,
            }
            i += 1;
            (open, depth) = (open >> 1, depth - 1);
        }
    }
}

/// Skips `"key":` at `i` (its opening quote) in an object being skipped;
/// returns the index after the colon.
fn skip_key(b: &[u8], i: usize) -> Option<usize> {
    if b.get(i) != Some(&b'"') {
        return None;
    }
    let i = skip_ws(b, string_end(b, i + 1)?.quote + 1);
    (b.get(i) == Some(&b':')).then_some(i + 1)
}

/// Skips a value that is not nested: a string, a number, `true`, `false`
/// or `null`; returns the index after it.
fn skip_flat_value(b: &[u8], i: usize) -> Option<usize> {
    match *b.get(i)? {
        b'"' => Some(string_end(b, i + 1)?.quote + 1),
        b'-' | b'0'..=b'9' => skip_number(b, i),
        b't' => literal(b, i, b"true"),
        b'f' => literal(b, i, b"false"),
        b'n' => literal(b, i, b"null"),
        _ => None,
    }
}

fn literal(b: &[u8], i: usize, word: &[u8]) -> Option<usize> {
    b[i..].starts_with(word).then_some(i + word.len())
}

/// Skips a JSON number (`-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`),
/// the grammar serde_json checks even for numbers it skips.
fn skip_number(b: &[u8], mut i: usize) -> Option<usize> {
    let digits = |i: usize| i + b[i..].iter().take_while(|d| d.is_ascii_digit()).count();
    if b[i] == b'-' {
        i += 1;
    }
    match *b.get(i)? {
        b'0' => i += 1,
        b'1'..=b'9' => i = digits(i),
        _ => return None,
    }
    if b.get(i) == Some(&b'.') {
        let end = digits(i + 1);
        if end == i + 1 {
            return None;
        }
        i = end;
    }
    if let Some(b'e' | b'E') = b.get(i) {
        i += 1;
        if let Some(b'+' | b'-') = b.get(i) {
            i += 1;
        }
        let end = digits(i);
        if end == i {
            return None;
        }
        i = end;
    }
    // A digit right after a leading `0` is serde_json's "invalid number";
    // the caller's check for `,` or `}` refuses it.
    Some(i)
}

/// The first `"`, `\\` or control byte at or after `i`, and whether the
/// bytes before it may be non-ASCII; `None` when the line has none (an
/// unterminated string).
fn find_special(b: &[u8], i: usize) -> Option<Run> {
    let run = plain_run(b, i);
    (run.at < b.len()).then_some(run)
}

#[cfg(test)]
mod tests;
