//! Finding the files: each source's globs are walked from their literal base folder, symlinks
//! followed (a file's identity is its target's). inotify only wakes the tailer up ([`watch`]);
//! the scan decides which files exist.

pub mod background;
pub mod watch;

use crate::config::Source;
use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// A file a source matched.
#[derive(Debug, Clone)]
pub struct Found {
    pub source: usize,
    pub path: PathBuf,
    pub device: u64,
    pub inode: u64,
    pub size: u64,
    /// Modification time in nanoseconds: with the size, tells a finished archive from a new
    /// file that reuses its inode.
    pub mtime_ns: i64,
    /// The path is a symlink: its target's folder is watched too. The walk knows it from the
    /// folder listing, so the tailer needs no lstat per file.
    pub symlink: bool,
}

/// A folder that could not be listed (permission denied, I/O error).
#[derive(Debug, Clone)]
pub struct ScanProblem {
    pub source: usize,
    pub path: PathBuf,
    pub error: String,
}

/// The part of a glob before its first wildcard, and whether the rest can span folders.
pub fn glob_base(pattern: &str) -> (PathBuf, Option<usize>) {
    let mut base = PathBuf::from("/");
    let comps: Vec<&str> = pattern.split('/').filter(|c| !c.is_empty()).collect();
    for (i, c) in comps.iter().enumerate() {
        if c.contains(['*', '?', '[', '{']) {
            let rest = &comps[i..];
            let depth = if rest.iter().any(|c| c.contains("**")) {
                None
            } else {
                Some(rest.len())
            };
            return (base, depth);
        }
        base.push(c);
    }
    // No wildcard: the pattern names one file; its folder is the base.
    let parent = base
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("/"));
    (parent, Some(1))
}

/// What one scan saw.
#[derive(Debug, Default)]
pub struct Scan {
    pub found: Vec<Found>,
    pub problems: Vec<ScanProblem>,
    /// Every folder walked, once per identity: what inotify should watch.
    pub dirs: Vec<PathBuf>,
    /// Folder entries looked at (what the scan cost).
    pub entries: u64,
}

/// Every file the sources match now. A file matched by two sources goes to the first.
pub fn scan(sources: &[Source]) -> (Vec<Found>, Vec<ScanProblem>) {
    let s = scan_full(sources);
    (s.found, s.problems)
}

/// [`scan`], with the folders walked and the count of entries looked at.
pub fn scan_full(sources: &[Source]) -> Scan {
    let mut entries = 0u64;
    let mut dirs: Vec<PathBuf> = Vec::new();
    let mut dir_ids: HashSet<(u64, u64)> = HashSet::new();
    let mut found = Vec::new();
    let mut problems = Vec::new();
    let mut seen: HashSet<(u64, u64)> = HashSet::new();
    let mut seen_paths: HashSet<PathBuf> = HashSet::new();
    for (si, source) in sources.iter().enumerate() {
        for pattern in &source.paths {
            let (base, depth) = glob_base(pattern);
            if !base.is_dir() {
                continue;
            }
            if let Ok(md) = std::fs::metadata(&base) {
                if dir_ids.insert((md.dev(), md.ino())) {
                    dirs.push(base.clone());
                }
            }
            let mut walker = walkdir::WalkDir::new(&base).follow_links(true).min_depth(1);
            if let Some(d) = depth {
                walker = walker.max_depth(d);
            }
            // Symlinked folders leading to one folder would be walked once per path to it,
            // and paths multiply with depth (two links per level: 2^depth walks). A folder is
            // walked once per (identity, depth, name): the depth, because a shallower visit
            // reaches deeper under max_depth; the name, because a glob may match one name of
            // a folder and not another.
            let mut walked: HashSet<(u64, u64, usize, std::ffi::OsString)> = HashSet::new();
            let walker = walker.into_iter().filter_entry(|e| {
                if !e.file_type().is_dir() {
                    return true;
                }
                match e.metadata() {
                    Ok(md) => {
                        // Folders at the depth limit are listed, not walked: nothing to watch.
                        if depth.is_none_or(|d| e.depth() < d)
                            && dir_ids.insert((md.dev(), md.ino()))
                        {
                            dirs.push(e.path().to_path_buf());
                        }
                        walked.insert((md.dev(), md.ino(), e.depth(), e.file_name().into()))
                    }
                    Err(_) => true,
                }
            });
            for entry in walker {
                entries += 1;
                let entry = match entry {
                    Ok(e) => e,
                    Err(e) => {
                        // A folder that vanished mid-walk is normal; one we may not list is not.
                        if e.io_error()
                            .map(|io| io.kind() == std::io::ErrorKind::PermissionDenied)
                            .unwrap_or(false)
                        {
                            problems.push(ScanProblem {
                                source: si,
                                path: e
                                    .path()
                                    .map(Path::to_path_buf)
                                    .unwrap_or_else(|| base.clone()),
                                error: e.to_string(),
                            });
                        }
                        continue;
                    }
                };
                if entry.file_type().is_dir() {
                    continue;
                }
                let path = entry.path();
                if !source.include_set.is_match(path) || is_excluded(source, path) {
                    continue;
                }
                // Metadata follows symlinks: identity is the target's.
                let Ok(md) = std::fs::metadata(path) else {
                    continue;
                };
                if !md.is_file() {
                    continue;
                }
                if !seen_paths.insert(path.to_path_buf()) || !seen.insert((md.dev(), md.ino())) {
                    continue;
                }
                found.push(Found {
                    source: si,
                    path: path.to_path_buf(),
                    device: md.dev(),
                    inode: md.ino(),
                    size: md.len(),
                    mtime_ns: md.mtime() * 1_000_000_000 + md.mtime_nsec(),
                    symlink: entry.path_is_symlink(),
                });
            }
        }
    }
    Scan {
        found,
        problems,
        dirs,
        entries,
    }
}

