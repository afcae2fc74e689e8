//! `type = "syslog"`: a line in RFC 5424 or RFC 3164 form (a file written by a relay, a
//! device's log pulled to disk) → its header in `fields` (the same keys the syslog server
//! input gives, without `peer`), MSG as the message. The parser is the syslog input's
//! ([`super::syslog_parse`], moved below both so neither imports the other); a line with
//! neither a PRI nor a BSD header passes unchanged.

use super::fields::merge;
use super::syslog_parse::{parse, Fields};
use super::{Draft, Fault, Transform, Verdict};
use serde_json::{Map, Value};
use std::borrow::Cow;

#[derive(Default)]
pub struct Syslog {
    fault: Fault,
}

fn to_map(f: Fields) -> Map<String, Value> {
    let mut m = Map::new();
    let mut put = |k: &str, v: Option<String>| {
        if let Some(v) = v {
            m.insert(k.into(), Value::String(v));
        }
    };
    put("facility", f.facility.map(str::to_string));
    put("severity", f.severity.map(str::to_string));
    put("timestamp", f.timestamp);
    put("hostname", f.hostname);
    put("app_name", f.app_name);
    put("procid", f.procid);
    put("msgid", f.msgid);
    if let Some(sd) = f.structured_data {
        m.insert(
            "structured_data".into(),
            serde_json::to_value(sd).expect("string maps serialize"),
        );
    }
    m
}

impl Transform for Syslog {
    fn describe(&self) -> String {
        "syslog (RFC 5424, RFC 3164)".into()
    }

    fn apply(&mut self, rec: &mut Draft<'_>) -> Verdict {
        let p = parse(&rec.bytes);
        if p.fields == Fields::default() {
            self.fault = Fault::Unparsed;
            return Verdict::Keep;
        }
        self.fault = Fault::None;
        let msg = rec.bytes[p.msg].to_vec();
        rec.bytes = Cow::Owned(msg);
        merge(rec, to_map(p.fields));
        Verdict::Keep
    }

    fn fault(&self) -> Fault {
        self.fault
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transform::tests::{draft, fields_of, meta};

    #[test]
    fn rfc5424_lines_parse() {
        let meta = meta();
        let mut t = Syslog::default();
        // RFC 5424 §6.5 example 3, as rsyslog's RSYSLOG_SyslogProtocol23Format writes it.
        let line = br#"<165>1 2003-10-11T22:14:15.003Z mymachine.example.com evntslog - ID47 [exampleSDID@32473 iut="3" eventSource="Application" eventID="1011"] An application event log entry..."#;
        let mut d = draft(&meta, line);
        t.apply(&mut d);
        assert_eq!(t.fault(), Fault::None);
        assert_eq!(&*d.bytes, b"An application event log entry...");
        let f = fields_of(&d);
        assert_eq!(f["facility"], "local4");
        assert_eq!(f["severity"], "notice");
        assert_eq!(f["hostname"], "mymachine.example.com");
        assert_eq!(f["app_name"], "evntslog");
        assert_eq!(f["msgid"], "ID47");
        assert!(f.get("procid").is_none());
        assert_eq!(f["structured_data"]["exampleSDID@32473"]["eventID"], "1011");
    }

    #[test]
    fn rfc3164_lines_parse_with_and_without_pri() {
        let meta = meta();
        let mut t = Syslog::default();
        // RFC 3164 §5.4 example 1, and a line of Debian's /var/log/auth.log (no PRI).
        let mut d = draft(
            &meta,
            b"<34>Oct 11 22:14:15 mymachine su: 'su root' failed for lonvick on /dev/pts/8",
        );
        t.apply(&mut d);
        let f = fields_of(&d);
        assert_eq!(f["facility"], "auth");
        assert_eq!(f["severity"], "crit");
        assert_eq!(f["app_name"], "su");
        assert_eq!(&*d.bytes, b"'su root' failed for lonvick on /dev/pts/8");
        let mut d = draft(&meta, b"Mar  5 10:11:12 web-1 sshd[4242]: Accepted publickey for alice from 203.0.113.9 port 50122 ssh2");
        t.apply(&mut d);
        assert_eq!(t.fault(), Fault::None);
        let f = fields_of(&d);
        assert_eq!(f["hostname"], "web-1");
        assert_eq!(f["app_name"], "sshd");
        assert_eq!(f["procid"], "4242");
        assert!(d.bytes.starts_with(b"Accepted publickey"));
    }

    #[test]
    fn a_line_that_is_not_syslog_passes_unchanged() {
        let meta = meta();
        let mut t = Syslog::default();
        let line = b"plain application output";
        let mut d = draft(&meta, line);
        t.apply(&mut d);
        assert_eq!(t.fault(), Fault::Unparsed);
        assert_eq!(&*d.bytes, line);
        assert!(d.fields.is_none());
    }
}
