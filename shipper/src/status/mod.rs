//! The running agent's picture of itself: what `status --json`, the control socket's `status`
//! and the monitor's `/api/v1/status` return, and what `/metrics` and `/healthz` are made from.
//!
//! A leaf: the pipeline and its inputs report into the [`counters`] they are given, and the
//! store answers for what is in `store.db`; this module imports none of them.

mod counters;
mod listeners;
mod transforms;

pub use counters::{Destination, LatencyRecorder, ShipStats, TailStats, LATENCY_BOUNDS};
pub use listeners::{ListenerCounters, ListenerList, ListenerStatus, SilentList};
pub use transforms::{TransformCounters, TransformList, TransformStatus};

use crate::config::Config;
use crate::store::{now_secs, report, Store};
use serde::{Deserialize, Serialize};
use std::sync::atomic::Ordering;

/// Past this long with a failing sink, the agent reports itself unhealthy (the default of
/// `[monitor] unhealthy_after`).
pub const SINK_DOWN_UNHEALTHY_SECS: u64 = 60;
/// How many recent alerts a status carries.
pub const RECENT_ALERTS: usize = 50;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Status {
    pub host_id: String,
    pub pid: u32,
    pub version: String,
    pub started_at: i64,
    pub uptime_secs: i64,
    pub config_path: String,
    pub state_dir: String,
    /// The sink that has been failing longest, else the first: the one sink of a `[sink]`
    /// config, as before routes.
    pub sink: SinkStatus,
    /// Every sink, in config order (one for a `[sink]` config). Default: an older agent's
    /// status has only `sink`.
    #[serde(default)]
    pub sinks: Vec<SinkStatus>,
    pub sources: Vec<SourceStatus>,
    pub streams: Vec<StreamStatus>,
    pub alerts: Vec<AlertStatus>,
    pub counters: Counters,
    pub store: StoreStatus,
    pub health: Health,
    /// Batches by seconds from first record to acknowledgement: (upper bound, cumulative count).
    pub batch_latency: Histogram,
    /// Network listeners (syslog sources), one per `listen` entry.
    #[serde(default)]
    pub listeners: Vec<ListenerStatus>,
    /// Named transforms (`[transforms.NAME]`), in name order.
    #[serde(default)]
    pub transforms: Vec<TransformStatus>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SinkStatus {
    /// `default` for `[sink]`, else the NAME of `[sinks.NAME]`.
    #[serde(default)]
    pub name: String,
    pub kind: String,
    pub description: String,
    /// `ok` or `failing`.
    pub state: String,
    pub failing_since: Option<i64>,
    pub last_ok: Option<i64>,
    pub errors: u64,
    pub retries: u64,
    pub last_error: Option<String>,
    /// Records this sink acknowledged since the agent started (committed only once every sink
    /// of their source acknowledged them).
    #[serde(default)]
    pub records: u64,
    #[serde(default)]
    pub batches: u64,
    /// Where a sink with several URLs sends now (a collector sink's `urls`); None with one.
    #[serde(default)]
    pub current: Option<String>,
    /// Its moves to the next URL after a failure since the agent started.
    #[serde(default)]
    pub failovers: u64,
}

impl SinkStatus {
    /// How health and logs name it: its description alone for the one `[sink]`.
    pub fn label(&self) -> String {
        if self.name.is_empty() || self.name == crate::config::DEFAULT_SINK {
            self.description.clone()
        } else {
            format!("{} ({})", self.name, self.description)
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SourceStatus {
    pub name: String,
    pub paths: Vec<String>,
    /// `file`, `pack` or `syslog` (whose `paths` are its listeners).
    pub origin: String,
    pub streams: u64,
    pub records_shipped: u64,
    pub bytes_shipped: u64,
    pub bytes_read: u64,
    pub lag_bytes: u64,
    pub overlong_records: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StreamStatus {
    pub stream: String,
    pub source: String,
    pub path: String,
    pub state: String,
    pub compressed: bool,
    pub size: u64,
    pub read_offset: u64,
    pub committed_offset: u64,
    pub lag_bytes: u64,
    pub records: u64,
    pub overlong_records: u64,
    pub last_read: Option<i64>,
}

impl From<report::StreamReport> for StreamStatus {
    fn from(r: report::StreamReport) -> Self {
        StreamStatus {
            lag_bytes: r.lag_bytes,
            stream: r.stream,
            source: r.source,
            path: r.path,
            state: r.state,
            compressed: r.compressed,
            size: r.size,
            read_offset: r.read_offset,
            committed_offset: r.committed_offset,
            records: r.records,
            overlong_records: r.overlong_records,
            last_read: r.last_read,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AlertStatus {
    pub time: i64,
    pub kind: String,
    pub source: Option<String>,
    pub stream: Option<String>,
    pub path: Option<String>,
    pub detail: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Counters {
    pub bytes_read: u64,
    pub records_read: u64,
    pub records_shipped: u64,
    pub bytes_shipped: u64,
    pub batches: u64,
    pub overlong_records: u64,
    pub open_files: u64,
    pub fingerprint_collisions: u64,
    pub truncations: u64,
    /// Followed files whose descriptor is closed until they change (close_inactive, or making
    /// room under max_open_files). Default: an older agent's status has none.
    #[serde(default)]
    pub parked_files: u64,
    /// Times files had to wait because every open-file slot was taken.
    #[serde(default)]
    pub held_back: u64,
    /// Streams parked to keep partial lines under discovery.max_partial_bytes.
    #[serde(default)]
    pub partial_parks: u64,
    pub sink_errors: u64,
    pub sink_retries: u64,
    /// Alerts by kind, from the store (all time, not only the recent ones).
    pub alerts_by_kind: std::collections::BTreeMap<String, u64>,
}

impl From<report::AlertReport> for AlertStatus {
    fn from(r: report::AlertReport) -> Self {
        AlertStatus {
            time: r.time,
            kind: r.kind,
            source: r.source,
            stream: r.stream,
            path: r.path,
            detail: r.detail,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StoreStatus {
    pub path: String,
    /// store.db plus its WAL.
    pub bytes: u64,
    pub writable: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Health {
    pub ok: bool,
    /// Why not, when not ok.
    pub reason: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Histogram {
    /// (upper bound in seconds, cumulative count), ascending; the last bound is +Inf (f64::MAX).
    pub buckets: Vec<(f64, u64)>,
    pub sum: f64,
    pub count: u64,
}

/// Everything a status is made from, shared by the agent's threads.
#[derive(Clone)]
pub struct Live {
    /// One per group's pipeline (its tailer and the osquery outbox report into it).
    pub tails: Vec<std::sync::Arc<TailStats>>,
    /// What was committed (every sink of a batch acknowledged it), and the store's state.
    pub ship: std::sync::Arc<ShipStats>,
    pub started_at: i64,
    /// Each sink's own delivery counters, in config order.
    pub sinks: Vec<LiveSink>,
    /// Which sources came from packs (the rest are from the file).
    pub pack_sources: Vec<String>,
    /// The syslog listeners' counters, one list per syslog input (one per group of sinks).
    pub listeners: Vec<ListenerList>,
    /// The syslog sources not listening at all, one list per syslog input.
    pub silent: Vec<SilentList>,
    /// The named transforms' counters.
    pub transforms: TransformList,
}

/// One sink as the running agent knows it.
#[derive(Clone)]
pub struct LiveSink {
    pub name: String,
    pub kind: String,
    pub description: String,
    /// Its deliveries, failures and retries (not commits: those are [`Live::ship`]'s).
    pub stats: std::sync::Arc<ShipStats>,
}

/// A send (or wait for its acknowledgement) under way this long counts as the sink failing,
/// from the moment it began: the destination takes nothing. Only for the sinks with no timeout
/// of their own (file, stdout); the collector and syslog sinks time their reads and writes out
/// and fail by themselves, and a slow but working collector (replies within its 60 s
/// `timeout`) must not show as failing.
pub const STUCK_AFTER_SECS: i64 = 10;

impl LiveSink {
    fn status(&self, now: i64) -> SinkStatus {
        let ship = &self.stats;
        let untimed = matches!(self.kind.as_str(), "file" | "stdout");
        let stuck = match ship.sending_since.load(Ordering::Relaxed) {
            0 => None,
            t => Some(t as i64).filter(|t| untimed && now - t >= STUCK_AFTER_SECS),
        };
        let failing_since = match ship.failing_since.load(Ordering::Relaxed) {
            0 => stuck,
            t => Some(t as i64),
        };
        let last_error = match stuck {
            Some(t) => Some(format!(
                "one send has not returned for {} s: the destination neither takes nor acknowledges data (a pipe nobody reads, a hung file system, a frozen peer?)",
                now - t
            )),
            None => ship.last_error.lock().ok().and_then(|e| e.clone()),
        };
        let last_ok = match ship.last_ok.load(Ordering::Relaxed) {
            0 => None,
            t => Some(t as i64),
        };
        let destination = ship.destination.lock().ok().and_then(|d| d.clone());
        SinkStatus {
            name: self.name.clone(),
            kind: self.kind.clone(),
            description: self.description.clone(),
            state: if failing_since.is_some() {
                "failing"
            } else {
                "ok"
            }
            .into(),
            failing_since,
            last_ok,
            errors: ship.sink_errors.load(Ordering::Relaxed),
            retries: ship.sink_retries.load(Ordering::Relaxed),
            last_error,
            records: ship.records.load(Ordering::Relaxed),
            batches: ship.batches.load(Ordering::Relaxed),
            current: destination.as_ref().map(|d| d.url.clone()),
            failovers: destination.map(|d| d.failovers).unwrap_or(0),
        }
    }
}

impl Status {
    /// Builds the picture from the live counters and a read-only look at the store.
    pub fn collect(cfg: &Config, live: &Live) -> Status {
        let now = now_secs();
        let ship = &live.ship;
        let sinks: Vec<SinkStatus> = live.sinks.iter().map(|s| s.status(now)).collect();
        let sink = sinks
            .iter()
            .filter(|s| s.failing_since.is_some())
            .min_by_key(|s| s.failing_since)
            .or(sinks.first())
            .cloned()
            .unwrap_or_else(|| SinkStatus {
                name: String::new(),
                kind: String::new(),
                description: "none".into(),
                state: "ok".into(),
                failing_since: None,
                last_ok: None,
                errors: 0,
                retries: 0,
                last_error: None,
                records: 0,
                batches: 0,
                current: None,
                failovers: 0,
            });
        let failing_since = sink.failing_since;
        let store_path = cfg.store_path();
        let mut streams = Vec::new();
        let mut alerts = Vec::new();
        let mut alerts_by_kind = std::collections::BTreeMap::new();
        let mut store_problem = None;
        match Store::open_read_only(&store_path) {
            Ok(conn) => {
                match report::streams(&conn) {
                    Ok(r) => streams = r.into_iter().map(StreamStatus::from).collect(),
                    Err(e) => store_problem = Some(format!("cannot read streams: {e}")),
                }
                if let Ok(r) = report::recent_alerts(&conn, RECENT_ALERTS) {
                    alerts = r.into_iter().map(AlertStatus::from).collect();
                }
                if let Ok(k) = report::alerts_by_kind(&conn) {
                    alerts_by_kind = k;
                }
            }
            Err(e) => store_problem = Some(e.to_string()),
        }
        let syslog = cfg.syslog_sources.iter().map(|s| {
            (
                &s.name,
                s.listen.iter().map(|l| l.url()).collect(),
                "syslog",
            )
        });
        let sources = cfg
            .sources
            .iter()
            .map(|s| {
                let origin = if live.pack_sources.contains(&s.name) {
                    "pack"
                } else {
                    "file"
                };
                (&s.name, s.paths.clone(), origin)
            })
            .chain(syslog)
            .map(|(name, paths, origin)| {
                let mine: Vec<&StreamStatus> =
                    streams.iter().filter(|x| &x.source == name).collect();
                SourceStatus {
                    name: name.clone(),
                    paths,
                    origin: origin.into(),
                    streams: mine.len() as u64,
                    records_shipped: mine.iter().map(|x| x.records).sum(),
                    bytes_shipped: mine.iter().map(|x| x.committed_offset).sum(),
                    bytes_read: mine.iter().map(|x| x.read_offset).sum(),
                    lag_bytes: mine.iter().map(|x| x.lag_bytes).sum(),
                    overlong_records: mine.iter().map(|x| x.overlong_records).sum(),
                }
            })
            .collect();
        let tail = &TailStats::total(&live.tails);
        let counters = Counters {
            bytes_read: tail.bytes_read.load(Ordering::Relaxed),
            records_read: tail.records_read.load(Ordering::Relaxed),
            records_shipped: ship.records.load(Ordering::Relaxed),
            bytes_shipped: ship.bytes.load(Ordering::Relaxed),
            batches: ship.batches.load(Ordering::Relaxed),
            overlong_records: tail.overlong_records.load(Ordering::Relaxed),
            open_files: tail.open_files.load(Ordering::Relaxed),
            fingerprint_collisions: tail.fingerprint_collisions.load(Ordering::Relaxed),
            truncations: tail.truncations.load(Ordering::Relaxed),
            parked_files: tail.parked_files.load(Ordering::Relaxed),
            held_back: tail.held_back.load(Ordering::Relaxed),
            partial_parks: tail.partial_parks.load(Ordering::Relaxed),
            sink_errors: sinks.iter().map(|s| s.errors).sum(),
            sink_retries: sinks.iter().map(|s| s.retries).sum(),
            alerts_by_kind,
        };
        let store = log_sensor_common::state_dir::STORE;
        let bytes = [store.to_string(), format!("{store}-wal")]
            .iter()
            .filter_map(|f| std::fs::metadata(cfg.state_dir.join(f)).ok())
            .map(|m| m.len())
            .sum();
        let writable = ship
            .store_error
            .lock()
            .map(|e| e.is_none())
            .unwrap_or(false);
        let health = if let Some(p) = &store_problem {
            Health {
                ok: false,
                reason: Some(format!("store unreadable: {p}")),
            }
        } else if !writable {
            let e = ship
                .store_error
                .lock()
                .ok()
                .and_then(|e| e.clone())
                .unwrap_or_default();
            Health {
                ok: false,
                reason: Some(format!("store unwritable: {e}")),
            }
        } else if let Some(why) = live
            .silent
            .iter()
            .find_map(|l| l.lock().ok().and_then(|l| l.first().cloned()))
        {
            Health {
                ok: false,
                reason: Some(why),
            }
        } else if let Some(since) =
            failing_since.filter(|s| now - s >= cfg.monitor.unhealthy_after.as_secs() as i64)
        {
            Health {
                ok: false,
                reason: Some(format!(
                    "sink {} failing for {} s: {}",
                    sink.label(),
                    now - since,
                    sink.last_error.clone().unwrap_or_default()
                )),
            }
        } else {
            Health {
                ok: true,
                reason: None,
            }
        };
        Status {
            host_id: cfg.host_id.clone(),
            pid: std::process::id(),
            version: env!("CARGO_PKG_VERSION").into(),
            started_at: live.started_at,
            uptime_secs: now - live.started_at,
            config_path: cfg.path.display().to_string(),
            state_dir: cfg.state_dir.display().to_string(),
            sink,
            sinks,
            sources,
            streams,
            alerts,
            counters,
            store: StoreStatus {
                path: store_path.display().to_string(),
                bytes,
                writable,
            },
            health,
            batch_latency: ship.latency.snapshot(),
            listeners: live
                .listeners
                .iter()
                .flat_map(|list| match list.lock() {
                    Ok(l) => l.iter().map(|c| c.snapshot()).collect(),
                    Err(_) => Vec::new(),
                })
                .collect(),
            transforms: match live.transforms.lock() {
                Ok(t) => t.iter().map(|c| c.snapshot()).collect(),
                Err(_) => Vec::new(),
            },
        }
    }
}
