//! A client for the agent's control socket (`<state_dir>/control.sock`): one JSON object per
//! line each way, as documented in `shipper/src/control/mod.rs`.
//!
//! The extension does not depend on the shipper crate (it would pull the whole agent into
//! osqueryd's process tree); the wire types come from the crate both share, and serde ignores the
//! fields we do not read (`status`), so a newer agent still parses.
//!
//! Every wait is bounded: osqueryd calls a table synchronously, and a wedged agent must cost a
//! query a few seconds at most, never hang it. Connecting has its own timeout because a Unix
//! `connect` blocks while the listener's backlog is full (an agent that stopped accepting).

use std::io::{Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The longest answer we accept; `list ""` is a few kilobytes, so anything near this is garbage
/// and must not grow without bound in osqueryd's extension.
const MAX_ANSWER: usize = 8 << 20;

/// How long the extension waits for the agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// For the connection to be accepted into the agent's backlog.
    pub connect: Duration,
    /// For a whole answer line, from sending the request.
    pub answer: Duration,
}

impl Default for Timeouts {
    /// A few seconds: longer than a busy agent needs to answer, short enough that an osquery
    /// table call with a wedged agent still returns promptly (with the file's values).
    fn default() -> Timeouts {
        Timeouts {
            connect: Duration::from_secs(2),
            answer: Duration::from_secs(3),
        }
    }
}

/// Why the agent could not be asked. Each variant names the socket, because the operator's next
/// step (start the agent, fix permissions, look at a hung agent) depends on which one it was.
#[derive(Debug, thiserror::Error)]
pub enum AgentSocketError {
    #[error("no log-sensor agent is running (no control socket at {0})")]
    NotRunning(PathBuf),
    #[error(
        "no log-sensor agent is running (the control socket {0} refuses connections: an agent \
         that stopped without cleaning up left it behind)"
    )]
    Stale(PathBuf),
    #[error(
        "cannot connect to the agent's control socket {0}: permission denied (the socket is 0600: \
         run the extension as the agent's user)"
    )]
    PermissionDenied(PathBuf),
    #[error(
        "the log-sensor agent did not accept a connection on {path} within {after:?} (busy or hung)"
    )]
    ConnectTimeout { path: PathBuf, after: Duration },
    #[error("the log-sensor agent did not answer on {path} within {after:?} (busy or hung)")]
    NoAnswer { path: PathBuf, after: Duration },
    #[error("the log-sensor agent closed its control socket {0} without answering")]
    Closed(PathBuf),
    #[error("the control socket {path} answered something that is not a response: {detail}")]
    Garbled { path: PathBuf, detail: String },
    #[error(
        "an earlier request on the control socket {0} got no proper answer, so later answers \
         on that connection cannot be matched to their requests"
    )]
    OutOfStep(PathBuf),
    #[error("control socket {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The wire types are the agent's own (`log_sensor_common::control`); `status` is not read here,
/// so it is skipped whatever the agent puts in it.
pub use log_sensor_common::control::{Entry, Request};

/// An answer line, without the agent's status report.
pub type Response = log_sensor_common::control::Response<serde::de::IgnoredAny>;

/// One connection to the agent; several requests may go over it, one at a time.
pub struct AgentClient {
    /// For error messages.
    path: PathBuf,
    /// Kept across requests so a table write needs no second connect after its `list`.
    stream: UnixStream,
    /// The bounds on every wait, so a wedged agent costs a table call seconds at most.
    timeouts: Timeouts,
    /// Bytes read past the last answer's newline (the agent answers one line per request, so
    /// this stays empty unless it misbehaves; kept so one answer is never mistaken for another).
    pending: Vec<u8>,
    /// Set when an exchange failed midway: a late answer to it could arrive later and be taken
    /// for the answer to the next request, so the connection is not used again.
    out_of_step: bool,
}

