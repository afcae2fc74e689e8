//! `log-sensor query "SQL"`: read-only SQL against the store, as a table or JSON lines.

use crate::store::{Store, StoreError};
use rusqlite::types::ValueRef;
use std::io::Write;
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error("no store at {0} (has the agent run yet?)")]
    NoStore(std::path::PathBuf),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("query failed: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("cannot write output: {0}")]
    Io(#[from] std::io::Error),
}

pub fn run(
    store_path: &Path,
    sql: &str,
    json: bool,
    out: &mut dyn Write,
) -> Result<usize, QueryError> {
    if !store_path.exists() {
        return Err(QueryError::NoStore(store_path.to_path_buf()));
    }
    let conn = Store::open_read_only(store_path)?;
    let mut stmt = conn.prepare(sql)?;
    let names: Vec<String> = stmt.column_names().map(|s| s.to_string()).collect();
    let mut rows = stmt.query([])?;
    let mut table: Vec<Vec<String>> = Vec::new();
    let mut count = 0;
    while let Some(row) = rows.next()? {
        count += 1;
        if json {
            let mut obj = serde_json::Map::new();
            for (i, n) in names.iter().enumerate() {
                let v = match row.get_ref(i)? {
                    ValueRef::Null => serde_json::Value::Null,
                    ValueRef::Integer(x) => x.into(),
                    ValueRef::Real(x) => x.into(),
                    ValueRef::Text(t) => String::from_utf8_lossy(t).into_owned().into(),
                    ValueRef::Blob(b) => format!("<{} bytes>", b.len()).into(),
                };
                obj.insert(n.clone(), v);
            }
            writeln!(out, "{}", serde_json::Value::Object(obj))?;
        } else {
            let mut cells = Vec::with_capacity(names.len());
            for i in 0..names.len() {
                cells.push(match row.get_ref(i)? {
                    ValueRef::Null => "NULL".to_string(),
                    ValueRef::Integer(x) => x.to_string(),
                    ValueRef::Real(x) => x.to_string(),
                    ValueRef::Text(t) => String::from_utf8_lossy(t).into_owned(),
                    ValueRef::Blob(b) => format!("<{} bytes>", b.len()),
                });
            }
            table.push(cells);
        }
    }
    if !json {
        let mut widths: Vec<usize> = names.iter().map(|n| n.chars().count()).collect();
        for r in &table {
            for (i, c) in r.iter().enumerate() {
                widths[i] = widths[i].max(c.chars().count());
            }
        }
        let line = |cells: &[String], out: &mut dyn Write| -> std::io::Result<()> {
            let parts: Vec<String> = cells
                .iter()
                .enumerate()
                .map(|(i, c)| format!("{c:<w$}", w = widths[i]))
                .collect();
            writeln!(out, "{}", parts.join(" | ").trim_end())
        };
        line(&names, out)?;
        writeln!(
            out,
            "{}",
            widths
                .iter()
                .map(|w| "-".repeat(*w))
                .collect::<Vec<_>>()
                .join("-+-")
        )?;
        for r in &table {
            line(r, out)?;
        }
    }
    Ok(count)
}
