//! The pipeline: one thread owns the batch being built and gives every input its turn, records
//! entering through the source's transforms; full or due batches go to the group's shipping
//! side ([`fanout`]), which gives each to every sink of the group (one thread per sink,
//! [`ship`]) and, once all acknowledged it, its acknowledgements back to the inputs in batch
//! order ([`commit`]). Sources routed to the same sinks are one group, one pipeline.
//!
//! ```text
//!  inputs (files, osquery outbox, …) ──turn──▶ Intake ─transforms─▶ Batch ──▶ fanout ─┬▶ ship ▶ sink a
//!        ▲                                                                            └▶ ship ▶ sink b
//!        └──── store checkpoints (one transaction) / input acks ◀── commit ◀── all acked ◀┘
//! ```
//!
//! When a batch is handed over is decided here, for all inputs alike: full (`batch.max_records`
//! / `max_bytes`), `max_wait` old, or early when the sink is idle (see [`Pipeline::run`]).

pub mod commit;
pub mod fanout;
pub mod ship;
#[cfg(test)]
mod tests;

use crate::batch::{Batch, Intake, Limits};
use crate::config::Config;
use crate::input::{Bell, Input, Turn};
use crate::sink::Encoding;
use crate::status::TransformList;
use crate::store::Store;
use crate::transform::{build, Transform, Transforms};
use crossbeam_channel::{Receiver, SendTimeoutError, Sender};
use fanout::Outlook;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How long an idle pipeline lets wake-ups gather before acting on them: a thousand files each
/// writing a line a second then cost tens of rounds a second, not a thousand.
const COALESCE: Duration = Duration::from_millis(25);
/// Room reserved past `max_bytes` in a fresh batch: an input may overrun it by one read.
const OVERRUN: usize = 256 << 10;

/// The encoding the current sink wants, told by the shipping thread whenever it builds one, so
/// the pipeline encodes ahead only what the sink will use.
#[derive(Debug)]
pub struct Wanted(AtomicU8);

/// Records until a sink asks for NDJSON: a derived default (0) was `Ndjson`, so every batch
/// was encoded for sinks that never read it (a tenth of the agent's CPU behind a syslog sink).
impl Default for Wanted {
    fn default() -> Self {
        Wanted(AtomicU8::new(Encoding::Records as u8))
    }
}

impl Wanted {
    pub fn set(&self, e: Encoding) {
        self.0.store(e as u8, Ordering::Relaxed);
    }

    pub fn get(&self) -> Encoding {
        if self.0.load(Ordering::Relaxed) == Encoding::Ndjson as u8 {
            Encoding::Ndjson
        } else {
            Encoding::Records
        }
    }
}

pub struct Pipeline {
    cfg: Arc<Config>,
    inputs: Vec<Box<dyn Input>>,
    transforms: Transforms,
    /// What `transforms` was built from ([`crate::transform::build::signature`]); None while
    /// the set is the one given by hand ([`Pipeline::transform`]).
    transforms_built: Option<String>,
    /// Where the built transforms report their counters (status reads them).
    transform_counters: TransformList,
    /// Where a script's failing streak is alerted (the agent's store).
    alerts: Option<Arc<Mutex<Store>>>,
    batch: Batch,
    generation: u64,
    tx: Sender<Batch>,
    /// Delivered batches coming back for reuse.
    recycled: Option<Receiver<Batch>>,
    /// What the shipping side shows: while nothing is out, a quiet pipeline hands over what it
    /// has without waiting out max_wait (latency at no cost to throughput); while a batch is
    /// held, the inputs keep the store's sizes current.
    outlook: Option<Arc<Outlook>>,
    /// A full batch was handed over since the inputs last ran out of work: they are catching
    /// up on a backlog, so the remainder at the end goes to an idle sink at once (a trickle
    /// never fills a batch and keeps the max_wait/5 grouping).
    backlog: bool,
    /// New configs from reloads and temporary overrides.
    configs: Option<Receiver<Arc<Config>>>,
    wanted: Arc<Wanted>,
    /// Rung by the inputs' own threads to end an idle wait.
    bell: Bell,
    stop: Arc<AtomicBool>,
}