impl AgentClient {
    /// Connects to the socket, waiting at most `timeouts.connect`.
    pub fn connect(path: &Path, timeouts: Timeouts) -> Result<AgentClient, AgentSocketError> {
        let stream = connect_within(path, timeouts.connect).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => AgentSocketError::NotRunning(path.to_path_buf()),
            std::io::ErrorKind::ConnectionRefused => AgentSocketError::Stale(path.to_path_buf()),
            std::io::ErrorKind::PermissionDenied => {
                AgentSocketError::PermissionDenied(path.to_path_buf())
            }
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => {
                AgentSocketError::ConnectTimeout {
                    path: path.to_path_buf(),
                    after: timeouts.connect,
                }
            }
            _ => AgentSocketError::Io {
                path: path.to_path_buf(),
                source: e,
            },
        })?;
        Ok(AgentClient {
            path: path.to_path_buf(),
            stream,
            timeouts,
            pending: Vec::new(),
            out_of_step: false,
        })
    }

    /// Sends one request and waits at most `timeouts.answer` for its answer line. An `ok: false`
    /// answer is returned as it is: a refusal is the agent's word, not a socket failure.
    pub fn request(&mut self, req: &Request) -> Result<Response, AgentSocketError> {
        if self.out_of_step {
            return Err(AgentSocketError::OutOfStep(self.path.clone()));
        }
        let result = self.exchange(req);
        self.out_of_step = result.is_err();
        result
    }

    fn exchange(&mut self, req: &Request) -> Result<Response, AgentSocketError> {
        let deadline = Instant::now() + self.timeouts.answer;
        let mut line = serde_json::to_vec(req).expect("a request of strings serialises");
        line.push(b'\n');
        self.stream
            .set_write_timeout(Some(self.timeouts.answer))
            .map_err(|e| self.io(e))?;
        self.stream.write_all(&line).map_err(|e| self.timed(e))?;
        let answer = self.read_line(deadline)?;
        serde_json::from_slice(&answer).map_err(|e| AgentSocketError::Garbled {
            path: self.path.clone(),
            detail: format!("{e} in {:?}", String::from_utf8_lossy(&answer)),
        })
    }

    fn read_line(&mut self, deadline: Instant) -> Result<Vec<u8>, AgentSocketError> {
        let mut chunk = [0u8; 8192];
        loop {
            if let Some(end) = self.pending.iter().position(|&b| b == b'\n') {
                let mut line: Vec<u8> = self.pending.drain(..=end).collect();
                line.pop();
                return Ok(line);
            }
            if self.pending.len() > MAX_ANSWER {
                return Err(AgentSocketError::Garbled {
                    path: self.path.clone(),
                    detail: format!("an answer longer than {MAX_ANSWER} bytes"),
                });
            }
            // The read timeout is reset to what is left, so a trickling answer cannot stretch
            // the wait past the deadline.
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(self.no_answer());
            }
            self.stream
                .set_read_timeout(Some(left))
                .map_err(|e| self.io(e))?;
            match self.stream.read(&mut chunk) {
                Ok(0) => return Err(AgentSocketError::Closed(self.path.clone())),
                Ok(n) => self.pending.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(self.timed(e)),
            }
        }
    }

    fn no_answer(&self) -> AgentSocketError {
        AgentSocketError::NoAnswer {
            path: self.path.clone(),
            after: self.timeouts.answer,
        }
    }

    /// A socket timeout shows as WouldBlock or TimedOut depending on the call; both mean the
    /// agent did not keep up.
    fn timed(&self, e: std::io::Error) -> AgentSocketError {
        match e.kind() {
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => self.no_answer(),
            std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset => {
                AgentSocketError::Closed(self.path.clone())
            }
            _ => self.io(e),
        }
    }

    fn io(&self, source: std::io::Error) -> AgentSocketError {
        AgentSocketError::Io {
            path: self.path.clone(),
            source,
        }
    }
}

