//! The syslog source as an [`Input`]: each listener's spool is one stream, read back into the
//! batch with its `fields`, committed in `store.db` like a file's offset once the sink has
//! acknowledged, and reclaimed segment by segment behind the committed offset.
//!
//! One stream per listener, not per sending host: UDP senders are spoofable and hosts are
//! unbounded, so streams per host would let anyone grow `store.db` and the status page without
//! limit; the sender is in every record's `fields.hostname` / `fields.peer` for SQL instead.

use super::listen::{probe, Event, ListenError, ListenerHandle, Server};
use super::spool::SpoolReader;
use crate::batch::{Ack, Intake, Slot, StreamMeta};
use crate::config::syslog::{Listener, SyslogSource};
use crate::config::Config;
use crate::frame::Rec;
use crate::input::{Bell, Input, Turn};
use crate::status::{ListenerCounters, ListenerList, SilentList};
use crate::store::{Alert, Checkpoint, Store, StreamRow, StreamState};
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
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
    /// The sources as configured now (a reload compares against them).
    sources: Vec<SyslogSource>,
    state_dir: PathBuf,
    servers: Vec<(String, Server)>,
    streams: Vec<SpoolStream>,
    store: Arc<Mutex<Store>>,
    /// Given to every listener; the alerts thread ends when the last one is gone.
    events_tx: mpsc::Sender<Event>,
    bell: Bell,
    /// What status shows: one entry per listener, kept across reloads.
    counters: ListenerList,
    /// The sources listening on nothing since the last reload, for `/healthz`.
    silent: SilentList,
    last_reclaim: Instant,
}

impl SyslogInput {
    /// Opens the spools, makes sure each has its stream row, and starts listening (a port in
    /// use fails here, naming the listener).
    pub fn start(
        sources: &[SyslogSource],
        state_dir: &Path,
        store: Arc<Mutex<Store>>,
        bell: Bell,
    ) -> Result<SyslogInput, ListenError> {
        let (events_tx, events) = mpsc::channel();
        let mut input = SyslogInput {
            sources: Vec::new(),
            state_dir: state_dir.to_path_buf(),
            servers: Vec::new(),
            streams: Vec::new(),
            store,
            events_tx,
            bell,
            counters: ListenerList::default(),
            silent: SilentList::default(),
            last_reclaim: Instant::now(),
        };
        for src in sources {
            let server = input.start_server(src)?;
            input.servers.push((src.name.clone(), server));
        }
        input.sources = sources.to_vec();
        super::alerts::spawn(events, input.store.clone(), input.counters.clone());
        input.rebuild_streams(&HashMap::new());
        Ok(input)
    }

    /// The committed spool offset of a listener's stream, from the store.
    fn committed(&self, id: &str) -> Option<u64> {
        let st = self.store.lock().unwrap_or_else(|p| p.into_inner());
        st.stream_offsets(id).ok().flatten().map(|(off, _)| off)
    }

    fn start_server(&self, src: &SyslogSource) -> Result<Server, ListenError> {
        let committed = |l: &Listener| self.committed(&stream_id(&src.name, l)).unwrap_or(0);
        // A listener restarted by a reload keeps its counters (they count since the start).
        let old = self
            .counters
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let counters = |l: &Listener| {
            let id = stream_id(&src.name, l);
            old.iter()
                .find(|c| c.stream == id)
                .cloned()
                .unwrap_or_else(|| Arc::new(ListenerCounters::new(&src.name, &l.url(), &id)))
        };
        let server = Server::start(
            src,
            &self.state_dir,
            &committed,
            &counters,
            self.events_tx.clone(),
            self.bell.clone(),
        )?;
        tracing::info!(source = %src.name, listeners = ?src.listen.iter().map(Listener::url).collect::<Vec<_>>(), "syslog listening");
        Ok(server)
    }

    /// One stream per listener of the running servers; a stream read before (`carried`: its
    /// position and slot) goes on from there, a new one from its committed offset.
    fn rebuild_streams(&mut self, carried: &HashMap<String, (u64, Option<(u64, Slot)>)>) {
        let mut streams = Vec::new();
        let mut counters = Vec::new();
        for (name, server) in &self.servers {
            for h in &server.listeners {
                let id = stream_id(name, &h.listener);
                let first = h
                    .spool
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .first_offset()
                    .unwrap_or(0);
                let durable = h.spool_state.durable.load(Ordering::Acquire);
                let (from, slot) = match carried.get(&id) {
                    Some(&(pos, slot)) => (pos, slot),
                    None => {
                        let committed = self.committed(&id).unwrap_or(0);
                        if committed > durable {
                            tracing::warn!(stream = %id, committed, durable, "the spool ends before its committed offset; reading resumes at its end");
                        }
                        (committed, None)
                    }
                };
                // Never before what is still on disk nor past what is there.
                let from = from.clamp(first, durable.max(first));
                ensure_row(&self.store, &id, name, h, durable);
                h.stats
                    .spool_committed
                    .store(self.committed(&id).unwrap_or(from), Ordering::Relaxed);
                counters.push(h.stats.clone());
                streams.push(SpoolStream {
                    meta: StreamMeta {
                        id: id.as_str().into(),
                        source: name.as_str().into(),
                        fingerprint: None,
                        path: h.listener.url().into(),
                    },
                    reader: SpoolReader::new(&h.spool_dir, h.spool_state.clone(), from),
                    slot,
                    // Streams are pushed in the order `listeners()` yields.
                    handle_ix: streams.len(),
                });
            }
        }
        self.streams = streams;
        *self.counters.lock().unwrap_or_else(|p| p.into_inner()) = counters;
    }

