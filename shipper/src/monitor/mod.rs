//! HTTP monitoring, off unless `[monitor] listen` is set:
//! - `/metrics`: Prometheus text ([`metrics`]);
//! - `/api/v1/status`: the [`Status`] as JSON, the same picture as `status --json`;
//! - `/healthz`: 200 `ok`, or 503 with the reason (sink down too long, store unwritable, a
//!   syslog source listening on nothing);
//! - `/`: a self-contained page that renders the status every 2 s ([`page`]).
//!
//! One short-lived thread per connection, at most [`Limits::max_connections`] at once; more
//! wait in the kernel's accept queue rather than being turned away, so a scrape that arrives
//! during a burst is late, not failed. Each connection gets one request, read within a deadline
//! and a size cap, and is closed after the answer.

pub mod http;
mod listener_metrics;
pub mod metrics;
pub mod page;
mod transform_metrics;

use crate::status::Status;
use http::{Request, Response};
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// What the monitor shows: a fresh status per request.
pub type StatusFn = Arc<dyn Fn() -> Status + Send + Sync>;

/// How long the accept loop sleeps between looks at its listener and the stop flag.
const POLL: Duration = Duration::from_millis(50);
/// How long a closing connection keeps draining what its client still sends.
const LINGER: Duration = Duration::from_secs(1);

/// Bounds that keep the monitor cheap whatever its clients do.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Connections served at once; more wait to be accepted.
    pub max_connections: usize,
    /// The whole request head must arrive within this, or the client gets 408.
    pub request_timeout: Duration,
    /// A client that does not read its answer within this is dropped.
    pub write_timeout: Duration,
    /// Largest request head accepted (431 beyond).
    pub max_request_bytes: usize,
    /// How long a stopping monitor waits for requests in flight before returning.
    pub shutdown_wait: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 16,
            request_timeout: Duration::from_secs(5),
            write_timeout: Duration::from_secs(10),
            max_request_bytes: 8 * 1024,
            shutdown_wait: Duration::from_secs(2),
        }
    }
}

/// Serves until `stop` is set, with the default [`Limits`].
pub fn serve(
    listener: TcpListener,
    status: StatusFn,
    stop: Arc<AtomicBool>,
) -> std::io::Result<()> {
    serve_with(listener, status, stop, Limits::default())
}