pub fn is_excluded(source: &Source, path: &Path) -> bool {
    if source.exclude_paths.is_match(path) {
        return true;
    }
    path.file_name()
        .map(|n| source.exclude_names.is_match(Path::new(n)))
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    #[test]
    fn bases() {
        assert_eq!(
            glob_base("/var/log/app/*.log"),
            (PathBuf::from("/var/log/app"), Some(1))
        );
        assert_eq!(
            glob_base("/var/log/**/x.log"),
            (PathBuf::from("/var/log"), None)
        );
        assert_eq!(
            glob_base("/var/*/app/*.log"),
            (PathBuf::from("/var"), Some(3))
        );
        assert_eq!(
            glob_base("/var/log/syslog"),
            (PathBuf::from("/var/log"), Some(1))
        );
    }

    #[test]
    fn scans_globs_excludes_symlinks_and_missing_folders() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir_all(d.join("logs/app/deep/er")).unwrap();
        std::fs::create_dir_all(d.join("elsewhere")).unwrap();
        for f in [
            "logs/app/a.log",
            "logs/app/b.tmp",
            "logs/app/c.log.1.gz",
            "logs/app/deep/er/d.log",
            "elsewhere/target.log",
        ] {
            std::fs::write(d.join(f), b"x\n").unwrap();
        }
        std::os::unix::fs::symlink(d.join("elsewhere/target.log"), d.join("logs/app/link.log"))
            .unwrap();
        let text = r#"
[sources.app]
paths = ["logs/app/*.log", "logs/app/*.log.*.gz", "not/yet/*.log"]
exclude = ["*.tmp"]
[sources.deep]
paths = ["logs/**/*.log"]
[sink]
type = "stdout"
"#;
        let cfg = Config::parse(&d.join("c.toml"), text).unwrap();
        let (found, problems) = scan(&cfg.sources);
        assert!(problems.is_empty());
        let mut names: Vec<(usize, String)> = found
            .iter()
            .map(|f| {
                (
                    f.source,
                    f.path.strip_prefix(d).unwrap().display().to_string(),
                )
            })
            .collect();
        names.sort();
        assert_eq!(
            names,
            vec![
                (0, "logs/app/a.log".to_string()),
                (0, "logs/app/c.log.1.gz".to_string()),
                (0, "logs/app/link.log".to_string()),
                (1, "logs/app/deep/er/d.log".to_string()),
            ]
        );
        let link = found.iter().find(|f| f.path.ends_with("link.log")).unwrap();
        let target = std::fs::metadata(d.join("elsewhere/target.log")).unwrap();
        assert_eq!((link.device, link.inode), (target.dev(), target.ino()));
        // The tailer watches a symlink's target folder on this word alone (no lstat of its own).
        assert!(link.symlink);
        assert!(found
            .iter()
            .filter(|f| f.path != link.path)
            .all(|f| !f.symlink));
    }

    /// Two symlinks per level to the next folder: 2^12 paths lead to the one file at the
    /// bottom. Each folder is walked a bounded number of times, not once per path.
    #[test]
    fn symlink_fan_out_stays_linear() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let levels = 12;
        for i in 0..=levels {
            std::fs::create_dir_all(d.join(format!("real/l{i}"))).unwrap();
        }
        for i in 0..levels {
            for name in ["a", "b"] {
                std::os::unix::fs::symlink(
                    d.join(format!("real/l{}", i + 1)),
                    d.join(format!("real/l{i}/{name}")),
                )
                .unwrap();
            }
        }
        std::fs::write(d.join(format!("real/l{levels}/x.log")), b"x\n").unwrap();
        let text = r#"
[sources.deep]
paths = ["real/l0/**/*.log"]
[sink]
type = "stdout"
"#;
        let cfg = Config::parse(&d.join("c.toml"), text).unwrap();
        let Scan {
            found,
            problems,
            dirs,
            entries,
        } = scan_full(&cfg.sources);
        assert!(problems.is_empty());
        assert_eq!(found.len(), 1, "{found:?}");
        // One watch per folder, not one per path to it.
        assert_eq!(dirs.len(), levels + 1, "{dirs:?}");
        assert!(found[0].path.ends_with("x.log"));
        // Each level is walked at most twice (once per link name): a handful of entries per
        // level, where one walk per path would look at 2^13 entries.
        assert!(entries <= 6 * levels as u64, "{entries} entries looked at");
    }
}
