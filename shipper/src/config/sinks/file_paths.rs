//! Where file sinks write, checked against where the agent reads and against each other.
//!
//! A file sink whose path a source's glob matches is shipped again by the agent, each pass
//! wrapping the last in one more layer of JSON: the file grows without end (25 MB in 3 s in the
//! probe that found it). That is refused as a config error naming both keys rather than quietly
//! excluded: an exclusion nobody wrote would hide a misconfiguration (the operator most likely
//! meant the sink to be elsewhere), and the fix, a narrower glob or an `exclude`, is one line.
//! Two file sinks on one file are refused too, however their paths reach it (symlinks are
//! followed): their batches would interleave in one file, and each cuts a failed batch back to a
//! length the other may have written past, erasing lines the other had acknowledged.
//!
//! Paths are compared as the config resolves them (relative to its folder, `.` and `..` taken
//! out), and globs as discovery matches them; a path reached through a symlink is not seen
//! here, so the tailer also knows the sink files by identity and never reads one (`tail::scanning`).

use super::{NamedSink, SinkConfig, DEFAULT_SINK};
use crate::config::{normalize, ConfigIssue, Source};
use std::path::{Path, PathBuf};

/// `one` is the `[sink]` form (its keys are `sink.…`), else the sinks are `[sinks.NAME]`.
pub(in crate::config) fn check(
    sources: &[Source],
    sinks: &[NamedSink],
    one: bool,
    issues: &mut Vec<ConfigIssue>,
) {
    let key = |name: &str| {
        if one && name == DEFAULT_SINK {
            "sink".to_string()
        } else {
            format!("sinks.{name}")
        }
    };
    // Each sink's path as written (normalized) and the file it reaches (symlinks followed).
    let mut seen: Vec<(PathBuf, PathBuf, &str)> = Vec::new();
    for s in sinks {
        let SinkConfig::File { path, .. } = &s.sink else {
            continue;
        };
        let path = normalize(path);
        let file = resolved(&path);
        if let Some((source, pattern)) = sources.iter().find_map(|src| matched_by(src, &path)) {
            issues.push(ConfigIssue {
                key: format!("{}.path", key(&s.name)),
                message: format!(
                    "{} is matched by sources.{source}.paths ({pattern:?}): the agent would ship its own output; write it elsewhere or add it to sources.{source}.exclude",
                    path.display()
                ),
            });
        }
        match seen.iter().find(|(p, f, _)| *p == path || *f == file) {
            Some((p, _, first)) => {
                let same = if *p == path {
                    format!("{} is also {}.path", path.display(), key(first))
                } else {
                    format!(
                        "{} is the file {}.path names ({}), through a symlink",
                        path.display(),
                        key(first),
                        p.display()
                    )
                };
                issues.push(ConfigIssue {
                    key: format!("{}.path", key(&s.name)),
                    message: format!(
                        "{same}: two sinks appending to one file interleave their batches, and each cuts a failed batch back over the other's"
                    ),
                })
            }
            None => seen.push((path, file, &s.name)),
        }
    }
}

/// The file `path` reaches, symlinks followed as far as it exists (a sink creates the rest):
/// two paths to one file through a symlinked folder or file are one file. As written where
/// nothing of it exists.
fn resolved(path: &Path) -> PathBuf {
    // /dev/stdout, /dev/stderr, /proc/self/fd/N: what they lead to depends on how the process
    // was started (`> log 2>&1` makes both one file), not on the config, so they are judged as
    // written.
    if path.starts_with("/dev") || path.starts_with("/proc") {
        return path.to_path_buf();
    }
    resolved_within(path, 40)
}

/// [`resolved`], following at most `hops` links that lead nowhere yet (as the kernel's 40).
fn resolved_within(path: &Path, hops: u32) -> PathBuf {
    let mut rest: Vec<&std::ffi::OsStr> = Vec::new();
    let mut at = path;
    loop {
        // A device, pipe or socket is no file two sinks cut: /dev/stdout and /dev/stderr lead
        // to one pipe under systemd (through /proc's links, which name no path), and both may
        // be sinks.
        if rest.is_empty() && std::fs::metadata(at).is_ok_and(|m| !m.is_file()) {
            return path.to_path_buf();
        }
        if let Ok(real) = std::fs::canonicalize(at) {
            return rest.iter().rev().fold(real, |p, c| p.join(c));
        }
        // A link to a file not made yet: the sink would create its target.
        if let (Some(parent), Ok(target), true) = (at.parent(), std::fs::read_link(at), hops > 0) {
            let next = normalize(&parent.join(target));
            let real = resolved_within(&next, hops - 1);
            return rest.iter().rev().fold(real, |p, c| p.join(c));
        }
        match (at.parent(), at.file_name()) {
            (Some(parent), Some(name)) => {
                rest.push(name);
                at = parent;
            }
            _ => return path.to_path_buf(),
        }
    }
}