/// Serves until `stop` is set; the listener is the caller's so it can bind (and fail) early.
pub fn serve_with(
    listener: TcpListener,
    status: StatusFn,
    stop: Arc<AtomicBool>,
    limits: Limits,
) -> std::io::Result<()> {
    // Non-blocking, so the stop flag is seen within POLL even when nobody connects.
    listener.set_nonblocking(true)?;
    let active = Arc::new(AtomicUsize::new(0));
    while !stop.load(Ordering::Relaxed) {
        if active.load(Ordering::Acquire) >= limits.max_connections {
            std::thread::sleep(POLL);
            continue;
        }
        match listener.accept() {
            Ok((conn, _peer)) => {
                active.fetch_add(1, Ordering::AcqRel);
                // Moved into the thread; if the spawn fails it is dropped with the closure, so
                // the slot is given back either way.
                let slot = Slot(active.clone());
                let status = status.clone();
                let spawned = std::thread::Builder::new()
                    .name("monitor-conn".into())
                    .spawn(move || {
                        let _slot = slot;
                        handle(conn, &*status, &limits);
                    });
                if let Err(e) = spawned {
                    tracing::warn!(error = %e, "monitor: cannot start a connection thread");
                    std::thread::sleep(POLL);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => std::thread::sleep(POLL),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            // Out of descriptors, a connection reset before it was accepted: passing troubles,
            // not a reason to stop monitoring.
            Err(e) => {
                tracing::warn!(error = %e, "monitor: accept failed");
                std::thread::sleep(POLL);
            }
        }
    }
    // Two steps: no new connections (the listener closes when this returns), then a bounded
    // wait for those in flight. Each is bounded by its own timeouts, so one left behind ends
    // soon on its own; it must not hold up the agent's exit.
    let deadline = Instant::now() + limits.shutdown_wait;
    while active.load(Ordering::Acquire) > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}

/// One connection's place under the cap, given back when the connection's thread ends.
struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

fn handle(mut conn: TcpStream, status: &(dyn Fn() -> Status + Send + Sync), limits: &Limits) {
    // Accepted sockets may inherit the listener's non-blocking mode on some platforms.
    if conn.set_nonblocking(false).is_err() {
        return;
    }
    let _ = conn.set_write_timeout(Some(limits.write_timeout));
    let (response, head_only) =
        match http::read_request(&mut conn, limits.max_request_bytes, limits.request_timeout) {
            Ok(req) => (route(&req, status), req.method == "HEAD"),
            Err(e) => match e.status() {
                Some(code) => {
                    tracing::debug!(error = %e, "monitor: bad request");
                    (Response::text(code, &e.to_string()), false)
                }
                None => return,
            },
        };
    if conn.write_all(&response.to_bytes(head_only)).is_err() {
        return;
    }
    linger(&mut conn);
}

/// Closes gently: closing with unread request bytes makes the kernel send a reset, which can
/// destroy the answer before the client reads it. So: send FIN, then read and drop what the
/// client still sends until it closes too, briefly and boundedly.
fn linger(conn: &mut TcpStream) {
    let _ = conn.shutdown(Shutdown::Write);
    let deadline = Instant::now() + LINGER;
    let mut sink = [0u8; 4096];
    let mut left: usize = 64 * 1024;
    while left > 0 {
        let wait = deadline.saturating_duration_since(Instant::now());
        if wait.is_zero() || conn.set_read_timeout(Some(wait)).is_err() {
            break;
        }
        match conn.read(&mut sink) {
            Ok(0) | Err(_) => break,
            Ok(n) => left = left.saturating_sub(n),
        }
    }
}

/// The answer to a well-formed request.
pub fn route(req: &Request, status: &(dyn Fn() -> Status + Send + Sync)) -> Response {
    if req.method != "GET" && req.method != "HEAD" {
        return Response::text(405, &format!("method {} not allowed", req.method))
            .with_header("Allow", "GET, HEAD");
    }
    match req.path.as_str() {
        "/" => Response::new(200, "text/html; charset=utf-8", page::PAGE)
            .with_header("Content-Security-Policy", page::CONTENT_SECURITY_POLICY),
        "/metrics" => Response::new(200, metrics::CONTENT_TYPE, metrics::render(&status())),
        "/api/v1/status" => match serde_json::to_vec(&status()) {
            Ok(body) => Response::new(200, "application/json", body),
            Err(e) => Response::text(500, &format!("cannot encode the status: {e}")),
        },
        "/healthz" => {
            let s = status();
            if s.health.ok {
                Response::text(200, "ok")
            } else {
                Response::text(
                    503,
                    s.health
                        .reason
                        .as_deref()
                        .unwrap_or("unhealthy, no reason given"),
                )
            }
        }
        _ => Response::text(404, &format!("{} not found", req.path)),
    }
}

/// A monitor running on its own thread; stopping or dropping it stops the thread and waits.
pub struct Handle {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<std::io::Result<()>>>,
}

impl Handle {
    /// Starts [`serve`] on a thread named `monitor`.
    pub fn spawn(listener: TcpListener, status: StatusFn) -> std::io::Result<Handle> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("monitor".into())
            .spawn(move || serve(listener, status, flag))?;
        Ok(Handle {
            stop,
            thread: Some(thread),
        })
    }

    pub fn stop(mut self) {
        self.stop_and_join();
    }

    fn stop_and_join(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            match t.join() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!(error = %e, "monitor stopped with an error"),
                Err(_) => tracing::warn!("monitor thread panicked"),
            }
        }
    }
}

