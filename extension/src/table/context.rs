//! osquery's query context, parsed from the wire JSON into private structs and exposed typed.
//!
//! Wire form (osquery `osquery/core/tables.cpp`, `setRequestFromContext` and
//! `ConstraintList::serialize`): `{"constraints":[{"name":"path","list":[{"op":2,"expr":"x"}],
//! "affinity":"TEXT"}],"colsUsed":[...],"colsUsedBitset":N}`. Op codes from
//! `osquery/core/tables.h` (`ConstraintOperator`). Parsing is liberal like osquery-go's
//! `plugin/table/table.go`: `"list":""` and string op codes are accepted.

use serde::Deserialize;
use serde_json::Value;

/// A constraint operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Unique,
    Equals,
    GreaterThan,
    LessOrEqual,
    LessThan,
    GreaterOrEqual,
    Match,
    Like,
    Glob,
    Regexp,
    Other(u32),
}

impl Op {
    pub fn from_code(code: u32) -> Op {
        match code {
            1 => Op::Unique,
            2 => Op::Equals,
            4 => Op::GreaterThan,
            8 => Op::LessOrEqual,
            16 => Op::LessThan,
            32 => Op::GreaterOrEqual,
            64 => Op::Match,
            65 => Op::Like,
            66 => Op::Glob,
            67 => Op::Regexp,
            n => Op::Other(n),
        }
    }
}

/// One `column op expr` from the WHERE clause.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Constraint {
    pub column: String,
    pub op: Op,
    pub expr: String,
}

/// The constraints osquery forwarded for one `generate` call.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueryContext {
    pub constraints: Vec<Constraint>,
    /// Columns the query uses, when osquery says.
    pub cols_used: Option<Vec<String>>,
}

#[derive(Deserialize)]
struct WireContext {
    #[serde(default)]
    constraints: Vec<WireConstraintList>,
    #[serde(default, rename = "colsUsed")]
    cols_used: Option<Vec<String>>,
}

#[derive(Deserialize)]
struct WireConstraintList {
    name: String,
    #[serde(default)]
    list: Value,
}

#[derive(Deserialize)]
struct WireConstraint {
    op: Value,
    #[serde(default)]
    expr: Value,
}

impl QueryContext {
    pub fn parse(json: &str) -> Result<QueryContext, String> {
        if json.trim().is_empty() {
            return Ok(QueryContext::default());
        }
        let wire: WireContext = serde_json::from_str(json).map_err(|e| e.to_string())?;
        let mut constraints = Vec::new();
        for cl in wire.constraints {
            let items = match cl.list {
                Value::Array(items) => items,
                // osquery before 3.0 sent "" for an empty list.
                Value::Null | Value::String(_) => continue,
                other => return Err(format!("constraint list of {} is {other}", cl.name)),
            };
            for item in items {
                let wc: WireConstraint = serde_json::from_value(item).map_err(|e| e.to_string())?;
                let code = match &wc.op {
                    Value::Number(n) => n.as_u64().unwrap_or(0) as u32,
                    Value::String(s) => {
                        s.parse().map_err(|_| format!("op {s:?} is not a number"))?
                    }
                    other => return Err(format!("op {other} is not a number")),
                };
                let expr = match wc.expr {
                    Value::String(s) => s,
                    Value::Null => String::new(),
                    other => other.to_string(),
                };
                constraints.push(Constraint {
                    column: cl.name.clone(),
                    op: Op::from_code(code),
                    expr,
                });
            }
        }
        Ok(QueryContext {
            constraints,
            cols_used: wire.cols_used,
        })
    }

    pub fn constraints_on<'a>(
        &'a self,
        column: &'a str,
    ) -> impl Iterator<Item = &'a Constraint> + 'a {
        self.constraints.iter().filter(move |c| c.column == column)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_osquery_context() {
        let ctx = QueryContext::parse(
            r#"{"constraints":[{"name":"path","list":[{"op":2,"expr":"/var/log/syslog"},{"op":65,"expr":"%log%"}],"affinity":"TEXT"},
                {"name":"source","list":[],"affinity":"TEXT"}],"colsUsed":["path"],"colsUsedBitset":3}"#,
        )
        .unwrap();
        assert_eq!(ctx.constraints.len(), 2);
        assert_eq!(ctx.constraints[0].op, Op::Equals);
        assert_eq!(ctx.constraints[1].op, Op::Like);
        assert_eq!(ctx.cols_used.as_deref(), Some(&["path".to_string()][..]));
    }

    #[test]
    fn accepts_old_osquery_forms() {
        let ctx = QueryContext::parse(
            r#"{"constraints":[{"name":"a","list":"","affinity":"TEXT"},{"name":"b","list":[{"op":"2","expr":"x"}]}]}"#,
        )
        .unwrap();
        assert_eq!(
            ctx.constraints,
            vec![Constraint {
                column: "b".into(),
                op: Op::Equals,
                expr: "x".into()
            }]
        );
    }
}
