//! A run of records handed to the script in one crossing, and what it made of each.
//!
//! Crossing from Rust into Lua costs more than a short script: under a memory limit mlua
//! pushes every value in a protected call of its own, and holds every value handed back as a
//! reference. So a run crosses once, as one string: the messages, offsets and parts packed
//! back to back, which a trusted Lua loop (the driver) unpacks with one `string.unpack` and
//! then calls the script's function on each record. Only records with `fields` get a table
//! built from Rust. The driver lists the records that came back dropped or changed, with
//! what changed, so a script that returns its record untouched costs no conversion back.
//!
//! Each record runs under its own budget: the driver tells the sandbox which record it is on
//! ([`Sandbox::record_index`]). A call that fails stops the run at that record; the caller
//! reads the records before it and decides what comes next ([`super::LuaTransform`]).

use super::json;
use super::readback::{self, Fields};
use crate::config::lua::sandbox::{CallError, Limit, Sandbox};
use crate::transform::Draft;
use mlua::{Function, Table, Value};

/// The driver's code: given the script's globals, its function's name and the sandbox's
/// record index, returns the loop and the tables it shares with Rust. Loaded once per state.
/// Every instruction here runs under the count hook (Lua 5.4 then traps each one), so the
/// loop is kept short: upvalues in locals, no C call on the common path but `next`.
const DRIVER: &str = r#"
local G, name, index = ...
local rawget, type, next, error, unpack, rep = rawget, type, next, error, string.unpack, string.rep
local parts = {"whole", "head", "tail"}
local fields_in, changed, codes, msgs, fields_out = {}, {}, {}, {}, {}
local formats = {}
local function run(blob, n, source, path, stream, host)
  changed[0] = 0
  local f = rawget(G, name)
  if type(f) ~= "function" then error(name .. " is no longer a function", 0) end
  local format = formats[n]
  if format == nil then
    format = "<" .. rep("s4", n) .. rep("j", n) .. rep("B", n)
    formats[n] = format
  end
  local all = {unpack(format, blob)}
  local index, fields_in, changed, codes, msgs, fields_out, parts =
    index, fields_in, changed, codes, msgs, fields_out, parts
  local k, n2 = 0, n + n
  for i = 1, n do
    index[1] = i
    local msg, fields, has = all[i], fields_in[i], true
    if fields == nil then fields, has = {}, false else fields_in[i] = nil end
    local rec = {msg = msg, fields = fields, source = source, path = path, stream = stream,
                 offset = all[n + i], part = parts[all[n2 + i]], host = host}
    local r = f(rec)
    if r ~= rec then
      if r == nil then
        k = k + 1; changed[k] = i; codes[k] = 1; changed[0] = k
        goto next_record
      elseif type(r) ~= "table" then
        error(name .. " returned a " .. type(r) .. ", not the record or nil", 0)
      end
    end
    do
      local m, fo, c = r.msg, r.fields, 0
      if m ~= msg then c = 2 end
      if fo ~= fields or has or next(fields) ~= nil then c = c | 4 end
      if c ~= 0 then
        k = k + 1; changed[k] = i; codes[k] = c; msgs[k] = m; fields_out[k] = fo
        changed[0] = k
      end
    end
    ::next_record::
  end
end
return run, fields_in, changed, codes, msgs, fields_out
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
        /// The new message, or what the script set it to that is not a string.
        msg: Option<Result<Vec<u8>, String>>,
        /// The new fields as JSON (None: set to nil), or why they cannot be.
        fields: Option<Result<Option<Vec<u8>>, String>>,
    },
}

/// The driver loaded into one state: rebuilt with it.
pub struct Driver {
    run: Function,
    /// `[i]`: the fields table of the run's record i, for those that have fields.
    fields_in: Table,
    /// `[0]`: how many records came back dropped or changed; `[j]`: the j-th one's index.
    changed: Table,
    /// `[j]`: what came of the j-th changed record (see the codes), its `msg` and `fields`.
    codes: Table,
    msgs: Table,
    fields_out: Table,
    /// Reused to pack each run: messages, then offsets, then parts.
    blob: Vec<u8>,
    offsets: Vec<u8>,
    parts: Vec<u8>,
}

/// How a run ended: `done` records made something; then, unless all did, the next one failed.
pub struct Ended {
    pub done: Vec<Made>,
    pub failed: Option<CallError>,
}

