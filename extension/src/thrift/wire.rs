//! The osquery extension protocol's Thrift structs, (de)serialised by hand against the `thrift`
//! crate's protocol traits.
//!
//! Field ids and types follow osquery's IDL, `osquery/extensions/thrift/osquery.thrift`
//! (osquery/osquery 5.23.0+): `ExtensionStatus{1:i32 code, 2:string message, 3:i64 uuid}`,
//! `ExtensionResponse{1:ExtensionStatus status, 2:list<map<string,string>> response}`,
//! `InternalExtensionInfo{1:name, 2:version, 3:sdk_version, 4:min_sdk_version}`,
//! `InternalOptionInfo{1:value, 2:default_value, 3:type}`. No generated code is used: readers
//! skip unknown fields like generated code does, so a newer osquery adding a field still works.

use std::collections::BTreeMap;

use thrift::protocol::{
    TFieldIdentifier, TInputProtocol, TListIdentifier, TMapIdentifier, TOutputProtocol,
    TStructIdentifier, TType,
};

/// `map<string,string>`: a plugin request, or one row / route entry of a response.
pub type StringMap = BTreeMap<String, String>;

/// `EXT_SUCCESS` in osquery.thrift's `ExtensionCode`.
pub const EXT_SUCCESS: i32 = 0;
/// `EXT_FAILED` in osquery.thrift's `ExtensionCode`.
pub const EXT_FAILED: i32 = 1;

/// `struct ExtensionStatus`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ExtensionStatus {
    pub code: i32,
    pub message: String,
    pub uuid: i64,
}

/// `struct ExtensionResponse`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ExtensionResponse {
    pub status: ExtensionStatus,
    pub response: Vec<StringMap>,
}

/// `struct InternalExtensionInfo`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ExtensionInfo {
    pub name: String,
    pub version: String,
    pub sdk_version: String,
    pub min_sdk_version: String,
}

/// `struct InternalOptionInfo`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct OptionInfo {
    pub value: String,
    pub default_value: String,
    pub option_type: String,
}

/// `ExtensionRegistry = map<registry, map<plugin, list<map<string,string>>>>`.
pub type ExtensionRegistry = BTreeMap<String, BTreeMap<String, Vec<StringMap>>>;

/// `status.code = 0` with rows.
pub fn success(rows: Vec<StringMap>) -> ExtensionResponse {
    ExtensionResponse {
        status: ExtensionStatus::success("OK", 0),
        response: rows,
    }
}

/// `status.code = 1` with a message: osquery turns it into an SQL error or a logged failure.
pub fn failure(message: impl Into<String>) -> ExtensionResponse {
    ExtensionResponse {
        status: ExtensionStatus {
            code: 1,
            message: message.into(),
            uuid: 0,
        },
        response: Vec::new(),
    }
}

impl ExtensionStatus {
    pub fn success(message: impl Into<String>, uuid: i64) -> Self {
        ExtensionStatus {
            code: EXT_SUCCESS,
            message: message.into(),
            uuid,
        }
    }

    pub fn write(&self, o: &mut dyn TOutputProtocol) -> thrift::Result<()> {
        o.write_struct_begin(&TStructIdentifier::new("ExtensionStatus"))?;
        o.write_field_begin(&TFieldIdentifier::new("code", TType::I32, 1))?;
        o.write_i32(self.code)?;
        o.write_field_end()?;
        o.write_field_begin(&TFieldIdentifier::new("message", TType::String, 2))?;
        o.write_string(&self.message)?;
        o.write_field_end()?;
        o.write_field_begin(&TFieldIdentifier::new("uuid", TType::I64, 3))?;
        o.write_i64(self.uuid)?;
        o.write_field_end()?;
        o.write_field_stop()?;
        o.write_struct_end()
    }

