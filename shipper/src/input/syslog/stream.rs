//! The syslog source as an [`Input`]: each listener's spool is one stream, read back into the
//! batch with its `fields`, committed in `store.db` like a file's offset once the sink has
//! acknowledged, and reclaimed segment by segment behind the committed offset.
//!
//! One stream per listener, not per sending host: UDP senders are spoofable and hosts are
//! unbounded, so streams per host would let anyone grow `store.db` and the status page without
//! limit; the sender is in every record's `fields.hostname` / `fields.peer` for SQL instead.

use super::listen::{Event, ListenError, ListenerHandle, Server};
use super::spool::SpoolReader;
use crate::batch::{Ack, Intake, Slot, StreamMeta};
use crate::config::syslog::{Listener, SyslogSource};
use crate::frame::Rec;
use crate::input::{Bell, Input, Turn};
use crate::store::{Alert, Checkpoint, Store, StreamRow, StreamState};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

/// How often committed offsets are read back from the store to reclaim spool space.
const RECLAIM_EVERY: Duration = Duration::from_secs(1);
/// The pipeline's longest sleep while this input is idle (the listeners also ring the bell).
const POLL: Duration = Duration::from_millis(50);

/// The stream id of a listener's spool: `syslog:<source>:<url>`.
pub fn stream_id(source: &str, l: &Listener) -> String {
    format!("syslog:{source}:{}", l.url())
}

/// One listener's spool as the input reads it.
struct SpoolStream {
    meta: StreamMeta,
    reader: SpoolReader,
    /// This stream's slot in the batch being built, with that batch's generation.
    slot: Option<(u64, Slot)>,
    handle_ix: usize,
}

/// All syslog sources of the config, each with its listeners, spools and streams.
pub struct SyslogInput {
    servers: Vec<(String, Server)>,
    streams: Vec<SpoolStream>,
    store: Arc<Mutex<Store>>,
    events: mpsc::Receiver<Event>,
    bell: Bell,
    last_reclaim: Instant,
}

impl SyslogInput {
    /// Opens the spools, makes sure each has its stream row, and starts listening (a port in
    /// use fails here, naming the listener).
    pub fn start(
        sources: &[SyslogSource],
        state_dir: &Path,
        store: Arc<Mutex<Store>>,
    ) -> Result<SyslogInput, ListenError> {
        let (tx, events) = mpsc::channel();
        let bell = Bell::new();
        let mut servers = Vec::new();
        let mut streams = Vec::new();
        for src in sources {
            let committed = |l: &Listener| -> u64 {
                let st = store.lock().unwrap_or_else(|p| p.into_inner());
                match st.stream_offsets(&stream_id(&src.name, l)) {
                    Ok(Some((off, _))) => off,
                    _ => 0,
                }
            };
            let server = Server::start(src, state_dir, &committed, tx.clone(), bell.clone())?;
            for h in &server.listeners {
                let id = stream_id(&src.name, &h.listener);
                let first = h
                    .spool
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .first_offset()
                    .unwrap_or(0);
                let durable = h.spool_state.durable.load(Ordering::Acquire);
                let committed = committed(&h.listener);
                // Resume after what was delivered; never before what is still on disk nor
                // past what is there (a spool cut by hand).
                let from = committed.clamp(first, durable.max(first));
                if committed > durable {
                    tracing::warn!(stream = %id, committed, durable, "the spool ends before its committed offset; reading resumes at its end");
                }
                ensure_row(&store, &id, &src.name, h, durable);
                streams.push(SpoolStream {
                    meta: StreamMeta {
                        id: id.as_str().into(),
                        source: src.name.as_str().into(),
                        fingerprint: None,
                        path: h.listener.url().into(),
                    },
                    reader: SpoolReader::new(&h.spool_dir, h.spool_state.clone(), from),
                    slot: None,
                    // Streams are pushed in the order `listeners()` yields.
                    handle_ix: streams.len(),
                });
            }
            tracing::info!(source = %src.name, listeners = ?src.listen.iter().map(Listener::url).collect::<Vec<_>>(), "syslog listening");
            servers.push((src.name.clone(), server));
        }
        Ok(SyslogInput {
            servers,
            streams,
            store,
            events,
            bell,
            last_reclaim: Instant::now(),
        })
    }

    /// Rung whenever a listener made new records durable.
    pub fn bell(&self) -> Bell {
        self.bell.clone()
    }

    /// Every listener, in stream order: for status and metrics.
    pub fn listeners(&self) -> impl Iterator<Item = (&str, &ListenerHandle)> {
        self.servers
            .iter()
            .flat_map(|(name, s)| s.listeners.iter().map(move |h| (name.as_str(), h)))
    }

    /// Every listener's counters, for status and `/metrics`.
    pub fn counters(&self) -> Vec<Arc<crate::status::ListenerCounters>> {
        self.listeners().map(|(_, h)| h.stats.clone()).collect()
    }

    fn handle(&self, ix: usize) -> &ListenerHandle {
        self.listeners()
            .nth(ix)
            .map(|(_, h)| h)
            .expect("stream has a listener")
    }

