//! One syslog frame → [`Fields`] and the MSG part: RFC 5424 first, then RFC 3164 (BSD) with its
//! common variants (no PRI, no hostname, no PID, an RFC 3339 stamp in place of the BSD one). A
//! frame that is neither keeps every byte in MSG; `fields` then hold only what is known (the
//! PRI's facility and severity if it had one).
//!
//! Followed: RFC 5424 §6 (the ABNF, NILVALUE `-`, SD escapes `\"` `\\` `\]`, the optional BOM
//! before MSG) and rsyslog's `pmrfc3164` for what BSD senders really send (a tag ends at `[`,
//! `:` or a space; a first word that is a tag means there was no hostname; an RFC 3339 stamp,
//! as rsyslog's RSYSLOG_FileFormat and RSYSLOG_ForwardFormat write, may stand for `Mmm dd …`).

use std::collections::BTreeMap;

/// What a frame says about itself; `None` where the sender did not say (or sent `-`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Fields {
    pub facility: Option<&'static str>,
    pub severity: Option<&'static str>,
    /// As sent: RFC 3339 for 5424, `Mmm dd hh:mm:ss` or RFC 3339 for 3164. Not reinterpreted,
    /// because a BSD stamp has no year or zone and guessing them would invent data.
    pub timestamp: Option<String>,
    pub hostname: Option<String>,
    pub app_name: Option<String>,
    pub procid: Option<String>,
    pub msgid: Option<String>,
    /// `{"id": {"param": "value"}}`; a repeated param keeps its last value.
    pub structured_data: Option<BTreeMap<String, BTreeMap<String, String>>>,
}

/// A parsed frame: its fields and where MSG lies in the frame's bytes.
#[derive(Debug, PartialEq, Eq)]
pub struct Parsed {
    pub fields: Fields,
    pub msg: std::ops::Range<usize>,
}

use log_sensor_common::record::{FACILITIES, SEVERITIES};

const MONTHS: [&[u8; 3]; 12] = [
    b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov", b"Dec",
];

/// Parses one frame. Never fails: what cannot be read as a header stays in MSG.
pub fn parse(frame: &[u8]) -> Parsed {
    let mut fields = Fields::default();
    let after_pri = match pri(frame) {
        Some((value, end)) => {
            fields.facility = Some(FACILITIES[(value >> 3) as usize]);
            fields.severity = Some(SEVERITIES[(value & 7) as usize]);
            end
        }
        None => 0,
    };
    if after_pri > 0 {
        if let Some(p) = rfc5424(frame, after_pri, &fields) {
            return p;
        }
    }
    if let Some(p) = rfc3164(frame, after_pri, &fields) {
        return p;
    }
    Parsed {
        fields,
        msg: after_pri..frame.len(),
    }
}

/// `<N>` with 1 to 3 digits, no leading zero, N ≤ 191 → (N, index after `>`).
fn pri(b: &[u8]) -> Option<(u8, usize)> {
    if b.first() != Some(&b'<') {
        return None;
    }
    let digits = b[1..]
        .iter()
        .take(4)
        .take_while(|c| c.is_ascii_digit())
        .count();
    if digits == 0 || digits > 3 || b.get(1 + digits) != Some(&b'>') {
        return None;
    }
    if digits > 1 && b[1] == b'0' {
        return None;
    }
    let v: u32 = std::str::from_utf8(&b[1..1 + digits]).ok()?.parse().ok()?;
    (v <= 191).then_some((v as u8, 2 + digits))
}

/// The text up to the next space (or the end), and the index after that space.
fn token(b: &[u8], at: usize) -> Option<(&[u8], usize)> {
    let rest = b.get(at..)?;
    let len = rest.iter().position(|&c| c == b' ').unwrap_or(rest.len());
    let next = (at + len + 1).min(b.len());
    Some((&rest[..len], next))
}

fn text(t: &[u8]) -> String {
    String::from_utf8_lossy(t).into_owned()
}

/// A 5424 header field: `-` is "not given"; the field must be printable ASCII.
fn header_field(t: &[u8], max: usize) -> Option<Option<String>> {
    if t.is_empty() || t.len() > max || !t.iter().all(|c| (33..=126).contains(c)) {
        return None;
    }
    Some((t != b"-").then(|| text(t)))
}