    /// What status shows of the listeners; follows reloads.
    pub fn counters(&self) -> ListenerList {
        self.counters.clone()
    }

    /// The stream of every running listener.
    pub fn stream_ids(&self) -> HashSet<String> {
        self.streams.iter().map(|s| s.meta.id.to_string()).collect()
    }

    /// The sources that listen on nothing, as `NAME: why`; follows reloads.
    pub fn silent(&self) -> SilentList {
        self.silent.clone()
    }

    /// Every listener, in stream order: for status and metrics.
    pub fn listeners(&self) -> impl Iterator<Item = (&str, &ListenerHandle)> {
        self.servers
            .iter()
            .flat_map(|(name, s)| s.listeners.iter().map(move |h| (name.as_str(), h)))
    }

    fn handle(&self, ix: usize) -> &ListenerHandle {
        self.listeners()
            .nth(ix)
            .map(|(_, h)| h)
            .expect("stream has a listener")
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
            h.stats.spool_committed.store(committed, Ordering::Relaxed);
            // The row's size follows the spool between batches, so stream_lag is current.
            let (read, size) = (
                self.streams[i].reader.position(),
                self.streams[i].reader.durable(),
            );
            let st = self.store.lock().unwrap_or_else(|p| p.into_inner());
            if let Err(e) = st.note_read(&id, read, size) {
                tracing::debug!(stream = %id, error = %e, "cannot note the spool's size");
            }
        }
    }
}

/// The stream row for a listener's spool, so `log_sensor_streams`, status and lag show it.
/// Marks `stopped` every active syslog stream no running listener reads (of the sources
/// `owned` names, or of any source when None): removed by a reload, or by an edit made while
/// the agent was down. Status showed them `active` for ever.
pub fn mark_stopped(store: &Mutex<Store>, running: &HashSet<String>, owned: Option<&[String]>) {
    let st = store.lock().unwrap_or_else(|p| p.into_inner());
    let Ok(rows) = st.active_streams_under("syslog:") else {
        return;
    };
    for (stream, source) in rows {
        let ours = owned.is_none_or(|o| o.contains(&source));
        if ours && !running.contains(&stream) {
            if let Err(e) = st.set_stream_state(&stream, StreamState::Stopped) {
                tracing::warn!(stream = %stream, error = %e, "cannot mark the stream stopped");
            }
        }
    }
}

