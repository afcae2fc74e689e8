//! Heartbeats for queue queries.
//!
//! osqueryd makes no logger call for a differential query whose diff is empty (osquery
//! `osquery/dispatcher/scheduler.cpp`, `launchQuery`), so a quiet queue query looks exactly
//! like a broken one. For each queue query (named in a pack's `log_sensor.queue_queries` and
//! scheduled by osquery), when its interval (plus a little grace for the run itself) passes
//! with no logger call for it, a heartbeat record goes into the outbox:
//! `{"name":…,"hostIdentifier":…,"calendarTime":…,"unixTime":…,"action":"heartbeat",
//! "interval":…,"rows":0,"last_executed":…}`.
//!
//! Names and intervals come from osquery itself (`ExtensionManager.query` with
//! `SELECT name, interval, last_executed FROM osquery_schedule`); when osquery cannot answer,
//! from the pack files (`pack<delim><pack>_<query>`, the pack's interval).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::calendar::{ascii_time, unix_now};
use super::ordered_json;
use super::outbox::{Kind, Outbox, Record};
use crate::agent_config::AgentConfig;
use crate::shutdown::Shutdown;
use crate::thrift::client::ManagerClient;

/// The schedule query sent to osquery.
pub const SCHEDULE_SQL: &str = "SELECT name, interval, last_executed FROM osquery_schedule";
/// How often the schedule and the packs are read again.
const REFRESH_EVERY: Duration = Duration::from_secs(10);
/// How often due heartbeats are checked.
const TICK: Duration = Duration::from_secs(1);

/// Last logger call per query name.
pub struct Activity {
    /// Unix seconds of the last call (or heartbeat) per query name.
    last: Mutex<HashMap<String, i64>>,
    /// When the extension started: the baseline for queries not heard from yet.
    started: i64,
}

impl Activity {
    pub fn new(started: i64) -> Activity {
        Activity {
            last: Mutex::new(HashMap::new()),
            started,
        }
    }

    pub fn touch(&self, name: &str, now: i64) {
        self.last
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name.to_string(), now);
    }

    pub fn last(&self, name: &str) -> i64 {
        self.last
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .copied()
            .unwrap_or(self.started)
    }
}

/// A queue query as scheduled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueQuery {
    /// The scheduled name (`pack_health_agent_alerts`).
    pub name: String,
    /// Seconds between runs.
    pub interval: i64,
    /// Unix time of the last run, when osquery says.
    pub last_executed: Option<i64>,
}

/// Queue queries declared by pack files: scheduled name → the pack's interval.
pub fn declared_queue_queries(files: &[PathBuf], delimiter: &str) -> Vec<(String, i64)> {
    let mut out = Vec::new();
    for f in files {
        let Some(pack) = f.file_stem().and_then(|s| s.to_str()) else {
            continue;
        };
        let doc: Value = match std::fs::read_to_string(f).map(|t| serde_json::from_str(&t)) {
            Ok(Ok(v)) => v,
            Ok(Err(e)) => {
                tracing::warn!("pack {} is not valid JSON: {e}", f.display());
                continue;
            }
            Err(e) => {
                tracing::debug!("cannot read pack {}: {e}", f.display());
                continue;
            }
        };
        let names = doc
            .pointer("/log_sensor/queue_queries")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        for q in names.iter().filter_map(Value::as_str) {
            let interval = doc
                .pointer(&format!(
                    "/queries/{}/interval",
                    q.replace('~', "~0").replace('/', "~1")
                ))
                .and_then(|v| {
                    v.as_i64()
                        .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
                })
                .unwrap_or(3600);
            out.push((format!("pack{delimiter}{pack}{delimiter}{q}"), interval));
        }
    }
    out
}

/// Joins the declared queue queries with osquery's schedule (rows of `SCHEDULE_SQL`).
pub fn scheduled(
    declared: &[(String, i64)],
    schedule: Option<&[crate::thrift::wire::StringMap]>,
) -> Vec<QueueQuery> {
    match schedule {
        Some(rows) => rows
            .iter()
            .filter_map(|r| {
                let name = r.get("name")?;
                declared.iter().find(|(n, _)| n == name)?;
                let interval = r
                    .get("interval")
                    .and_then(|s| s.parse().ok())
                    .filter(|i: &i64| *i > 0)?;
                let last_executed = r.get("last_executed").and_then(|s| s.parse().ok());
                Some(QueueQuery {
                    name: name.clone(),
                    interval,
                    last_executed,
                })
            })
            .collect(),
        None => declared
            .iter()
            .map(|(name, interval)| QueueQuery {
                name: name.clone(),
                interval: *interval,
                last_executed: None,
            })
            .collect(),
    }
}

/// Seconds of silence after which a heartbeat is due: the interval plus room for the run.
pub fn due_after(interval: i64) -> i64 {
    interval + (interval / 10).clamp(1, 30)
}

