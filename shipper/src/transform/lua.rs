//! A user's Lua script as a transform: `process(rec)` sees each record of its sources and
//! returns it (changed or not) or `nil` to drop it.
//!
//! The script runs in the sandbox config loaded it in ([`crate::config::lua::sandbox`]), with
//! its limits on every call of its function: records cross into Lua in runs ([`driver`]), and
//! each record of a run has the budget a lone call would have. What a script may change is the record's `msg` and `fields`: its
//! `offset`, `stream`, `part` and the rest are handed to it but not taken back, so
//! `(stream, offset)` keeps naming one record of the input (the collector's duplicate check
//! relies on it) and a script can neither make records nor move offsets.
//!
//! A call that fails (a Lua error, a broken limit, a return that is not a record) never loses
//! the record: it is kept as it came, with `fields.transform_error` naming the transform and
//! the error, counted, and alerted once per failing streak. After a broken limit the state may
//! be half-way through a change, so it is rebuilt from the script (its globals start again).

mod driver;
mod json;
mod readback;
mod stamp;

use super::{Draft, Fault, Outcome, Transform, Verdict};
use crate::config::lua::sandbox::{CallError, Sandbox};
use crate::config::lua::LuaOptions;
use crate::store::{Alert, Store};
use driver::{Driver, Made};
use std::borrow::Cow;
use std::sync::{Arc, Mutex};

/// The values tied to one Lua state: rebuilt together with it.
struct Loaded {
    sandbox: Sandbox,
    driver: Driver,
    host: mlua::String,
}

impl Loaded {
    fn new(opts: &LuaOptions, host: &str) -> Result<Loaded, String> {
        let sandbox = Sandbox::load(opts).map_err(|e| e.to_string())?;
        let driver = Driver::load(&sandbox, &opts.function).map_err(|e| e.to_string())?;
        let host = sandbox
            .lua()
            .create_string(host)
            .map_err(|e| e.to_string())?;
        Ok(Loaded {
            sandbox,
            driver,
            host,
        })
    }
}

/// A Lua script applied to every record of the sources that list it.
pub struct LuaTransform {
    name: String,
    opts: LuaOptions,
    host: String,
    loaded: Loaded,
    /// The last call failed: the next failure belongs to the same streak and raises no alert
    /// (and [`Transform::fault`] tells the chain's counters).
    failing: bool,
    alerts: Option<Arc<Mutex<Store>>>,
    /// The most `msg` bytes a returned record may hold (and twice that of `fields`).
    limit: usize,
}

impl LuaTransform {
    /// Loads the script of `opts` into a fresh sandbox. `name` is the transform's name in the
    /// config (`[transforms.NAME]`), used in `transform_error` and alerts. The record's `host`
    /// is this machine's hostname until [`LuaTransform::with_host`] says the config's host_id.
    pub fn new(name: &str, opts: &LuaOptions) -> Result<LuaTransform, String> {
        let host = crate::config::hostname();
        Ok(LuaTransform {
            name: name.to_string(),
            loaded: Loaded::new(opts, &host)?,
            opts: opts.clone(),
            host,
            failing: false,
            alerts: None,
            limit: crate::config::DEFAULT_MAX_RECORD_BYTES as usize,
        })
    }

    /// Bounds what a script may return to `max` bytes of `msg` and twice that of `fields` (the
    /// source's `max_record_bytes`). A record the script grew past it ships as it came, with
    /// `transform_error`: a record of any size would pass to the sinks whole, where one larger
    /// than the collector's `max_batch_bytes` is refused at every retry and holds its sources
    /// back for good, and where every sink holds it in memory.
    pub fn with_limit(mut self, max: usize) -> LuaTransform {
        self.limit = max;
        self
    }

    /// The `host` records are given to the script as (the config's `host_id`).
    pub fn with_host(mut self, host: &str) -> Result<LuaTransform, String> {
        self.host = host.to_string();
        self.loaded.host = self
            .loaded
            .sandbox
            .lua()
            .create_string(host)
            .map_err(|e| e.to_string())?;
        Ok(self)
    }

    /// Record the first failure of each failing streak as an alert in `store`.
    pub fn alert_into(mut self, store: Arc<Mutex<Store>>) -> LuaTransform {
        self.alerts = Some(store);
        self
    }

