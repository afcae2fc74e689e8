//! Config → every source's chain: the one place that knows each transform type. Runs on the
//! pipeline thread at start and again when a reload changes `[transforms]` or a source's
//! list; a chain that cannot be built leaves the running one in place.

use super::container::{Cri, Docker};
use super::json::Json;
use super::logfmt::Logfmt;
use super::lua::LuaTransform;
use super::regex::RegexParser;
use super::syslog::Syslog;
use super::{Draft, Fault, Outcome, Transform, Transforms, Verdict};
use crate::config::transforms::{TransformConfig, TransformKind};
use crate::config::Config;
use crate::status::{TransformCounters, TransformList};
use crate::store::Store;
use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// What decides the chains: when a reload leaves it alone, the running transforms (and any
/// state a script keeps) stay.
pub fn signature(cfg: &Config) -> String {
    format!("{:?} {:?}", cfg.transforms, cfg.source_transforms)
}

/// Builds every source's chain from `cfg`. On success `list` holds one set of counters per
/// `[transforms.NAME]` (a name kept across a reload keeps its counts).
/// A script's first failure of a streak is an alert in `alerts` (the agent's store).
pub fn build(
    cfg: &Config,
    list: &TransformList,
    alerts: Option<&Arc<Mutex<Store>>>,
) -> Result<Transforms, String> {
    let old: BTreeMap<String, Arc<TransformCounters>> = list
        .lock()
        .map(|l| l.iter().map(|c| (c.name.clone(), c.clone())).collect())
        .unwrap_or_default();
    let counters: BTreeMap<&str, Arc<TransformCounters>> = cfg
        .transforms
        .iter()
        .map(|t| {
            let kind = t.kind.type_name();
            let c = match old.get(&t.name) {
                Some(c) if c.kind == kind => c.clone(),
                _ => Arc::new(TransformCounters::new(&t.name, kind)),
            };
            (t.name.as_str(), c)
        })
        .collect();
    let by_name: BTreeMap<&str, &TransformConfig> = cfg
        .transforms
        .iter()
        .map(|t| (t.name.as_str(), t))
        .collect();
    let mut out = Transforms::none();
    for (source, chain) in &cfg.source_transforms {
        for name in chain {
            let (Some(t), Some(c)) = (by_name.get(name.as_str()), counters.get(name.as_str()))
            else {
                return Err(format!(
                    "sources.{source}.transforms: unknown transform {name:?}"
                ));
            };
            let inner = instance(t, cfg, record_limit(cfg, source), alerts)
                .map_err(|e| format!("transforms.{name}: {e}"))?;
            out.add(
                source,
                Box::new(Counted {
                    inner,
                    counters: c.clone(),
                }),
            );
        }
    }
    if let Ok(mut l) = list.lock() {
        *l = counters.into_values().collect();
    }
    Ok(out)
}

/// One source's instance of a transform (each source gets its own, so a script's state is
/// per source).
/// The most message bytes a record of `source` holds as it is read: a file source's
/// `max_record_bytes`, a syslog source's `max_message_bytes`, the default for the osquery
/// outbox. A script may not return more (see [`LuaTransform::with_limit`]).
fn record_limit(cfg: &Config, source: &str) -> usize {
    if let Some(s) = cfg.sources.iter().find(|s| s.name == source) {
        return s.framing.max_record_bytes;
    }
    if let Some(s) = cfg.syslog_sources.iter().find(|s| s.name == source) {
        return s.max_message_bytes;
    }
    crate::config::DEFAULT_MAX_RECORD_BYTES as usize
}

fn instance(
    t: &TransformConfig,
    cfg: &Config,
    record_limit: usize,
    alerts: Option<&Arc<Mutex<Store>>>,
) -> Result<Box<dyn Transform>, String> {
    Ok(match &t.kind {
        TransformKind::Json { message_key } => Box::new(Json::new(message_key.clone())),
        TransformKind::Logfmt { message_key } => Box::new(Logfmt::new(message_key.clone())),
        TransformKind::Regex { pattern } => Box::new(RegexParser::new(pattern)),
        TransformKind::Syslog => Box::new(Syslog::default()),
        TransformKind::Cri => Box::new(Cri::default()),
        TransformKind::Docker => Box::new(Docker::default()),
        TransformKind::Lua(o) => {
            let l = LuaTransform::new(&t.name, o)?
                .with_host(&cfg.host_id)?
                .with_limit(record_limit);
            Box::new(match alerts {
                Some(store) => l.alert_into(store.clone()),
                None => l,
            })
        }
    })
}

