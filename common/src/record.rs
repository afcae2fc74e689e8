//! The record wire format: one JSON object per line, written by the agent (file sink, collector
//! sink) and read by the collector.
//!
//! `{"host":…,"source":…,"stream":…,"fingerprint":…,"path":…,"offset":…,"len":…,"part":…,"ts":…,"msg":…}`
//! with `msg_b64` (standard base64) in place of `msg` when the bytes are not UTF-8, and `fields`
//! (an object) where an input parsed the message into named values. Written by hand rather than
//! through serde: this is the agent's hot path (millions of records a second).

use base64::Engine;
use serde::{Deserialize, Serialize};

/// The names of a record's fields, in the order the agent writes them.
pub mod field {
    /// The host id (the certificate's host at the collector).
    pub const HOST: &str = "host";
    /// The configured source name.
    pub const SOURCE: &str = "source";
    /// The stream id: one stream is one file's life across rotations.
    pub const STREAM: &str = "stream";
    /// The stream's fingerprint (16 hex digits), where it has one.
    pub const FINGERPRINT: &str = "fingerprint";
    pub const PATH: &str = "path";
    /// Where this part's bytes start in the stream.
    pub const OFFSET: &str = "offset";
    /// The whole record's length.
    pub const LEN: &str = "len";
    /// [`super::Part`] as text.
    pub const PART: &str = "part";
    /// When the record was read, RFC 3339 UTC with milliseconds.
    pub const TS: &str = "ts";
    /// The bytes, when UTF-8.
    pub const MSG: &str = "msg";
    /// The bytes in standard base64, when not UTF-8.
    pub const MSG_B64: &str = "msg_b64";
    /// Named values an input or parser found in the message (syslog's facility, severity, …).
    pub const FIELDS: &str = "fields";
    /// Every field, in the agent's order.
    pub const ALL: [&str; 12] = [
        HOST,
        SOURCE,
        STREAM,
        FINGERPRINT,
        PATH,
        OFFSET,
        LEN,
        PART,
        TS,
        MSG,
        MSG_B64,
        FIELDS,
    ];
}

/// Which piece of the original record a record carries: an over-long record is cut into a head
/// and a tail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Part {
    Whole,
    Head,
    Tail,
}

impl Part {
    pub fn as_str(self) -> &'static str {
        match self {
            Part::Whole => "whole",
            Part::Head => "head",
            Part::Tail => "tail",
        }
    }

    /// The part a record's `part` text names; `None` for anything else (case matters).
    pub fn parse(text: &str) -> Option<Part> {
        match text {
            "whole" => Some(Part::Whole),
            "head" => Some(Part::Head),
            "tail" => Some(Part::Tail),
            _ => None,
        }
    }
}

/// Appends `s` as a JSON string body (without quotes). `s` must be valid UTF-8.
///
/// Log lines rarely need escaping, so runs of plain bytes are found many at a time
/// ([`crate::json_text`]) and copied whole; this loop was the agent's hottest spot when it went
/// byte by byte.
#[inline]
pub fn escape_into(out: &mut Vec<u8>, s: &[u8]) {
    let mut i = 0;
    loop {
        let run = crate::json_text::plain_run(s, i);
        out.extend_from_slice(&s[i..run.at]);
        let Some(&b) = s.get(run.at) else {
            return;
        };
        match b {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            _ => {
                out.extend_from_slice(b"\\u00");
                out.push(HEX[(b >> 4) as usize]);
                out.push(HEX[(b & 15) as usize]);
            }
        }
        i = run.at + 1;
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Appends `"key":"value"` for a message: `msg` when UTF-8 (`utf8`, as checked when the
/// record was framed), else `msg_b64`.
#[inline]
pub fn msg_field(out: &mut Vec<u8>, bytes: &[u8], utf8: bool) {
    if utf8 {
        out.extend_from_slice(b"\"msg\":\"");
        escape_into(out, bytes);
    } else {
        out.extend_from_slice(b"\"msg_b64\":\"");
        base64_into(out, bytes);
    }
    out.push(b'"');
}

/// Appends `bytes` in standard base64 (how both sinks carry a message that is not UTF-8).
#[inline]
pub fn base64_into(out: &mut Vec<u8>, bytes: &[u8]) {
    let start = out.len();
    let enc_len = base64::encoded_len(bytes.len(), true).unwrap_or(0);
    out.resize(start + enc_len, 0);
    let n = base64::engine::general_purpose::STANDARD
        .encode_slice(bytes, &mut out[start..])
        .unwrap_or(0);
    out.truncate(start + n);
}

/// RFC 3339 in UTC with milliseconds, from unix milliseconds.
pub fn rfc3339_ms(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let milli = ms.rem_euclid(1000);
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{milli:03}Z",
        sod / 3600,
        (sod / 60) % 60,
        sod % 60
    )
}

/// Howard Hinnant's days-to-civil algorithm (proleptic Gregorian).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// RFC 5424 facility keywords, by code (the value of `fields.facility` for a syslog record, and
/// what a syslog sink's `facility` option takes).
pub const FACILITIES: [&str; 24] = [
    "kern",
    "user",
    "mail",
    "daemon",
    "auth",
    "syslog",
    "lpr",
    "news",
    "uucp",
    "cron",
    "authpriv",
    "ftp",
    "ntp",
    "security",
    "console",
    "solaris-cron",
    "local0",
    "local1",
    "local2",
    "local3",
    "local4",
    "local5",
    "local6",
    "local7",
];
/// RFC 5424 severity keywords, by code (the value of `fields.severity`).
pub const SEVERITIES: [&str; 8] = [
    "emerg", "alert", "crit", "err", "warning", "notice", "info", "debug",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_like_serde_json() {
        for s in [
            "plain",
            "quote\" back\\ nl\n tab\t cr\r",
            "\u{1}\u{1f}\u{7f}é漢🙂",
            "",
        ] {
            let mut out = vec![b'"'];
            escape_into(&mut out, s.as_bytes());
            out.push(b'"');
            let back: String = serde_json::from_slice(&out).unwrap();
            assert_eq!(back, s);
        }
    }

    #[test]
    fn every_byte_value_at_every_alignment_round_trips() {
        let all: String = (0u8..128).map(char::from).chain("é漢🙂".chars()).collect();
        for skip in 0..9 {
            let s = &all.as_bytes()[skip..];
            let mut out = vec![b'"'];
            escape_into(&mut out, s);
            out.push(b'"');
            let back: String = serde_json::from_slice(&out).unwrap();
            assert_eq!(back.as_bytes(), s);
        }
    }

    #[test]
    fn non_utf8_goes_to_msg_b64() {
        let mut out = b"{".to_vec();
        msg_field(&mut out, b"\xff\x00ok", false);
        out.push(b'}');
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["msg_b64"], "/wBvaw==");
    }

    #[test]
    fn part_text_round_trips_and_matches_serde() {
        for p in [Part::Whole, Part::Head, Part::Tail] {
            assert_eq!(Part::parse(p.as_str()), Some(p));
            assert_eq!(
                serde_json::to_string(&p).unwrap(),
                format!("\"{}\"", p.as_str())
            );
            let back: Part = serde_json::from_str(&format!("\"{}\"", p.as_str())).unwrap();
            assert_eq!(back, p);
        }
        assert_eq!(Part::parse("Whole"), None);
    }

    #[test]
    fn rfc3339() {
        assert_eq!(rfc3339_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339_ms(1_795_707_470_123), "2026-11-26T15:37:50.123Z");
        assert_eq!(rfc3339_ms(951_782_400_000), "2000-02-29T00:00:00.000Z");
    }
}