impl Pipeline {
    pub fn new(cfg: Arc<Config>, tx: Sender<Batch>, stop: Arc<AtomicBool>, bell: Bell) -> Self {
        Pipeline {
            batch: Batch::new(cfg.host_id.as_str().into(), 0),
            cfg,
            inputs: Vec::new(),
            transforms: Transforms::none(),
            transforms_built: None,
            transform_counters: TransformList::default(),
            alerts: None,
            generation: 0,
            tx,
            recycled: None,
            outlook: None,
            backlog: false,
            configs: None,
            wanted: Arc::new(Wanted::default()),
            bell,
            stop,
        }
    }

    /// Adds an input; inputs take their turns in the order they were added.
    pub fn input(&mut self, input: Box<dyn Input>) {
        self.inputs.push(input);
    }

    /// Appends a transform to `source`'s chain; it applies from the next batch on.
    pub fn transform(&mut self, source: &str, t: Box<dyn Transform>) {
        // Slots cache their chain's index: a set changed under a batch would misdirect them.
        if !self.batch.is_idle() {
            self.ship();
        }
        self.transforms.add(source, t);
    }

    /// Alert a transform's failing streaks in `store`.
    pub fn alerts_into(&mut self, store: Arc<Mutex<Store>>) {
        self.alerts = Some(store);
    }

    /// Builds every source's chain from the config (`[transforms]`, `sources.X.transforms`),
    /// reporting into `counters`; a reload that changes them rebuilds them.
    pub fn build_transforms(&mut self, counters: TransformList) -> Result<(), String> {
        self.transform_counters = counters;
        self.rebuild_transforms()
    }

    fn rebuild_transforms(&mut self) -> Result<(), String> {
        let sig = build::signature(&self.cfg);
        if self.transforms_built.as_ref() == Some(&sig) {
            return Ok(());
        }
        let built = build::build(&self.cfg, &self.transform_counters, self.alerts.as_ref())?;
        // Slots cache their chain's index: a set changed under a batch would misdirect them.
        if !self.batch.is_idle() {
            self.ship();
        }
        self.transforms = built;
        self.transforms_built = Some(sig);
        Ok(())
    }

    /// Reuse delivered batches that come back on `rx`.
    pub fn recycle_from(&mut self, rx: Receiver<Batch>) {
        self.recycled = Some(rx);
    }

    /// Where the shipping side says whether it waits for a batch, or on its sinks.
    pub fn outlook(&mut self, outlook: Arc<Outlook>) {
        self.outlook = Some(outlook);
    }

    /// Take new configs from `rx` (reloads) between rounds.
    pub fn configs_from(&mut self, rx: Receiver<Arc<Config>>) {
        self.configs = Some(rx);
    }

    /// Where the shipping thread says which encoding its sink wants.
    pub fn wanted(&self) -> Arc<Wanted> {
        self.wanted.clone()
    }

    /// Runs until `stop` is set, then hands over the last batch and returns.
    pub fn run(mut self) {
        for i in &mut self.inputs {
            i.start();
        }
        loop {
            if self.stop.load(Ordering::Relaxed) {
                break;
            }
            let Some(busy) = self.round() else { return };
            if !busy && self.batch.is_idle() {
                self.backlog = false;
            }
            if !busy && self.early_flush_due() {
                self.backlog = false;
                if !self.ship() {
                    return;
                }
            }
            if !busy && self.bell.wait(self.idle_wait()) {
                std::thread::sleep(COALESCE);
            }
        }
        self.ship();
    }

    /// One round: every input's turn, a batch handed over whenever one is due. Returns whether
    /// any input has more ready, or None when the shipping side is gone.
    pub fn round(&mut self) -> Option<bool> {
        while let Some(cfg) = self.configs.as_ref().and_then(|rx| rx.try_recv().ok()) {
            if !self.apply_config(cfg) {
                return None;
            }
        }
        self.stalled_inputs();
        let mut busy = false;
        for i in 0..self.inputs.len() {
            let limits = self.limits();
            let mut out = Intake::new(&mut self.batch, &mut self.transforms, limits);
            busy |= self.inputs[i].turn(&mut out) == Turn::Busy;
            drop(out);
            if self.batch_due() && !self.ship() {
                return None;
            }
        }
        Some(busy)
    }

    /// Hands over the batch being built, due or not; false when the shipping side is gone.
    pub fn flush(&mut self) -> bool {
        self.ship()
    }

