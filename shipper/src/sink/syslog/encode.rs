//! One RFC 5424 message per record, RFC 5425 octet-counted (`LEN SP MSG`), with the structured
//! data the operator chose (`[sink] structured_data`):
//!
//! - `full`: `<PRI>1 TIMESTAMP HOSTNAME APP-NAME - - [logsensor@32473 source=… stream=… path=…
//!   offset=… part=…] MSG`, plus `host=` when HOSTNAME had to be altered to fit RFC 5424, and
//!   `len=` (the original length) on `head` / `tail` parts of an over-long record.
//! - `minimal`: `[logsensor@32473 stream=… offset=…]`, what a receiver needs to de-duplicate
//!   re-sent records: (host, stream, offset) is unique, a tail part's offset being where its bytes
//!   start in the file, so `part` is not needed for that; it is kept (with `len=`) on the rare
//!   head and tail parts only, so a receiver can still tell a message was cut, and `host=` too
//!   when HOSTNAME had to be altered. `source` and `path` are left out: they are the stream's and
//!   cost ~60 bytes a message.
//! - `none`: no structured data (`-`), a plain syslog message like rsyslog's own imfile sends.
//!
//! With `full`, a record's `fields` (a syslog message's facility, hostname, peer …) follow as
//! `[fields@32473 …]` and the message's own SD elements as they arrived (`fields_sd`); minimal
//! and none leave them out, being the lean choices.
//!
//! In every choice a record that is not UTF-8 goes as its standard base64 with `enc="base64"`
//! (with `none`, that parameter alone), so no receiver mangles invalid UTF-8 and the bytes can be
//! recovered exactly: without the marker base64 could not be told from text. MSG carries no BOM
//! (receivers print it as junk). PROCID and MSGID are `-`: the agent has no per-record value for
//! them, and `-` is the shortest valid one.
//!
//! 32473 is the private enterprise number RFC 5612 reserves for documentation; the SD-ID names
//! this agent's parameters without claiming a registered number.
//!
//! The choice costs one predictable branch per record, never one per byte: every message is
//! assembled from its pieces (the per-stream part made once a batch), then copied once.

use crate::batch::{RecordRef, StreamMeta};
use crate::config::StructuredData;
use crate::frame::Part;

/// informational: log lines carry their own level in the text; the relay should not guess one.
const SEVERITY: u8 = 6;

/// Frames the records of one batch. Holds what repeats from record to record: the header and
/// SD up to `offset="` per stream (the last used is checked first: records of a stream come in
/// runs) and the last timestamp's text.
pub struct Encoder<'a> {
    sd: StructuredData,
    app_name: &'a str,
    /// `<PRI>1 `.
    pri: String,
    /// The batch's host as an RFC 5424 HOSTNAME.
    host: String,
    prefixes: Vec<(*const StreamMeta, Vec<u8>)>,
    last: usize,
    last_ts: i64,
    ts: String,
    num_offset: itoa::Buffer,
    num_len: itoa::Buffer,
    num_frame: itoa::Buffer,
    /// The SD elements of the record's `fields` (full only; see `fields_sd`).
    fields_sd: Vec<u8>,
}

