//! A run of records handed to the script in one locked call, and what it made of each.
//!
//! The loop over a run is Rust working Lua's C API inside one call into the state: it builds
//! each record's table, calls the script's function on it and reads back what came of it,
//! with no Lua code of its own. The instruction limit needs Lua's count hook, and under a
//! count hook Lua 5.4 traps every instruction of every Lua function: a loop written in Lua
//! (as this one was) ran its own instructions, building the table and looking at what came
//! back, under that trap too, which for a script that returns its record was most of the
//! cost. Here only the script's instructions run under the hook, and only they count against
//! its budget.
//!
//! What came back is read out at once (see [`super::readback`]): a changed message copied as
//! bytes, a flat `fields` table written straight to JSON; a table that is not flat is kept
//! in `fields_out[i]` and converted the general way afterwards. Records that come back as
//! they went cost no conversion at all.
//!
//! Errors: a C API call that allocates (a table, a string) may raise a memory error, and the
//! script's own errors and broken limits are raised through the loop too; each unwinds
//! (longjmp) to the protected call around it ([`Sandbox::call_raw`]). So no frame of the loop
//! holds a value that needs dropping across such a call: what it learns goes straight into
//! the driver's vectors, which live outside it. A raised error ends the run at the record
//! being built or run, as a script's error does.
//!
//! Each record runs under its own budget: the loop tells the sandbox which record it is on
//! ([`Sandbox::running`]). The caller reads the records before a failure and decides what
//! comes next ([`super::LuaTransform`]).

use super::json;
use super::readback::{self, Fields, Scratch};
use super::stamp::Stamp;
use crate::config::lua::sandbox::{CallError, Limit, Sandbox};
use crate::transform::Draft;
use mlua::{ffi, Table, Value};
use std::ffi::{c_int, CStr};

/// The strings the loop builds records from, made once per state and pushed with each run:
/// the record's keys, then the names of its parts (in the order of [`crate::frame::Part`]).
const CONSTS: [&str; 11] = [
    "msg", "fields", "source", "path", "stream", "offset", "part", "host", "whole", "head", "tail",
];

// Stack slots of a run. First the arguments (as `Driver::call` pushes them):
const GLOBALS: c_int = 1;
const NAME: c_int = 2;
const SOURCE: c_int = 3;
const PATH: c_int = 4;
const STREAM: c_int = 5;
const HOST: c_int = 6;
const FIELDS_IN: c_int = 7;
const FIELDS_OUT: c_int = 8;
const CONST_TABLE: c_int = 9;
// then the constants, unpacked from the last argument (CONSTS[k] at K_MSG + k),
const K_MSG: c_int = 10;
const K_FIELDS: c_int = 11;
const K_SOURCE: c_int = 12;
const K_PATH: c_int = 13;
const K_STREAM: c_int = 14;
const K_OFFSET: c_int = 15;
const K_PART: c_int = 16;
const K_HOST: c_int = 17;
const PART_WHOLE: c_int = 18;
// then the script's function, looked up once a run, and the run's template of a record
// (see [`super::stamp`]),
const FUNCTION: c_int = 21;
const TEMPLATE: c_int = 22;
// and per record: its msg and fields as handed over, its table, what the script returned,
// and the fields and msg read from that.
const MSG: c_int = 23;
const FIELDS: c_int = 24;
const REC: c_int = 25;
const RETURNED: c_int = 26;
const VALUE: c_int = 27;
const MSG_BACK: c_int = 28;
const SLOTS: c_int = 30;

/// A record's keys whose values are its own, and the slots of those values (`part`'s is
/// the first of the part names, offset by the record's part). A table is built from these,
/// then [`PER_RUN`], then `offset` (an integer), in that order.
const PER_RECORD: [(c_int, c_int); 3] = [(K_MSG, MSG), (K_FIELDS, FIELDS), (K_PART, PART_WHOLE)];
/// The keys whose values are the run's: set once, in the run's template.
const PER_RUN: [(c_int, c_int); 4] = [
    (K_SOURCE, SOURCE),
    (K_PATH, PATH),
    (K_STREAM, STREAM),
    (K_HOST, HOST),
];

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

/// What the loop read back of one record, before a table that is not flat is converted.
enum Back {
    Dropped,
    Kept {
        msg: Option<Result<Vec<u8>, &'static str>>,
        fields: Option<Fields>,
    },
}

