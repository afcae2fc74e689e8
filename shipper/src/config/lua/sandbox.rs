//! The Lua state a script runs in: which parts of Lua it has, and the limits that hold on every
//! call, inside C functions too.
//!
//! What a script gets: the base functions without `load`, `loadfile`, `dofile`, `print`,
//! `warn` and `collectgarbage`; `string` (without `dump`), `table`, `math`, `utf8`. No `os`,
//! `io`, `package`/`require`, `debug` or `coroutine` (a coroutine has its own hook state and a
//! `resume` that catches errors; a transform has no use for one). Chunks load as text only, so
//! no precompiled bytecode (which can crash the VM) gets in.
//!
//! The limits, and why each holds:
//! - memory: the state's allocator refuses past `memory_limit` (mlua's limit), so the failing
//!   allocation raises a Lua error;
//! - instructions and wall time: a hook every [`HOOK_EVERY`] VM instructions counts the call's
//!   instructions and looks at the clock. Once either is over, the call is *tripped*: every
//!   later hook raises again, and `pcall`/`xpcall` are wrapped so they pass a tripped error on
//!   instead of catching it: a script cannot loop around its own limit;
//! - C functions, where no hook fires: the ones whose running time is not linear in memory the
//!   script already holds (and so bounded by `memory_limit`) are the pattern functions, whose
//!   backtracking is polynomial in the subject (`string.rep('a', 2e5):find('.-.-b')` runs for
//!   hours); `table.move`, which loops over any integer range; `string.rep` of an empty string,
//!   which counts to any n; `table.insert` and `table.remove`, which shift up to `#t` elements
//!   (and `#t` can be 2^40 with a __len or a sparse border); and `table.sort` and `table.concat`
//!   over a table whose metatable gives any length and values from C. `string.find`, `match`,
//!   `gmatch` and `gsub` are replaced by guards that work out the pattern's worst case on this
//!   subject ([`pattern_cost`]) and refuse, with an error naming the pattern, what could not
//!   finish within `time_limit`; the others are wrapped in Lua ([`PRELUDE`]) so that their
//!   loops are Lua code, which the hook counts, or their answer is given without the loop;
//! - finalizers, which Lua runs with hooks off: `setmetatable` refuses a metatable with `__gc`.
//!
//! Guarding the patterns was chosen over running the state on a worker thread with a deadline:
//! a thread stuck in C cannot be stopped, only abandoned, and would keep burning a core for as
//! long as the pattern takes; a guard costs one bound computation per pattern call and no
//! crossing between threads per record.

mod meter;

use super::LuaOptions;
use meter::Meter;
use mlua::{Function, HookTriggers, Lua, MultiValue, StdLib, Table, Value, VmState};
use std::sync::Arc;
use std::time::Duration;

/// VM instructions between two looks at the call's budget and clock. A hook costs a crossing
/// into Rust; every thousand instructions it is lost in the noise.
pub const HOOK_EVERY: u32 = 1000;

/// Steps of [`pattern_cost`]'s bound that Lua's matcher gets through per second, taken low:
/// `string.rep('a', n):find('.-.-b')` ran at 2.4e9 bound-steps a second on this machine (n =
/// 200 and 400, the bound being loose by a constant); assuming 5e8 leaves a loaded machine
/// room to finish what the guard allows within `time_limit`.
const PATTERN_STEPS_PER_SEC: f64 = 5e8;

/// Which limit stopped a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    Instructions,
    Time,
    Memory,
}

impl std::fmt::Display for Limit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Limit::Instructions => "instruction limit",
            Limit::Time => "time limit",
            Limit::Memory => "memory limit",
        })
    }
}

/// Why a script did not load, naming where it is (file or inline key) and, for syntax and
/// top-level errors, the line.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{0}")]
    Syntax(String),
    #[error("{origin}: the script's top level failed: {message}")]
    TopLevel { origin: String, message: String },
    #[error("{origin}: the script's top level broke its {limit}")]
    Limit { origin: String, limit: Limit },
    #[error("{origin}: defines no function `{function}` (the one called with each record)")]
    NoFunction { origin: String, function: String },
    #[error("{origin}: cannot build its Lua state: {message}")]
    State { origin: String, message: String },
}