impl<'a> Encoder<'a> {
    pub fn new(sd: StructuredData, facility: u8, host: &str, app_name: &'a str) -> Encoder<'a> {
        Encoder {
            sd,
            app_name,
            pri: format!("<{}>1 ", facility * 8 + SEVERITY),
            host: header_field(host, 255),
            prefixes: Vec::new(),
            last: usize::MAX,
            last_ts: i64::MIN,
            ts: String::new(),
            num_offset: itoa::Buffer::new(),
            num_len: itoa::Buffer::new(),
            num_frame: itoa::Buffer::new(),
            fields_sd: Vec::new(),
        }
    }

    /// Appends `rec`'s frame to `out`; `scratch` holds the base64 of a record that is not UTF-8.
    pub fn append(&mut self, out: &mut Vec<u8>, rec: &RecordRef<'_>, scratch: &mut Vec<u8>) {
        if rec.ts_ms != self.last_ts {
            self.last_ts = rec.ts_ms;
            self.ts = crate::record::rfc3339_ms(rec.ts_ms);
        }
        let key = rec.stream as *const StreamMeta;
        if self.prefixes.get(self.last).map(|p| p.0) != Some(key) {
            self.last = match self.prefixes.iter().position(|p| p.0 == key) {
                Some(i) => i,
                None => {
                    let prefix = self.stream_prefix(rec);
                    self.prefixes.push((key, prefix));
                    self.prefixes.len() - 1
                }
            };
        }
        let prefix = &self.prefixes[self.last].1;
        let body: &[u8] = if rec.utf8 {
            rec.bytes
        } else {
            scratch.clear();
            crate::record::base64_into(scratch, rec.bytes);
            scratch
        };
        let whole = rec.part == Part::Whole;
        self.fields_sd.clear();
        if let (StructuredData::Full, Some(f)) = (self.sd, rec.fields) {
            super::fields_sd::append(&mut self.fields_sd, f);
        }
        let pieces: [&[u8]; 9] = match self.sd {
            StructuredData::Full | StructuredData::Minimal => {
                // Full names every part; minimal only the parts of a record that was cut. A
                // whole record's length is its message's; head and tail parts carry the original.
                let named = self.sd == StructuredData::Full || !whole;
                let (len_key, len): (&[u8], &[u8]) = if whole {
                    (b"", b"")
                } else {
                    (b"\" len=\"", self.num_len.format(rec.len).as_bytes())
                };
                [
                    prefix,
                    self.num_offset.format(rec.offset).as_bytes(),
                    len_key,
                    len,
                    if named { b"\" part=\"" } else { b"" },
                    if named {
                        rec.part.as_str().as_bytes()
                    } else {
                        b""
                    },
                    if rec.utf8 {
                        b"\"]"
                    } else {
                        b"\" enc=\"base64\"]"
                    },
                    &self.fields_sd,
                    b" ",
                ]
            }
            StructuredData::None => [
                prefix,
                if rec.utf8 {
                    b"- "
                } else {
                    b"[logsensor@32473 enc=\"base64\"] "
                },
                b"",
                b"",
                b"",
                b"",
                b"",
                b"",
                b"",
            ],
        };
        let size = self.pri.len()
            + self.ts.len()
            + pieces.iter().map(|p| p.len()).sum::<usize>()
            + body.len();
        out.extend_from_slice(self.num_frame.format(size).as_bytes());
        out.push(b' ');
        out.extend_from_slice(self.pri.as_bytes());
        out.extend_from_slice(self.ts.as_bytes());
        for p in pieces {
            out.extend_from_slice(p);
        }
        out.extend_from_slice(body);
    }

    /// ` HOSTNAME APP-NAME - - ` and, with structured data, `[logsensor@32473 … offset="`.
    fn stream_prefix(&self, rec: &RecordRef<'_>) -> Vec<u8> {
        let mut p = Vec::with_capacity(200);
        p.push(b' ');
        p.extend_from_slice(self.host.as_bytes());
        p.push(b' ');
        p.extend_from_slice(self.app_name.as_bytes());
        p.extend_from_slice(b" - - ");
        if self.sd == StructuredData::None {
            return p;
        }
        p.extend_from_slice(b"[logsensor@32473");
        // HOSTNAME carries the host unless it had to be altered to fit the header. Minimal keeps
        // it too: stream ids are unique per host, so (host, stream, offset) is the key a
        // receiver de-duplicates on, and two altered ids could read alike.
        if self.host != rec.host {
            p.extend_from_slice(b" host=\"");
            sd_escape(&mut p, rec.host.as_bytes());
            p.push(b'"');
        }
        if self.sd == StructuredData::Full {
            p.extend_from_slice(b" source=\"");
            sd_escape(&mut p, rec.stream.source.as_bytes());
            p.push(b'"');
        }
        p.extend_from_slice(b" stream=\"");
        sd_escape(&mut p, rec.stream.id.as_bytes());
        if self.sd == StructuredData::Full {
            p.extend_from_slice(b"\" path=\"");
            sd_escape(&mut p, rec.stream.path.as_bytes());
        }
        p.extend_from_slice(b"\" offset=\"");
        p
    }
}

/// PRINTUSASCII only, at most `max` bytes, `-` when empty (RFC 5424 header fields).
fn header_field(s: &str, max: usize) -> String {
    let out: String = s
        .bytes()
        .take(max)
        .map(|b| {
            if (33..=126).contains(&b) {
                b as char
            } else {
                '_'
            }
        })
        .collect();
    if out.is_empty() {
        "-".into()
    } else {
        out
    }
}

/// An SD-PARAM value: `"`, `\` and `]` escaped with a backslash (RFC 5424 §6.3.3).
pub(super) fn sd_escape(out: &mut Vec<u8>, s: &[u8]) {
    for &b in s {
        if matches!(b, b'"' | b'\\' | b']') {
            out.push(b'\\');
        }
        out.push(b);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn meta() -> StreamMeta {
        StreamMeta {
            id: Arc::from("0123456789abcdef"),
            source: Arc::from("app"),
            fingerprint: None,
            path: Arc::from("/var/log/a]b.log"),
        }
    }

    /// 2026-11-26T15:37:50.123Z
    const TS: i64 = 1_795_707_470_123;

    fn rec<'a>(
        host: &'a str,
        stream: &'a StreamMeta,
        offset: u64,
        part: Part,
        bytes: &'a [u8],
    ) -> RecordRef<'a> {
        RecordRef {
            host,
            stream,
            offset,
            len: if part == Part::Whole {
                bytes.len() as u64
            } else {
                70_000
            },
            part,
            ts_ms: TS,
            bytes,
            utf8: std::str::from_utf8(bytes).is_ok(),
            fields: None,
        }
    }