fn rfc5424(b: &[u8], at: usize, base: &Fields) -> Option<Parsed> {
    // VERSION: "1" (a nonzero number, at most 3 digits), then a space.
    let (version, at) = token(b, at)?;
    if version.is_empty()
        || version.len() > 3
        || version[0] == b'0'
        || !version.iter().all(u8::is_ascii_digit)
        || b.get(at - 1) != Some(&b' ')
    {
        return None;
    }
    let mut f = base.clone();
    let (ts, at) = token(b, at)?;
    f.timestamp = header_field(ts, 64)?;
    if let Some(t) = &f.timestamp {
        // Cheap sanity: a full-date starts YYYY-MM-DD; a 3164 stamp after a version-like
        // number would otherwise be taken for 5424.
        let t = t.as_bytes();
        if t.len() < 10 || t[4] != b'-' || t[7] != b'-' || !t[..4].iter().all(u8::is_ascii_digit) {
            return None;
        }
    }
    let (host, at) = token(b, at)?;
    f.hostname = header_field(host, 255)?;
    let (app, at) = token(b, at)?;
    f.app_name = header_field(app, 48)?;
    let (proc_, at) = token(b, at)?;
    f.procid = header_field(proc_, 128)?;
    let (msgid, at) = token(b, at)?;
    f.msgid = header_field(msgid, 32)?;
    if at > b.len() || b.get(at - 1) != Some(&b' ') {
        return None;
    }
    let (sd, mut at) = structured_data(b, at)?;
    f.structured_data = sd;
    match b.get(at) {
        None => {}
        Some(b' ') => at += 1,
        Some(_) => return None,
    }
    if b[at..].starts_with(b"\xEF\xBB\xBF") {
        at += 3;
    }
    Some(Parsed {
        fields: f,
        msg: at..b.len(),
    })
}

type Sd = BTreeMap<String, BTreeMap<String, String>>;

/// STRUCTURED-DATA at `at`: `-` or one or more `[id param="value" …]` → (elements, index after).
fn structured_data(b: &[u8], mut at: usize) -> Option<(Option<Sd>, usize)> {
    match b.get(at) {
        Some(b'-') => return Some((None, at + 1)),
        Some(b'[') => {}
        _ => return None,
    }
    let mut sd = Sd::new();
    while b.get(at) == Some(&b'[') {
        at += 1;
        let id = sd_name(b, &mut at)?;
        let params = sd.entry(text(id)).or_default();
        loop {
            match b.get(at)? {
                b']' => {
                    at += 1;
                    break;
                }
                b' ' => at += 1,
                _ => return None,
            }
            let name = sd_name(b, &mut at)?;
            if b.get(at) != Some(&b'=') || b.get(at + 1) != Some(&b'"') {
                return None;
            }
            at += 2;
            let mut value = Vec::new();
            loop {
                match *b.get(at)? {
                    b'"' => {
                        at += 1;
                        break;
                    }
                    // Only `"`, `\` and `]` are escaped; any other backslash is kept as sent.
                    b'\\' if matches!(b.get(at + 1), Some(b'"' | b'\\' | b']')) => {
                        value.push(b[at + 1]);
                        at += 2;
                    }
                    c => {
                        value.push(c);
                        at += 1;
                    }
                }
            }
            params.insert(text(name), text(&value));
        }
    }
    Some((Some(sd), at))
}

/// SD-NAME: 1 to 32 printable ASCII except `=`, space, `]` and `"`.
fn sd_name<'a>(b: &'a [u8], at: &mut usize) -> Option<&'a [u8]> {
    let start = *at;
    while let Some(&c) = b.get(*at) {
        if !(33..=126).contains(&c) || matches!(c, b'=' | b']' | b'"') {
            break;
        }
        *at += 1;
    }
    let name = &b[start..*at];
    (!name.is_empty() && name.len() <= 32).then_some(name)
}

/// `Mmm dd hh:mm:ss` (day space-padded or zero-padded) at `at` → index after it.
fn bsd_timestamp(b: &[u8], at: usize) -> Option<usize> {
    let t = b.get(at..at + 15)?;
    let month_ok = MONTHS.iter().any(|m| &t[..3] == *m);
    let day_ok = t[3] == b' '
        && (t[4] == b' ' || t[4].is_ascii_digit())
        && t[5].is_ascii_digit()
        && t[6] == b' ';
    let time_ok = t[7..9].iter().all(u8::is_ascii_digit)
        && t[9] == b':'
        && t[10..12].iter().all(u8::is_ascii_digit)
        && t[12] == b':'
        && t[13..15].iter().all(u8::is_ascii_digit);
    (month_ok && day_ok && time_ok).then_some(at + 15)
}