/// Why one call failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallError {
    /// A limit stopped it: the state may be half-way through a change and is best rebuilt.
    Limit(Limit),
    /// The script raised an error (or returned something that is not a record).
    Script(String),
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::Limit(l) => write!(f, "broke its {l}"),
            CallError::Script(m) => f.write_str(m),
        }
    }
}

/// A loaded script in its own state, ready to be called.
pub struct Sandbox {
    lua: Lua,
    meter: Arc<Meter>,
}

impl Sandbox {
    /// Builds a fresh state, runs the script's top level in it (under the same limits as a
    /// call) and checks that it defines `opts.function`.
    pub fn load(opts: &LuaOptions) -> Result<Sandbox, LoadError> {
        let origin = &opts.origin;
        let state_err = |e: mlua::Error| LoadError::State {
            origin: origin.clone(),
            message: e.to_string(),
        };
        let libs = StdLib::STRING | StdLib::TABLE | StdLib::MATH | StdLib::UTF8;
        let lua = Lua::new_with(libs, mlua::LuaOptions::default()).map_err(state_err)?;
        let max_ticks = opts.instruction_limit.div_ceil(HOOK_EVERY as u64).max(1);
        let meter = Arc::new(Meter::new(max_ticks, opts.time_limit));
        harden(&lua, &meter, opts.time_limit).map_err(state_err)?;
        // A transform makes a few short-lived tables and strings per record, which a
        // generational collector frees young. Measured on the Lua bench (file to file, 512 MiB,
        // three interleaved rounds) with the run's loop in Rust: 6% less CPU for a no-op script
        // and 12% less for drop-a-tenth-add-a-field than incremental collection waiting for the
        // heap to grow fourfold (which had won by 5% while the loop was Lua code). The memory
        // limit still holds: a refused allocation makes Lua collect in full first.
        lua.gc_gen(0, 0);
        lua.set_memory_limit(opts.memory_limit).map_err(state_err)?;
        let m = meter.clone();
        // Global, so that the hook holds in every Lua thread, not just the main one.
        lua.set_global_hook(
            HookTriggers::new().every_nth_instruction(HOOK_EVERY),
            move |_, _| match m.check(m.current()) {
                Ok(()) => Ok(VmState::Continue),
                Err(l) => Err(mlua::Error::RuntimeError(format!("broke its {l}"))),
            },
        )
        .map_err(state_err)?;
        let sandbox = Sandbox { lua, meter };
        // "@" makes Lua name the chunk by the path itself: `/etc/…/redact.lua:3: …`.
        let chunk = sandbox
            .lua
            .load(&*opts.code)
            .set_name(format!("@{origin}"))
            .set_mode(mlua::ChunkMode::Text);
        let f = chunk.into_function().map_err(|e| match e {
            mlua::Error::SyntaxError { message, .. } => LoadError::Syntax(message),
            other => LoadError::Syntax(format!("{origin}: {}", short(&other))),
        })?;
        match sandbox.call::<()>(&f, ()) {
            Ok(()) => {}
            Err(CallError::Limit(limit)) => {
                return Err(LoadError::Limit {
                    origin: origin.clone(),
                    limit,
                })
            }
            Err(CallError::Script(message)) => {
                return Err(LoadError::TopLevel {
                    origin: origin.clone(),
                    message,
                })
            }
        }
        let defined: Value = sandbox
            .lua
            .globals()
            .raw_get(opts.function.as_str())
            .map_err(state_err)?;
        if !matches!(defined, Value::Function(_)) {
            return Err(LoadError::NoFunction {
                origin: origin.clone(),
                function: opts.function.clone(),
            });
        }
        Ok(sandbox)
    }

    /// The state, to build the values a call is given.
    pub fn lua(&self) -> &Lua {
        &self.lua
    }

    /// Says that record `record` (1, 2, …) of the current call now runs, so that it starts a
    /// budget of its own. Out of the script's reach: one that could say it could restart its
    /// own budget.
    pub fn running(&self, record: i64) {
        self.meter.running(record);
    }