    /// The frames of a whole record, the tail part of a cut one and a record that is not UTF-8.
    fn frames(sd: StructuredData, host: &str) -> Vec<String> {
        let m = meta();
        let mut enc = Encoder::new(sd, 19, host, "shipper");
        let mut scratch = Vec::new();
        [
            rec(host, &m, 42, Part::Whole, b"hello"),
            rec(host, &m, 7000, Part::Tail, b"end"),
            rec(host, &m, 9000, Part::Whole, b"\xff\xfe"),
        ]
        .iter()
        .map(|r| {
            let mut out = Vec::new();
            enc.append(&mut out, r, &mut scratch);
            String::from_utf8(out).unwrap()
        })
        .collect()
    }

    /// The length prefix counts the message's bytes exactly.
    fn check_lengths(frames: &[String]) {
        for f in frames {
            let (len, msg) = f.split_once(' ').unwrap();
            assert_eq!(len.parse::<usize>().unwrap(), msg.len(), "{f}");
        }
    }

    fn msg(frame: &str) -> &str {
        frame.split_once(' ').unwrap().1
    }

    #[test]
    fn full_carries_the_records_fields_and_the_lean_choices_do_not() {
        let m = meta();
        let fields = br#"{"severity":"info","structured_data":{"ex@1":{"k":"v"}}}"#;
        let mut r = rec("web-1", &m, 42, Part::Whole, b"hello");
        r.fields = Some(fields);
        let encode = |sd| {
            let mut out = Vec::new();
            Encoder::new(sd, 19, "web-1", "shipper").append(&mut out, &r, &mut Vec::new());
            String::from_utf8(out).unwrap()
        };
        let full = encode(StructuredData::Full);
        check_lengths(std::slice::from_ref(&full));
        assert!(
            full.ends_with(
                r#"offset="42" part="whole"][fields@32473 severity="info"][ex@1 k="v"] hello"#
            ),
            "{full}"
        );
        let minimal = encode(StructuredData::Minimal);
        assert!(minimal.ends_with(r#"offset="42"] hello"#), "{minimal}");
        assert!(encode(StructuredData::None).ends_with(" - - - hello"));
    }

    #[test]
    fn full_carries_every_parameter() {
        let f = frames(StructuredData::Full, "web-1");
        check_lengths(&f);
        let h = "<158>1 2026-11-26T15:37:50.123Z web-1 shipper - - [logsensor@32473 source=\"app\" stream=\"0123456789abcdef\" path=\"/var/log/a\\]b.log\"";
        assert_eq!(
            msg(&f[0]),
            format!("{h} offset=\"42\" part=\"whole\"] hello")
        );
        assert_eq!(
            msg(&f[1]),
            format!("{h} offset=\"7000\" len=\"70000\" part=\"tail\"] end")
        );
        assert_eq!(
            msg(&f[2]),
            format!("{h} offset=\"9000\" part=\"whole\" enc=\"base64\"] //4=")
        );
    }

    #[test]
    fn full_names_an_altered_host() {
        let f = frames(StructuredData::Full, "web 1");
        assert!(
            f[0].contains(" web_1 shipper - - [logsensor@32473 host=\"web 1\" source=\"app\""),
            "{}",
            f[0]
        );
    }

    #[test]
    fn minimal_carries_stream_and_offset_and_names_only_cut_parts() {
        let plain = frames(StructuredData::Minimal, "web-1");
        assert!(
            plain[0].ends_with(" web-1 shipper - - [logsensor@32473 stream=\"0123456789abcdef\" offset=\"42\"] hello"),
            "{}",
            plain[0]
        );
        let f = frames(StructuredData::Minimal, "web 1");
        check_lengths(&f);
        let h = "<158>1 2026-11-26T15:37:50.123Z web_1 shipper - - [logsensor@32473 host=\"web 1\" stream=\"0123456789abcdef\"";
        assert_eq!(msg(&f[0]), format!("{h} offset=\"42\"] hello"));
        assert_eq!(
            msg(&f[1]),
            format!("{h} offset=\"7000\" len=\"70000\" part=\"tail\"] end")
        );
        assert_eq!(
            msg(&f[2]),
            format!("{h} offset=\"9000\" enc=\"base64\"] //4=")
        );
    }

    #[test]
    fn none_sends_no_structured_data_but_marks_base64() {
        let f = frames(StructuredData::None, "web-1");
        check_lengths(&f);
        let h = "<158>1 2026-11-26T15:37:50.123Z web-1 shipper - -";
        assert_eq!(msg(&f[0]), format!("{h} - hello"));
        assert_eq!(msg(&f[1]), format!("{h} - end"));
        assert_eq!(
            msg(&f[2]),
            format!("{h} [logsensor@32473 enc=\"base64\"] //4=")
        );
    }

    #[test]
    fn sd_values_escape_quote_backslash_bracket() {
        let mut out = Vec::new();
        sd_escape(&mut out, br#"a"b\c]d"#);
        assert_eq!(out, br#"a\"b\\c\]d"#);
    }

    #[test]
    fn header_fields_are_printable_ascii() {
        assert_eq!(header_field("web 01", 255), "web_01");
        assert_eq!(header_field("", 255), "-");
        assert_eq!(header_field("été", 255).len(), 5);
    }
}
