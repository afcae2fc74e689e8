//! The routes at run time: one pipeline per group of sources that go to the same sinks
//! (`config::routes`), one thread per sink, and each group's shipping side between them
//! (`pipeline::fanout`). Sinks and groups are wired with channels here; `super::run` starts
//! the threads.
//!
//! Each group's pipeline has its own inputs, reading only the group's sources, so a sink that
//! is down stops the reading of exactly the sources routed to it: their backlog stays in their
//! files. A reload reaches every pipeline with the config cut down to its group's sources.

use crate::batch::Batch;
use crate::config::routes::{self, Group};
use crate::config::{Config, NamedSink};
use crate::pipeline::fanout::{Delivery, Heard, Outlook};
use crate::pipeline::ship::Feed;
use crate::sink::{self, Sink};
use crate::status::{LiveSink, ShipStats};
use crossbeam_channel::{Receiver, Sender};

use std::sync::Arc;

/// A sink's thread, before it starts.
pub(super) struct SinkPart {
    pub name: String,
    pub sink: Box<dyn Sink>,
    pub stats: Arc<ShipStats>,
    pub feeds: Vec<Feed>,
    pub rebuild: Receiver<crate::config::SinkConfig>,
}

/// A group's shipping side, before it starts.
pub(super) struct GroupPart {
    pub group: Group,
    /// Its pipeline's batches.
    pub batches: Receiver<Batch>,
    /// Where its pipeline hands them over.
    pub tx: Sender<Batch>,
    pub sinks: Vec<Sender<Delivery>>,
    pub heard: Receiver<Heard>,
    pub limit: usize,
    /// What its pipeline sees of it.
    pub outlook: Arc<Outlook>,
}

/// The built sinks and the groups wired to them.
pub(super) struct Routes {
    pub sinks: Vec<SinkPart>,
    pub groups: Vec<GroupPart>,
}

impl Routes {
    /// Builds every sink (an error names the first that cannot start) and the groups' channels.
    pub fn build(cfg: &Config) -> Result<Routes, sink::SinkError> {
        let mut sinks = Vec::new();
        for n in &cfg.sinks {
            let (_, rebuild) = crossbeam_channel::unbounded();
            sinks.push(SinkPart {
                name: n.name.clone(),
                sink: sink::build(&n.sink).map_err(|e| sink::named(&n.name, e))?,
                stats: Arc::new(ShipStats::default()),
                feeds: Vec::new(),
                rebuild,
            });
        }
        let mut groups = Vec::new();
        for group in routes::groups(cfg) {
            // A rendezvous: one batch being shipped while the next is built, as with one sink.
            let (tx, batches) = crossbeam_channel::bounded::<Batch>(0);
            let (heard_tx, heard) = crossbeam_channel::unbounded();
            let mut feeds = Vec::new();
            let mut limit = 1;
            for &i in &group.sinks {
                let (feed_tx, feed_rx) = crossbeam_channel::unbounded();
                sinks[i].feeds.push(Feed {
                    batches: feed_rx,
                    heard: heard_tx.clone(),
                });
                limit = limit.max(sinks[i].sink.window());
                feeds.push(feed_tx);
            }
            groups.push(GroupPart {
                group,
                batches,
                tx,
                sinks: feeds,
                heard,
                // The sinks' windows full and one more being sent; past that the pipeline waits.
                limit: limit + 1,
                outlook: Arc::default(),
            });
        }
        Ok(Routes { sinks, groups })
    }

    /// What status shows of each sink.
    pub fn live(&self, cfg: &Config) -> Vec<LiveSink> {
        self.sinks
            .iter()
            .zip(&cfg.sinks)
            .map(|(s, n)| LiveSink {
                name: n.name.clone(),
                kind: sink::kind(&n.sink).to_string(),
                description: s.sink.describe(),
                stats: s.stats.clone(),
            })
            .collect()
    }

    /// Passes reloaded sink configs to their sink's thread, by name; ends when `from` closes
    /// (the controller is gone).
    pub fn forward_rebuilds(&mut self, from: Receiver<NamedSink>) {
        let mut to: Vec<(String, Sender<crate::config::SinkConfig>)> = Vec::new();
        for s in &mut self.sinks {
            let (tx, rx) = crossbeam_channel::unbounded();
            s.rebuild = rx;
            to.push((s.name.clone(), tx));
        }
        super::spawn("sink-reload", move || {
            for n in from {
                if let Some((_, tx)) = to.iter().find(|(name, _)| *name == n.name) {
                    let _ = tx.send(n.sink);
                }
            }
        });
    }
}

/// The config a group's pipeline runs with: only the group's sources, and its share of the
/// agent-wide budgets (`max_open_files`, `max_partial_bytes`), which every group's tailer
/// would otherwise take whole.
pub(super) fn for_group(cfg: &Config, sinks: &[usize]) -> Config {
    let groups = routes::groups(cfg);
    let reading = groups
        .iter()
        .filter(|g| !g.sources.is_empty())
        .count()
        .max(1) as u64;
    let (mine, syslog): (Vec<String>, Vec<String>) = groups
        .into_iter()
        .find(|g| g.sinks == sinks)
        .map(|g| (g.sources, g.syslog_sources))
        .unwrap_or_default();
    let mut c = cfg.clone();
    c.sources.retain(|s| mine.contains(&s.name));
    c.syslog_sources.retain(|s| syslog.contains(&s.name));
    let d = &mut c.discovery;
    d.max_open_files = d.max_open_files.map(|n| (n / reading).max(1));
    d.max_partial_bytes /= reading;
    c
}

/// Passes each reloaded config to every group's pipeline, cut down to its sources; ends when
/// `from` closes.
pub(super) fn forward_configs(
    from: Receiver<Arc<Config>>,
    to: Vec<(Vec<usize>, Sender<Arc<Config>>)>,
) {
    super::spawn("config-routes", move || {
        for cfg in from {
            for (sinks, tx) in &to {
                let _ = tx.send(Arc::new(for_group(&cfg, sinks)));
            }
        }
    });
}
