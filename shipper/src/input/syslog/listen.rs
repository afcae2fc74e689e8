//! The network side: UDP, TCP and TLS listeners bound and run on one small tokio runtime
//! ([`super::receive`] serves them), and a writer thread per listener ([`super::writer`]) that
//! appends what they receive to its spool and fsyncs it in groups.
//!
//! Why tokio on one thread: 1,024 mostly idle connections cost a few KiB each as tasks, where
//! threads would cost a stack each; the work per message (framing, parsing) is small next to
//! the fsync, which runs on the writer threads so a slow disk never stalls the sockets' reads
//! beyond the bounded hand-over queue (that queue filling is the TCP backpressure).
//!
//! The shutdown follows mini-redis, in two steps: every task is told to stop (they stop reading
//! and hand over what they framed), then [`Server::stop`] waits until the last task is gone
//! (at most [`STOP_GRACE`]) and the writers have spooled and fsync'd everything.

use super::spool::{Spool, SpoolError, SpoolState};
use crate::config::syslog::{Listener, SyslogSource, Transport};
use crate::status::ListenerCounters;
use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc as tmpsc, watch, Semaphore};

/// The largest spool segment: once this big it is closed and a new one started. Reclaiming
/// works per segment, so this is the granularity at which space comes back.
pub const SEGMENT_BYTES: u64 = 16 << 20;
/// Encoded batches waiting for a listener's writer: beyond this, connections stop being read.
const QUEUE: usize = 256;
/// At most this many (peer, problem) pairs are remembered for "alert once per peer".
const ALERTED_PEERS: usize = 4096;
/// How long a stop waits for the tasks to hand over what they framed (a writer retrying a
/// full disk would otherwise hold the stop forever).
pub const STOP_GRACE: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    #[error("syslog source {source_name}: cannot listen on {url}: {err}")]
    Bind {
        source_name: String,
        url: String,
        err: std::io::Error,
    },
    #[error("syslog source {source_name}: TLS setup for {url}: {message}")]
    Tls {
        source_name: String,
        url: String,
        message: String,
    },
    #[error("syslog source {source_name}: spool of {url}: {err}")]
    Spool {
        source_name: String,
        url: String,
        err: SpoolError,
    },
    #[error("syslog source {source_name}: cannot start the network thread: {err}")]
    Runtime {
        source_name: String,
        err: std::io::Error,
    },
}

impl ListenError {
    /// The listener that failed, when one did (the network thread is the source's): an
    /// alert carries it in `path`, as the listeners' own alerts do.
    pub fn url(&self) -> Option<&str> {
        match self {
            ListenError::Bind { url, .. }
            | ListenError::Tls { url, .. }
            | ListenError::Spool { url, .. } => Some(url),
            ListenError::Runtime { .. } => None,
        }
    }
}

/// What the listeners report for the agent to log and alert on; the library itself logs nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// First framing error from this peer's address (later ones are only counted).
    FramingError {
        listener: String,
        peer: SocketAddr,
        error: String,
    },
    /// First failed TLS handshake from this peer's address.
    TlsRefused {
        listener: String,
        peer: SocketAddr,
        error: String,
    },
    /// `max_connections` reached: the first refusal of an episode.
    ConnectionsFull { listener: String, max: usize },
    /// The spool reached `spool_max_bytes`: TCP/TLS paused, UDP dropped, until it drains.
    SpoolFull { listener: String },
    /// The episode is over: the spool is down to half of `spool_max_bytes`.
    SpoolDrained { listener: String },
    /// Writing the spool failed; the write is retried, the connections wait.
    SpoolWrite { listener: String, error: String },
}

/// One running listener: what the input needs to read its spool back and report on it.
pub struct ListenerHandle {
    pub listener: Listener,
    /// The address actually bound (differs from the configured one for port 0).
    pub local_addr: SocketAddr,
    pub spool_dir: PathBuf,
    pub spool: Arc<Mutex<Spool>>,
    pub spool_state: Arc<SpoolState>,
    pub stats: Arc<ListenerCounters>,
}