    /// A reload: records already read keep the host they were read under, then every input
    /// switches. False when the shipping side is gone.
    fn apply_config(&mut self, cfg: Arc<Config>) -> bool {
        if cfg.host_id != self.cfg.host_id {
            if !self.ship() {
                return false;
            }
            self.batch.host = cfg.host_id.as_str().into();
        }
        for i in &mut self.inputs {
            i.reconfigure(&cfg);
        }
        self.cfg = cfg;
        if self.transforms_built.is_some() {
            if let Err(e) = self.rebuild_transforms() {
                // The config was checked before it came here, so this is a script that loaded
                // then and not now: records keep going through the chains that run.
                tracing::error!(error = %e, "transforms not rebuilt, the running ones stay");
            }
        }
        true
    }

    /// A sink slow or down holds the batches out: nothing commits, so the lag the store shows
    /// would freeze at the last commit while files and spools grow. The inputs note how far.
    fn stalled_inputs(&mut self) {
        if self
            .outlook
            .as_ref()
            .is_some_and(|o| o.held.load(Ordering::Relaxed))
        {
            for i in &mut self.inputs {
                i.stalled();
            }
        }
    }

    fn limits(&self) -> Limits {
        Limits {
            max_records: self.cfg.batch.max_records,
            max_bytes: self.cfg.batch.max_bytes,
        }
    }

    /// How long to sleep with nothing to do: until the batch is due (or, with the sink idle,
    /// early), or the soonest input wants a turn.
    fn idle_wait(&self) -> Duration {
        let mut wait = self
            .inputs
            .iter()
            .map(|i| i.idle_wait())
            .min()
            .unwrap_or(Duration::from_millis(250));
        if !self.batch.is_idle() {
            let age = self.batch.created.elapsed();
            let early = self.cfg.batch.max_wait / 5;
            let next = if age < early {
                // The end of a backlog goes as soon as the sink is free; the sink does not wake
                // the pipeline, so look often (for at most max_wait/5).
                if self.backlog {
                    Duration::from_millis(2)
                } else {
                    early - age
                }
            } else {
                self.cfg.batch.max_wait.saturating_sub(age)
            };
            wait = wait.min(next);
        }
        wait.max(Duration::from_millis(5))
    }

    /// Nothing left to read, the sink waiting, and the batch the end of a backlog or a fifth of
    /// max_wait old: send it now. The fifth keeps a trickle of writes (a thousand files each
    /// writing a line a second) batched rather than committed line by line.
    fn early_flush_due(&self) -> bool {
        !self.batch.is_idle()
            && self
                .outlook
                .as_ref()
                .is_some_and(|o| o.idle.load(Ordering::Relaxed))
            && (self.backlog || self.batch.created.elapsed() >= self.cfg.batch.max_wait / 5)
    }

    fn batch_full(&self) -> bool {
        self.batch.len() >= self.cfg.batch.max_records
            || self.batch.data_bytes() >= self.cfg.batch.max_bytes
    }

    fn batch_due(&self) -> bool {
        if self.batch.is_idle() {
            return false;
        }
        self.batch_full() || self.batch.created.elapsed() >= self.cfg.batch.max_wait
    }

    /// Hands the batch to the shipping thread, waiting while it is busy (backpressure).
    /// Returns false when the shipping thread is gone.
    fn ship(&mut self) -> bool {
        self.backlog |= self.batch_full();
        self.generation += 1;
        let fresh = match self.recycled.as_ref().and_then(|rx| rx.try_recv().ok()) {
            // A delivered batch may be from before a reload changed the host.
            Some(b) => b.recycle(self.generation, self.batch.host.clone()),
            None => {
                let mut b = Batch::new(self.batch.host.clone(), self.generation);
                // Sized once for a full batch (it may overrun by one read), never doubled.
                b.reserve(self.cfg.batch.max_bytes + OVERRUN);
                b
            }
        };
        let mut batch = std::mem::replace(&mut self.batch, fresh);
        if batch.is_idle() {
            return true;
        }
        if self.wanted.get() == Encoding::Ndjson {
            batch.encode_ndjson();
        }
        loop {
            match self.tx.send_timeout(batch, Duration::from_millis(200)) {
                Ok(()) => return true,
                Err(SendTimeoutError::Timeout(b)) => {
                    self.stalled_inputs();
                    batch = b;
                }
                Err(SendTimeoutError::Disconnected(_)) => return false,
            }
        }
    }
}