    /// One record's outcome, in order: `made` is what the script made of it, or why not.
    fn settle(&mut self, rec: &mut Draft<'_>, made: Result<Made, CallError>) -> Outcome {
        let verdict = match made {
            Ok(Made::Dropped) => Ok(Verdict::Drop),
            Ok(Made::Kept { msg, fields }) => {
                Self::take(rec, msg, fields, self.limit).map(|()| Verdict::Keep)
            }
            Err(e) => Err(e),
        };
        match verdict {
            Ok(verdict) => {
                self.failing = false;
                Outcome {
                    verdict,
                    fault: Fault::None,
                }
            }
            Err(e) => {
                self.failed(rec, &e);
                Outcome {
                    verdict: Verdict::Keep,
                    fault: Fault::Error,
                }
            }
        }
    }

    /// Puts what the script changed into `rec` (None: that part came back as it went in).
    fn take(
        rec: &mut Draft<'_>,
        msg: Option<Result<Vec<u8>, String>>,
        fields: Option<Result<Option<Vec<u8>>, String>>,
        limit: usize,
    ) -> Result<(), CallError> {
        let msg = msg.transpose().map_err(CallError::Script)?;
        if let Some(m) = msg.as_ref().filter(|m| m.len() > limit) {
            return Err(CallError::Script(format!(
                "returned a msg of {} bytes, over the source's limit of {limit} (max_record_bytes)",
                m.len()
            )));
        }
        if let Some(Ok(Some(f))) = &fields {
            if f.len() > 2 * limit {
                return Err(CallError::Script(format!(
                    "returned fields of {} bytes, over twice the source's limit of {limit} \
                     (max_record_bytes)",
                    f.len()
                )));
            }
        }
        let fields = match fields {
            None => rec.fields.take(),
            Some(f) => match f.map_err(CallError::Script)? {
                None => None,
                // An empty table where there were no fields adds none.
                Some(json) => (json != b"{}" || rec.fields.is_some()).then_some(Cow::Owned(json)),
            },
        };
        if let Some(b) = msg {
            if *b != *rec.bytes {
                rec.bytes = Cow::Owned(b);
            }
        }
        rec.fields = fields;
        Ok(())
    }

    fn failed(&mut self, rec: &mut Draft<'_>, e: &CallError) {
        let text = format!("{}: {e}", self.name);
        rec.fields = Some(Cow::Owned(json::with_error(rec.fields.as_deref(), &text)));
        if !std::mem::replace(&mut self.failing, true) {
            tracing::warn!(transform = %self.name, stream = %rec.stream.id, offset = rec.offset,
                error = %e, "Lua transform failed; records ship unchanged with transform_error");
            if let Some(store) = &self.alerts {
                let a = Alert {
                    kind: "transform_error",
                    source: Some(rec.stream.source.to_string()),
                    stream: Some(rec.stream.id.to_string()),
                    path: Some(rec.stream.path.to_string()),
                    detail: text,
                };
                if let Err(e) = store.lock().expect("store lock").add_alert(&a) {
                    tracing::error!(error = %e, "cannot record alert");
                }
            }
        }
        if let CallError::Limit(_) = e {
            // The script loaded before and loads the same way now; should it not, the old
            // state goes on: it answers every call, if only with errors.
            match Loaded::new(&self.opts, &self.host) {
                Ok(l) => self.loaded = l,
                Err(e) => tracing::warn!(transform = %self.name, error = %e,
                    "cannot rebuild the Lua state after a broken limit"),
            }
        }
    }
}

impl Transform for LuaTransform {
    fn describe(&self) -> String {
        format!("lua {} ({})", self.opts.origin, self.opts.function)
    }

    fn apply(&mut self, rec: &mut Draft<'_>) -> Verdict {
        let mut out = Vec::with_capacity(1);
        self.apply_run(std::slice::from_mut(rec), &mut out);
        out[0].verdict
    }

    fn fault(&self) -> Fault {
        if self.failing {
            Fault::Error
        } else {
            Fault::None
        }
    }

    /// The run crosses into Lua once ([`driver`]). A record that fails ends that crossing:
    /// the records before it keep what the script made of them, it ships unchanged with
    /// `transform_error` (after a broken limit the state is rebuilt, as for a lone call), and
    /// the rest of the run goes on in a new crossing, each record as if it had been alone.
    fn apply_run(&mut self, run: &mut [Draft<'_>], out: &mut Vec<Outcome>) {
        let mut start = 0;
        while start < run.len() {
            let l = &mut self.loaded;
            let ended = l.driver.call(&l.sandbox, &l.host, &run[start..]);
            let done = ended.done.len();
            for (rec, made) in run[start..].iter_mut().zip(ended.done) {
                out.push(self.settle(rec, Ok(made)));
            }
            start += done;
            match ended.failed {
                Some(e) => {
                    out.push(self.settle(&mut run[start], Err(e)));
                    start += 1;
                }
                None => break,
            }
        }
    }
}

#[cfg(test)]
mod tests;
