//! A user's Lua script as a transform: `process(rec)` sees each record of its sources and
//! returns it (changed or not) or `nil` to drop it.
//!
//! The script runs in the sandbox config loaded it in ([`crate::config::lua::sandbox`]), with
//! its limits on every call. What a script may change is the record's `msg` and `fields`: its
//! `offset`, `stream`, `part` and the rest are handed to it but not taken back, so
//! `(stream, offset)` keeps naming one record of the input (the collector's duplicate check
//! relies on it) and a script can neither make records nor move offsets.
//!
//! A call that fails (a Lua error, a broken limit, a return that is not a record) never loses
//! the record: it is kept as it came, with `fields.transform_error` naming the transform and
//! the error, counted, and alerted once per failing streak. After a broken limit the state may
//! be half-way through a change, so it is rebuilt from the script (its globals start again).

mod json;

use super::{Draft, Fault, Transform, Verdict};
use crate::config::lua::sandbox::{CallError, Limit, Sandbox};
use crate::config::lua::LuaOptions;
use crate::store::{Alert, Store};
use mlua::{Function, Value};
use std::borrow::Cow;
use std::sync::{Arc, Mutex};

/// Lua code (trusted) that turns a call's arguments into the record table, calls the script's
/// function and hands back what may change. One crossing per record: building the table in Lua
/// costs a fraction of setting eight keys from Rust.
const DRIVER: &str = r#"
local G, name = ...
local rawget, type, error = rawget, type, error
return function(msg, fields, source, path, stream, offset, part, host)
  local f = rawget(G, name)
  if type(f) ~= "function" then error(name .. " is no longer a function", 0) end
  local r = f({msg = msg, fields = fields or {}, source = source, path = path,
               stream = stream, offset = offset, part = part, host = host})
  if r == nil then return false end
  if type(r) ~= "table" then
    error(name .. " returned a " .. type(r) .. ", not the record or nil", 0)
  end
  return true, r.msg, r.fields
end
"#;

/// The values tied to one Lua state: rebuilt together with it.
struct Loaded {
    sandbox: Sandbox,
    driver: Function,
    host: mlua::String,
    /// `whole`, `head`, `tail`, in `Part` order.
    parts: [mlua::String; 3],
    /// The last stream's id and its `source`, `path` and `stream` strings: records come in
    /// runs of one stream, so each string is made once per run.
    stream: Option<(Arc<str>, [mlua::String; 3])>,
}

impl Loaded {
    fn new(opts: &LuaOptions, host: &str) -> Result<Loaded, String> {
        let sandbox = Sandbox::load(opts).map_err(|e| e.to_string())?;
        let lua = sandbox.lua();
        let s = |v: &str| lua.create_string(v).map_err(|e| e.to_string());
        let driver: Function = lua
            .load(DRIVER)
            .set_name("=driver")
            .call((lua.globals(), opts.function.as_str()))
            .map_err(|e| e.to_string())?;
        Ok(Loaded {
            host: s(host)?,
            parts: [s("whole")?, s("head")?, s("tail")?],
            driver,
            stream: None,
            sandbox,
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
        })
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

    /// One call of the script on `rec`: Some((msg, fields)) to keep, None to drop.
    fn call(&mut self, rec: &Draft<'_>) -> Result<Option<(Value, Value)>, CallError> {
        let l = &mut self.loaded;
        let lua = l.sandbox.lua();
        let memory = |_| CallError::Limit(Limit::Memory);
        let meta = rec.stream;
        let fresh = match &l.stream {
            Some((id, _)) => !Arc::ptr_eq(id, &meta.id) && **id != *meta.id,
            None => true,
        };
        if fresh {
            let strings = [
                lua.create_string(&*meta.source).map_err(memory)?,
                lua.create_string(&*meta.path).map_err(memory)?,
                lua.create_string(&*meta.id).map_err(memory)?,
            ];
            l.stream = Some((meta.id.clone(), strings));
        }
        let [source, path, stream] = &l.stream.as_ref().expect("set above").1;
        let msg = lua.create_string(&*rec.bytes).map_err(memory)?;
        let fields = match &rec.fields {
            Some(f) => json::to_lua(lua, f).map_err(CallError::Script)?,
            None => Value::Nil,
        };
        let part = l.parts[rec.part as usize].clone();
        let args = (
            msg,
            fields,
            source.clone(),
            path.clone(),
            stream.clone(),
            rec.offset as i64,
            part,
            l.host.clone(),
        );
        let (keep, msg, fields): (bool, Value, Value) = l.sandbox.call(&l.driver, args)?;
        Ok(keep.then_some((msg, fields)))
    }

    /// Puts what the script returned into `rec`.
    fn take(rec: &mut Draft<'_>, msg: Value, fields: Value) -> Result<(), CallError> {
        let bytes = match &msg {
            Value::String(s) => s.as_bytes(),
            Value::Nil => return Err(CallError::Script("the record's msg is nil".into())),
            other => {
                let m = format!(
                    "the record's msg is {}, not a string",
                    json::a(other.type_name())
                );
                return Err(CallError::Script(m));
            }
        };
        let fields = match fields {
            Value::Nil => None,
            Value::Table(t) if t.is_empty() && rec.fields.is_none() => None,
            Value::Table(t) => Some(json::from_lua(&t).map_err(CallError::Script)?),
            other => {
                let m = format!(
                    "the record's fields is {}, not a table",
                    json::a(other.type_name())
                );
                return Err(CallError::Script(m));
            }
        };
        if *bytes != *rec.bytes {
            rec.bytes = Cow::Owned(bytes.to_vec());
        }
        rec.fields = fields.map(Cow::Owned);
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
        let outcome = match self.call(rec) {
            Ok(Some((msg, fields))) => Self::take(rec, msg, fields).map(|()| Verdict::Keep),
            Ok(None) => Ok(Verdict::Drop),
            Err(e) => Err(e),
        };
        match outcome {
            Ok(v) => {
                self.failing = false;
                v
            }
            Err(e) => {
                self.failed(rec, &e);
                Verdict::Keep
            }
        }
    }

    fn fault(&self) -> Fault {
        if self.failing {
            Fault::Error
        } else {
            Fault::None
        }
    }
}

#[cfg(test)]
mod tests;
