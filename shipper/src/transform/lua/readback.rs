//! What the script made of a record, read with Lua's C API by the driver's loop
//! ([`super::driver`]).
//!
//! Through mlua every value read back is a locked call and a registry reference made and
//! dropped: for a script that adds one field that was a third of its cost. So messages are
//! copied out as bytes, and a flat `fields` table (string keys; string, boolean or number
//! values) written straight to JSON. Anything else (a nested table, an integer key, a key or
//! value that is not UTF-8, a value JSON cannot carry) is left to the general path ([`super::json::from_lua`]), which also
//! names what is wrong, so the result and every error are those it would give.
//!
//! Nothing called here raises a Lua error: `lua_next` only does for a key changed during the
//! walk (none is), and `lua_tolstring` on a string allocates nothing. So no error can unwind
//! across this Rust code, which holds vectors.

use mlua::ffi;
use std::ffi::c_int;

/// What a record's changed `fields` became.
pub enum Fields {
    /// Set to nil: no fields.
    Nil,
    /// A flat table, as JSON.
    Json(Vec<u8>),
    /// A table the general path converts, from the driver's `fields_out`.
    General,
    /// Not a table: its type.
    Not(&'static str),
}

/// The bytes of the string at `idx`; None when it is not a string (a number is not taken for
/// one: converting it in place would allocate, and the general path refuses it too).
pub(super) unsafe fn bytes_at<'a>(l: *mut ffi::lua_State, idx: c_int) -> Option<&'a [u8]> {
    if ffi::lua_type(l, idx) != ffi::LUA_TSTRING {
        return None;
    }
    let mut len = 0usize;
    let p = ffi::lua_tolstring(l, idx, &mut len);
    Some(std::slice::from_raw_parts(p as *const u8, len))
}

pub(super) unsafe fn type_name(l: *mut ffi::lua_State, idx: c_int) -> &'static str {
    match ffi::lua_type(l, idx) {
        ffi::LUA_TNIL => "nil",
        ffi::LUA_TBOOLEAN => "boolean",
        ffi::LUA_TNUMBER if ffi::lua_isinteger(l, idx) != 0 => "integer",
        ffi::LUA_TNUMBER => "number",
        ffi::LUA_TSTRING => "string",
        ffi::LUA_TTABLE => "table",
        ffi::LUA_TFUNCTION => "function",
        ffi::LUA_TTHREAD => "thread",
        ffi::LUA_TLIGHTUSERDATA => "lightuserdata",
        _ => "userdata",
    }
}

/// What [`flat_json`] reuses from one table to the next, so that reading a table costs one
/// allocation (its JSON) however many keys it has.
#[derive(Default)]
pub struct Scratch {
    /// The values' JSON, back to back.
    values: Vec<u8>,
    /// Per entry: its key (address and length of the bytes of a Lua string the table holds,
    /// valid while it is read) and where its value's JSON lies in `values`.
    entries: Vec<(usize, usize, std::ops::Range<usize>)>,
}

/// The table at absolute index `t` as a JSON object, keys sorted, when every key is a UTF-8
/// string and every value a UTF-8 string, a boolean or a finite number; None otherwise.
pub(super) unsafe fn flat_json(
    l: *mut ffi::lua_State,
    t: c_int,
    scratch: &mut Scratch,
) -> Option<Vec<u8>> {
    let Scratch { values, entries } = scratch;
    values.clear();
    entries.clear();
    ffi::lua_pushnil(l);
    while ffi::lua_next(l, t) != 0 {
        // The key's bytes stay valid after the pop: the table still holds the key.
        let key = bytes_at(l, -2).filter(|k| std::str::from_utf8(k).is_ok());
        let start = values.len();
        let ok = key.is_some() && value_json(l, -1, values);
        ffi::lua_pop(l, 1);
        match key {
            Some(k) if ok => entries.push((k.as_ptr() as usize, k.len(), start..values.len())),
            _ => {
                ffi::lua_pop(l, 1);
                return None;
            }
        }
    }
    // SAFETY: every key is a string the table at `t` holds, unchanged since it was read.
    let key = |&(p, n, _): &(usize, usize, _)| -> &str {
        std::str::from_utf8_unchecked(std::slice::from_raw_parts(p as *const u8, n))
    };
    entries.sort_unstable_by(|a, b| key(a).cmp(key(b)));
    let mut out =
        Vec::with_capacity(2 + values.len() + entries.iter().map(|(_, n, _)| n + 4).sum::<usize>());
    out.push(b'{');
    for (i, e) in entries.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        super::json::string(&mut out, key(e));
        out.push(b':');
        out.extend_from_slice(&values[e.2.clone()]);
    }
    out.push(b'}');
    Some(out)
}

/// Writes a value JSON carries to `out` as the general path writes it; false for a table or
/// anything JSON cannot carry.
unsafe fn value_json(l: *mut ffi::lua_State, idx: c_int, out: &mut Vec<u8>) -> bool {
    match ffi::lua_type(l, idx) {
        ffi::LUA_TSTRING => {
            let Some(b) = bytes_at(l, idx) else {
                return false;
            };
            match std::str::from_utf8(b) {
                Ok(text) => super::json::string(out, text),
                // JSON cannot carry it: the general path names the field.
                Err(_) => return false,
            }
        }
        ffi::LUA_TBOOLEAN => out.extend_from_slice(if ffi::lua_toboolean(l, idx) != 0 {
            b"true"
        } else {
            b"false"
        }),
        ffi::LUA_TNUMBER => {
            let mut is = 0;
            if ffi::lua_isinteger(l, idx) != 0 {
                let i = ffi::lua_tointegerx(l, idx, &mut is);
                return serde_json::to_writer(&mut *out, &i).is_ok();
            }
            let f = ffi::lua_tonumberx(l, idx, &mut is);
            let Some(n) = serde_json::Number::from_f64(f) else {
                return false;
            };
            return serde_json::to_writer(&mut *out, &n).is_ok();
        }
        _ => return false,
    }
    true
}
