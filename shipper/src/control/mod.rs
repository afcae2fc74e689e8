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
//! A connection must send each request line within a few seconds
//! ([`server::IDLE_TIMEOUT`]) of its accept or of the previous answer, or it is closed. When
//! [`server::MAX_CONNECTIONS`] connections are already served, a new one is answered
//! `{"ok":false,"error":"busy: …"}` before any request is read, then closed: retry later.
//!
//! `value` is TOML (`65536`, `true`, `["a","b"]`, `"text"`), or plain text taken as a string.
//! `set` and `del` are temporary: they change the running agent until its next reload or restart.

pub mod server;

use crate::config::layers::Entry;
use crate::status::Status;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub const SOCKET: &str = log_sensor_common::state_dir::CONTROL_SOCKET;

/// The wire types are shared with the osquery extension, a client of this socket.
pub use log_sensor_common::control::Request;

pub type Response = log_sensor_common::control::Response<Box<Status>>;

/// An [`Entry`] on the wire.
pub use log_sensor_common::control::Entry as EntryWire;

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
    /// The socket is 0600: another user (not root) cannot tell whether the agent runs.
    #[error(
        "permission denied on the control socket {path} (mode 0600, owned by uid {owner}): \
         run this as the agent's user or as root"
    )]
    PermissionDenied { path: PathBuf, owner: String },
    /// Every connection slot is taken; the agent answered before reading the request.
    #[error("the agent's control socket {path} is busy ({detail})")]
    Busy { path: PathBuf, detail: String },
    // Not a `source`: the message already says it, and `{:#}` would print it twice.
    #[error("control socket {path}: {error}")]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("control socket {path} answered something that is not a response: {detail}")]
    Garbled { path: PathBuf, detail: String },
}

pub fn socket_path(state_dir: &Path) -> PathBuf {
    log_sensor_common::state_dir::control_socket(state_dir)
}

/// Sends one request to the agent whose state dir this is and returns its answer. A `busy`
/// answer is [`ClientError::Busy`]: the request was not read, so sending it again is safe.
pub fn call(state_dir: &Path, req: &Request) -> Result<Response, ClientError> {
    // An agent dying as we connect (just killed) may take the connection and reset it: asked
    // again a moment later, its socket refuses, which is "not running". Without this, `start`
    // right after `kill -9` failed with "Connection reset by peer" (found by a probe).
    let mut tries = 0;
    loop {
        match call_once(state_dir, req) {
            Err(ClientError::Io { error, .. }) if tries < 3 && cut_off(&error) => {
                tries += 1;
                std::thread::sleep(Duration::from_millis(100));
            }
            other => return other,
        }
    }
}

/// Writes all of `buf` with send(2) and MSG_NOSIGNAL: the CLI takes SIGPIPE's default (so that
/// `status | head` ends quietly), and a plain write to an agent that died after the connect
/// would kill it with that signal instead of returning the error the retry above handles.
fn send_all(stream: &UnixStream, mut buf: &[u8]) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    while !buf.is_empty() {
        // SAFETY: a valid socket and a buffer of `buf.len()` readable bytes.
        let n = unsafe {
            libc::send(
                stream.as_raw_fd(),
                buf.as_ptr().cast(),
                buf.len(),
                libc::MSG_NOSIGNAL,
            )
        };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        buf = &buf[n as usize..];
    }
    Ok(())
}

/// The connection was cut before an answer came: the agent went away under us.
fn cut_off(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::{BrokenPipe, ConnectionReset, UnexpectedEof};
    matches!(e.kind(), ConnectionReset | BrokenPipe | UnexpectedEof)
}

fn call_once(state_dir: &Path, req: &Request) -> Result<Response, ClientError> {
    let path = socket_path(state_dir);
    let io = |error| ClientError::Io {
        path: path.clone(),
        error,
    };
    let stream = match UnixStream::connect(&path) {
        Ok(s) => s,
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Err(ClientError::NotRunning(path));
        }
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            let owner = std::fs::metadata(&path)
                .map(|m| m.uid().to_string())
                .unwrap_or_else(|_| "unknown".into());
            return Err(ClientError::PermissionDenied { path, owner });
        }
        Err(e) => return Err(io(e)),
    };
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .map_err(io)?;
    let mut line = serde_json::to_vec(req).expect("a request serialises");
    line.push(b'\n');
    // A busy agent may answer and close before it reads our line; its answer still counts.
    let sent = send_all(&stream, &line);
    let mut answer = String::new();
    let read = BufReader::new(&stream).read_line(&mut answer);
    let resp: Response = match (serde_json::from_str(&answer), sent, read) {
        (Ok(resp), _, _) => resp,
        (Err(_), Err(e), _) | (Err(_), Ok(()), Err(e)) => return Err(io(e)),
        // Closed without a word.
        (Err(_), Ok(()), Ok(0)) => {
            return Err(io(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the agent closed the connection without answering",
            )))
        }
        (Err(e), Ok(()), Ok(_)) => {
            return Err(ClientError::Garbled {
                path: path.clone(),
                detail: e.to_string(),
            })
        }
    };
    match &resp.error {
        Some(e) if !resp.ok && e.starts_with("busy") => Err(ClientError::Busy {
            path,
            detail: e
                .trim_start_matches("busy")
                .trim_start_matches([':', ' '])
                .to_string(),
        }),
        _ => Ok(resp),
    }
}
