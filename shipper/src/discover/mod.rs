//! Finding the files: each source's globs are walked from their literal base folder, symlinks
//! followed (a file's identity is its target's). inotify only wakes the tailer up ([`watch`]);
//! the scan decides which files exist.

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

/// Every file the sources match now. A file matched by two sources goes to the first.
pub fn scan(sources: &[Source]) -> (Vec<Found>, Vec<ScanProblem>) {
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
            let mut walker = walkdir::WalkDir::new(&base).follow_links(true).min_depth(1);
            if let Some(d) = depth {
                walker = walker.max_depth(d);
            }
            for entry in walker {
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
                });
            }
        }
    }
    (found, problems)
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
    }
}
