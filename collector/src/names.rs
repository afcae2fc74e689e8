//! File names and NATS subject tokens for host and stream ids.
//!
//! Host ids come from certificates we issued and stream ids come straight
//! from the wire, so neither may ever pick a path: every byte outside
//! `[A-Za-z0-9._-]` is percent-encoded, and a leading `.` is encoded too, so
//! the result is never `.`, `..`, a hidden file or anything with a `/`.
//! The encoding is injective (`%` itself is encoded), so two ids never share
//! a file.

/// Longest host or stream id accepted; three bytes per input byte at worst
/// keeps an encoded name (plus `.ndjson`) under the usual 255-byte limit.
pub const MAX_ID_LEN: usize = 80;

/// Encodes one id into a single, safe path component.
///
/// Callers must reject empty ids and ids longer than [`MAX_ID_LEN`] first;
/// see [`check_id`].
pub fn encode_component(id: &str) -> String {
    let mut out = String::with_capacity(id.len());
    for (i, b) in id.bytes().enumerate() {
        let plain = b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || (b == b'.' && i > 0);
        if plain {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Encodes one id into a single NATS subject token.
///
/// Ids may hold `.` (the token separator), `*` and `>` (wildcards), spaces
/// or anything else a certificate or an agent allows, so only
/// `[A-Za-z0-9-]` passes through and every other byte becomes `_XX` (upper
/// hex); `_` itself is encoded, so the encoding is injective and two ids
/// never share a subject. Callers reject empty ids first ([`check_id`]).
pub fn encode_subject_token(id: &str) -> String {
    let mut out = String::with_capacity(id.len());
    for b in id.bytes() {
        if b.is_ascii_alphanumeric() || b == b'-' {
            out.push(b as char);
        } else {
            out.push_str(&format!("_{b:02X}"));
        }
    }
    out
}

/// The id a token of [`encode_subject_token`] came from; None for a token
/// that encoding cannot produce.
pub fn decode_subject_token(token: &str) -> Option<String> {
    let mut out = Vec::with_capacity(token.len());
    let mut bytes = token.bytes();
    while let Some(b) = bytes.next() {
        if b == b'_' {
            let hex = [bytes.next()?, bytes.next()?];
            let hex = std::str::from_utf8(&hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
        } else if b.is_ascii_alphanumeric() || b == b'-' {
            out.push(b);
        } else {
            return None;
        }
    }
    String::from_utf8(out).ok()
}

/// Why an id cannot name a file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("is empty")]
    Empty,
    #[error("is {len} bytes long, more than {MAX_ID_LEN}")]
    TooLong { len: usize },
}

/// Checks that an id can be encoded into a file name of bounded length.
pub fn check_id(id: &str) -> Result<(), IdError> {
    match id.len() {
        0 => Err(IdError::Empty),
        len if len > MAX_ID_LEN => Err(IdError::TooLong { len }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subject_tokens_hold_no_separator_or_wildcard_and_never_collide() {
        for id in [
            "a.b", "*", ">", "a b", "a_2Eb", "a_b", "é", "x\ty", "..", "$JS",
        ] {
            let t = encode_subject_token(id);
            assert!(!t.is_empty(), "{id:?}");
            assert!(
                t.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
                "{id:?} -> {t}"
            );
        }
        assert_eq!(encode_subject_token("web-1.example"), "web-1_2Eexample");
        // `_` is encoded, so an id that looks like an encoding is not one.
        assert_ne!(encode_subject_token("a.b"), encode_subject_token("a_2Eb"));
        assert_eq!(encode_subject_token("a_2Eb"), "a_5F2Eb");
        for id in ["a.b", "*>", "é x", "_", "0a1b"] {
            assert_eq!(
                decode_subject_token(&encode_subject_token(id)).as_deref(),
                Some(id)
            );
        }
        assert_eq!(decode_subject_token("a.b"), None);
        assert_eq!(decode_subject_token("a_2"), None);
    }

    fn assert_safe(name: &str) {
        assert!(!name.is_empty());
        assert_ne!(name, ".");
        assert_ne!(name, "..");
        assert!(!name.starts_with('.'), "{name}");
        assert!(!name.contains('/'), "{name}");
        assert!(!name.contains('\0'), "{name}");
        assert!(name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-%".contains(&b)));
    }

    #[test]
    fn traversal_ids_stay_one_component() {
        for id in [
            "..",
            ".",
            "../../etc",
            "a/b",
            "/etc/passwd",
            ".hidden",
            "..%2F",
            "\0",
            "é",
        ] {
            let name = encode_component(id);
            assert_safe(&name);
        }
        assert_eq!(encode_component("../../etc"), "%2E.%2F..%2Fetc");
        assert_eq!(encode_component(".."), "%2E.");
    }

    #[test]
    fn ordinary_ids_are_readable() {
        assert_eq!(encode_component("web-01.example.com"), "web-01.example.com");
        assert_eq!(encode_component("0123456789abcdef"), "0123456789abcdef");
    }

    #[test]
    fn encoding_is_injective_for_tricky_pairs() {
        let ids = ["a%2Fb", "a/b", "%2E", ".", "a.b", "a%2Eb", "A", "a"];
        let names: std::collections::HashSet<_> = ids.iter().map(|i| encode_component(i)).collect();
        assert_eq!(names.len(), ids.len());
    }

    #[test]
    fn length_is_bounded() {
        assert_eq!(check_id(""), Err(IdError::Empty));
        let long = "/".repeat(MAX_ID_LEN);
        assert!(check_id(&long).is_ok());
        assert!(encode_component(&long).len() + ".ndjson".len() <= 255);
        assert_eq!(
            check_id(&"x".repeat(MAX_ID_LEN + 1)),
            Err(IdError::TooLong {
                len: MAX_ID_LEN + 1
            })
        );
    }
}
