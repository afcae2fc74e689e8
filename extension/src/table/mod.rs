//! Table plugins: columns declared once (routes, docs), osquery's query context parsed into
//! typed constraints, and the `columns` / `generate` / `insert` / `update` / `delete` dispatch.
//!
//! Route format: osquery `osquery/core/tables.cpp` (`TablePlugin::routeInfo`). Context JSON:
//! `TablePlugin::setRequestFromContext` and `ConstraintList::serialize` in the same file.
//! Writable-table requests and replies: `xUpdate` in osquery `osquery/sql/virtual_table.cpp`.

pub mod alerts;
pub mod config;
pub mod context;
pub mod streams;

use std::collections::BTreeMap;

use serde_json::Value;

use crate::plugin::{failure, success, Plugin};
use crate::thrift::wire::{ExtensionResponse, StringMap};
pub use context::{Constraint, Op, QueryContext};

/// Column types osquery knows (`osquery/core/sql/column.cpp`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnType {
    Text,
    Integer,
    BigInt,
    Double,
}

impl ColumnType {
    pub fn osquery_name(self) -> &'static str {
        match self {
            ColumnType::Text => "TEXT",
            ColumnType::Integer => "INTEGER",
            ColumnType::BigInt => "BIGINT",
            ColumnType::Double => "DOUBLE",
        }
    }
}

/// `ColumnOptions::DEFAULT`; osquery promotes it to INDEX for extension tables, so constraints
/// on every column reach `generate` (`--extensions_default_index`).
pub const OPT_DEFAULT: u32 = 0;

/// One column, declared once and used for routes, docs and the SQL mirror in the tests.
#[derive(Debug, Clone, Copy)]
pub struct Column {
    pub name: &'static str,
    pub ctype: ColumnType,
    pub doc: &'static str,
}

pub const fn col(name: &'static str, ctype: ColumnType, doc: &'static str) -> Column {
    Column { name, ctype, doc }
}

/// A generated row: column name → value; a NULL is an absent key (osquery yields NULL for it).
pub type Row = BTreeMap<String, String>;

/// How a write request is answered (`status` of the single reply row).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteReply {
    Success,
    /// The insert chose the rowid itself (`auto_rowid=false` needs one back).
    SuccessWithId(i64),
    Readonly,
    Constraint,
    Failure(String),
}

impl WriteReply {
    fn into_row(self) -> StringMap {
        let mut row = StringMap::new();
        let status = match self {
            WriteReply::Success => "success",
            WriteReply::SuccessWithId(id) => {
                row.insert("id".into(), id.to_string());
                "success"
            }
            WriteReply::Readonly => "readonly",
            WriteReply::Constraint => "constraint",
            WriteReply::Failure(m) => {
                row.insert("message".into(), m);
                "failure"
            }
        };
        row.insert("status".into(), status.into());
        row
    }
}

/// A parsed write request.
#[derive(Debug, Clone, PartialEq)]
pub enum WriteRequest {
    Insert {
        values: Vec<Value>,
        id: Option<i64>,
    },
    Update {
        id: i64,
        new_id: Option<i64>,
        values: Vec<Value>,
    },
    Delete {
        id: i64,
    },
}

/// What a table implements; the `Plugin` impl below does the wire work.
pub trait Table: Send + Sync {
    fn name(&self) -> &'static str;
    fn columns(&self) -> &'static [Column];
    fn generate(&self, ctx: &QueryContext) -> Result<Vec<Row>, String>;
    /// Read-only unless overridden.
    fn write(&self, _req: WriteRequest) -> WriteReply {
        WriteReply::Readonly
    }
}

/// Adapts a `Table` to the plugin interface.
pub struct TablePlugin<T: Table>(pub T);

/// The route list for a table: one `column` entry per column.
pub fn routes(columns: &[Column]) -> Vec<StringMap> {
    columns
        .iter()
        .map(|c| {
            StringMap::from([
                ("id".to_string(), "column".to_string()),
                ("name".to_string(), c.name.to_string()),
                ("type".to_string(), c.ctype.osquery_name().to_string()),
                ("op".to_string(), OPT_DEFAULT.to_string()),
            ])
        })
        .collect()
}

