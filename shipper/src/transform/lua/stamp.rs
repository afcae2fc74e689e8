//! A record's table stamped from a template instead of built key by key.
//!
//! Every record's table has the same eight keys, and four of their values (`source`, `path`,
//! `stream`, `host`) are the same for a whole run. Built through the C API, each key is a
//! `lua_rawset` that looks the key up, finds it missing and inserts it (main position,
//! collision, free slot): for drop-a-tenth-add-a-field that was a fifth of the agent's
//! instructions. Lua 5.4's API has no way to copy a table, so this copies one the way Lua
//! itself lays it out: a table made with room for eight keys (`lua_createtable(l, 0, 8)`,
//! as the template was) gets the template's hash nodes copied over its empty ones, and the
//! four values that differ per record are then set with `lua_rawset`, which finds their keys.
//! The result is, slot for slot, the table the eight inserts would have built in that order.
//!
//! This reads Lua's private structures (`Table` and `Node` in Lua 5.4's `lobject.h`, the
//! colour bits in `lgc.h`), laid out below. They have kept this layout since Lua 5.4.0; the
//! Lua here is the one mlua builds from source (5.4.8, pinned with mlua in the workspace), so
//! no other layout meets this code. Even so, [`Stamp::check`] stamps a table when a state is
//! built and reads it back through the public API: if anything differs, stamping is off for
//! that state and records are built key by key.
//!
//! Why copying pointers into the new table is safe for the collector: its invariant is that
//! no black object points to a white one unless a barrier has seen to it. A table fresh from
//! `lua_createtable` is white, or gray if a collection step in that call reached it; both may
//! point to anything. It is black only after a collection that finished inside that call made
//! every survivor black (a major collection in generational mode) or an incremental step
//! traversed it: [`Stamp::onto`] then refuses, and that record is built key by key, through
//! the barriers. Nothing between the check and the copy allocates, so no step runs there.

use mlua::ffi;
use std::ffi::{c_int, c_uint, c_void};

/// Lua 5.4's `Table` (lobject.h).
#[repr(C)]
struct Table {
    next: *mut c_void,
    tt: u8,
    marked: u8,
    flags: u8,
    lsizenode: u8,
    alimit: c_uint,
    array: *mut c_void,
    node: *mut Node,
    lastfree: *mut Node,
    metatable: *mut c_void,
    gclist: *mut c_void,
}

/// Lua 5.4's `Node` (lobject.h): a value (8 bytes and a tag), the key's tag, the chain's next
/// and the key's value; copied whole, never looked into.
#[repr(C)]
struct Node {
    value: u64,
    tt: u8,
    key_tt: u8,
    next: c_int,
    key_val: u64,
}

const _: () = assert!(std::mem::size_of::<Table>() == 56 && std::mem::size_of::<Node>() == 24);

/// The value of the check's key `k`.
fn value(k: usize) -> i64 {
    (k as i64 + 1) * 10
}

/// `BLACKBIT` in lgc.h.
const BLACK: u8 = 1 << 5;

/// The template's keys in [`Stamp::check`]: static, since nothing in a raw call may need
/// dropping when an allocation raises.
const KEYS: [&std::ffi::CStr; 8] = [c"k1", c"k2", c"k3", c"k4", c"k5", c"k6", c"k7", c"k8"];

/// Whether this state's tables can be stamped (decided once per state by [`Stamp::check`]).
#[derive(Clone, Copy)]
pub struct Stamp {
    on: bool,
}

impl Stamp {
    /// Stamps a table from a template of eight keys in `lua` and reads both back through the
    /// public API: on when they hold the same pairs and the rest of the copy is as Lua's own.
    pub fn check(lua: &mlua::Lua) -> Stamp {
        Stamp {
            on: Stamp::check_on(lua).unwrap_or(false),
        }
    }

    fn check_on(lua: &mlua::Lua) -> mlua::Result<bool> {
        // SAFETY: the closure uses four slots (Lua guarantees LUA_MINSTACK, 20) and holds
        // nothing that needs dropping; a memory error raised by an allocation unwinds to
        // exec_raw, which returns it.
        let (template, stamped, on) = unsafe {
            lua.exec_raw::<(mlua::Table, mlua::Table, bool)>((), |l| {
                if ffi::lua_version(l) != 504.0 {
                    ffi::lua_pushnil(l);
                    ffi::lua_pushnil(l);
                    ffi::lua_pushboolean(l, 0);
                    return;
                }
                ffi::lua_createtable(l, 0, 8);
                for (k, key) in KEYS.iter().enumerate() {
                    ffi::lua_pushinteger(l, value(k));
                    ffi::lua_setfield(l, -2, key.as_ptr());
                }
                ffi::lua_createtable(l, 0, 8);
                let on = Stamp { on: true }.onto(l, -1, -2);
                ffi::lua_pushboolean(l, on as c_int);
            })
        }?;
        if !on {
            return Ok(false);
        }
        let mut n = 0;
        for pair in stamped.clone().pairs::<String, i64>() {
            let (k, v) = pair?;
            n += 1;
            if template.raw_get::<Option<i64>>(k.as_str())? != Some(v) {
                return Ok(false);
            }
        }
        for (k, key) in KEYS.iter().enumerate() {
            if stamped.raw_get::<Option<i64>>(key.to_str().unwrap_or_default())? != Some(value(k)) {
                return Ok(false);
            }
        }
        // A key it lacks goes in as into any table, filling the copied free slots.
        stamped.raw_set("k9", 90)?;
        Ok(n == KEYS.len() && stamped.raw_len() == 0 && stamped.raw_get::<i64>("k9")? == 90)
    }