    /// Calls `f` under a fresh budget: `instruction_limit`, `time_limit` and the memory limit,
    /// for the whole call.
    pub fn call<R: mlua::FromLuaMulti>(
        &self,
        f: &Function,
        args: impl mlua::IntoLuaMulti,
    ) -> Result<R, CallError> {
        self.meter.start();
        let r = f.call::<R>(args);
        self.ended(r)
    }

    /// Runs `f` on the raw state with `args` pushed (stack slots 1, 2, …), under a fresh
    /// budget: for the whole call, or for each record `f` says it runs
    /// ([`Sandbox::running`]). A Lua error raised while `f` runs (the script's, a broken
    /// limit, memory) ends it and is what this returns.
    ///
    /// # Safety
    /// As for mlua's `exec_raw`: `f` uses the stack within what it checked room for, and no
    /// frame of its own holds a value that needs dropping across a C API call that may raise
    /// (the error unwinds past it).
    pub unsafe fn call_raw(
        &self,
        args: impl mlua::IntoLuaMulti,
        f: impl FnOnce(*mut mlua::ffi::lua_State),
    ) -> Result<(), CallError> {
        self.meter.start();
        let r = self.lua.exec_raw::<()>(args, f);
        self.ended(r)
    }

    fn ended<R>(&self, r: mlua::Result<R>) -> Result<R, CallError> {
        // A tripped call failed for its limit, whatever the script made of the error.
        if let Some(l) = self.meter.tripped() {
            return Err(CallError::Limit(l));
        }
        r.map_err(|e| match root(&e) {
            mlua::Error::MemoryError(_) => CallError::Limit(Limit::Memory),
            other => CallError::Script(short(other)),
        })
    }
}

/// The error under any callback wrappers.
fn root(e: &mlua::Error) -> &mlua::Error {
    match e {
        mlua::Error::CallbackError { cause, .. } => root(cause),
        other => other,
    }
}

/// An error's first line of substance, without the traceback, at most 300 bytes: it ends up in
/// a record's fields and an alert.
fn short(e: &mlua::Error) -> String {
    let text = match root(e) {
        mlua::Error::RuntimeError(m) => m.clone(),
        mlua::Error::SyntaxError { message, .. } => message.clone(),
        other => other.to_string(),
    };
    let text = text.split("\nstack traceback:").next().unwrap_or("").trim();
    let mut end = text.len().min(300);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_string()
}

/// Takes away what a script must not have and puts the guards in.
fn harden(lua: &Lua, meter: &Arc<Meter>, time_limit: Duration) -> mlua::Result<()> {
    let g = lua.globals();
    for name in [
        "load",
        "loadfile",
        "dofile",
        "print",
        "warn",
        "collectgarbage",
        "require",
    ] {
        g.raw_set(name, Value::Nil)?;
    }
    let string: Table = g.raw_get("string")?;
    string.raw_set("dump", Value::Nil)?;
    let budget = time_limit.as_secs_f64() * PATTERN_STEPS_PER_SEC;
    for name in ["find", "match", "gmatch", "gsub"] {
        let orig: Function = string.raw_get(name)?;
        let guarded = lua.create_function(move |_, args: MultiValue| {
            guard(name, &args, budget).map_err(mlua::Error::RuntimeError)?;
            orig.call::<MultiValue>(args)
        })?;
        string.raw_set(name, guarded)?;
    }
    let m = meter.clone();
    let tripped = lua.create_function(move |_, ()| Ok(m.tripped().is_some()))?;
    lua.load(PRELUDE)
        .set_name("=sandbox")
        .set_mode(mlua::ChunkMode::Text)
        .call::<()>(tripped)
}

/// Lua-side guards: `pcall`/`xpcall` that do not swallow a tripped limit, table functions whose
/// loops the hook can count, a `string.rep` that does not count to n for nothing, a string
/// metatable the script cannot reach to change, and no finalizers.
const PRELUDE: &str = r##"
local tripped = ...
local raw_pcall, raw_xpcall, error = pcall, xpcall, error
local function pass(ok, ...)
  if not ok and tripped() then error((...), 0) end
  return ok, ...