impl<T: Table> Plugin for TablePlugin<T> {
    fn registry(&self) -> &'static str {
        "table"
    }

    fn name(&self) -> &str {
        self.0.name()
    }

    fn routes(&self) -> Vec<StringMap> {
        routes(self.0.columns())
    }

    fn call(&self, request: &StringMap) -> ExtensionResponse {
        let action = request.get("action").map(String::as_str).unwrap_or("");
        match action {
            "columns" => success(self.routes()),
            "generate" => {
                let ctx = match request.get("context") {
                    Some(c) => match QueryContext::parse(c) {
                        Ok(ctx) => ctx,
                        Err(e) => {
                            return failure(format!("{}: bad query context: {e}", self.0.name()))
                        }
                    },
                    None => QueryContext::default(),
                };
                match self.0.generate(&ctx) {
                    Ok(rows) => success(rows),
                    Err(e) => failure(format!("{}: {e}", self.0.name())),
                }
            }
            "insert" | "update" | "delete" => {
                let reply = match parse_write(action, request) {
                    Ok(req) => self.0.write(req),
                    Err(e) => WriteReply::Failure(format!("{}: {e}", self.0.name())),
                };
                success(vec![reply.into_row()])
            }
            other => failure(format!("{}: unknown table action {other:?}", self.0.name())),
        }
    }
}

fn parse_write(action: &str, r: &StringMap) -> Result<WriteRequest, String> {
    let id = |key: &str| -> Result<Option<i64>, String> {
        match r.get(key) {
            None => Ok(None),
            Some(s) => s
                .parse()
                .map(Some)
                .map_err(|_| format!("{key} {s:?} is not a rowid")),
        }
    };
    let values = || -> Result<Vec<Value>, String> {
        let raw = r
            .get("json_value_array")
            .ok_or("the request has no json_value_array")?;
        match serde_json::from_str::<Value>(raw) {
            Ok(Value::Array(v)) => Ok(v),
            _ => Err(format!("json_value_array is not a JSON array: {raw:?}")),
        }
    };
    match action {
        "insert" => {
            let auto = r.get("auto_rowid").map(String::as_str) == Some("true");
            Ok(WriteRequest::Insert {
                values: values()?,
                id: if auto { id("id")? } else { None },
            })
        }
        "update" => Ok(WriteRequest::Update {
            id: id("id")?.ok_or("the update names no row id")?,
            new_id: id("new_id")?,
            values: values()?,
        }),
        _ => Ok(WriteRequest::Delete {
            id: id("id")?.ok_or("the delete names no row id")?,
        }),
    }
}

/// Every table's name, description and columns, as Markdown: printed by `--spec` and kept in
/// `extension/README.md` (a test checks they agree).
pub fn spec_markdown() -> String {
    let mut out = String::new();
    for (name, description, columns) in [
        (streams::NAME, streams::DESCRIPTION, streams::COLUMNS),
        (alerts::NAME, alerts::DESCRIPTION, alerts::COLUMNS),
        (config::NAME, config::DESCRIPTION, config::COLUMNS),
    ] {
        out.push_str(&format!(
            "### `{name}`\n\n{description}\n\n| column | type | meaning |\n|---|---|---|\n"
        ));
        for c in columns {
            out.push_str(&format!(
                "| `{}` | {} | {} |\n",
                c.name,
                c.ctype.osquery_name(),
                c.doc.replace('|', "\\|")
            ));
        }
        out.push('\n');
    }
    out
}

/// Appends `AND column op ?` for the EQUALS / LIKE / GLOB constraints on `column` (and the
/// comparisons when `comparisons` is set). SQLite filters the returned rows again (osquery does
/// not set `omit`), so this only narrows what we read; the semantics are SQLite's own.
pub fn push_down(
    ctx: &QueryContext,
    column: &str,
    sql_expr: &str,
    comparisons: bool,
    sql: &mut String,
    params: &mut Vec<String>,
) {
    for c in ctx.constraints_on(column) {
        let op = match c.op {
            Op::Equals => "=",
            Op::Like => "LIKE",
            Op::Glob => "GLOB",
            Op::GreaterThan if comparisons => ">",
            Op::GreaterOrEqual if comparisons => ">=",
            Op::LessThan if comparisons => "<",
            Op::LessOrEqual if comparisons => "<=",
            _ => continue,
        };
        sql.push_str(&format!(" AND {sql_expr} {op} ?"));
        params.push(c.expr.clone());
    }
}
