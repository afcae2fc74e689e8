//! What the script made of a run, read out of the driver's tables in one locked call.
//!
//! Through mlua every value read back is a locked call and a registry reference made and
//! dropped: for a script that adds one field that was a third of its cost. So the lists are
//! walked with Lua's C API instead, in one `exec_raw`: messages copied out as bytes, and a
//! flat `fields` table (string keys; string, boolean or number values) written straight to
//! JSON. Anything else (a nested table, an integer key, a value JSON cannot carry) is left to
//! the general path ([`super::json::from_lua`]), which also names what is wrong, so the
//! result and every error are those it would give.
//!
//! Nothing called here raises a Lua error: `lua_next` only does for a key changed during the
//! walk (none is), `lua_rawgeti` and `lua_tolstring` on a string allocate nothing, and
//! `lua_checkstack` reports failure rather than raising it. So no error can unwind across
//! this Rust code.

use mlua::ffi;
use std::ffi::c_int;

/// What came of one changed record, as the driver listed it.
pub struct Listed {
    /// The record's index in the run (1-based).
    pub index: usize,
    /// Its place in the driver's lists (`fields_out[slot]` for [`Fields::General`]).
    pub slot: i64,
    pub code: i64,
    /// With a changed msg: its bytes, or the type it was set to when not a string.
    pub msg: Option<Result<Vec<u8>, &'static str>>,
    /// With changed fields: what they became.
    pub fields: Option<Fields>,
}

pub enum Fields {
    /// Set to nil: no fields.
    Nil,
    /// A flat table, as JSON.
    Json(Vec<u8>),
    /// A table the general path converts: the `fields_out` slot to read it from.
    General,
    /// Not a table: its type.
    Not(&'static str),
}

/// Lists what the driver recorded (`changed`, `codes`, `msgs`, `fields_out`: the driver's
/// tables, see [`super::driver`]) for records up to `done`, in order. Fails only when the
/// state has no memory left to grow its stack.
pub fn read(
    lua: &mlua::Lua,
    tables: (&mlua::Table, &mlua::Table, &mlua::Table, &mlua::Table),
    changed_msg: i64,
    changed_fields: i64,
    done: usize,
) -> mlua::Result<Vec<Listed>> {
    let mut out = Vec::new();
    let mut room = true;
    // SAFETY: the closure runs with the four tables at stack slots 1-4 and keeps the stack
    // balanced; the C API calls it makes cannot raise (see the module's comment), and every
    // pointer lua_tolstring gives is copied from before the value is popped.
    unsafe {
        lua.exec_raw::<()>(tables, |l| {
            if ffi::lua_checkstack(l, 8) == 0 {
                room = false;
                return;
            }
            let k = int_at(l, 1, 0);
            for j in 1..=k {
                let index = int_at(l, 1, j);
                if index < 1 || index as usize > done {
                    continue;
                }
                let code = int_at(l, 2, j);
                let msg = (code & changed_msg != 0).then(|| {
                    ffi::lua_rawgeti(l, 3, j);
                    let m = match bytes_at(l, -1) {
                        Some(b) => Ok(b.to_vec()),
                        None => Err(type_name(l, -1)),
                    };
                    ffi::lua_pop(l, 1);
                    m
                });
                let fields = (code & changed_fields != 0).then(|| {
                    ffi::lua_rawgeti(l, 4, j);
                    let f = match ffi::lua_type(l, -1) {
                        ffi::LUA_TNIL => Fields::Nil,
                        ffi::LUA_TTABLE => match flat_json(l, ffi::lua_gettop(l)) {
                            Some(json) => Fields::Json(json),
                            None => Fields::General,
                        },
                        _ => Fields::Not(type_name(l, -1)),
                    };
                    ffi::lua_pop(l, 1);
                    f
                });
                out.push(Listed {
                    index: index as usize,
                    slot: j,
                    code,
                    msg,
                    fields,
                });
            }
        })?;
    }
    if !room {
        return Err(mlua::Error::MemoryError(
            "no room on the Lua stack to read the run back".into(),
        ));
    }
    Ok(out)
}

/// `t[i]` as an integer (0 when it is not one).
unsafe fn int_at(l: *mut ffi::lua_State, t: c_int, i: i64) -> i64 {
    ffi::lua_rawgeti(l, t, i);
    let mut is = 0;
    let v = ffi::lua_tointegerx(l, -1, &mut is);
    ffi::lua_pop(l, 1);
    if is != 0 {
        v
    } else {
        0
    }
}

/// The bytes of the string at `idx`; None when it is not a string (a number is not taken for
/// one: converting it in place would allocate, and the general path refuses it too).
unsafe fn bytes_at<'a>(l: *mut ffi::lua_State, idx: c_int) -> Option<&'a [u8]> {
    if ffi::lua_type(l, idx) != ffi::LUA_TSTRING {
        return None;
    }
    let mut len = 0usize;
    let p = ffi::lua_tolstring(l, idx, &mut len);
    Some(std::slice::from_raw_parts(p as *const u8, len))
}

unsafe fn type_name(l: *mut ffi::lua_State, idx: c_int) -> &'static str {
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

/// The table at absolute index `t` as a JSON object, keys sorted, when every key is a UTF-8
/// string and every value a string, a boolean or a finite number; None otherwise.
unsafe fn flat_json(l: *mut ffi::lua_State, t: c_int) -> Option<Vec<u8>> {
    // Each value's JSON goes into one buffer, its key and place kept beside it; the object is
    // then written in key order.
    let mut values = Vec::new();
    let mut entries: Vec<(&str, std::ops::Range<usize>)> = Vec::new();
    ffi::lua_pushnil(l);
    while ffi::lua_next(l, t) != 0 {
        // The key's bytes stay valid after the pop: the table still holds the key.
        let key = bytes_at(l, -2).and_then(|k| std::str::from_utf8(k).ok());
        let start = values.len();
        let ok = key.is_some() && value_json(l, -1, &mut values);
        ffi::lua_pop(l, 1);
        match key {
            Some(k) if ok => entries.push((k, start..values.len())),
            _ => {
                ffi::lua_pop(l, 1);
                return None;
            }
        }
    }
    entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
    let mut out = Vec::with_capacity(
        2 + values.len() + entries.iter().map(|(k, _)| k.len() + 4).sum::<usize>(),
    );
    out.push(b'{');
    for (i, (k, v)) in entries.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        super::json::string(&mut out, k);
        out.push(b':');
        out.extend_from_slice(&values[v.clone()]);
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
                Err(_) => super::json::string(out, &String::from_utf8_lossy(b)),
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
