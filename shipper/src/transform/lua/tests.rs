//! LuaTransform on records.