/// The source's name and the glob of its `paths` that reads `path`, unless its `exclude` leaves
/// it out, as discovery decides (`discover::scan` and `is_excluded`, which config may not import).
fn matched_by<'s>(source: &'s Source, path: &Path) -> Option<(&'s str, &'s str)> {
    if source.exclude_paths.is_match(path)
        || path
            .file_name()
            .is_some_and(|n| source.exclude_names.is_match(Path::new(n)))
    {
        return None;
    }
    // Each glob alone, to name the one that matches (a bad glob is an issue of its own already).
    source
        .paths
        .iter()
        .find(|p| {
            globset::GlobBuilder::new(p)
                .literal_separator(true)
                .build()
                .is_ok_and(|g| g.compile_matcher().is_match(path))
        })
        .map(|p| (source.name.as_str(), p.as_str()))
}

#[cfg(test)]
mod tests {
    use crate::config::Config;
    use std::path::Path;

    fn issues(text: &str) -> String {
        match Config::parse(Path::new("/etc/ls/agent.toml"), text) {
            Ok(_) => String::new(),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn a_file_sink_a_source_reads_is_refused_naming_both() {
        let e =
            issues("[sources.a]\npaths=['logs/*.log']\n[sink]\ntype='file'\npath='logs/out.log'\n");
        assert!(
            e.contains("sink.path: /etc/ls/logs/out.log is matched by sources.a.paths (\"/etc/ls/logs/*.log\"): the agent would ship its own output"),
            "{e}"
        );
        // Spelled differently, the same file.
        let e = issues(
            "[sources.a]\npaths=['/etc/ls/logs/*.log']\n[sinks.x]\ntype='file'\npath='./logs/../logs/out.log'\n",
        );
        assert!(
            e.contains("sinks.x.path: /etc/ls/logs/out.log is matched by sources.a.paths"),
            "{e}"
        );
    }

    #[test]
    fn an_excluded_or_unmatched_sink_file_is_accepted() {
        for text in [
            "[sources.a]\npaths=['logs/*.log']\nexclude=['out.log']\n[sink]\ntype='file'\npath='logs/out.log'\n",
            "[sources.a]\npaths=['logs/*.log']\nexclude=['logs/out.*']\n[sink]\ntype='file'\npath='logs/out.log'\n",
            "[sources.a]\npaths=['logs/*.log']\n[sink]\ntype='file'\npath='logs/out.ndjson'\n",
            // `*` stops at a `/`, as discovery's globs do.
            "[sources.a]\npaths=['logs/*.log']\n[sink]\ntype='file'\npath='logs/sub/out.log'\n",
        ] {
            assert_eq!(issues(text), "", "{text}");
        }
    }

    #[test]
    fn two_file_sinks_on_one_path_are_refused_naming_both() {
        let e = issues(
            "[sources.a]\npaths=['/var/log/a.log']\n[sinks.one]\ntype='file'\npath='out.ndjson'\n[sinks.two]\ntype='file'\npath='/etc/ls/out.ndjson'\n",
        );
        assert!(
            e.contains("sinks.two.path: /etc/ls/out.ndjson is also sinks.one.path"),
            "{e}"
        );
        let e = issues(
            "[sources.a]\npaths=['/var/log/a.log']\n[sinks.one]\ntype='file'\npath='one.ndjson'\n[sinks.two]\ntype='file'\npath='two.ndjson'\n",
        );
        assert_eq!(e, "");
    }

    /// Through a symlink two paths are one file: both sinks appended to it, and one's cut of
    /// a failed batch erased lines the other had had acknowledged (found by a probe).
    #[test]
    fn two_sinks_reaching_one_file_through_a_symlink_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir(d.join("real")).unwrap();
        std::os::unix::fs::symlink(d.join("real"), d.join("link")).unwrap();
        std::os::unix::fs::symlink(d.join("real/out.ndjson"), d.join("file-link")).unwrap();
        let config = |one: &str, two: &str| {
            let text = format!(
                "[sources.a]\npaths=['/var/log/a.log']\n[sinks.one]\ntype='file'\npath='{one}'\n[sinks.two]\ntype='file'\npath='{two}'\n"
            );
            match Config::parse(&d.join("agent.toml"), &text) {
                Ok(_) => String::new(),
                Err(e) => e.to_string(),
            }
        };
        // The file not made yet, or a link to it: either way one file.
        for two in ["link/out.ndjson", "file-link"] {
            let e = config("real/out.ndjson", two);
            assert!(
                e.contains(&format!("sinks.two.path: {}", d.join(two).display()))
                    && e.contains("is the file sinks.one.path names")
                    && e.contains("through a symlink"),
                "{e}"
            );
        }
        assert_eq!(config("real/out.ndjson", "link/other.ndjson"), "");
        // Not files: /dev/stdout and /dev/stderr may lead to one pipe (a test harness, the
        // journal), and two sinks there cut nothing of each other's.
        assert_eq!(config("/dev/stdout", "/dev/stderr"), "");
    }
}
