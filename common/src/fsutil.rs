//! Durable file writes: state and identity files are replaced whole (a reader, such as the
//! running agent re-reading its certificate, sees the old file or the new one, never half), and
//! keys are private from their first byte rather than chmod-ed afterwards.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Replaces `path` with `bytes` through a sibling temp file (created with `mode`), an fsync and
/// a rename, then syncs the folder so the rename survives a crash. Creates the folder if needed.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    let dir = parent(path);
    std::fs::create_dir_all(&dir)?;
    let tmp = dir.join(format!(
        ".{}.tmp",
        path.file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default()
    ));
    // A temp file left by a crash would make create_new fail, and it is ours to drop.
    let _ = std::fs::remove_file(&tmp);
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)?;
    if let Err(e) = f.write_all(bytes).and_then(|_| f.sync_all()) {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    std::fs::rename(&tmp, path)?;
    // Best effort: the data is safe already; only the rename's durability is at stake.
    let _ = sync_dir(&dir);
    Ok(())
}

/// Creates `path` with `mode` (never replacing an existing file), writes `bytes` and syncs it.
pub fn write_new(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

/// Syncs a folder so a file just created or renamed in it survives a crash.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// An exclusive lock on a folder, held for as long as this lives (the kernel drops it with the
/// process, kill -9 included).
#[derive(Debug)]
pub struct DirLock {
    _file: File,
}

/// Why [`lock_dir`] did not take the folder.
#[derive(Debug)]
pub enum LockError {
    /// Another process holds it; its pid as it wrote it into the lock file.
    Held { pid: String },
    /// The lock file could not be opened or locked.
    Io { path: PathBuf, source: io::Error },
}

/// Takes `dir` for this process through an flock on `dir/name`, into which it writes its pid;
/// a second taker gets [`LockError::Held`] with the first one's pid. The agent locks its state
/// dir and the collector its `--dir` this way: two of either on one folder would both write the
/// same stores.
pub fn lock_dir(dir: &Path, name: &str) -> Result<DirLock, LockError> {
    use std::io::{Read, Seek};
    use std::os::unix::io::AsRawFd;
    let path = dir.join(name);
    let io_err = |source| LockError::Io {
        path: path.clone(),
        source,
    };
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o644)
        .open(&path)
        .map_err(io_err)?;
    // SAFETY: flock on a descriptor we own; no memory is involved.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EWOULDBLOCK) {
            return Err(io_err(e));
        }
        let mut pid = String::new();
        let _ = file.read_to_string(&mut pid);
        return Err(LockError::Held {
            pid: pid.trim().to_string(),
        });
    }
    let _ = file.set_len(0);
    let _ = file.rewind();
    let _ = writeln!(file, "{}", std::process::id());
    Ok(DirLock { _file: file })
}

fn parent(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn replaces_whole_with_the_mode_and_leaves_no_temp_file() {
        let t = tempfile::tempdir().unwrap();
        let key = t.path().join("tls").join("key.pem");
        write_atomic(&key, b"old", 0o600).unwrap();
        // A temp file a crash left behind does not block the next write.
        std::fs::write(t.path().join("tls").join(".key.pem.tmp"), b"junk").unwrap();
        write_atomic(&key, b"new", 0o600).unwrap();
        assert_eq!(std::fs::read(&key).unwrap(), b"new");
        let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let names: Vec<_> = std::fs::read_dir(t.path().join("tls"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["key.pem"]);
    }

    #[test]
    fn write_new_never_replaces() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("ca.key");
        write_new(&p, b"first", 0o600).unwrap();
        let e = write_new(&p, b"second", 0o600).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(std::fs::read(&p).unwrap(), b"first");
    }
}