/// Why the loop stopped short without a Lua error.
enum Stop {
    /// The script's global of the function's name is no longer a function.
    NoFunction,
    /// The script returned a value of this Lua type, neither a record nor nil.
    Returned(&'static str),
    NoRoom,
}

/// The driver of one state: rebuilt with it.
pub struct Driver {
    /// The script's function's name in its globals.
    function: mlua::String,
    /// `[i]`: the fields table of the run's record i, for those that have fields.
    fields_in: Table,
    /// `[i]`: record i's fields when they came back as a table that is not flat.
    fields_out: Table,
    consts: Table,
    /// What the last run made of its records, in order; reused.
    back: Vec<Back>,
    scratch: Scratch,
    stamp: Stamp,
}

/// How a run ended: `done` records made something; then, unless all did, the next one failed.
pub struct Ended {
    pub done: Vec<Made>,
    pub failed: Option<CallError>,
}

impl Driver {
    pub fn load(sandbox: &Sandbox, function: &str) -> mlua::Result<Driver> {
        let lua = sandbox.lua();
        let consts = lua.create_table()?;
        for (k, name) in CONSTS.iter().enumerate() {
            consts.raw_set(k + 1, *name)?;
        }
        Ok(Driver {
            function: lua.create_string(function)?,
            fields_in: lua.create_table()?,
            fields_out: lua.create_table()?,
            consts,
            back: Vec::new(),
            scratch: Scratch::default(),
            stamp: Stamp::check(lua),
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
        // A record whose fields cannot be handed over fails alone: the run goes up to it.
        let mut n = run.len();
        let mut failed = None;
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
        }
        if n == 0 {
            return Ended {
                done: Vec::new(),
                failed,
            };
        }
        let meta = first.stream;
        let args = (
            lua.globals(),
            &self.function,
            &*meta.source,
            &*meta.path,
            &*meta.id,
            host,
            &self.fields_in,
            &self.fields_out,
            &self.consts,
        );
        let records = &run[..n];
        let (back, scratch, stamp) = (&mut self.back, &mut self.scratch, self.stamp);
        back.clear();
        let mut stop = None;
        // SAFETY: `run_records` keeps to the slots it checked room for, and holds nothing that
        // needs dropping across a call that may raise (see the module's comment).
        let result = unsafe {
            sandbox.call_raw(args, |l| {
                run_records(l, sandbox, stamp, records, back, scratch, &mut stop)
            })
        };
        let done = self.back.len();
        let name = || self.function.to_string_lossy();
        match (result, stop) {
            (Err(e), _) => failed = Some(e),
            (Ok(()), Some(Stop::NoFunction)) => {
                failed = Some(CallError::Script(format!(
                    "{} is no longer a function",
                    name()
                )))
            }
            (Ok(()), Some(Stop::Returned(kind))) => {
                failed = Some(CallError::Script(format!(
                    "{} returned a {kind}, not the record or nil",
                    name()
                )))
            }
            (Ok(()), Some(Stop::NoRoom)) => failed = Some(CallError::Limit(Limit::Memory)),
            (Ok(()), None) => {}
        }
        // Fields handed over for records the run did not reach: no later run may see them.
        for (i, rec) in records.iter().enumerate().skip(done) {
            if rec.fields.is_some() {
                let _ = self.fields_in.raw_set(i + 1, Value::Nil);
            }
        }
        let mut made = Vec::with_capacity(done);
        for (i, b) in self.back.drain(..).enumerate() {
            made.push(match b {
                Back::Dropped => Made::Dropped,
                Back::Kept { msg, fields } => Made::Kept {
                    msg: msg.map(|m| m.map_err(msg_error)),
                    fields: fields.map(|f| fields_json(&self.fields_out, i as i64 + 1, f)),
                },
            });
        }
        Ended { done: made, failed }
    }
}

/// The loop: runs the script on each record of `run` and says in `back` what came of it,
/// stopping at the first that fails (a raised error, or one it sets in `stop`).
///
/// # Safety
/// Called by [`Sandbox::call_raw`] with [`Driver::call`]'s arguments at slots 1 to 9. Keeps
/// to [`SLOTS`] slots, and holds no value that needs dropping across a call that may raise.
unsafe fn run_records(
    l: *mut ffi::lua_State,
    sandbox: &Sandbox,
    stamp: Stamp,
    run: &[Draft<'_>],
    back: &mut Vec<Back>,
    scratch: &mut Scratch,
    stop: &mut Option<Stop>,
) {
    if ffi::lua_checkstack(l, SLOTS) == 0 {
        *stop = Some(Stop::NoRoom);
        return;
    }
    for k in 0..CONSTS.len() {
        ffi::lua_rawgeti(l, CONST_TABLE, k as ffi::lua_Integer + 1);
    }
    ffi::lua_pushvalue(l, NAME);
    ffi::lua_rawget(l, GLOBALS);
    if ffi::lua_type(l, FUNCTION) != ffi::LUA_TFUNCTION {
        *stop = Some(Stop::NoFunction);
        return;
    }
    // The template: this run's record with placeholders where records differ.
    ffi::lua_createtable(l, 0, 8);
    for (key, _) in PER_RECORD {
        ffi::lua_pushvalue(l, key);
        ffi::lua_pushboolean(l, 0);
        ffi::lua_rawset(l, TEMPLATE);
    }
    for (key, value) in PER_RUN {
        ffi::lua_pushvalue(l, key);
        ffi::lua_pushvalue(l, value);
        ffi::lua_rawset(l, TEMPLATE);
    }
    ffi::lua_pushvalue(l, K_OFFSET);
    ffi::lua_pushinteger(l, 0);
    ffi::lua_rawset(l, TEMPLATE);
    for (i, rec) in run.iter().enumerate() {
        let i = i as ffi::lua_Integer + 1;
        sandbox.running(i);
        let has = rec.fields.is_some();
        ffi::lua_pushlstring(l, rec.bytes.as_ptr().cast(), rec.bytes.len());
        if has {
            ffi::lua_rawgeti(l, FIELDS_IN, i);
            ffi::lua_pushnil(l);
            ffi::lua_rawseti(l, FIELDS_IN, i);
        } else {
            ffi::lua_createtable(l, 0, 0);
        }
        ffi::lua_createtable(l, 0, 8);
        // Stamped, only what differs from the template is set; else every key.
        let stamped = stamp.onto(l, REC, TEMPLATE);
        for (key, value) in PER_RECORD {
            ffi::lua_pushvalue(l, key);
            let part = if key == K_PART { rec.part as c_int } else { 0 };
            ffi::lua_pushvalue(l, value + part);
            ffi::lua_rawset(l, REC);
        }
        if !stamped {
            for (key, value) in PER_RUN {
                ffi::lua_pushvalue(l, key);
                ffi::lua_pushvalue(l, value);
                ffi::lua_rawset(l, REC);
            }
        }
        ffi::lua_pushvalue(l, K_OFFSET);
        ffi::lua_pushinteger(l, rec.offset as ffi::lua_Integer);
        ffi::lua_rawset(l, REC);
        ffi::lua_pushvalue(l, FUNCTION);
        ffi::lua_pushvalue(l, REC);
        ffi::lua_call(l, 1, 1);
        match ffi::lua_type(l, RETURNED) {
            ffi::LUA_TNIL => back.push(Back::Dropped),
            ffi::LUA_TTABLE => {
                // Both read as `r.fields` and `r.msg` read (an `__index` runs, and may raise)
                // before anything is copied out; then the fields, since keeping a table that
                // is not flat may allocate (and so raise) too.
                ffi::lua_pushvalue(l, K_FIELDS);
                ffi::lua_gettable(l, RETURNED);
                ffi::lua_pushvalue(l, K_MSG);
                ffi::lua_gettable(l, RETURNED);
                let fields = fields_changed(l, has).then(|| read_fields(l, i, scratch));
                let msg = (ffi::lua_rawequal(l, MSG_BACK, MSG) == 0).then(|| {
                    match readback::bytes_at(l, MSG_BACK) {
                        Some(b) => Ok(b.to_vec()),
                        None => Err(readback::type_name(l, MSG_BACK)),
                    }
                });
                back.push(Back::Kept { msg, fields });
            }
            other => {
                // Lua's type names are static ASCII strings.
                let kind = CStr::from_ptr(ffi::lua_typename(l, other));
                *stop = Some(Stop::Returned(kind.to_str().unwrap_or("value")));
                return;
            }
        }
        ffi::lua_settop(l, TEMPLATE);
    }
}

/// Whether the fields at [`VALUE`] are not what went in: another value, or the same table
/// when it had fields (which the script may have changed in place) or is no longer empty.
unsafe fn fields_changed(l: *mut ffi::lua_State, had: bool) -> bool {
    if had || ffi::lua_rawequal(l, VALUE, FIELDS) == 0 {
        return true;
    }
    ffi::lua_pushnil(l);
    if ffi::lua_next(l, FIELDS) != 0 {
        ffi::lua_pop(l, 2);
        return true;
    }
    false
}

/// The changed fields at [`VALUE`] of record `i`; a table that is not flat is kept in
/// `fields_out[i]` for the general conversion (which may raise a memory error).
unsafe fn read_fields(
    l: *mut ffi::lua_State,
    i: ffi::lua_Integer,
    scratch: &mut Scratch,
) -> Fields {
    match ffi::lua_type(l, VALUE) {
        ffi::LUA_TNIL => Fields::Nil,
        ffi::LUA_TTABLE => match readback::flat_json(l, VALUE, scratch) {
            Some(json) => Fields::Json(json),
            None => {
                ffi::lua_pushvalue(l, VALUE);
                ffi::lua_rawseti(l, FIELDS_OUT, i);
                Fields::General
            }
        },
        _ => Fields::Not(readback::type_name(l, VALUE)),
    }
}

fn msg_error(kind: &str) -> String {
    match kind {
        "nil" => "the record's msg is nil".to_string(),
        other => format!("the record's msg is {}, not a string", json::a(other)),
    }
}

/// Changed fields as JSON; a table the quick read left is converted from `fields_out[i]`
/// (and let go of there).
fn fields_json(fields_out: &Table, i: i64, f: Fields) -> Result<Option<Vec<u8>>, String> {
    match f {
        Fields::Nil => Ok(None),
        Fields::Json(json) => Ok(Some(json)),
        Fields::Not(kind) => Err(format!(
            "the record's fields is {}, not a table",
            json::a(kind)
        )),
        Fields::General => {
            let got = fields_out.raw_get::<Value>(i);
            let _ = fields_out.raw_set(i, Value::Nil);
            match got {
                Ok(Value::Table(t)) => json::from_lua(&t).map(Some),
                Ok(other) => Err(format!(
                    "the record's fields is {}, not a table",
                    json::a(other.type_name())
                )),
                Err(e) => Err(format!("the record's fields: {e}")),
            }
        }
    }
}