    pub fn read(i: &mut dyn TInputProtocol) -> thrift::Result<Self> {
        let mut s = ExtensionStatus::default();
        read_struct(i, |i, id, ty| match (id, ty) {
            (1, TType::I32) => {
                s.code = i.read_i32()?;
                Ok(())
            }
            (2, TType::String) => {
                s.message = i.read_string()?;
                Ok(())
            }
            (3, TType::I64) => {
                s.uuid = i.read_i64()?;
                Ok(())
            }
            (_, ty) => i.skip(ty),
        })?;
        Ok(s)
    }
}

impl ExtensionResponse {
    pub fn write(&self, o: &mut dyn TOutputProtocol) -> thrift::Result<()> {
        o.write_struct_begin(&TStructIdentifier::new("ExtensionResponse"))?;
        o.write_field_begin(&TFieldIdentifier::new("status", TType::Struct, 1))?;
        self.status.write(o)?;
        o.write_field_end()?;
        o.write_field_begin(&TFieldIdentifier::new("response", TType::List, 2))?;
        write_rows(o, &self.response)?;
        o.write_field_end()?;
        o.write_field_stop()?;
        o.write_struct_end()
    }

    pub fn read(i: &mut dyn TInputProtocol) -> thrift::Result<Self> {
        let mut r = ExtensionResponse::default();
        read_struct(i, |i, id, ty| match (id, ty) {
            (1, TType::Struct) => {
                r.status = ExtensionStatus::read(i)?;
                Ok(())
            }
            (2, TType::List) => {
                r.response = read_rows(i)?;
                Ok(())
            }
            (_, ty) => i.skip(ty),
        })?;
        Ok(r)
    }
}

impl ExtensionInfo {
    pub fn write(&self, o: &mut dyn TOutputProtocol) -> thrift::Result<()> {
        o.write_struct_begin(&TStructIdentifier::new("InternalExtensionInfo"))?;
        for (id, name, value) in [
            (1, "name", &self.name),
            (2, "version", &self.version),
            (3, "sdk_version", &self.sdk_version),
            (4, "min_sdk_version", &self.min_sdk_version),
        ] {
            o.write_field_begin(&TFieldIdentifier::new(name, TType::String, id))?;
            o.write_string(value)?;
            o.write_field_end()?;
        }
        o.write_field_stop()?;
        o.write_struct_end()
    }

    pub fn read(i: &mut dyn TInputProtocol) -> thrift::Result<Self> {
        let mut e = ExtensionInfo::default();
        read_struct(i, |i, id, ty| match (id, ty) {
            (1, TType::String) => {
                e.name = i.read_string()?;
                Ok(())
            }
            (2, TType::String) => {
                e.version = i.read_string()?;
                Ok(())
            }
            (3, TType::String) => {
                e.sdk_version = i.read_string()?;
                Ok(())
            }
            (4, TType::String) => {
                e.min_sdk_version = i.read_string()?;
                Ok(())
            }
            (_, ty) => i.skip(ty),
        })?;
        Ok(e)
    }
}

impl OptionInfo {
    pub fn read(i: &mut dyn TInputProtocol) -> thrift::Result<Self> {
        let mut e = OptionInfo::default();
        read_struct(i, |i, id, ty| match (id, ty) {
            (1, TType::String) => {
                e.value = i.read_string()?;
                Ok(())
            }
            (2, TType::String) => {
                e.default_value = i.read_string()?;
                Ok(())
            }
            (3, TType::String) => {
                e.option_type = i.read_string()?;
                Ok(())
            }
            (_, ty) => i.skip(ty),
        })?;
        Ok(e)
    }
}

/// Reads one struct, handing every field to `field` (which must consume or skip it).
pub fn read_struct(
    i: &mut dyn TInputProtocol,
    mut field: impl FnMut(&mut dyn TInputProtocol, i16, TType) -> thrift::Result<()>,
) -> thrift::Result<()> {
    i.read_struct_begin()?;
    loop {
        let f = i.read_field_begin()?;
        if f.field_type == TType::Stop {
            break;
        }
        field(i, f.id.unwrap_or(0), f.field_type)?;
        i.read_field_end()?;
    }
    i.read_struct_end()
}