/// A transform with its counters: every record in, dropped, unparsed or failed, and the time.
struct Counted {
    inner: Box<dyn Transform>,
    counters: Arc<TransformCounters>,
}

impl Transform for Counted {
    fn describe(&self) -> String {
        format!("{}: {}", self.counters.name, self.inner.describe())
    }

    fn apply(&mut self, rec: &mut Draft<'_>) -> Verdict {
        let t0 = Instant::now();
        let v = self.inner.apply(rec);
        let c = &self.counters;
        c.nanos
            .fetch_add(t0.elapsed().as_nanos() as u64, Ordering::Relaxed);
        c.records_in.fetch_add(1, Ordering::Relaxed);
        if v == Verdict::Drop {
            c.dropped.fetch_add(1, Ordering::Relaxed);
        }
        match self.inner.fault() {
            Fault::None => {}
            Fault::Unparsed => {
                c.parse_failures.fetch_add(1, Ordering::Relaxed);
            }
            Fault::Error => {
                c.errors.fetch_add(1, Ordering::Relaxed);
            }
        }
        v
    }

    fn fault(&self) -> Fault {
        self.inner.fault()
    }

    /// Timed once per run: a clock read per record would be a good part of a parser's cost.
    fn apply_run(&mut self, run: &mut [Draft<'_>], out: &mut Vec<Outcome>) {
        let t0 = Instant::now();
        let first = out.len();
        self.inner.apply_run(run, out);
        let c = &self.counters;
        c.nanos
            .fetch_add(t0.elapsed().as_nanos() as u64, Ordering::Relaxed);
        let (mut dropped, mut unparsed, mut errors) = (0, 0, 0);
        for o in &out[first..] {
            dropped += u64::from(o.verdict == Verdict::Drop);
            unparsed += u64::from(o.fault == Fault::Unparsed);
            errors += u64::from(o.fault == Fault::Error);
        }
        c.records_in.fetch_add(run.len() as u64, Ordering::Relaxed);
        c.dropped.fetch_add(dropped, Ordering::Relaxed);
        c.parse_failures.fetch_add(unparsed, Ordering::Relaxed);
        c.errors.fetch_add(errors, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transform::tests::{draft, fields_of, meta};
    use std::path::Path;

    #[test]
    fn a_chain_runs_in_order_and_counts_per_transform() {
        let cfg = Config::parse(
            Path::new("/c.toml"),
            r#"
[sources.app]
paths = ["/x.log"]
transforms = ["kv", "access"]
[transforms.access]
type = "regex"
pattern = '^(?P<word>\w+)'
[transforms.kv]
type = "logfmt"
message_key = "msg"
"#,
        )
        .unwrap();
        let list = TransformList::default();
        let mut t = build(&cfg, &list, None).unwrap();
        let chain = t.chain_of("app").unwrap();
        let meta = meta();
        // logfmt first makes the message `hello there`, which the regex then reads.
        let mut d = draft(&meta, br#"level=info msg="hello there""#);
        assert_eq!(t.run(chain, &mut d), Verdict::Keep);
        let f = fields_of(&d);
        assert_eq!(
            (f["level"].as_str(), f["word"].as_str()),
            (Some("info"), Some("hello"))
        );
        let mut d = draft(&meta, b"!!! neither");
        t.run(chain, &mut d);
        let snap: Vec<_> = list.lock().unwrap().iter().map(|c| c.snapshot()).collect();
        assert_eq!(snap[0].name, "access");
        assert_eq!((snap[0].records_in, snap[0].parse_failures), (2, 1));
        assert_eq!(
            (snap[1].name.as_str(), snap[1].kind.as_str()),
            ("kv", "logfmt")
        );
        assert_eq!((snap[1].records_in, snap[1].parse_failures), (2, 1));
        // Rebuilt (a reload): the counts of a name that stays carry on.
        build(&cfg, &list, None).unwrap();
        assert_eq!(list.lock().unwrap()[0].snapshot().records_in, 2);
    }
}