    /// Copies the keys and values of the template at `template` into the table at `table`,
    /// fresh from `lua_createtable(l, 0, n)` with the same `n` as the template was: true when
    /// done; false (the table left as it was) when stamping is off or the table is not one
    /// this can stamp.
    ///
    /// # Safety
    /// `table` and `template` are valid indices of tables, `table`'s made as above.
    pub unsafe fn onto(self, l: *mut ffi::lua_State, table: c_int, template: c_int) -> bool {
        if !self.on {
            return false;
        }
        let t = ffi::lua_topointer(l, table) as *mut Table;
        let s = ffi::lua_topointer(l, template) as *const Table;
        if t.is_null() || s.is_null() {
            return false;
        }
        let (t, s) = (&mut *t, &*s);
        if t.marked & BLACK != 0
            || t.lsizenode != s.lsizenode
            || t.alimit != 0
            || s.alimit != 0
            || !t.metatable.is_null()
            || !s.metatable.is_null()
            || t.lastfree.is_null()
            || s.lastfree.is_null()
        {
            return false;
        }
        let size = 1usize << t.lsizenode;
        std::ptr::copy_nonoverlapping(s.node, t.node, size);
        t.lastfree = t.node.offset(s.lastfree.offset_from(s.node));
        t.flags = s.flags;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mlua::{Lua, Table};

    #[test]
    fn stamping_is_on_for_the_lua_built_here() {
        // Off would mean the layout above is not this Lua's: every record built key by key.
        assert!(Stamp::check(&Lua::new()).on);
    }

    /// Stamps `n` tables from `template` into `kept` (at `first`, `first + 1`, …), a
    /// collection step after each; a table the stamp refuses is built key by key. Returns how
    /// many were stamped.
    fn stamp_many(lua: &Lua, template: &Table, kept: &Table, first: i64, n: i64) -> i64 {
        // SAFETY: a few slots over the two arguments; nothing here needs dropping.
        unsafe {
            lua.exec_raw::<i64>((template, kept), |l| {
                let mut stamped = 0;
                for i in 0..n {
                    ffi::lua_createtable(l, 0, 8);
                    if (Stamp { on: true }).onto(l, 3, 1) {
                        stamped += 1;
                    } else {
                        ffi::lua_pushnil(l);
                        while ffi::lua_next(l, 1) != 0 {
                            ffi::lua_pushvalue(l, -2);
                            ffi::lua_insert(l, -2);
                            ffi::lua_rawset(l, 3);
                        }
                    }
                    ffi::lua_rawseti(l, 2, first + i);
                    ffi::lua_gc(l, ffi::LUA_GCSTEP, 0);
                }
                ffi::lua_settop(l, 0);
                ffi::lua_pushinteger(l, stamped);
            })
        }
        .unwrap()
    }

    /// Tables stamped from templates whose values nothing else holds, while the collector
    /// runs in steps between them, still hold every value after the templates are gone and
    /// full collections ran: the copy never leaves a black table pointing at a white string.
    fn stamped_tables_outlive_their_templates(mode: &str) -> i64 {
        let lua = Lua::new();
        lua.load(format!("collectgarbage('{mode}')"))
            .exec()
            .unwrap();
        let template: mlua::Function = lua
            .load(
                r#"return function(r)
                    local t = {}
                    for k = 1, 8 do t["k" .. k] = string.rep("v", 40) .. r .. "/" .. k end
                    return t
                end"#,
            )
            .eval()
            .unwrap();
        let kept = lua.create_table().unwrap();
        let (rounds, per) = (300, 50);
        let mut stamped = 0;
        for r in 0..rounds {
            let t: Table = template.call(r).unwrap();
            stamped += stamp_many(&lua, &t, &kept, r * per + 1, per);
            // Garbage between rounds, so that steps land everywhere in a cycle.
            lua.load("local g = {} for i = 1, 200 do g[i] = {i} end")
                .exec()
                .unwrap();
        }
        lua.gc_collect().unwrap();
        lua.gc_collect().unwrap();
        for r in 0..rounds {
            for i in 0..per {
                let t: Table = kept.raw_get(r * per + 1 + i).unwrap();
                assert_eq!(t.pairs::<String, String>().count(), 8);
                for k in 1..=8 {
                    let v: String = t.raw_get(format!("k{k}")).unwrap();
                    assert_eq!(v, format!("{}{r}/{k}", "v".repeat(40)), "{mode}: round {r}");
                }
            }
        }
        stamped
    }

    #[test]
    fn stamped_tables_outlive_their_templates_in_generational_mode() {
        let stamped = stamped_tables_outlive_their_templates("generational");
        assert!(stamped > 0);
    }

    #[test]
    fn stamped_tables_outlive_their_templates_in_incremental_mode() {
        // Steps here traverse the stack and make fresh tables black: those are refused.
        let stamped = stamped_tables_outlive_their_templates("incremental");
        assert!(stamped > 0);
    }
}