pub fn write_string_map(o: &mut dyn TOutputProtocol, m: &StringMap) -> thrift::Result<()> {
    o.write_map_begin(&TMapIdentifier::new(
        TType::String,
        TType::String,
        m.len() as i32,
    ))?;
    for (k, v) in m {
        o.write_string(k)?;
        o.write_string(v)?;
    }
    o.write_map_end()
}

pub fn read_string_map(i: &mut dyn TInputProtocol) -> thrift::Result<StringMap> {
    let id = i.read_map_begin()?;
    let mut m = StringMap::new();
    for _ in 0..id.size {
        let k = i.read_string()?;
        let v = i.read_string()?;
        m.insert(k, v);
    }
    i.read_map_end()?;
    Ok(m)
}

pub fn write_rows(o: &mut dyn TOutputProtocol, rows: &[StringMap]) -> thrift::Result<()> {
    o.write_list_begin(&TListIdentifier::new(TType::Map, rows.len() as i32))?;
    for row in rows {
        write_string_map(o, row)?;
    }
    o.write_list_end()
}

pub fn read_rows(i: &mut dyn TInputProtocol) -> thrift::Result<Vec<StringMap>> {
    let id = i.read_list_begin()?;
    let mut rows = Vec::with_capacity(id.size.clamp(0, 4096) as usize);
    for _ in 0..id.size {
        rows.push(read_string_map(i)?);
    }
    i.read_list_end()?;
    Ok(rows)
}

pub fn write_registry(o: &mut dyn TOutputProtocol, reg: &ExtensionRegistry) -> thrift::Result<()> {
    o.write_map_begin(&TMapIdentifier::new(
        TType::String,
        TType::Map,
        reg.len() as i32,
    ))?;
    for (registry, plugins) in reg {
        o.write_string(registry)?;
        o.write_map_begin(&TMapIdentifier::new(
            TType::String,
            TType::List,
            plugins.len() as i32,
        ))?;
        for (plugin, routes) in plugins {
            o.write_string(plugin)?;
            write_rows(o, routes)?;
        }
        o.write_map_end()?;
    }
    o.write_map_end()
}

/// `InternalExtensionList = map<i64, InternalExtensionInfo>`.
pub fn read_extension_list(
    i: &mut dyn TInputProtocol,
) -> thrift::Result<BTreeMap<i64, ExtensionInfo>> {
    let id = i.read_map_begin()?;
    let mut m = BTreeMap::new();
    for _ in 0..id.size {
        let k = i.read_i64()?;
        m.insert(k, ExtensionInfo::read(i)?);
    }
    i.read_map_end()?;
    Ok(m)
}

/// `InternalOptionList = map<string, InternalOptionInfo>`.
pub fn read_option_list(
    i: &mut dyn TInputProtocol,
) -> thrift::Result<BTreeMap<String, OptionInfo>> {
    let id = i.read_map_begin()?;
    let mut m = BTreeMap::new();
    for _ in 0..id.size {
        let k = i.read_string()?;
        m.insert(k, OptionInfo::read(i)?);
    }
    i.read_map_end()?;
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;
    use thrift::protocol::{TBinaryInputProtocol, TBinaryOutputProtocol};

    #[test]
    fn response_round_trips_through_the_binary_protocol() {
        let mut row = StringMap::new();
        row.insert("path".into(), "/var/log/syslog".into());
        let resp = ExtensionResponse {
            status: ExtensionStatus {
                code: 1,
                message: "OK".into(),
                uuid: 77,
            },
            response: vec![row, StringMap::new()],
        };
        let mut buf = Vec::new();
        resp.write(&mut TBinaryOutputProtocol::new(&mut buf, true))
            .unwrap();
        let back =
            ExtensionResponse::read(&mut TBinaryInputProtocol::new(&buf[..], false)).unwrap();
        assert_eq!(back, resp);
    }
}