impl Driver {
    pub fn load(sandbox: &Sandbox, function: &str) -> mlua::Result<Driver> {
        let lua = sandbox.lua();
        let (run, fields_in, changed, codes, msgs, fields_out) = lua
            .load(DRIVER)
            .set_name("=driver")
            .call((lua.globals(), function, sandbox.record_index().clone()))?;
        Ok(Driver {
            run,
            fields_in,
            changed,
            codes,
            msgs,
            fields_out,
            blob: Vec::new(),
            offsets: Vec::new(),
            parts: Vec::new(),
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
        self.offsets.clear();
        self.parts.clear();
        for (i, rec) in run.iter().enumerate() {
            if let Some(f) = &rec.fields {
                let set = json::to_lua(lua, f).and_then(|t| {
                    self.fields_in
                        .raw_set(i + 1, t)
                        .map_err(|_| "out of memory".to_string())
                });
                if let Err(e) = set {
                    (n, failed) = (i, Some(CallError::Script(e)));
                    break;
                }
            }
            self.blob
                .extend_from_slice(&(rec.bytes.len() as u32).to_le_bytes());
            self.blob.extend_from_slice(&rec.bytes);
            self.offsets
                .extend_from_slice(&(rec.offset as i64).to_le_bytes());
            self.parts.push(rec.part as u8 + 1);
        }
        if n == 0 {
            return Ended {
                done: Vec::new(),
                failed,
            };
        }
        self.blob.extend_from_slice(&self.offsets);
        self.blob.extend_from_slice(&self.parts);
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
        match self.made(sandbox, done) {
            Ok(made) => Ended { done: made, failed },
            // Reading back takes a little of the state's memory. At its limit, reading the
            // run as unchanged would undo what the script did (a redaction, a drop): the run
            // fails at its first record as at a broken limit instead (the state is rebuilt
            // and the rest run again).
            Err(_) => Ended {
                done: Vec::new(),
                failed: Some(CallError::Limit(Limit::Memory)),
            },
        }
    }

    /// What came of the first `done` records of the last run, read back in one call.
    fn made(&self, sandbox: &Sandbox, done: usize) -> mlua::Result<Vec<Made>> {
        let unchanged = || Made::Kept {
            msg: None,
            fields: None,
        };
        let tables = (&self.changed, &self.codes, &self.msgs, &self.fields_out);
        let listed = readback::read(sandbox.lua(), tables, MSG_CHANGED, FIELDS_CHANGED, done)?;
        let mut out = Vec::with_capacity(done);
        // What the driver lists is in order; a record it does not list came back as it went.
        // (Should a script reach and break these tables, which it cannot, a record would
        // read as unchanged or be refused for what it holds: never more than it gave.)
        for l in listed {
            if l.index <= out.len() {
                continue;
            }
            while out.len() + 1 < l.index {
                out.push(unchanged());
            }
            out.push(if l.code == DROPPED {
                Made::Dropped
            } else {
                Made::Kept {
                    msg: l.msg.map(|m| {
                        m.map_err(|kind| match kind {
                            "nil" => "the record's msg is nil".to_string(),
                            other => {
                                format!("the record's msg is {}, not a string", json::a(other))
                            }
                        })
                    }),
                    fields: l.fields.map(|f| self.fields(l.slot, f)),
                }
            });
        }
        while out.len() < done {
            out.push(unchanged());
        }
        Ok(out)
    }

    /// A changed `fields` as JSON; a table the quick read left is converted from
    /// `fields_out[j]`.
    fn fields(&self, j: i64, f: Fields) -> Result<Option<Vec<u8>>, String> {
        match f {
            Fields::Nil => Ok(None),
            Fields::Json(json) => Ok(Some(json)),
            Fields::Not(kind) => Err(format!(
                "the record's fields is {}, not a table",
                json::a(kind)
            )),
            Fields::General => match self.fields_out.raw_get::<Value>(j) {
                Ok(Value::Table(t)) => json::from_lua(&t).map(Some),
                Ok(other) => Err(format!(
                    "the record's fields is {}, not a table",
                    json::a(other.type_name())
                )),
                Err(e) => Err(format!("the record's fields: {e}")),
            },
        }
    }
}