end
pcall = function(f, ...) return pass(raw_pcall(f, ...)) end
xpcall = function(f, h, ...) return pass(raw_xpcall(f, h, ...)) end
table.move = function(a1, f, e, t, a2)
  if a2 == nil then a2 = a1 end
  if e >= f then
    if t > e or t <= f or a1 ~= a2 then
      for i = 0, e - f do a2[t + i] = a1[f + i] end
    else
      for i = e - f, 0, -1 do a2[t + i] = a1[f + i] end
    end
  end
  return a2
end
-- string.rep of an empty string with an empty separator is "" for any count, yet Lua's own loop
-- (lstrlib.c str_rep) counts to n in C, allocating nothing: string.rep("", 1e13) ran for hours.
local raw_rep, tonumber = string.rep, tonumber
string.rep = function(s, n, sep)
  if s == "" and (sep == nil or sep == "") then
    local k = tonumber(n)
    if k ~= nil and k > 1 then n = 1 end
  end
  return raw_rep(s, n, sep)
end
-- table.insert and table.remove shift every element up to #t in C (ltablib.c tinsert, tremove),
-- and #t is no measure of memory: a __len metamethod may say 1e13, and even a plain table's
-- border can be 2^40 with 41 entries in it (t[2], t[4], ... t[2^40], then t[1], all in its hash
-- part, where ltable.c's hash_search doubles its way up). So the shifts are
-- Lua loops here, which the hook counts; what they do is ltablib.c's, step for step.
local raw_insert, raw_remove, select, type = table.insert, table.remove, select, type
local tointeger = math.tointeger
local function position(v, fname)
  local k = tointeger(v)
  if k == nil then
    error(("bad argument #2 to '%s' (number has no integer representation)"):format(fname), 3)
  end
  return k
end
table.insert = function(t, ...)
  if type(t) ~= "table" then return raw_insert(t, ...) end
  local n = select("#", ...)
  local e = #t + 1
  if n == 1 then
    t[e] = ...
    return
  elseif n ~= 2 then
    error("wrong number of arguments to 'insert'", 2)
  end
  local pos, v = ...
  pos = position(pos, "insert")
  if pos < 1 or pos > e then error("bad argument #2 to 'insert' (position out of bounds)", 2) end
  for i = e, pos + 1, -1 do t[i] = t[i - 1] end
  t[pos] = v
end
table.remove = function(t, pos)
  if type(t) ~= "table" then return raw_remove(t, pos) end
  local size = #t
  if pos == nil then pos = size else pos = position(pos, "remove") end
  if pos ~= size and (pos < 1 or pos > size + 1) then
    error("bad argument #2 to 'remove' (position out of bounds)", 2)
  end
  local v = t[pos]
  while pos < size do
    t[pos] = t[pos + 1]
    pos = pos + 1
  end
  t[pos] = nil
  return v
end
-- table.sort and table.concat loop up to #t in C, reading through __index: on a table with a
-- metatable (a __len of 2^31 and a C function as __index) nothing bounds them. Such a table is
-- first copied, by a loop the hook counts, into a plain one, which is what the C code gets.
local raw_sort, raw_concat, raw_getmetatable = table.sort, table.concat, getmetatable
local function plain(t, i, j)
  local copy, n = {}, 0
  for k = i, j do
    n = n + 1
    copy[n] = t[k]
  end
  return copy, n
end
table.sort = function(t, comp)
  if type(t) ~= "table" or raw_getmetatable(t) == nil then return raw_sort(t, comp) end
  local copy, n = plain(t, 1, #t)
  raw_sort(copy, comp)
  for k = 1, n do t[k] = copy[k] end
end
table.concat = function(t, sep, i, j)
  if type(t) ~= "table" or raw_getmetatable(t) == nil then return raw_concat(t, sep, i, j) end
  i = i or 1
  j = j or #t
  local copy, n = plain(t, i, j)
  return raw_concat(copy, sep, 1, n)
end
getmetatable("").__metatable = false
-- Lua runs finalizers with hooks off (lgc.c GCTM): a looping __gc would hang the state with no
-- limit to stop it. A finalizer is only ever registered by setmetatable, so refusing __gc there
-- closes the door (adding __gc to a metatable later registers nothing).
local raw_setmetatable, rawget, type = setmetatable, rawget, type
setmetatable = function(t, mt)
  if type(mt) == "table" and rawget(mt, "__gc") ~= nil then
    error("__gc metamethods are not allowed in a transform (finalizers run outside its limits)", 2)
  end
  return raw_setmetatable(t, mt)
end
"##;

/// Refuses a pattern call whose worst case would not finish within `budget` steps.
fn guard(name: &str, args: &MultiValue, budget: f64) -> Result<(), String> {
    let text = |i: usize| -> Option<Vec<u8>> {
        match args.get(i) {
            Some(Value::String(s)) => Some(s.as_bytes().to_vec()),
            Some(Value::Integer(n)) => Some(n.to_string().into_bytes()),
            Some(Value::Number(n)) => Some(n.to_string().into_bytes()),
            _ => None,
        }
    };
    // Anything else is a type error the original reports at once.
    let (Some(subject), Some(pattern)) = (text(0), text(1)) else {
        return Ok(());
    };
    let n = subject.len() as f64;
    let plain = name == "find"
        && args
            .get(3)
            .is_some_and(|v| !matches!(v, Value::Nil | Value::Boolean(false)));
    let cost = if plain || (name == "find" && !pattern.iter().any(|b| SPECIALS.contains(b))) {
        // A plain search compares the needle at every position.
        n * (pattern.len() as f64 + 1.0)
    } else {
        pattern_cost(&pattern, &subject, name != "gmatch")
            .map_err(|e| format!("string.{name}: {e}"))?
    };
    if cost <= budget {
        return Ok(());
    }
    let mut shown = String::from_utf8_lossy(&pattern).into_owned();
    if shown.len() > 60 {
        let mut end = 60;
        while !shown.is_char_boundary(end) {
            end -= 1;
        }
        shown.truncate(end);
        shown.push('…');
    }
    Err(format!(
        "string.{name}: pattern {shown:?} could backtrack for longer than the time limit on a \
         {}-byte subject (worst case {cost:.1e} steps); anchor it with ^, bound its repetitions \
         or use a plain find",
        subject.len()
    ))
}

/// Lua's pattern specials (lstrlib.c SPECIALS): without one, `find` searches plainly.
const SPECIALS: &[u8] = b"^$*+?.([%-";

/// An upper bound on the steps of Lua's backtracking matcher (lstrlib.c `match`) for `p` over
/// `subject`.
///
/// A `*`, `+` or `-` item tries one length per character of its class that follows, so at most
/// one more than the longest run of such characters in the subject (`.`: the whole subject;
/// `%d`: the longest run of digits); `?` tries two; `%b` and back-references scan up to n
/// bytes per attempt; an unanchored search (and `gmatch`, `gsub`) tries up to n+1 starts. The
/// worst case is the product of these, times the items: loose where items exclude each other,
/// exact in order for `.-.-b` over `aaaa…`, which is what has to be caught. A malformed
/// pattern is refused here, not after the matcher has spent its time getting to it.
pub fn pattern_cost(p: &[u8], subject: &[u8], may_anchor: bool) -> Result<f64, String> {
    let n = subject.len() as f64;
    let mut i = 0;
    let anchored = may_anchor && p.first() == Some(&b'^');
    if anchored {
        i = 1;
    }
    let (mut product, mut items) = (1f64, 0f64);
    while i < p.len() {
        items += 1.0;
        let item = i;
        match p[i] {
            b'(' | b')' => {
                i += 1;
                continue;
            }
            b'$' if i + 1 == p.len() => {
                i += 1;
                continue;
            }
            b'%' => match p.get(i + 1) {
                None => return Err("malformed pattern (ends with '%')".into()),
                Some(b'b') => {
                    if i + 3 >= p.len() {
                        return Err("malformed pattern (missing arguments to '%b')".into());
                    }
                    product *= n + 1.0;
                    i += 4;
                    continue;
                }
                Some(b'f') => {
                    if p.get(i + 2) != Some(&b'[') {
                        return Err("missing '[' after '%f' in pattern".into());
                    }
                    i = class_end(p, i + 2)?;
                    continue;
                }
                Some(d) if d.is_ascii_digit() => {
                    product *= n + 1.0;
                    i += 2;
                    continue;
                }
                Some(_) => i += 2,
            },
            b'[' => i = class_end(p, i)?,
            _ => i += 1,
        }
        // A single-character item: its repetition suffix decides how much it backtracks.
        match p.get(i) {
            Some(b'*' | b'+' | b'-') => {
                product *= longest_run(subject, &p[item..i]) + 1.0;
                i += 1;
            }
            Some(b'?') => {
                product *= 2.0;
                i += 1;
            }
            _ => {}
        }
    }
    let starts = if anchored { 1.0 } else { n + 1.0 };
    Ok(starts * product * items.max(1.0))
}

/// The longest run of bytes of `subject` that the single-character item `class` matches.
fn longest_run(subject: &[u8], class: &[u8]) -> f64 {
    let mut table = [false; 256];
    for (c, slot) in table.iter_mut().enumerate() {
        *slot = single_match(c as u8, class);
    }
    let (mut best, mut run) = (0usize, 0usize);
    for &b in subject {
        run = if table[b as usize] { run + 1 } else { 0 };
        best = best.max(run);
    }
    best as f64
}

/// lstrlib.c `singlematch`: does `c` match the item `p` (`.`, `%x`, `[set]` or a literal)?
fn single_match(c: u8, p: &[u8]) -> bool {
    match p[0] {
        b'.' => true,
        b'%' => match_class(c, p[1]),
        b'[' => bracket_class(c, p),
        lit => lit == c,
    }
}

/// lstrlib.c `match_class`, in the C locale.
fn match_class(c: u8, cl: u8) -> bool {
    let is = match cl.to_ascii_lowercase() {
        b'a' => c.is_ascii_alphabetic(),
        b'c' => c.is_ascii_control(),
        b'd' => c.is_ascii_digit(),
        b'g' => c.is_ascii_graphic(),
        b'l' => c.is_ascii_lowercase(),
        b'p' => c.is_ascii_punctuation(),
        b's' => c == b' ' || (b'\t'..=b'\r').contains(&c),
        b'u' => c.is_ascii_uppercase(),
        b'w' => c.is_ascii_alphanumeric(),
        b'x' => c.is_ascii_hexdigit(),
        _ => return cl == c,
    };
    if cl.is_ascii_uppercase() {
        !is
    } else {
        is
    }
}

/// lstrlib.c `matchbracketclass` over `p` = `[...]` (closing `]` included).
fn bracket_class(c: u8, p: &[u8]) -> bool {
    let end = p.len() - 1;
    let mut i = 1;
    let mut sig = true;
    if p.get(1) == Some(&b'^') {
        sig = false;
        i = 2;
    }
    while i < end {
        if p[i] == b'%' && i + 1 < end {
            if match_class(c, p[i + 1]) {
                return sig;
            }
            i += 2;
        } else if p.get(i + 1) == Some(&b'-') && i + 2 < end {
            if p[i] <= c && c <= p[i + 2] {
                return sig;
            }
            i += 3;
        } else {
            if p[i] == c {
                return sig;
            }
            i += 1;
        }
    }
    !sig
}

/// The index just past the set `[...]` starting at `p[i]`, as lstrlib.c's classEnd reads it.
fn class_end(p: &[u8], i: usize) -> Result<usize, String> {
    let mut j = i + 1;
    if p.get(j) == Some(&b'^') {
        j += 1;
    }
    // The first character of a set is taken literally, `]` included.
    loop {
        match p.get(j) {
            None => return Err("malformed pattern (missing ']')".into()),
            Some(b'%') => {
                if j + 1 >= p.len() {
                    return Err("malformed pattern (missing ']')".into());
                }
                j += 2;
            }
            Some(_) => j += 1,
        }
        if p.get(j) == Some(&b']') {
            return Ok(j + 1);
        }
    }
}

#[cfg(test)]
mod tests;
