//! A run of records handed to the script in one crossing, and what it made of each.
//!
//! Crossing from Rust into Lua costs more than a short script: each argument converted,
//! each value handed back held as a reference. So a run crosses once. Its messages, offsets
//! and parts go in as one string that a trusted Lua loop (the driver) unpacks record by
//! record (`string.unpack`, one C call each), calling the script's function for each; only
//! the records with `fields` get a table built from Rust. The driver writes a code per record
//! (kept as it came, dropped, message or fields changed) and keeps only what changed, so a
//! script that returns its record untouched costs no conversion back at all.
//!
//! Each record runs under its own budget: the driver tells the sandbox which record it is on
//! ([`Sandbox::record_index`]). A call that fails stops the run at that record; the caller
//! reads the records before it and decides what comes next ([`super::LuaTransform`]).

use super::json;
use crate::config::lua::sandbox::{CallError, Limit, Sandbox};
use crate::transform::Draft;
use mlua::{Function, Table, Value};

/// The driver's code: given the script's globals, its function's name and the sandbox's
/// record index, returns the loop and the tables it shares with Rust. Loaded once per state.
const DRIVER: &str = r#"
local G, name, index = ...
local rawget, type, next, error, unpack = rawget, type, next, error, string.unpack
local parts = {"whole", "head", "tail"}
local fields_in, codes, msgs, fields_out = {}, {}, {}, {}
local function run(blob, n, source, path, stream, host)
  local f = rawget(G, name)
  if type(f) ~= "function" then error(name .. " is no longer a function", 0) end
  local pos, msg, offset, part, has = 1
  for i = 1, n do
    index[1] = i
    msg, offset, part, has, pos = unpack("<s4jBB", blob, pos)
    local fields
    if has == 1 then fields = fields_in[i]; fields_in[i] = nil else fields = {} end
    local r = f({msg = msg, fields = fields, source = source, path = path, stream = stream,
                 offset = offset, part = parts[part], host = host})
    if r == nil then
      codes[i] = 1
    elseif type(r) ~= "table" then
      error(name .. " returned a " .. type(r) .. ", not the record or nil", 0)
    else
      local m, fo, c = r.msg, r.fields, 0
      if m ~= msg then c = 2; msgs[i] = m end
      if fo ~= fields or has == 1 or next(fields) ~= nil then c = c | 4; fields_out[i] = fo end
      codes[i] = c
    end
  end
end
return run, fields_in, codes, msgs, fields_out
"#;

/// The codes the driver writes per record.
const DROPPED: i64 = 1;
const MSG_CHANGED: i64 = 2;
const FIELDS_CHANGED: i64 = 4;

/// What the script made of one record: dropped, or kept with what changed (None: as it came).
#[derive(Debug)]
pub enum Made {
    Dropped,
    Kept {
        msg: Option<Value>,
        fields: Option<Value>,
    },
}

/// The driver loaded into one state: rebuilt with it.
pub struct Driver {
    run: Function,
    /// `[i]`: the fields table of the run's record i, for those that have fields.
    fields_in: Table,
    codes: Table,
    msgs: Table,
    fields_out: Table,
    /// Reused to pack each run.
    blob: Vec<u8>,
}

/// How a run ended: `done` records made something; then, unless all did, the next one failed.
pub struct Ended {
    pub done: Vec<Made>,
    pub failed: Option<CallError>,
}

impl Driver {
    pub fn load(sandbox: &Sandbox, function: &str) -> mlua::Result<Driver> {
        let lua = sandbox.lua();
        let (run, fields_in, codes, msgs, fields_out) = lua
            .load(DRIVER)
            .set_name("=driver")
            .call((lua.globals(), function, sandbox.record_index().clone()))?;
        Ok(Driver {
            run,
            fields_in,
            codes,
            msgs,
            fields_out,
            blob: Vec::new(),
        })
    }

    /// Runs the script over `run` (records of one stream), `host` being the record's `host`.
    /// Stops at the first record that fails: `done` holds what came of those before it.
    pub fn call(&mut self, sandbox: &Sandbox, host: &mlua::String, run: &[Draft<'_>]) -> Ended {
        let Some(first) = run.first() else {
            return Ended {
                done: Vec::new(),
                failed: None,
            };
        };
        let lua = sandbox.lua();
        let memory = |_| CallError::Limit(Limit::Memory);
        // A record whose fields cannot be handed over fails alone: the run goes up to it.
        let mut n = run.len();
        let mut failed = None;
        self.blob.clear();
        for (i, rec) in run.iter().enumerate() {
            let has = match &rec.fields {
                None => 0u8,
                Some(f) => match json::to_lua(lua, f).and_then(|t| {
                    self.fields_in
                        .raw_set(i + 1, t)
                        .map_err(|_| "out of memory".to_string())
                }) {
                    Ok(()) => 1,
                    Err(e) => {
                        (n, failed) = (i, Some(CallError::Script(e)));
                        break;
                    }
                },
            };
            self.blob
                .extend_from_slice(&(rec.bytes.len() as u32).to_le_bytes());
            self.blob.extend_from_slice(&rec.bytes);
            self.blob
                .extend_from_slice(&(rec.offset as i64).to_le_bytes());
            self.blob.extend_from_slice(&[rec.part as u8 + 1, has]);
        }
        if n == 0 {
            return Ended {
                done: Vec::new(),
                failed,
            };
        }
        let meta = first.stream;
        let args = (|| {
            Ok::<_, mlua::Error>((
                lua.create_string(&self.blob)?,
                n as i64,
                lua.create_string(&*meta.source)?,
                lua.create_string(&*meta.path)?,
                lua.create_string(&*meta.id)?,
                host.clone(),
            ))
        })()
        .map_err(memory);
        let result = match args {
            Ok(args) => sandbox
                .call::<()>(&self.run, args)
                .map_err(|e| (sandbox.current_record(), e)),
            Err(e) => Err((0, e)),
        };
        let done = match result {
            Ok(()) => n,
            Err((on, e)) => {
                // The record it was on failed (the first, if it ended before any began).
                failed = Some(e);
                (on.max(1) as usize).min(n) - 1
            }
        };
        let made = (1..=done).map(|i| self.made(i)).collect();
        Ended { done: made, failed }
    }

    /// What came of record `i` (1-based) of the last run.
    fn made(&self, i: usize) -> Made {
        // A code that is not there (the script broke the driver's tables: it cannot reach
        // them, but the driver keeps no secrets from a broken state) reads as "unchanged".
        let code: i64 = self
            .codes
            .raw_get::<Option<i64>>(i)
            .ok()
            .flatten()
            .unwrap_or(0);
        if code == DROPPED {
            return Made::Dropped;
        }
        let get = |t: &Table| t.raw_get::<Value>(i).unwrap_or(Value::Nil);
        Made::Kept {
            msg: (code & MSG_CHANGED != 0).then(|| get(&self.msgs)),
            fields: (code & FIELDS_CHANGED != 0).then(|| get(&self.fields_out)),
        }
    }
}