/// `connect(2)` on a Unix stream socket with a time limit. std has no `connect_timeout` for Unix
/// sockets; on Linux a blocking Unix connect waits for backlog room for at most the socket's
/// send timeout (`SO_SNDTIMEO`) and then fails with EAGAIN, so the option is set before
/// connecting.
fn connect_within(path: &Path, timeout: Duration) -> std::io::Result<UnixStream> {
    // SAFETY: sockaddr_un is plain data; zeroed is a valid (empty) address.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let bytes = path.as_os_str().as_bytes();
    // One byte stays NUL: a pathname address is NUL-terminated.
    if bytes.is_empty() || bytes.len() >= addr.sun_path.len() || bytes.contains(&0) {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!(
                "not usable as a Unix socket path (at most {} bytes, no NUL)",
                addr.sun_path.len() - 1
            ),
        ));
    }
    for (dst, src) in addr.sun_path.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    // SAFETY: plain socket(2); the descriptor is owned (and closed on every path) right after.
    let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh descriptor that nothing else owns.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    // A zero timeval means "wait forever", so the limit is at least one microsecond.
    let limit = timeout.max(Duration::from_micros(1));
    let tv = libc::timeval {
        tv_sec: limit.as_secs().min(libc::time_t::MAX as u64) as libc::time_t,
        tv_usec: limit.subsec_micros() as libc::suseconds_t,
    };
    // SAFETY: tv is a valid timeval for the length given.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_SNDTIMEO,
            (&tv as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    loop {
        // SAFETY: addr is a valid sockaddr_un for the length given.
        let rc = unsafe {
            libc::connect(
                fd,
                (&addr as *const libc::sockaddr_un).cast(),
                std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t,
            )
        };
        if rc == 0 {
            return Ok(UnixStream::from(owned));
        }
        let e = std::io::Error::last_os_error();
        // A Unix connect that a signal interrupted has not happened; trying again is safe.
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use log_sensor_common::state_dir::CONTROL_SOCKET as SOCKET;
    use std::io::BufRead;
    use std::os::unix::net::UnixListener;

    fn short() -> Timeouts {
        Timeouts {
            connect: Duration::from_millis(300),
            answer: Duration::from_millis(300),
        }
    }

    #[test]
    fn a_missing_socket_means_no_agent() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(SOCKET);
        let e = AgentClient::connect(&path, short()).err().unwrap();
        assert!(matches!(e, AgentSocketError::NotRunning(_)), "{e}");
        assert!(e.to_string().contains("control.sock"), "{e}");
    }

    #[test]
    fn a_socket_left_behind_is_reported_as_stale() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(SOCKET);
        drop(UnixListener::bind(&path).unwrap());
        let e = AgentClient::connect(&path, short()).err().unwrap();
        assert!(matches!(e, AgentSocketError::Stale(_)), "{e}");
    }

    #[test]
    fn an_agent_that_never_answers_costs_the_answer_timeout_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(SOCKET);
        // Accepted by the kernel's backlog, never read: a wedged agent.
        let _listener = UnixListener::bind(&path).unwrap();
        let mut c = AgentClient::connect(&path, short()).unwrap();
        let start = Instant::now();
        let e = c.request(&Request::list_all()).err().unwrap();
        assert!(matches!(e, AgentSocketError::NoAnswer { .. }), "{e}");
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "{:?}",
            start.elapsed()
        );
    }

    #[test]
    fn a_full_backlog_costs_the_connect_timeout_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(SOCKET);
        let _listener = UnixListener::bind(&path).unwrap();
        // Fill the backlog (std listens with 128; the kernel allows one more) of a listener
        // that never accepts, as an agent whose accept loop is stuck would.
        let mut held = Vec::new();
        let start = Instant::now();
        let e = loop {
            match AgentClient::connect(&path, short()) {
                Ok(c) => held.push(c),
                Err(e) => break e,
            }
            assert!(held.len() < 10_000, "the backlog never filled");
        };
        assert!(
            matches!(e, AgentSocketError::ConnectTimeout { .. }),
            "{e} after {} connections",
            held.len()
        );
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "{:?}",
            start.elapsed()
        );
    }

    #[test]
    fn requests_and_answers_are_lines_of_json() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(SOCKET);
        let listener = UnixListener::bind(&path).unwrap();
        let agent = std::thread::spawn(move || {
            let (s, _) = listener.accept().unwrap();
            let mut w = s.try_clone().unwrap();
            let mut seen = Vec::new();
            for line in std::io::BufReader::new(s).lines() {
                let line = line.unwrap();
                let answer = if line.contains("\"set\"") {
                    r#"{"ok":false,"error":"defaults.max_record_bytes: not a size"}"#
                } else {
                    r#"{"ok":true,"entries":[{"key":"a.b","value":"1","origin":"file"}],"status":null}"#
                };
                seen.push(line);
                writeln!(w, "{answer}").unwrap();
            }
            seen
        });
        let mut c = AgentClient::connect(&path, short()).unwrap();
        let r = c.request(&Request::list_all()).unwrap();
        assert!(r.ok);
        assert_eq!(
            r.entries.unwrap(),
            [Entry {
                key: "a.b".into(),
                value: "1".into(),
                origin: "file".into()
            }]
        );
        let r = c
            .request(&Request::set("defaults.max_record_bytes", "x"))
            .unwrap();
        assert!(!r.ok);
        assert_eq!(
            r.error.as_deref(),
            Some("defaults.max_record_bytes: not a size")
        );
        drop(c);
        assert_eq!(
            agent.join().unwrap(),
            [
                r#"{"cmd":"list","key":""}"#,
                r#"{"cmd":"set","key":"defaults.max_record_bytes","value":"x"}"#
            ]
        );
    }

    #[test]
    fn an_agent_that_hangs_up_is_reported_as_closed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(SOCKET);
        let listener = UnixListener::bind(&path).unwrap();
        let agent = std::thread::spawn(move || drop(listener.accept().unwrap()));
        let mut c = AgentClient::connect(&path, short()).unwrap();
        agent.join().unwrap();
        let e = c.request(&Request::list_all()).err().unwrap();
        assert!(matches!(e, AgentSocketError::Closed(_)), "{e}");
    }
}