/// An RFC 3339 date-time at `at` in place of a BSD stamp, as rsyslog's `pmrfc3164` accepts it:
/// `YYYY-MM-DDTHH:MM:SS`, optionally `.` and 1 to 9 digits, then `Z` or `±HH:MM`, then a space
/// or the end → index after the stamp. Field ranges are checked too, so that a message that
/// merely starts with a date-like word is not taken for a header.
fn rfc3339_timestamp(b: &[u8], at: usize) -> Option<usize> {
    let t = b.get(at..)?;
    let num = |i: usize, n: usize| -> Option<u32> {
        let d = t.get(i..i + n)?;
        d.iter()
            .all(u8::is_ascii_digit)
            .then(|| d.iter().fold(0, |v, &c| v * 10 + u32::from(c - b'0')))
    };
    let sep = |i: usize, c: u8| t.get(i) == Some(&c);
    num(0, 4)?;
    let (month, day) = (num(5, 2)?, num(8, 2)?);
    let (hour, minute, second) = (num(11, 2)?, num(14, 2)?, num(17, 2)?);
    if !(sep(4, b'-') && sep(7, b'-') && sep(10, b'T') && sep(13, b':') && sep(16, b':'))
        || !(1..=12).contains(&month)
        || !(1..=31).contains(&day)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    let mut i = 19;
    if sep(i, b'.') {
        let digits = t[i + 1..]
            .iter()
            .take(10)
            .take_while(|c| c.is_ascii_digit())
            .count();
        if !(1..=9).contains(&digits) {
            return None;
        }
        i += 1 + digits;
    }
    match t.get(i)? {
        b'Z' => i += 1,
        b'+' | b'-' => {
            let (off_hour, off_minute) = (num(i + 1, 2)?, num(i + 4, 2)?);
            if !sep(i + 3, b':') || off_hour > 23 || off_minute > 59 {
                return None;
            }
            i += 6;
        }
        _ => return None,
    }
    matches!(t.get(i), None | Some(b' ')).then_some(at + i)
}

/// A BSD tag at `at`: `name[pid]:`, `name[pid]`, or `name:` → (name, pid, index after the tag
/// and one following space). A word that is none of those is not a tag.
fn bsd_tag(b: &[u8], at: usize) -> Option<(&[u8], Option<&[u8]>, usize)> {
    let rest = b.get(at..)?;
    let name_len = rest
        .iter()
        .take(49)
        .position(|&c| matches!(c, b'[' | b':' | b' '))?;
    if name_len == 0 || !rest[..name_len].iter().all(|c| (33..=126).contains(c)) {
        return None;
    }
    let name = &rest[..name_len];
    let mut i = name_len;
    let mut pid = None;
    if rest[i] == b'[' {
        let close = rest[i + 1..].iter().take(129).position(|&c| c == b']')?;
        pid = Some(&rest[i + 1..i + 1 + close]);
        i += close + 2;
        if rest.get(i) == Some(&b':') {
            i += 1;
        }
    } else if rest[i] == b':' {
        i += 1;
    } else {
        return None;
    }
    if rest.get(i) == Some(&b' ') {
        i += 1;
    }
    Some((name, pid, at + i))
}

