//! The agent's control socket on the wire: one JSON object per line each way (the protocol is
//! documented in the agent's `control` module). The agent serves it; the CLI and the osquery
//! extension are its clients.
//!
//! The answer's `status` is the agent's own report type, so [`Response`] is generic over it: the
//! agent fills it in, a client that does not read it uses [`serde::de::IgnoredAny`].

use serde::{Deserialize, Serialize};

/// A request line.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Request {
    /// `status`, `reload`, `stop`, `get`, `list`, `set` or `del`.
    pub cmd: String,
    /// The config key (or prefix, for `list`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// TOML text for `set` (plain text is taken as a string).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
}

impl Request {
    pub fn new(cmd: &str) -> Request {
        Request {
            cmd: cmd.to_string(),
            key: None,
            value: None,
        }
    }

    /// Every effective key (`list` with the empty prefix).
    pub fn list_all() -> Request {
        Request::list("")
    }

    pub fn list(prefix: &str) -> Request {
        Request {
            key: Some(prefix.to_string()),
            ..Request::new("list")
        }
    }

    pub fn get(key: &str) -> Request {
        Request {
            key: Some(key.to_string()),
            ..Request::new("get")
        }
    }

    pub fn set(key: &str, value: &str) -> Request {
        Request {
            key: Some(key.to_string()),
            value: Some(value.to_string()),
            ..Request::new("set")
        }
    }

    pub fn del(key: &str) -> Request {
        Request {
            key: Some(key.to_string()),
            ..Request::new("del")
        }
    }
}

/// An answer line. `S` is what `status` carries.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Response<S> {
    pub ok: bool,
    /// Why the agent refused, when `ok` is false; `busy: …` when every connection slot was
    /// taken and the request was not read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    // No `default`: serde would then ask `S: Default`; a missing Option is None anyway.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<S>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entries: Option<Vec<Entry>>,
}

// By hand: a derive would ask `S: Default`, and an answer without a status needs none.
impl<S> Default for Response<S> {
    fn default() -> Self {
        Response {
            ok: false,
            error: None,
            status: None,
            entries: None,
        }
    }
}

/// One effective config setting.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Entry {
    pub key: String,
    /// TOML syntax (`65536`, `"text"`, `["a", "b"]`).
    pub value: String,
    /// `default`, `file`, `pack` or `temporary`.
    pub origin: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::de::IgnoredAny;

    #[test]
    fn requests_leave_out_what_they_do_not_carry() {
        let line = |r: &Request| serde_json::to_string(r).unwrap();
        assert_eq!(line(&Request::new("status")), r#"{"cmd":"status"}"#);
        assert_eq!(line(&Request::list_all()), r#"{"cmd":"list","key":""}"#);
        assert_eq!(
            line(&Request::set("defaults.max_record_bytes", "x")),
            r#"{"cmd":"set","key":"defaults.max_record_bytes","value":"x"}"#
        );
        assert_eq!(line(&Request::del("a")), r#"{"cmd":"del","key":"a"}"#);
        assert_eq!(line(&Request::get("a")), r#"{"cmd":"get","key":"a"}"#);
    }

    #[test]
    fn a_client_that_ignores_status_still_reads_the_rest() {
        let r: Response<IgnoredAny> = serde_json::from_str(
            r#"{"ok":true,"status":{"anything":[1,2]},"entries":[{"key":"a.b","value":"1","origin":"file"}]}"#,
        )
        .unwrap();
        assert!(r.ok && r.status.is_some() && r.error.is_none());
        assert_eq!(r.entries.unwrap()[0].origin, "file");
        let r: Response<IgnoredAny> =
            serde_json::from_str(r#"{"ok":false,"error":"busy: 64 connections"}"#).unwrap();
        assert_eq!(r.error.as_deref(), Some("busy: 64 connections"));
        let empty: Response<IgnoredAny> = Response::default();
        assert!(!empty.ok);
    }
}