/// Emits the heartbeats due at `now`; returns how many.
pub fn emit_due(
    queries: &[QueueQuery],
    activity: &Activity,
    outbox: &Mutex<Outbox>,
    host_id: &str,
    now: i64,
) -> usize {
    let mut n = 0;
    for q in queries {
        // osquery has not run it yet (it reports 0): silence means nothing.
        if q.last_executed == Some(0) || now - activity.last(&q.name) < due_after(q.interval) {
            continue;
        }
        let record = ordered_json(&[
            ("name", Value::from(q.name.clone())),
            ("hostIdentifier", Value::from(host_id)),
            ("calendarTime", Value::from(ascii_time(now))),
            ("unixTime", Value::from(now)),
            ("action", Value::from("heartbeat")),
            ("interval", Value::from(q.interval)),
            ("rows", Value::from(0)),
            (
                "last_executed",
                q.last_executed.map(Value::from).unwrap_or(Value::Null),
            ),
        ]);
        let mut o = outbox.lock().unwrap_or_else(|e| e.into_inner());
        o.push(Record {
            time: now,
            kind: Kind::Heartbeat,
            name: q.name.clone(),
            category: None,
            record,
        });
        o.count("heartbeats", 1);
        activity.touch(&q.name, now);
        n += 1;
    }
    n
}

/// Everything the heartbeat thread needs.
pub struct Heartbeats {
    pub config: AgentConfig,
    pub manager_socket: PathBuf,
    pub pack_delimiter: String,
    pub outbox: Arc<Mutex<Outbox>>,
    pub activity: Arc<Activity>,
    pub shutdown: Arc<Shutdown>,
}

impl Heartbeats {
    /// Runs until shutdown.
    pub fn run(self) {
        let mut queries: Vec<QueueQuery> = Vec::new();
        let mut refreshed: Option<Instant> = None;
        let mut schedule_warned = false;
        loop {
            if refreshed.is_none_or(|t| t.elapsed() >= REFRESH_EVERY) {
                let declared =
                    declared_queue_queries(&self.config.pack_files(), &self.pack_delimiter);
                let schedule = if declared.is_empty() {
                    Ok(Vec::new())
                } else {
                    query_schedule(&self.manager_socket)
                };
                queries = match &schedule {
                    Ok(rows) => scheduled(&declared, Some(rows)),
                    Err(e) => {
                        if !schedule_warned {
                            tracing::warn!("cannot read osquery's schedule ({e}); using the packs' intervals for heartbeats");
                            schedule_warned = true;
                        }
                        scheduled(&declared, None)
                    }
                };
                refreshed = Some(Instant::now());
            }
            emit_due(
                &queries,
                &self.activity,
                &self.outbox,
                &self.config.host_id,
                unix_now(),
            );
            if self.shutdown.wait_timeout(TICK) {
                return;
            }
        }
    }
}

fn query_schedule(socket: &Path) -> Result<Vec<crate::thrift::wire::StringMap>, String> {
    let mut c =
        ManagerClient::connect(socket, Duration::from_secs(10)).map_err(|e| e.to_string())?;
    let r = c.query(SCHEDULE_SQL).map_err(|e| e.to_string())?;
    if r.status.code != 0 {
        return Err(format!(
            "osquery answered {}: {}",
            r.status.code, r.status.message
        ));
    }
    Ok(r.response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn due_only_after_the_interval_passes_quietly() {
        let dir = tempfile::tempdir().unwrap();
        let outbox = Mutex::new(Outbox::new(dir.path().join("o.db"), 100));
        let activity = Activity::new(1000);
        let q = vec![QueueQuery {
            name: "pack_p_q".into(),
            interval: 60,
            last_executed: Some(990),
        }];
        assert_eq!(emit_due(&q, &activity, &outbox, "h", 1060), 0);
        assert_eq!(emit_due(&q, &activity, &outbox, "h", 1066), 1);
        assert_eq!(emit_due(&q, &activity, &outbox, "h", 1100), 0);
        activity.touch("pack_p_q", 1130);
        assert_eq!(emit_due(&q, &activity, &outbox, "h", 1190), 0);
    }

    #[test]
    fn schedule_names_select_declared_queries() {
        let declared = vec![("pack_p_q".to_string(), 300)];
        let rows = vec![
            crate::thrift::wire::StringMap::from([
                ("name".into(), "pack_p_q".into()),
                ("interval".into(), "30".into()),
                ("last_executed".into(), "5".into()),
            ]),
            crate::thrift::wire::StringMap::from([
                ("name".into(), "other".into()),
                ("interval".into(), "30".into()),
            ]),
        ];
        assert_eq!(
            scheduled(&declared, Some(&rows)),
            vec![QueueQuery {
                name: "pack_p_q".into(),
                interval: 30,
                last_executed: Some(5)
            }]
        );
    }
}