/// Binds each listener of `source` on a port that none of `freed` uses and lets it go at once:
/// whether a restart of the source could bind them, asked before its running listeners stop
/// (a port another process or source holds then leaves them running, connections and all).
/// A port of `freed` is skipped whatever its address, since the listeners holding it stop
/// first; so is port 0. A port taken in the moment between is still possible: the start
/// then fails, naming it, as it would without this.
pub fn probe(source: &SyslogSource, freed: &[&Listener]) -> Result<(), ListenError> {
    let udp = |t: Transport| t == Transport::Udp;
    for l in &source.listen {
        let held = freed
            .iter()
            .any(|f| udp(f.transport) == udp(l.transport) && f.addr.port() == l.addr.port());
        if held || l.addr.port() == 0 {
            continue;
        }
        let bound = match l.transport {
            Transport::Udp => std::net::UdpSocket::bind(l.addr).map(drop),
            Transport::Tcp | Transport::Tls => std::net::TcpListener::bind(l.addr).map(drop),
        };
        bound.map_err(|err| ListenError::Bind {
            source_name: source.name.clone(),
            url: l.url(),
            err,
        })?;
    }
    Ok(())
}

/// The listeners of one syslog source.
pub struct Server {
    pub listeners: Vec<ListenerHandle>,
    shutdown: Option<watch::Sender<bool>>,
    net_thread: Option<std::thread::JoinHandle<()>>,
    writers: Vec<std::thread::JoinHandle<()>>,
}

/// Where a listener's spool lives: `<state_dir>/spool/<source>/<transport-ip-port>/`.
pub fn spool_dir(state_dir: &Path, source: &str, l: &Listener) -> PathBuf {
    state_dir.join("spool").join(source).join(l.slug())
}

/// What every task of one listener shares.
pub(super) struct Ctx {
    pub(super) url: String,
    pub(super) max_message_bytes: usize,
    pub(super) queue: tmpsc::Sender<Vec<u8>>,
    pub(super) state: Arc<SpoolState>,
    pub(super) stats: Arc<ListenerCounters>,
    pub(super) events: mpsc::Sender<Event>,
    /// (sender address, what went wrong) already alerted: one alert per peer and problem.
    pub(super) alerted: Mutex<HashSet<(IpAddr, String)>>,
    pub(super) conn_full_alerted: AtomicBool,
    /// Set while a full-spool episode is on (so it is alerted once).
    pub(super) full_episode: AtomicBool,
    /// Becomes true when the server stops: tasks stop reading and return.
    pub(super) stop: watch::Receiver<bool>,
}

impl Ctx {
    /// Should this problem of this peer be alerted (the first time for its address)?
    pub(super) fn first_for(&self, peer: SocketAddr, what: &str) -> bool {
        let mut seen = self.alerted.lock().unwrap_or_else(|p| p.into_inner());
        if seen.len() >= ALERTED_PEERS {
            return false;
        }
        seen.insert((peer.ip(), what.to_string()))
    }

    /// Notes the spool's fullness, alerting on the first sight of each episode → full?
    pub(super) fn spool_full(&self) -> bool {
        let full = self.state.full.load(Ordering::Acquire);
        let low = self.state.low.load(Ordering::Acquire);
        // One atomic step, as every connection of the listener calls this.
        let mut change = None;
        let _ = self
            .full_episode
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |was| {
                let (now, c) = full_episode(was, full, low);
                change = c;
                (now != was).then_some(now)
            });
        let event = match change {
            Some(true) => Event::SpoolFull {
                listener: self.url.clone(),
            },
            Some(false) => Event::SpoolDrained {
                listener: self.url.clone(),
            },
            None => return full,
        };
        let _ = self.events.send(event);
        full
    }
}

/// A full-spool episode (`was`) given the spool's state → (episode now, Some(new state) when
/// it starts or ends). It starts at the limit and ends only at half of it: while the sink
/// catches up the spool drains a segment at a time and refills to the limit each time, which
/// is one problem for an operator, so one alert.
fn full_episode(was: bool, full: bool, low: bool) -> (bool, Option<bool>) {
    match (was, full, low) {
        (false, true, _) => (true, Some(true)),
        (true, false, true) => (false, Some(false)),
        _ => (was, None),
    }
}