fn rfc3164(b: &[u8], at: usize, base: &Fields) -> Option<Parsed> {
    let mut f = base.clone();
    let mut at = at;
    if let Some(end) = bsd_timestamp(b, at).or_else(|| rfc3339_timestamp(b, at)) {
        f.timestamp = Some(text(&b[at..end]));
        at = end;
        if b.get(at) == Some(&b' ') {
            at += 1;
        }
    } else if at == 0 {
        // No PRI and no timestamp: nothing says this is syslog at all.
        return None;
    }
    let tag_at = match bsd_tag(b, at) {
        Some(_) => at,
        None if f.timestamp.is_some() => {
            // A first word that is not a tag is the hostname.
            let (host, next) = token(b, at)?;
            if host.is_empty() || !host.iter().all(|c| (33..=126).contains(c)) {
                return None;
            }
            f.hostname = Some(text(host));
            next
        }
        None => {
            // `<PRI>` then free text: the PRI is all there is.
            return Some(Parsed {
                fields: f,
                msg: at..b.len(),
            });
        }
    };
    let msg_at = match bsd_tag(b, tag_at) {
        Some((name, pid, next)) => {
            f.app_name = Some(text(name));
            f.procid = pid.map(text);
            next
        }
        None => tag_at,
    };
    Some(Parsed {
        fields: f,
        msg: msg_at.min(b.len())..b.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn msg<'a>(frame: &'a [u8], p: &Parsed) -> &'a [u8] {
        &frame[p.msg.clone()]
    }

    #[test]
    fn rfc5424_with_structured_data_escapes_and_bom() {
        let f = b"<165>1 2003-10-11T22:14:15.003Z mymachine.example.com evntslog - ID47 [exampleSDID@32473 iut=\"3\" eventSource=\"Appl\\\"ic\\]ation\\\\\" x=\"a\\b\"][b@1 k=\"\"] \xEF\xBB\xBFAn application event";
        let p = parse(f);
        assert_eq!(p.fields.facility, Some("local4"));
        assert_eq!(p.fields.severity, Some("notice"));
        assert_eq!(
            p.fields.timestamp.as_deref(),
            Some("2003-10-11T22:14:15.003Z")
        );
        assert_eq!(p.fields.hostname.as_deref(), Some("mymachine.example.com"));
        assert_eq!(p.fields.app_name.as_deref(), Some("evntslog"));
        assert_eq!(p.fields.procid, None);
        assert_eq!(p.fields.msgid.as_deref(), Some("ID47"));
        let sd = p.fields.structured_data.as_ref().unwrap();
        assert_eq!(sd["exampleSDID@32473"]["iut"], "3");
        assert_eq!(sd["exampleSDID@32473"]["eventSource"], "Appl\"ic]ation\\");
        assert_eq!(sd["exampleSDID@32473"]["x"], "a\\b");
        assert_eq!(sd["b@1"]["k"], "");
        assert_eq!(msg(f, &p), b"An application event");
    }

    #[test]
    fn rfc5424_all_nil_and_no_msg() {
        let f = b"<14>1 - - - - - -";
        let p = parse(f);
        assert_eq!(p.fields.facility, Some("user"));
        assert_eq!(p.fields.severity, Some("info"));
        assert_eq!(p.fields.timestamp, None);
        assert_eq!(p.fields.structured_data, None);
        assert_eq!(msg(f, &p), b"");
    }

    #[test]
    fn logger_rfc5424_output() {
        // util-linux `logger --rfc5424 -n … -P …` sends this shape.
        let f = b"<13>1 2026-12-02T02:00:00.123456+00:00 host1 root 4242 - [timeQuality tzKnown=\"1\" isSynced=\"0\"] hello there";
        let p = parse(f);
        assert_eq!(p.fields.procid.as_deref(), Some("4242"));
        assert_eq!(p.fields.app_name.as_deref(), Some("root"));
        assert_eq!(
            p.fields.structured_data.as_ref().unwrap()["timeQuality"]["tzKnown"],
            "1"
        );
        assert_eq!(msg(f, &p), b"hello there");
    }

    #[test]
    fn rfc3164_with_host_and_pid() {
        let f = b"<34>Oct 11 22:14:15 mymachine su[230]: 'su root' failed";
        let p = parse(f);
        assert_eq!(p.fields.facility, Some("auth"));
        assert_eq!(p.fields.severity, Some("crit"));
        assert_eq!(p.fields.timestamp.as_deref(), Some("Oct 11 22:14:15"));
        assert_eq!(p.fields.hostname.as_deref(), Some("mymachine"));
        assert_eq!(p.fields.app_name.as_deref(), Some("su"));
        assert_eq!(p.fields.procid.as_deref(), Some("230"));
        assert_eq!(msg(f, &p), b"'su root' failed");
    }

    #[test]
    fn rfc3164_variants_without_host_pid_or_pri() {
        let f = b"<13>Dec  2 02:00:00 cron: job done";
        let p = parse(f);
        assert_eq!(p.fields.hostname, None);
        assert_eq!(p.fields.app_name.as_deref(), Some("cron"));
        assert_eq!(p.fields.procid, None);
        assert_eq!(msg(f, &p), b"job done");

        let f = b"<13>Dec  2 02:00:00 web1 nginx: up";
        let p = parse(f);
        assert_eq!(p.fields.hostname.as_deref(), Some("web1"));
        assert_eq!(p.fields.app_name.as_deref(), Some("nginx"));
        assert_eq!(msg(f, &p), b"up");

        let f = b"Dec 12 02:00:00 web1 sshd[7]: accepted";
        let p = parse(f);
        assert_eq!(p.fields.facility, None);
        assert_eq!(p.fields.hostname.as_deref(), Some("web1"));
        assert_eq!(p.fields.procid.as_deref(), Some("7"));
        assert_eq!(msg(f, &p), b"accepted");

        // No timestamp, but a PRI and a tag.
        let f = b"<13>app[9]: short";
        let p = parse(f);
        assert_eq!(p.fields.app_name.as_deref(), Some("app"));
        assert_eq!(msg(f, &p), b"short");
    }

    #[test]
    fn rfc3164_with_rfc3339_stamp_rsyslog_forward_format() {
        // rsyslog's RSYSLOG_ForwardFormat.
        let f = b"<13>2026-12-03T10:00:00.123+01:00 host app[5]: forwardformat";
        let p = parse(f);
        assert_eq!(p.fields.facility, Some("user"));
        assert_eq!(p.fields.severity, Some("notice"));
        assert_eq!(
            p.fields.timestamp.as_deref(),
            Some("2026-12-03T10:00:00.123+01:00")
        );
        assert_eq!(p.fields.hostname.as_deref(), Some("host"));
        assert_eq!(p.fields.app_name.as_deref(), Some("app"));
        assert_eq!(p.fields.procid.as_deref(), Some("5"));
        assert_eq!(p.fields.msgid, None);
        assert_eq!(p.fields.structured_data, None);
        assert_eq!(msg(f, &p), b"forwardformat");
    }

    #[test]
    fn rfc3164_with_rfc3339_stamp_rsyslog_file_format() {
        // A Debian 12 /var/log/syslog line (RSYSLOG_FileFormat): no PRI.
        let f = b"2026-12-03T10:00:00.123456+00:00 vm systemd[1]: Started foo.service.";
        let p = parse(f);
        assert_eq!(p.fields.facility, None);
        assert_eq!(p.fields.severity, None);
        assert_eq!(
            p.fields.timestamp.as_deref(),
            Some("2026-12-03T10:00:00.123456+00:00")
        );
        assert_eq!(p.fields.hostname.as_deref(), Some("vm"));
        assert_eq!(p.fields.app_name.as_deref(), Some("systemd"));
        assert_eq!(p.fields.procid.as_deref(), Some("1"));
        assert_eq!(msg(f, &p), b"Started foo.service.");
    }

    #[test]
    fn rfc3164_with_rfc3339_stamp_variants() {
        // `Z`, with a fraction.
        let f = b"<86>2026-12-03T10:00:00.5Z web1 sshd[7]: accepted";
        let p = parse(f);
        assert_eq!(p.fields.facility, Some("authpriv"));
        assert_eq!(
            p.fields.timestamp.as_deref(),
            Some("2026-12-03T10:00:00.5Z")
        );
        assert_eq!(p.fields.hostname.as_deref(), Some("web1"));
        assert_eq!(p.fields.app_name.as_deref(), Some("sshd"));
        assert_eq!(p.fields.procid.as_deref(), Some("7"));
        assert_eq!(msg(f, &p), b"accepted");

        // No fraction, `Z`; nine fraction digits; no fraction with an offset.
        for (f, ts) in [
            (
                &b"2026-12-03T10:00:00Z web1 CRON[12]: job"[..],
                "2026-12-03T10:00:00Z",
            ),
            (
                &b"2026-12-03T10:00:00.123456789Z web1 CRON[12]: job"[..],
                "2026-12-03T10:00:00.123456789Z",
            ),
            (
                &b"<78>2026-12-03T10:00:00-05:00 web1 CRON[12]: job"[..],
                "2026-12-03T10:00:00-05:00",
            ),
        ] {
            let p = parse(f);
            assert_eq!(p.fields.timestamp.as_deref(), Some(ts), "{f:?}");
            assert_eq!(p.fields.hostname.as_deref(), Some("web1"), "{f:?}");
            assert_eq!(p.fields.app_name.as_deref(), Some("CRON"), "{f:?}");
            assert_eq!(p.fields.procid.as_deref(), Some("12"), "{f:?}");
            assert_eq!(msg(f, &p), b"job", "{f:?}");
        }

        // No hostname: the first word after the stamp is a tag.
        let f = b"<13>2026-12-03T10:00:00Z cron: job done";
        let p = parse(f);
        assert_eq!(p.fields.timestamp.as_deref(), Some("2026-12-03T10:00:00Z"));
        assert_eq!(p.fields.hostname, None);
        assert_eq!(p.fields.app_name.as_deref(), Some("cron"));
        assert_eq!(p.fields.procid, None);
        assert_eq!(msg(f, &p), b"job done");

        // RFC 5424 is still tried first and wins.
        let f = b"<13>1 2026-12-03T10:00:00Z host app 5 - - m";
        let p = parse(f);
        assert_eq!(p.fields.timestamp.as_deref(), Some("2026-12-03T10:00:00Z"));
        assert_eq!(p.fields.app_name.as_deref(), Some("app"));
        assert_eq!(p.fields.procid.as_deref(), Some("5"));
        assert_eq!(msg(f, &p), b"m");
    }

    #[test]
    fn date_like_words_are_not_rfc3339_stamps() {
        for f in [
            &b"2026-12-03T10:00 host app: x"[..],
            b"2026-12-03T10:00:00 host app: x",
            b"2026-12-03 10:00:00Z host app: x",
            b"2026-12-03t10:00:00Z host app: x",
            b"2026-12-03T10:00:00z host app: x",
            b"2026-12-03T10:00:00Zhost app: x",
            b"2026-12-03T10:00:00. host app: x",
            b"2026-12-03T10:00:00.1234567890Z host app: x",
            b"2026-12-03T10:00:00+0100 host app: x",
            b"2026-12-03T10:00:00+01 host app: x",
            b"2026-13-03T10:00:00Z host app: x",
            b"2026-12-00T10:00:00Z host app: x",
            b"2026-12-03T24:00:00Z host app: x",
            b"2026-12-03T10:60:00Z host app: x",
            b"2026-12-03T10:00:61Z host app: x",
            b"2026-12-03T10:00:00+24:00 host app: x",
            b"26-12-03T10:00:00Z host app: x",
        ] {
            assert_eq!(rfc3339_timestamp(f, 0), None, "{f:?}");
            // No PRI and no stamp: kept whole, as before.
            let p = parse(f);
            assert_eq!(p.fields, Fields::default(), "{f:?}");
            assert_eq!(msg(f, &p), f, "{f:?}");
        }
        // A leap second and the end of the frame right after the stamp are fine.
        assert_eq!(rfc3339_timestamp(b"2026-12-31T23:59:60Z", 0), Some(20));
        assert_eq!(
            rfc3339_timestamp(b"<1>2026-12-31T23:59:60+14:00 h", 3),
            Some(28)
        );
    }

    #[test]
    fn neither_format_is_kept_whole() {
        let f = b"just some text";
        let p = parse(f);
        assert_eq!(p.fields, Fields::default());
        assert_eq!(msg(f, &p), f);

        let f = b"<999>1 not a pri";
        assert_eq!(msg(f, &parse(f)), f);

        // A PRI and free text: the PRI is read, the rest is MSG.
        let f = b"<13>hello world";
        let p = parse(f);
        assert_eq!(p.fields.severity, Some("notice"));
        assert_eq!(msg(f, &p), b"hello world");

        // A broken SD is not 5424; nothing of the frame is lost.
        let f = b"<13>1 - h a p m [x y=\"unterminated";
        let p = parse(f);
        assert_eq!(p.fields.app_name, None);
        assert_eq!(msg(f, &p), &f[4..]);
    }

    proptest! {
        #[test]
        fn never_panics_and_msg_is_in_bounds(data in proptest::collection::vec(
            prop_oneof![Just(b'<'), Just(b'>'), Just(b' '), Just(b'['), Just(b']'), Just(b'"'),
                        Just(b'\\'), Just(b'='), Just(b'-'), Just(b'1'), Just(b':'), any::<u8>()],
            0..200)) {
            let p = parse(&data);
            prop_assert!(p.msg.start <= p.msg.end && p.msg.end == data.len());
        }

        #[test]
        fn header_prefixes_never_panic(cut in 0usize..140) {
            let f = b"<165>1 2003-10-11T22:14:15.003Z host app 12 ID [a@1 b=\"c\\\"\"] msg<34>Oct 11 22:14:15 h su[1]: x";
            let f = &f[..cut.min(f.len())];
            let p = parse(f);
            prop_assert!(p.msg.end == f.len());
        }

        #[test]
        fn rfc3339_bsd_prefixes_never_panic(cut in 0usize..80, pri in proptest::bool::ANY) {
            let f: &[u8] = if pri {
                b"<13>2026-12-03T10:00:00.123456789+01:00 host app[5]: x"
            } else {
                b"2026-12-03T10:00:00.123456789+01:00 host app[5]: x"
            };
            let f = &f[..cut.min(f.len())];
            let p = parse(f);
            prop_assert!(p.msg.start <= p.msg.end && p.msg.end == f.len());
        }
    }
}