    /// Logs and records what the listeners reported.
    fn drain_events(&self) {
        for e in self.events.try_iter() {
            let (kind, listener, detail) = match &e {
                Event::FramingError {
                    listener,
                    peer,
                    error,
                } => (
                    "syslog_framing",
                    listener,
                    format!("{peer}: {error}; connection closed (later ones from this address are only counted)"),
                ),
                Event::TlsRefused {
                    listener,
                    peer,
                    error,
                } => (
                    "syslog_tls_refused",
                    listener,
                    format!("{peer}: TLS handshake refused: {error}"),
                ),
                Event::ConnectionsFull { listener, max } => (
                    "syslog_connections_full",
                    listener,
                    format!("max_connections ({max}) reached: new connections are closed at once"),
                ),
                Event::SpoolFull { listener } => (
                    "syslog_spool_full",
                    listener,
                    "spool_max_bytes reached: TCP/TLS reads paused, UDP datagrams dropped, until the sink catches up".to_string(),
                ),
                Event::SpoolDrained { listener } => {
                    tracing::info!(%listener, "syslog spool below spool_max_bytes again: reading resumes");
                    continue;
                }
                Event::SpoolWrite { listener, error } => (
                    "syslog_spool_write",
                    listener,
                    format!("{error}; retried every second, connections wait"),
                ),
            };
            tracing::warn!(%listener, kind, "{detail}");
            let source = self
                .listeners()
                .find(|(_, h)| &h.listener.url() == listener)
                .map(|(n, _)| n.to_string());
            let a = Alert {
                kind,
                source,
                stream: None,
                path: Some(listener.clone()),
                detail,
            };
            if let Err(e) = self
                .store
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .add_alert(&a)
            {
                tracing::error!(error = %e, "cannot record alert");
            }
        }
    }

    /// Deletes the spool segments the store says were delivered.
    fn reclaim(&mut self) {
        if self.last_reclaim.elapsed() < RECLAIM_EVERY {
            return;
        }
        self.last_reclaim = Instant::now();
        for i in 0..self.streams.len() {
            let id = self.streams[i].meta.id.to_string();
            let committed = {
                let st = self.store.lock().unwrap_or_else(|p| p.into_inner());
                match st.stream_offsets(&id) {
                    Ok(Some((off, _))) => off,
                    _ => continue,
                }
            };
            let h = self.handle(self.streams[i].handle_ix);
            let res = h
                .spool
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .reclaim(committed);
            if let Err(e) = res {
                tracing::warn!(stream = %id, error = %e, "cannot reclaim spool space");
            }
            h.spool_state.report_to(&h.stats);
        }
    }
}

/// The stream row for a listener's spool, so `log_sensor_streams`, status and lag show it.
fn ensure_row(store: &Mutex<Store>, id: &str, source: &str, h: &ListenerHandle, size: u64) {
    let mut st = store.lock().unwrap_or_else(|p| p.into_inner());
    if matches!(st.stream_offsets(id), Ok(Some(_))) {
        return;
    }
    let row = StreamRow {
        stream: id.to_string(),
        source: source.to_string(),
        fingerprint: None,
        fp_bytes: 0,
        path: h.listener.url(),
        device: 0,
        inode: 0,
        compressed: false,
        size,
        read_offset: 0,
        committed_offset: 0,
        committed_hash: None,
        first_seen: crate::store::now_secs(),
        state: StreamState::Active,
        alerted_too_large: false,
    };
    if let Err(e) = st.upsert_stream(&row) {
        // Kept by the store and written before the first commit that needs it.
        tracing::warn!(stream = %id, error = %e, "cannot record the spool's stream yet");
    }
}

impl Input for SyslogInput {
    fn name(&self) -> &str {
        "syslog"
    }

    fn turn(&mut self, out: &mut Intake<'_>) -> Turn {
        self.drain_events();
        self.reclaim();
        let generation = out.generation();
        for s in &mut self.streams {
            loop {
                if out.full() {
                    return Turn::Busy;
                }
                let (at, end, rec) = match s.reader.next() {
                    Ok(Some(r)) => r,
                    Ok(None) => break,
                    Err(e) => {
                        // Damage on disk (not a torn tail: those are cut at open). The reader
                        // has moved past it; say what was skipped.
                        tracing::error!(stream = %s.meta.id, error = %e, "skipping a damaged spool segment");
                        continue;
                    }
                };
                let slot = match s.slot {
                    Some((g, slot)) if g == generation => slot,
                    _ => {
                        let slot = out.open_stream(
                            s.meta.clone(),
                            Ack::Store(Checkpoint {
                                stream: s.meta.id.to_string(),
                                ..Default::default()
                            }),
                        );
                        s.slot = Some((generation, slot));
                        slot
                    }
                };
                let r = Rec {
                    offset: at,
                    len: rec.len,
                    part: rec.part,
                    bytes: &rec.msg,
                };
                out.push(slot, &r, rec.ts_ms, Some(&rec.fields));
                if let Some(c) = out.ack_mut(slot).checkpoint_mut() {
                    c.committed_offset = end;
                    c.read_offset = end;
                    c.size = s.reader.durable().max(end);
                }
            }
        }
        Turn::Idle
    }

    fn idle_wait(&self) -> Duration {
        POLL
    }
}
