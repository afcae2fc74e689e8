//! `log-sensor query "SQL"`: the rows of read-only SQL against the store (run by
//! [`crate::store::query`]), as a table or JSON lines.

use crate::store::query::{self as store_query, Cell};
use std::io::Write;
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error(transparent)]
    Store(#[from] store_query::QueryError),
    #[error("cannot write output: {0}")]
    Io(#[from] std::io::Error),
}

pub fn run(
    store_path: &Path,
    sql: &str,
    json: bool,
    out: &mut dyn Write,
) -> Result<usize, QueryError> {
    let mut table: Vec<Vec<String>> = Vec::new();
    let (names, count) = store_query::each_row(store_path, sql, |columns, cells| {
        if json {
            let mut obj = serde_json::Map::new();
            for (n, c) in columns.iter().zip(cells) {
                let v = match c {
                    Cell::Null => serde_json::Value::Null,
                    Cell::Integer(x) => (*x).into(),
                    Cell::Real(x) => (*x).into(),
                    Cell::Text(t) => t.clone().into(),
                    Cell::Blob(len) => format!("<{len} bytes>").into(),
                };
                obj.insert(n.clone(), v);
            }
            writeln!(out, "{}", serde_json::Value::Object(obj))?;
        } else {
            table.push(
                cells
                    .iter()
                    .map(|c| match c {
                        Cell::Null => "NULL".to_string(),
                        Cell::Integer(x) => x.to_string(),
                        Cell::Real(x) => x.to_string(),
                        Cell::Text(t) => t.clone(),
                        Cell::Blob(len) => format!("<{len} bytes>"),
                    })
                    .collect(),
            );
        }
        Ok::<(), QueryError>(())
    })?;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn run_text(dir: &Path, sql: &str, json: bool) -> String {
        let mut out = Vec::new();
        run(&dir.join("store.db"), sql, json, &mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn a_table_has_its_header_even_without_rows_and_json_is_one_object_a_row() {
        let dir = tempfile::tempdir().unwrap();
        drop(crate::store::Store::open(dir.path()).unwrap());
        assert_eq!(
            run_text(dir.path(), "SELECT stream FROM streams", false),
            "stream\n------\n"
        );
        assert_eq!(
            run_text(dir.path(), "SELECT 1 AS n, 'a' AS s, NULL AS z", false),
            "n | s | z\n--+---+-----\n1 | a | NULL\n"
        );
        assert_eq!(
            run_text(dir.path(), "SELECT 1 AS n, x'00' AS b", true),
            "{\"b\":\"<1 bytes>\",\"n\":1}\n"
        );
    }
}
