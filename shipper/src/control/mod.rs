//! The control socket: `<state_dir>/control.sock`, a Unix stream socket (mode 0600) on which the
//! running agent answers one JSON object per line:
//!
//! ```text
//! {"cmd":"status"}                                  -> {"ok":true,"status":{…}}
//! {"cmd":"reload"}                                  -> {"ok":true} | {"ok":false,"error":"…"}
//! {"cmd":"stop"}                                    -> {"ok":true}
//! {"cmd":"get","key":"defaults.max_record_bytes"}   -> {"ok":true,"entries":[{"key","value","origin"}]}
//! {"cmd":"list","key":"sources.app"}                -> {"ok":true,"entries":[…]}
//! {"cmd":"set","key":"…","value":"131072"}          -> {"ok":true,"entries":[…]} | {"ok":false,"error":"…"}
//! {"cmd":"del","key":"…"}                           -> {"ok":true,"entries":[…]} | {"ok":false,"error":"…"}
//! ```
//!
//! `value` is TOML (`65536`, `true`, `["a","b"]`, `"text"`), or plain text taken as a string.
//! `set` and `del` are temporary: they change the running agent until its next reload or restart.

pub mod server;

use crate::config::layers::Entry;
use crate::status::Status;
use serde::{Deserialize, Serialize};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub const SOCKET: &str = "control.sock";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Request {
    pub cmd: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct Response {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<Box<Status>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entries: Option<Vec<EntryWire>>,
}

/// An [`Entry`] on the wire.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct EntryWire {
    pub key: String,
    pub value: String,
    pub origin: String,
}

impl From<&Entry> for EntryWire {
    fn from(e: &Entry) -> Self {
        EntryWire {
            key: e.key.clone(),
            value: e.value.clone(),
            origin: e.origin.as_str().to_string(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("no agent is running on {0} (is it started?)")]
    NotRunning(PathBuf),
    #[error("control socket {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("control socket {path} answered something that is not a response: {detail}")]
    Garbled { path: PathBuf, detail: String },
}

pub fn socket_path(state_dir: &Path) -> PathBuf {
    state_dir.join(SOCKET)
}

/// Sends one request to the agent whose state dir this is and returns its answer.
pub fn call(state_dir: &Path, req: &Request) -> Result<Response, ClientError> {
    let path = socket_path(state_dir);
    let io = |source| ClientError::Io {
        path: path.clone(),
        source,
    };
    let mut stream = match UnixStream::connect(&path) {
        Ok(s) => s,
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Err(ClientError::NotRunning(path));
        }
        Err(e) => return Err(io(e)),
    };
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .map_err(io)?;
    let mut line = serde_json::to_vec(req).expect("a request serialises");
    line.push(b'\n');
    stream.write_all(&line).map_err(io)?;
    let mut answer = String::new();
    BufReader::new(&stream).read_line(&mut answer).map_err(io)?;
    serde_json::from_str(&answer).map_err(|e| ClientError::Garbled {
        path: path.clone(),
        detail: e.to_string(),
    })
}
