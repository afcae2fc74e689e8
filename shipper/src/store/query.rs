//! User SQL over the store, read-only (`log-sensor query`): the connection is opened here, with
//! the store's own checks, and each row comes back as plain cells for the command to present.

use super::{Store, StoreError};
use rusqlite::types::ValueRef;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error("no store at {0} (has the agent run yet?)")]
    NoStore(PathBuf),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("query failed: {0}")]
    Sql(#[from] rusqlite::Error),
}

/// One value of a result row. A blob is shown by its size: its bytes would be noise on a terminal.
#[derive(Debug, Clone, PartialEq)]
pub enum Cell {
    Null,
    Integer(i64),
    Real(f64),
    Text(String),
    Blob(usize),
}

impl Cell {
    fn of(v: ValueRef<'_>) -> Cell {
        match v {
            ValueRef::Null => Cell::Null,
            ValueRef::Integer(x) => Cell::Integer(x),
            ValueRef::Real(x) => Cell::Real(x),
            ValueRef::Text(t) => Cell::Text(String::from_utf8_lossy(t).into_owned()),
            ValueRef::Blob(b) => Cell::Blob(b.len()),
        }
    }
}

/// Runs `sql` on a read-only connection to the store at `store_path` and hands `row` the column
/// names and each row's cells as they come (nothing is held beyond one row). Returns the column
/// names (there even when no row came) and the number of rows.
pub fn each_row<E: From<QueryError>>(
    store_path: &Path,
    sql: &str,
    mut row: impl FnMut(&[String], &[Cell]) -> Result<(), E>,
) -> Result<(Vec<String>, usize), E> {
    if !store_path.exists() {
        return Err(QueryError::NoStore(store_path.to_path_buf()).into());
    }
    let conn = Store::open_read_only(store_path).map_err(QueryError::from)?;
    let mut stmt = conn.prepare(sql).map_err(QueryError::from)?;
    let names: Vec<String> = stmt.column_names().map(|s| s.to_string()).collect();
    let mut rows = stmt.query([]).map_err(QueryError::from)?;
    let mut count = 0;
    let mut cells = Vec::with_capacity(names.len());
    while let Some(r) = rows.next().map_err(QueryError::from)? {
        count += 1;
        cells.clear();
        for i in 0..names.len() {
            cells.push(Cell::of(r.get_ref(i).map_err(QueryError::from)?));
        }
        row(&names, &cells)?;
    }
    Ok((names, count))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_come_back_as_cells_and_writes_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.db");
        assert!(matches!(
            each_row::<QueryError>(&path, "SELECT 1", |_, _| Ok(())),
            Err(QueryError::NoStore(_))
        ));
        drop(Store::open(dir.path()).unwrap());
        let mut got = Vec::new();
        let (names, n) = each_row::<QueryError>(
            &path,
            "SELECT 1 AS i, 2.5 AS r, 'x' AS t, x'0102' AS b, NULL AS n",
            |names, cells| {
                got.push((names.to_vec(), cells.to_vec()));
                Ok(())
            },
        )
        .unwrap();
        assert_eq!(n, 1);
        assert_eq!(names, ["i", "r", "t", "b", "n"]);
        assert_eq!(got[0].0, ["i", "r", "t", "b", "n"]);
        assert_eq!(
            got[0].1,
            [
                Cell::Integer(1),
                Cell::Real(2.5),
                Cell::Text("x".into()),
                Cell::Blob(2),
                Cell::Null
            ]
        );
        let e = each_row::<QueryError>(&path, "DELETE FROM streams", |_, _| Ok(())).unwrap_err();
        assert!(e.to_string().starts_with("query failed: "), "{e}");
    }
}