impl Drop for Handle {
    // An agent leaving `run` early with an error must not leave the monitor serving.
    fn drop(&mut self) {
        self.stop_and_join();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::Status;

    fn status_fn(ok: bool) -> StatusFn {
        Arc::new(move || {
            let mut s = metrics::tests::sample_status();
            s.health.ok = ok;
            if !ok {
                s.health.reason = Some("sink file /x failing for 75 s: disk full".into());
            }
            s
        })
    }

    struct Server {
        addr: std::net::SocketAddr,
        stop: Arc<AtomicBool>,
        thread: Option<JoinHandle<std::io::Result<()>>>,
    }

    impl Server {
        fn start(status: StatusFn, limits: Limits) -> Server {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = listener.local_addr().unwrap();
            let stop = Arc::new(AtomicBool::new(false));
            let flag = stop.clone();
            let thread = std::thread::spawn(move || serve_with(listener, status, flag, limits));
            Server {
                addr,
                stop,
                thread: Some(thread),
            }
        }

        fn connect(&self) -> TcpStream {
            let c = TcpStream::connect(self.addr).unwrap();
            // Generous: only a hung server could take this long.
            c.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
            c
        }

        /// Sends raw bytes, returns (status code, head, body) read to the end.
        fn raw(&self, request: &[u8]) -> (u16, String, Vec<u8>) {
            let mut c = self.connect();
            c.write_all(request).unwrap();
            read_response(&mut c)
        }

        fn get(&self, path: &str) -> (u16, String, Vec<u8>) {
            self.raw(format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes())
        }
    }

    impl Drop for Server {
        fn drop(&mut self) {
            self.stop.store(true, Ordering::Relaxed);
            if let Some(t) = self.thread.take() {
                t.join().unwrap().unwrap();
            }
        }
    }

    fn read_response(c: &mut TcpStream) -> (u16, String, Vec<u8>) {
        let mut all = Vec::new();
        c.read_to_end(&mut all).unwrap();
        let split = all
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .unwrap_or_else(|| panic!("no head in {:?}", String::from_utf8_lossy(&all)));
        let head = String::from_utf8(all[..split].to_vec()).unwrap();
        let body = all[split + 4..].to_vec();
        let code = head[9..12].parse().unwrap();
        // A HEAD answer announces the GET's length and sends nothing.
        if !body.is_empty() {
            let len = header(&head, "content-length").expect("Content-Length");
            assert_eq!(len.parse::<usize>().unwrap(), body.len(), "{head}");
        }
        (code, head, body)
    }

    fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
        head.lines().skip(1).find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }

    fn quick() -> Limits {
        Limits {
            request_timeout: Duration::from_millis(300),
            ..Limits::default()
        }
    }

    #[test]
    fn each_route_answers_with_its_type_and_length() {
        let srv = Server::start(status_fn(true), Limits::default());
        let (code, head, body) = srv.get("/metrics?debug=1");
        assert_eq!(code, 200);
        assert_eq!(header(&head, "content-type"), Some(metrics::CONTENT_TYPE));
        let text = String::from_utf8(body).unwrap();
        assert!(text.contains("log_sensor_source_records_shipped_total{source=\"app\"} 1500\n"));

        let (code, head, body) = srv.get("/api/v1/status");
        assert_eq!(code, 200);
        assert_eq!(header(&head, "content-type"), Some("application/json"));
        let s: Status = serde_json::from_slice(&body).unwrap();
        assert_eq!(s, metrics::tests::sample_status());

        let (code, _, body) = srv.get("/healthz");
        assert_eq!((code, body.as_slice()), (200, &b"ok\n"[..]));

        let (code, head, body) = srv.get("/");
        assert_eq!(code, 200);
        assert_eq!(
            header(&head, "content-type"),
            Some("text/html; charset=utf-8")
        );
        assert!(header(&head, "content-security-policy").is_some());
        assert_eq!(body, page::PAGE.as_bytes());
        assert_eq!(header(&head, "connection"), Some("close"));
    }

    #[test]
    fn healthz_is_503_with_the_reason_when_unhealthy() {
        let srv = Server::start(status_fn(false), Limits::default());
        let (code, _, body) = srv.get("/healthz");
        assert_eq!(code, 503);
        assert_eq!(body, b"sink file /x failing for 75 s: disk full\n");
    }

    #[test]
    fn unknown_paths_are_404_and_other_methods_405() {
        let srv = Server::start(status_fn(true), Limits::default());
        for p in ["/nope", "/metrics/", "/api/v1/status/x", "/healthz.json"] {
            assert_eq!(srv.get(p).0, 404, "{p}");
        }
        for m in ["POST", "PUT", "DELETE", "OPTIONS", "PATCH"] {
            let (code, head, _) = srv.raw(
                format!("{m} /metrics HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello")
                    .as_bytes(),
            );
            assert_eq!(code, 405, "{m}");
            assert_eq!(header(&head, "allow"), Some("GET, HEAD"));
        }
    }

