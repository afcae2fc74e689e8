//! Whether a state dir gets a new store, and making one.
//!
//! Only a state dir without `store.db` starts afresh. A new store is built under a temporary
//! name and renamed into place once its schema is written, so a `store.db` this agent made is
//! never empty: an empty one was cut short later (a botched restore, a full disk at the wrong
//! moment), and taking it for a new store would ship every file again from its start.

use super::{StoreError, SCHEMA, SCHEMA_VERSION};
use rusqlite::{params, Connection};
use std::path::{Path, PathBuf};

/// What is where the store should be.
pub(super) enum Found {
    /// No store and nothing of one: start afresh.
    Nothing,
    /// A file to open as a database (and refuse if it is not one).
    Database,
}

fn wal_of(path: &Path) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push("-wal");
    PathBuf::from(p)
}

fn inspect_err(path: &Path) -> impl Fn(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Inspect {
        path: path.to_path_buf(),
        source,
    }
}

/// Looks at `path` (and its `-wal`) without opening them as a database: SQLite would take an
/// empty file for an empty database and write a new one over it.
pub(super) fn inspect(path: &Path) -> Result<Found, StoreError> {
    let wal = match std::fs::metadata(wal_of(path)) {
        Ok(m) => m.len(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
        Err(e) => return Err(inspect_err(path)(e)),
    };
    let beside = || match wal {
        0 => String::new(),
        n => format!(" beside a {n}-byte store.db-wal, whose changes belong to it"),
    };
    match std::fs::metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => match wal {
            0 => Ok(Found::Nothing),
            _ => Err(StoreError::Lost {
                path: path.to_path_buf(),
                what: format!("missing{}", beside()),
            }),
        },
        Err(e) => Err(inspect_err(path)(e)),
        Ok(m) if !m.is_file() => Err(StoreError::Corrupt {
            path: path.to_path_buf(),
            detail: "it is not a regular file".into(),
        }),
        Ok(m) if m.len() == 0 => Err(StoreError::Lost {
            path: path.to_path_buf(),
            what: format!("empty (0 bytes){}", beside()),
        }),
        Ok(_) => Ok(Found::Database),
    }
}

/// Writes the schema (version 0 to 1) in one transaction.
pub(super) fn migrate(conn: &mut Connection) -> rusqlite::Result<()> {
    let tx = conn.transaction()?;
    tx.execute_batch(SCHEMA)?;
    tx.execute(
        "INSERT OR REPLACE INTO meta(key, value) VALUES ('created_at', ?1)",
        params![super::now_secs().to_string()],
    )?;
    tx.execute_batch(&format!("PRAGMA user_version = {SCHEMA_VERSION};"))?;
    tx.commit()
}

/// Makes a new store at `path`: built as `store.db.new`, synced, then renamed into place (and
/// the folder synced), so a crash or a full disk leaves either no store or a whole one.
pub(super) fn create(path: &Path) -> Result<(), StoreError> {
    let tmp = path.with_extension("db.new");
    let sqlite = |source| StoreError::Sqlite {
        path: tmp.clone(),
        source,
    };
    let io = |source| StoreError::Create {
        path: tmp.clone(),
        source,
    };
    // Left by a start that failed half-way; nothing refers to it.
    for stale in [tmp.clone(), tmp.with_extension("new-journal")] {
        match std::fs::remove_file(&stale) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io(e)),
            _ => {}
        }
    }
    {
        // The default rollback journal: nothing but the one file is left to rename.
        let mut conn = Connection::open(&tmp).map_err(sqlite)?;
        migrate(&mut conn).map_err(sqlite)?;
        conn.close().map_err(|(_, e)| sqlite(e))?;
    }
    std::fs::File::open(&tmp)
        .and_then(|f| f.sync_all())
        .map_err(&io)?;
    std::fs::rename(&tmp, path).map_err(&io)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|source| StoreError::Create {
                path: path.to_path_buf(),
                source,
            })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::store::{Store, StoreError};

    #[test]
    fn an_empty_store_is_refused_and_left_as_it_is() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("store.db");
        std::fs::write(&db, b"").unwrap();
        let err = Store::open(dir.path()).err().expect("must refuse");
        assert!(matches!(err, StoreError::Lost { .. }), "{err}");
        let text = err.to_string();
        assert!(
            text.contains(&db.display().to_string()) && text.contains("empty"),
            "{text}"
        );
        std::fs::write(dir.path().join("store.db-wal"), vec![7u8; 4096]).unwrap();
        let text = Store::open(dir.path())
            .err()
            .expect("must refuse")
            .to_string();
        assert!(text.contains("4096-byte store.db-wal"), "{text}");
        assert_eq!(std::fs::metadata(&db).unwrap().len(), 0);
        std::fs::remove_file(&db).unwrap();
        let text = Store::open(dir.path())
            .err()
            .expect("must refuse")
            .to_string();
        assert!(text.contains("missing"), "{text}");
        assert!(!db.exists());
    }

    #[test]
    fn a_new_store_is_put_in_place_whole() {
        let dir = tempfile::tempdir().unwrap();
        // What a start that failed half-way would have left.
        std::fs::write(dir.path().join("store.db.new"), b"half").unwrap();
        drop(Store::open(dir.path()).unwrap());
        assert!(!dir.path().join("store.db.new").exists());
        assert!(
            std::fs::metadata(dir.path().join("store.db"))
                .unwrap()
                .len()
                > 0
        );
        // And it opens as a store again.
        drop(Store::open(dir.path()).unwrap());
    }
}
