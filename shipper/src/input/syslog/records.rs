//! What one received frame becomes in the spool: one record (or a head and a tail record for a
//! cut frame) whose `fields` are the parsed header plus the sender's address.

use super::framing::Frame;
use super::parse::{parse, Fields};
use super::spool::SpoolRecord;
use crate::frame::Part;
use serde::Serialize;
use std::net::SocketAddr;

/// The `fields` object as it is spooled and shipped; absent values are left out.
#[derive(Serialize)]
struct FieldsJson<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    facility: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    severity: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    timestamp: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    hostname: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    app_name: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    procid: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    msgid: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    structured_data:
        Option<&'a std::collections::BTreeMap<String, std::collections::BTreeMap<String, String>>>,
    peer: String,
}

pub fn fields_json(f: &Fields, peer: SocketAddr) -> Vec<u8> {
    let j = FieldsJson {
        facility: f.facility,
        severity: f.severity,
        timestamp: f.timestamp.as_deref(),
        hostname: f.hostname.as_deref(),
        app_name: f.app_name.as_deref(),
        procid: f.procid.as_deref(),
        msgid: f.msgid.as_deref(),
        structured_data: f.structured_data.as_ref(),
        peer: peer.to_string(),
    };
    serde_json::to_vec(&j).expect("plain strings serialize")
}

/// Appends the spool form of `frame` to `out` → how many messages it was (always 1) and whether
/// it was cut.
pub fn encode_frame(frame: Frame<'_>, peer: SocketAddr, ts_ms: i64, out: &mut Vec<u8>) -> bool {
    match frame {
        Frame::Whole(bytes) => {
            let p = parse(bytes);
            let msg = &bytes[p.msg.clone()];
            SpoolRecord {
                ts_ms,
                part: Part::Whole,
                len: msg.len() as u64,
                fields: fields_json(&p.fields, peer),
                msg: msg.to_vec(),
            }
            .encode_into(out);
            false
        }
        Frame::Cut { head, tail, len } => {
            // The header is in the head; the tail carries the same fields so each part can be
            // found by host or app on its own.
            let p = parse(head);
            let fields = fields_json(&p.fields, peer);
            let (head_msg, tail) = crate::frame::utf8_cut(&head[p.msg.clone()], tail);
            SpoolRecord {
                ts_ms,
                part: Part::Head,
                len,
                fields: fields.clone(),
                msg: head_msg.to_vec(),
            }
            .encode_into(out);
            SpoolRecord {
                ts_ms,
                part: Part::Tail,
                len,
                fields,
                msg: tail.to_vec(),
            }
            .encode_into(out);
            true
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_hold_what_was_sent_and_the_peer() {
        let p = parse(b"<13>1 2026-01-01T00:00:00Z h app - - [a@1 k=\"v\"] m");
        let j: serde_json::Value =
            serde_json::from_slice(&fields_json(&p.fields, "10.0.0.1:514".parse().unwrap()))
                .unwrap();
        assert_eq!(
            j,
            serde_json::json!({"facility":"user","severity":"notice",
                "timestamp":"2026-01-01T00:00:00Z","hostname":"h","app_name":"app",
                "structured_data":{"a@1":{"k":"v"}},"peer":"10.0.0.1:514"})
        );
        let p = parse(b"free text");
        assert_eq!(
            fields_json(&p.fields, "[::1]:9".parse().unwrap()),
            br#"{"peer":"[::1]:9"}"#
        );
    }
}