    #[test]
    fn head_gets_the_headers_of_get_and_no_body() {
        let srv = Server::start(status_fn(true), Limits::default());
        let (code, head, body) = srv.raw(b"HEAD / HTTP/1.1\r\nHost: t\r\n\r\n");
        assert_eq!(code, 200);
        assert!(body.is_empty());
        assert_eq!(
            header(&head, "content-length"),
            Some(page::PAGE.len().to_string().as_str())
        );
    }

    #[test]
    fn bad_requests_are_answered_not_dropped() {
        let srv = Server::start(status_fn(true), Limits::default());
        assert_eq!(srv.raw(b"GET /metrics\r\n\r\n").0, 400);
        assert_eq!(srv.raw(b"GET / HTTP/1.1\r\n\r\n").0, 400, "no Host");
        assert_eq!(srv.raw(b"GET / HTTP/3.0\r\nHost: t\r\n\r\n").0, 505);
        assert_eq!(
            srv.raw(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n")
                .0,
            400,
            "TLS"
        );
        let huge = format!(
            "GET / HTTP/1.1\r\nHost: t\r\nX-Big: {}\r\n\r\n",
            "a".repeat(20_000)
        );
        assert_eq!(srv.raw(huge.as_bytes()).0, 431);
    }

    #[test]
    fn a_slow_client_times_out_without_blocking_others() {
        let srv = Server::start(status_fn(true), quick());
        let mut slow = srv.connect();
        slow.write_all(b"GET /metrics HTTP/1.1\r\nHo").unwrap();
        // Served while the slow one still holds its connection.
        assert_eq!(srv.get("/healthz").0, 200);
        let (code, _, body) = read_response(&mut slow);
        assert_eq!(code, 408);
        assert!(String::from_utf8_lossy(&body).contains("no complete request head"));

        // Trickling a byte at a time does not reset the deadline.
        let mut trickle = srv.connect();
        let writer = {
            let mut w = trickle.try_clone().unwrap();
            std::thread::spawn(move || {
                for b in b"GET /metrics HTTP/1.1\r\nHost: t\r\nX-Slow: yes"
                    .iter()
                    .cycle()
                    .take(60)
                {
                    if w.write_all(&[*b]).is_err() {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            })
        };
        let (code, _, _) = read_response(&mut trickle);
        assert_eq!(code, 408);
        writer.join().unwrap();
    }

    #[test]
    fn connections_past_the_cap_wait_for_a_free_slot() {
        let limits = Limits {
            max_connections: 2,
            request_timeout: Duration::from_secs(120),
            ..Limits::default()
        };
        let srv = Server::start(status_fn(true), limits);
        let idle: Vec<TcpStream> = (0..2).map(|_| srv.connect()).collect();
        // Both slots are taken by idle clients once they have been accepted.
        let waiting_for_accept = Instant::now() + Duration::from_secs(60);
        let mut third = loop {
            let mut c = srv.connect();
            c.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
                .unwrap();
            c.set_read_timeout(Some(Duration::from_millis(300)))
                .unwrap();
            let mut b = [0u8; 1];
            // Nothing within the wait: the two slots are held, this one is queued.
            match c.peek(&mut b) {
                // Answered: the idle ones were not accepted yet; try again.
                Ok(_) => assert!(
                    Instant::now() < waiting_for_accept,
                    "idle clients never took the slots"
                ),
                Err(_) => break c,
            }
        };
        drop(idle);
        third
            .set_read_timeout(Some(Duration::from_secs(60)))
            .unwrap();
        let (code, _, body) = read_response(&mut third);
        assert_eq!((code, body.as_slice()), (200, &b"ok\n"[..]));
    }

    #[test]
    fn stop_returns_promptly_and_closes_the_listener() {
        let srv = Server::start(status_fn(true), Limits::default());
        let addr = srv.addr;
        drop(srv);
        assert!(TcpStream::connect(addr).is_err());
    }

    #[test]
    fn the_handle_stops_its_thread_when_dropped() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let h = Handle::spawn(listener, status_fn(true)).unwrap();
        let mut c = TcpStream::connect(addr).unwrap();
        c.write_all(b"GET /healthz HTTP/1.0\r\n\r\n").unwrap();
        assert_eq!(read_response(&mut c).0, 200);
        drop(h);
        assert!(TcpStream::connect(addr).is_err());
    }
}