fn ensure_row(store: &Mutex<Store>, id: &str, source: &str, h: &ListenerHandle, size: u64) {
    let mut st = store.lock().unwrap_or_else(|p| p.into_inner());
    if matches!(st.stream_offsets(id), Ok(Some(_))) {
        // A listener back from a reload that had removed it.
        let _ = st.set_stream_state(id, StreamState::Active);
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

    /// The spools keep filling while a sink outage holds the batches: their rows' sizes follow
    /// (once a second, with the reclaim that writes them), so the lag shown grows with them.
    fn stalled(&mut self) {
        self.reclaim();
    }

    /// A source whose options changed is restarted (its connections close; senders reconnect),
    /// a new one started, a removed one stopped; the others keep their connections. Spools
    /// stay: a listener that comes back later goes on from its committed offset.
    ///
    /// A changed source whose new listeners cannot start goes on with its previous settings:
    /// the change is alerted, naming the listener and the error, and not applied (as an
    /// invalid file leaves the running config in place).
    fn reconfigure(&mut self, cfg: &Arc<Config>) {
        let wanted = &cfg.syslog_sources;
        let same = |a: &SyslogSource| {
            self.sources
                .iter()
                .any(|b| b.name == a.name && b.signature() == a.signature())
        };
        if wanted.len() == self.sources.len() && wanted.iter().all(same) {
            return;
        }
        let carried: HashMap<String, (u64, Option<(u64, Slot)>)> = self
            .streams
            .iter()
            .map(|s| (s.meta.id.to_string(), (s.reader.position(), s.slot)))
            .collect();
        let old = std::mem::take(&mut self.servers);
        let unchanged = |name: &str| wanted.iter().any(|w| w.name == name && same(w));
        // A changed or new source whose listeners cannot bind now is left as it is, before
        // anything stops: its running listeners keep their connections and lose no datagram.
        let refused: HashMap<String, ListenError> = {
            // The ports this reload frees: the changed and removed sources' listeners.
            let freed: Vec<&Listener> = old
                .iter()
                .filter(|(n, _)| !unchanged(n))
                .flat_map(|(_, s)| s.listeners.iter().map(|h| &h.listener))
                .collect();
            wanted
                .iter()
                .filter(|w| !same(w))
                .filter_map(|w| probe(w, &freed).err().map(|e| (w.name.clone(), e)))
                .collect()
        };
        // Every other server that does not go on unchanged stops first, a removed one too: a
        // changed or new source may bind a port that another frees in this same reload.
        let mut kept = Vec::new();
        for (name, server) in old {
            if unchanged(&name) || refused.contains_key(&name) {
                kept.push((name, server));
                continue;
            }
            if !wanted.iter().any(|w| w.name == name) {
                tracing::info!(source = %name, "syslog source removed; its listeners stop");
            }
            server.stop();
        }
        let mut servers = Vec::new();
        // The settings each server now runs with, which the next reload compares against: a
        // source left on its previous settings (or not started) then differs from the file,
        // so reloading the same file once the port is free applies it.
        let mut running = Vec::new();
        let mut silent = Vec::new();
        for src in wanted {
            let previous = self.sources.iter().find(|b| b.name == src.name).cloned();
            let server = kept
                .iter()
                .position(|(n, _)| *n == src.name)
                .map(|i| kept.swap_remove(i).1);
            // Why the source's new settings did not start, when they did not.
            let mut failed = None;
            let started = match (server, refused.get(&src.name), previous) {
                (Some(server), Some(e), Some(previous)) => {
                    self.change_not_applied(src, e, &previous);
                    Some((server, previous))
                }
                (Some(server), _, _) => Some((server, src.clone())),
                (None, Some(e), _) => {
                    failed = Some(e.to_string());
                    self.keep_previous(src, e, None)
                }
                (None, None, previous) => match self.start_server(src) {
                    Ok(s) => Some((s, src.clone())),
                    Err(e) => {
                        failed = Some(e.to_string());
                        self.keep_previous(src, &e, previous)
                    }
                },
            };
            match started {
                Some((server, settings)) => {
                    servers.push((src.name.clone(), server));
                    running.push(settings);
                }
                None => silent.push(format!(
                    "{}; the source is not listening",
                    failed.unwrap_or_else(|| format!("syslog source {}", src.name))
                )),
            }
        }
        *self.silent.lock().unwrap_or_else(|p| p.into_inner()) = silent;
        self.servers = servers;
        let owned: Vec<String> = self
            .sources
            .iter()
            .chain(wanted)
            .map(|s| s.name.clone())
            .collect();
        self.sources = running;
        self.rebuild_streams(&carried);
        mark_stopped(&self.store, &self.stream_ids(), Some(&owned));
    }
}

impl SyslogInput {
    /// The new settings of `src` could not start (`err`): its `previous` ones, whose server
    /// was stopped to free their ports, start again → that server and those settings.
    /// Alerted either way; loudest when not even the previous listeners bind again (something
    /// took a port in the moment between), as then the source is not listening at all.
    fn keep_previous(
        &self,
        src: &SyslogSource,
        err: &ListenError,
        previous: Option<SyslogSource>,
    ) -> Option<(Server, SyslogSource)> {
        let Some(previous) = previous else {
            tracing::error!(error = %err, "syslog source not started");
            self.alert(
                "config_error",
                &src.name,
                err.url(),
                format!("{err}; the source is not started"),
            );
            return None;
        };
        match self.start_server(&previous) {
            Ok(server) => {
                self.change_not_applied(src, err, &previous);
                Some((server, previous))
            }
            Err(again) => {
                tracing::error!(error = %err, previous = %again, "syslog source not listening: neither its new nor its previous listeners could be bound");
                self.alert(
                    "syslog_not_listening",
                    &src.name,
                    again.url().or(err.url()),
                    format!(
                        "source {} is not listening: {err}; and its previous listeners ({}) could not be bound again: {again}",
                        src.name,
                        urls(&previous)
                    ),
                );
                None
            }
        }
    }

    /// `src`'s change could not start (`err`) and it runs with its `previous` settings.
    fn change_not_applied(&self, src: &SyslogSource, err: &ListenError, previous: &SyslogSource) {
        tracing::error!(error = %err, "syslog source change not applied; its previous listeners go on");
        self.alert(
            "config_error",
            &src.name,
            err.url(),
            format!(
                "{err}; the change is not applied, the source goes on listening on {}",
                urls(previous)
            ),
        );
    }

    fn alert(&self, kind: &'static str, source: &str, listener: Option<&str>, detail: String) {
        let a = Alert {
            kind,
            source: Some(source.to_string()),
            stream: None,
            path: listener.map(str::to_string),
            detail,
        };
        let st = self.store.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(e) = st.add_alert(&a) {
            tracing::error!(error = %e, "cannot record alert");
        }
    }
}

/// A source's listeners for an alert: `udp://…, tcp://…`.
fn urls(s: &SyslogSource) -> String {
    s.listen
        .iter()
        .map(Listener::url)
        .collect::<Vec<_>>()
        .join(", ")
}