#[cfg(test)]
#[test]
fn a_spool_refilling_while_it_drains_is_one_full_episode() {
    // At the limit, one segment reclaimed, at the limit again, … then down to half.
    let steps = [
        (true, false),
        (false, false),
        (true, false),
        (false, false),
        (true, false),
        (false, true),
        (true, false),
    ];
    let mut was = false;
    let mut changes = Vec::new();
    for (full, low) in steps {
        let (now, c) = full_episode(was, full, low);
        was = now;
        changes.extend(c);
    }
    assert_eq!(changes, [true, false, true]);
}

impl Server {
    /// Binds every listener of `source` (so a port in use is an error now, naming it), opens
    /// their spools and starts the network thread and the writers.
    /// `start_of` gives each listener's committed spool offset (where an empty spool begins),
    /// `counters_of` the counters it reports into.
    pub fn start(
        source: &SyslogSource,
        state_dir: &Path,
        start_of: &dyn Fn(&Listener) -> u64,
        counters_of: &dyn Fn(&Listener) -> Arc<ListenerCounters>,
        events: mpsc::Sender<Event>,
        bell: crate::input::Bell,
    ) -> Result<Server, ListenError> {
        let name = &source.name;
        let tls = match &source.tls {
            Some(t) => Some(tls_acceptor(t).map_err(|message| {
                ListenError::Tls {
                    source_name: name.clone(),
                    url: source
                        .listen
                        .iter()
                        .find(|l| l.transport == Transport::Tls)
                        .map(Listener::url)
                        .unwrap_or_default(),
                    message,
                }
            })?),
            None => None,
        };
        enum Bound {
            Udp(std::net::UdpSocket),
            Tcp(std::net::TcpListener),
        }
        let mut bound = Vec::new();
        for l in &source.listen {
            let bind_err = |err| ListenError::Bind {
                source_name: name.clone(),
                url: l.url(),
                err,
            };
            let (sock, local) = match l.transport {
                Transport::Udp => {
                    let s = std::net::UdpSocket::bind(l.addr).map_err(bind_err)?;
                    grow_receive_buffer(&s);
                    s.set_nonblocking(true).map_err(bind_err)?;
                    let a = s.local_addr().map_err(bind_err)?;
                    (Bound::Udp(s), a)
                }
                Transport::Tcp | Transport::Tls => {
                    let s = std::net::TcpListener::bind(l.addr).map_err(bind_err)?;
                    s.set_nonblocking(true).map_err(bind_err)?;
                    let a = s.local_addr().map_err(bind_err)?;
                    (Bound::Tcp(s), a)
                }
            };
            bound.push((l.clone(), sock, local));
        }

        // Space comes back a segment at a time: a spool holds at least eight.
        let segment = (source.spool_max_bytes / 8).clamp(8 << 10, SEGMENT_BYTES);
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut listeners = Vec::new();
        let mut writers = Vec::new();
        let mut tasks: Vec<(Arc<Ctx>, Bound, Transport)> = Vec::new();
        for (l, sock, local_addr) in bound {
            let dir = spool_dir(state_dir, name, &l);
            let spool = Spool::open(&dir, start_of(&l), segment, source.spool_max_bytes).map_err(
                |err| ListenError::Spool {
                    source_name: name.clone(),
                    url: l.url(),
                    err,
                },
            )?;
            let spool_state = spool.state().clone();
            let spool = Arc::new(Mutex::new(spool));
            let stats = counters_of(&l);
            spool_state.report_to(&stats);
            let (tx, rx) = tmpsc::channel(QUEUE);
            let url = l.url();
            writers.push(super::writer::spawn_writer(
                url.clone(),
                spool.clone(),
                rx,
                stats.clone(),
                events.clone(),
                bell.clone(),
            ));
            let ctx = Arc::new(Ctx {
                url,
                max_message_bytes: source.max_message_bytes,
                queue: tx,
                state: spool_state.clone(),
                stats: stats.clone(),
                events: events.clone(),
                alerted: Mutex::new(HashSet::new()),
                conn_full_alerted: AtomicBool::new(false),
                full_episode: AtomicBool::new(false),
                stop: stop_rx.clone(),
            });
            tasks.push((ctx, sock, l.transport));
            listeners.push(ListenerHandle {
                listener: l,
                local_addr,
                spool_dir: dir,
                spool,
                spool_state,
                stats,
            });
        }

        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .build()
            .map_err(|err| ListenError::Runtime {
                source_name: name.clone(),
                err,
            })?;
        let max_connections = source.max_connections;
        let net_thread = std::thread::Builder::new()
            .name(format!("syslog-{name}"))
            .spawn(move || {
                rt.block_on(async move {
                    // One budget of connections for the whole source, TCP and TLS together.
                    let permits = Arc::new(Semaphore::new(max_connections));
                    let ctxs: Vec<Arc<Ctx>> = tasks.iter().map(|t| t.0.clone()).collect();
                    for (ctx, sock, transport) in tasks {
                        match sock {
                            Bound::Udp(s) => match tokio::net::UdpSocket::from_std(s) {
                                Ok(s) => {
                                    tokio::spawn(super::receive::serve_udp(s, ctx));
                                }
                                Err(e) => tracing::error!("{}: {e}", ctx.url),
                            },
                            Bound::Tcp(s) => match tokio::net::TcpListener::from_std(s) {
                                Ok(s) => {
                                    let tls = (transport == Transport::Tls)
                                        .then(|| tls.clone())
                                        .flatten();
                                    tokio::spawn(super::receive::accept_loop(
                                        s,
                                        ctx,
                                        tls,
                                        permits.clone(),
                                        max_connections,
                                    ));
                                }
                                Err(e) => tracing::error!("{}: {e}", ctx.url),
                            },
                        }
                    }
                    let mut stop = stop_rx;
                    let _ = stop.wait_for(|s| *s).await;
                    // Every task holds its listener's context: gone means handed over.
                    let deadline = tokio::time::Instant::now() + STOP_GRACE;
                    while ctxs.iter().any(|c| Arc::strong_count(c) > 1)
                        && tokio::time::Instant::now() < deadline
                    {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                });
                // Dropping the runtime ends what is left, and with it the queues' senders.
                drop(rt);
            })
            .map_err(|err| ListenError::Runtime {
                source_name: name.clone(),
                err,
            })?;
        Ok(Server {
            listeners,
            shutdown: Some(stop_tx),
            net_thread: Some(net_thread),
            writers,
        })
    }

    /// Stops listening; what was already received is spooled and fsync'd before this returns.
    pub fn stop(mut self) {
        self.stop_inner();
    }

    fn stop_inner(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(true);
        }
        if let Some(t) = self.net_thread.take() {
            let _ = t.join();
        }
        for w in self.writers.drain(..) {
            let _ = w.join();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop_inner();
    }
}

/// A bigger kernel buffer rides out bursts while the writer fsyncs (what rsyslog's imudp
/// `rcvbufSize` is for). Best effort: the kernel caps it at `net.core.rmem_max`.
fn grow_receive_buffer(s: &std::net::UdpSocket) {
    use std::os::fd::AsRawFd;
    let size: libc::c_int = 8 << 20;
    // SAFETY: a valid socket descriptor and a c_int option of the right size.
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            &size as *const _ as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

fn tls_acceptor(t: &crate::config::syslog::SyslogTls) -> Result<tokio_rustls::TlsAcceptor, String> {
    let certs = crate::tls::load_certs(&t.cert).map_err(|e| e.to_string())?;
    let key = crate::tls::load_key(&t.key).map_err(|e| e.to_string())?;
    let provider = crate::tls::provider();
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let config = match &t.client_ca {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in crate::tls::load_certs(ca).map_err(|e| e.to_string())? {
                roots.add(c).map_err(|e| format!("{}: {e}", ca.display()))?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()
            .map_err(|e| e.to_string())?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    }
    .with_single_cert(certs, key)
    .map_err(|e| e.to_string())?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}
