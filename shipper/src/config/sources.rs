//! `[sources.*]` and `[defaults]`: the files to tail and how their bytes become records.
//!
//! Every `[sources.NAME]` table goes through [`read_sources`], which checks it is a table and
//! hands it to the reader of its keys ([`read_source`] for files): one place to add another kind.

use super::reader::TableReader;
use super::syslog::{self, SyslogSource};
use super::transforms::{self, ContainerFormat};
use super::{normalize, ConfigIssue};
use globset::{GlobSet, GlobSetBuilder};
use regex::bytes::Regex;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Source {
    pub name: String,
    /// Absolute glob patterns, as written (after making them absolute).
    pub paths: Vec<String>,
    pub exclude: Vec<String>,
    pub include_set: GlobSet,
    /// Matched against the whole path.
    pub exclude_paths: GlobSet,
    /// Patterns without a `/`, matched against the file name alone (`*.tmp`).
    pub exclude_names: GlobSet,
    pub framing: Framing,
    pub fingerprint_bytes: usize,
    pub max_file_bytes: u64,
    pub detect_compression: bool,
    /// Everything that decides how the source is read, rendered once: a reload restarts the
    /// source's streams only when this changes.
    pub signature: String,
    /// The sinks its records go to (`sinks = [...]`, checked against the sinks by
    /// `sinks::routes`); None: every sink.
    pub sinks: Option<Vec<String>>,
}

/// How bytes become records.
#[derive(Debug, Clone)]
pub struct Framing {
    pub delimiter: Vec<u8>,
    pub max_record_bytes: usize,
    pub multiline: Option<Multiline>,
    /// Container runtime partial lines joined into one record (the source's chain has a `cri`
    /// or `docker` parser).
    pub container: Option<ContainerFormat>,
}

#[derive(Debug, Clone)]
pub struct Multiline {
    pub mode: MultilineMode,
    pub timeout: Duration,
}

#[derive(Debug, Clone)]
pub enum MultilineMode {
    /// A line matching starts a new record (Java stack traces: a timestamp starts each event).
    BreakBefore(Regex),
    /// A line matching ends the current record.
    BreakAfter(Regex),
}

pub const DEFAULT_FINGERPRINT_BYTES: u64 = log_sensor_common::agent_defaults::FINGERPRINT_BYTES;
pub const DEFAULT_MAX_RECORD_BYTES: u64 = log_sensor_common::agent_defaults::MAX_RECORD_BYTES;
pub const DEFAULT_MAX_FILE_BYTES: u64 = log_sensor_common::agent_defaults::MAX_FILE_BYTES;

/// Per-source settings that `[defaults]` supplies and a source may override.
#[derive(Debug, Clone, Default)]
pub(super) struct Overridable {
    fingerprint_bytes: Option<u64>,
    max_record_bytes: Option<u64>,
    max_file_bytes: Option<u64>,
    delimiter: Option<String>,
    detect_compression: Option<bool>,
    break_before: Option<String>,
    break_after: Option<String>,
    multiline_timeout: Option<Duration>,
}

impl Overridable {
    fn read(r: &mut TableReader, issues: &mut Vec<ConfigIssue>) -> Self {
        Overridable {
            fingerprint_bytes: r.size("fingerprint_bytes", issues),
            max_record_bytes: r.size("max_record_bytes", issues),
            max_file_bytes: r.size("max_file_bytes", issues),
            delimiter: r.string("delimiter", issues),
            detect_compression: r.boolean("detect_compression", issues),
            break_before: r.string("break_before", issues),
            break_after: r.string("break_after", issues),
            multiline_timeout: r.duration("multiline_timeout", issues),
        }
    }

    fn or(self, d: &Overridable) -> Overridable {
        Overridable {
            fingerprint_bytes: self.fingerprint_bytes.or(d.fingerprint_bytes),
            max_record_bytes: self.max_record_bytes.or(d.max_record_bytes),
            max_file_bytes: self.max_file_bytes.or(d.max_file_bytes),
            delimiter: self.delimiter.or_else(|| d.delimiter.clone()),
            detect_compression: self.detect_compression.or(d.detect_compression),
            break_before: self.break_before.or_else(|| d.break_before.clone()),
            break_after: self.break_after.or_else(|| d.break_after.clone()),
            multiline_timeout: self.multiline_timeout.or(d.multiline_timeout),
        }
    }
}

impl Overridable {
    /// Each value set here that no source could use, as (its key, why). Checked where the
    /// value is written, so that a bad `[defaults]` value is one error on `defaults.KEY`, not
    /// one per source inheriting it under a key the source never wrote (and none without
    /// sources).
    fn problems(&self) -> Vec<(&'static str, String)> {
        let mut p = Vec::new();
        if let Some(n) = self
            .fingerprint_bytes
            .filter(|n| !(16..=1 << 20).contains(n))
        {
            p.push((
                "fingerprint_bytes",
                format!("{n} is out of range (16 to 1MiB)"),
            ));
        }
        if let Some(n) = self
            .max_record_bytes
            .filter(|n| !(16..=64 << 20).contains(n))
        {
            p.push((
                "max_record_bytes",
                format!("{n} is out of range (16 to 64MiB)"),
            ));
        }
        if self.max_file_bytes == Some(0) {
            p.push(("max_file_bytes", "must be above 0".into()));
        }
        if let Some(d) = self
            .delimiter
            .as_ref()
            .filter(|d| d.is_empty() || d.len() > 16)
        {
            p.push(("delimiter", format!("{d:?} is not 1 to 16 bytes")));
        }
        for (key, pattern) in [
            ("break_before", &self.break_before),
            ("break_after", &self.break_after),
        ] {
            if let Some(Err(e)) = pattern.as_deref().map(Regex::new) {
                p.push((key, format!("bad regex: {e}")));
            }
        }
        if self.break_before.is_some() && self.break_after.is_some() {
            p.push((
                "break_after",
                "break_before and break_after cannot both be set".into(),
            ));
        }
        p
    }

    /// Reports [`Self::problems`] under `key` (`defaults` or `sources.NAME`).
    fn check(&self, key: &str, issues: &mut Vec<ConfigIssue>) {
        issues.extend(self.problems().into_iter().map(|(k, message)| ConfigIssue {
            key: format!("{key}.{k}"),
            message,
        }));
    }
}

/// `[defaults]`: what every source inherits unless it sets its own.
pub(super) fn read_defaults(top: &mut TableReader, issues: &mut Vec<ConfigIssue>) -> Overridable {
    match top.table("defaults", issues) {
        Some(t) => {
            let mut r = TableReader::new("defaults", t);
            let d = Overridable::read(&mut r, issues);
            r.finish(issues);
            d.check("defaults", issues);
            d
        }
        None => Overridable::default(),
    }
}

/// `type` of a file source, the type a source without `type` has.
pub const FILE: &str = "file";

/// Every `[sources.NAME]`, in name order: file sources and `type = "syslog"` ones apart, and
/// each source's `transforms` list into `chains`; a source with an error is left out (its
/// issues say why).
pub(super) fn read_sources(
    top: &mut TableReader,
    defaults: &Overridable,
    base: &Path,
    chains: &mut BTreeMap<String, Vec<String>>,
    issues: &mut Vec<ConfigIssue>,
) -> (Vec<Source>, Vec<SyslogSource>) {
    let mut sources = Vec::new();
    let mut syslog_sources = Vec::new();
    if let Some(t) = top.table("sources", issues) {
        let named: BTreeMap<&String, &toml::Value> = t.iter().collect();
        for (name, value) in named {
            let key = format!("sources.{name}");
            let Some(st) = value.as_table() else {
                issues.push(ConfigIssue {
                    key,
                    message: "expected a table".into(),
                });
                continue;
            };
            let rest = transforms::take_chain(&key, st, issues).map(|(rest, chain)| {
                if !chain.is_empty() {
                    chains.insert(name.clone(), chain);
                }
                rest
            });
            let st = rest.as_ref().unwrap_or(st);
            match st.get("type") {
                None => {}
                Some(toml::Value::String(t)) if t == FILE => {}
                Some(toml::Value::String(t)) if t == syslog::TYPE => {
                    syslog_sources.extend(syslog::read(name, &key, st, base, issues));
                    continue;
                }
                // Read as a file source, a mistyped type would only be an unknown key.
                Some(toml::Value::String(t)) => {
                    issues.push(ConfigIssue {
                        key: format!("{key}.type"),
                        message: format!(
                            "unknown source type {t:?} (expected {FILE:?} or {:?})",
                            syslog::TYPE
                        ),
                    });
                    continue;
                }
                Some(other) => {
                    issues.push(ConfigIssue {
                        key: format!("{key}.type"),
                        message: format!(
                            "expected a string ({FILE:?} or {:?}), found {}",
                            syslog::TYPE,
                            other.type_str()
                        ),
                    });
                    continue;
                }
            }
            if let Some(s) = read_source(name, &key, st, defaults, base, issues) {
                sources.push(s);
            }
        }
    }
    (sources, syslog_sources)
}

/// A source's name, whatever its type: it becomes part of dotted keys, stream ids and (for a
/// syslog source) a folder of the spool, so only letters, digits, '_' and '-'.
pub(super) fn check_name(name: &str, key: &str, issues: &mut Vec<ConfigIssue>) {
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        issues.push(ConfigIssue {
            key: key.into(),
            message: "source names use letters, digits, '_' and '-' (a '.' would make dotted keys ambiguous)".into(),
        });
    }
}

fn read_source(
    name: &str,
    key: &str,
    table: &toml::Table,
    defaults: &Overridable,
    base: &Path,
    issues: &mut Vec<ConfigIssue>,
) -> Option<Source> {
    let before = issues.len();
    check_name(name, key, issues);
    let mut r = TableReader::new(key, table);
    // Absent or "file" (`read_sources` sent any other type elsewhere).
    let _ = r.string("type", issues);
    let paths = r.strings("paths", issues).unwrap_or_default();
    let exclude = r.strings("exclude", issues).unwrap_or_default();
    let sinks = r.strings("sinks", issues);
    let own = Overridable::read(&mut r, issues);
    r.finish(issues);
    own.check(key, issues);
    // One of break_before / break_after here and the other from [defaults]: the pair is this
    // source's doing, so its error (neither half alone reports it).
    let one_own = own.break_before.is_some() != own.break_after.is_some();
    let o = own.or(defaults);
    if one_own && o.break_before.is_some() && o.break_after.is_some() {
        issues.push(ConfigIssue {
            key: format!("{key}.break_after"),
            message: "break_before and break_after cannot both be set (one is from [defaults])"
                .into(),
        });
    }
    // Everything wrong with the values was reported just now or by `read_defaults`: the source
    // is left out, and nothing below reports them again.
    let usable = o.problems().is_empty();
    if paths.is_empty() {
        issues.push(ConfigIssue {
            key: format!("{key}.paths"),
            message: "at least one path glob is required".into(),
        });
    }

    let paths: Vec<String> = paths.iter().map(|p| absolute_pattern(base, p)).collect();
    let mut include = GlobSetBuilder::new();
    for (i, p) in paths.iter().enumerate() {
        match globset::GlobBuilder::new(p).literal_separator(true).build() {
            Ok(g) => {
                include.add(g);
            }
            Err(e) => issues.push(ConfigIssue {
                key: format!("{key}.paths[{i}]"),
                message: format!("bad glob: {e}"),
            }),
        }
    }
    let mut ex_paths = GlobSetBuilder::new();
    let mut ex_names = GlobSetBuilder::new();
    for (i, p) in exclude.iter().enumerate() {
        let (pattern, set) = if p.contains('/') {
            (absolute_pattern(base, p), &mut ex_paths)
        } else {
            (p.clone(), &mut ex_names)
        };
        match globset::GlobBuilder::new(&pattern)
            .literal_separator(true)
            .build()
        {
            Ok(g) => {
                set.add(g);
            }
            Err(e) => issues.push(ConfigIssue {
                key: format!("{key}.exclude[{i}]"),
                message: format!("bad glob: {e}"),
            }),
        }
    }

    let fingerprint_bytes = o.fingerprint_bytes.unwrap_or(DEFAULT_FINGERPRINT_BYTES);
    let max_record_bytes = o.max_record_bytes.unwrap_or(DEFAULT_MAX_RECORD_BYTES);
    let max_file_bytes = o.max_file_bytes.unwrap_or(DEFAULT_MAX_FILE_BYTES);
    let delimiter = o
        .delimiter
        .unwrap_or_else(|| log_sensor_common::agent_defaults::DELIMITER.into())
        .into_bytes();
    let timeout = o.multiline_timeout.unwrap_or(Duration::from_secs(5));
    if !usable || issues.len() != before {
        return None;
    }
    // `usable`: the patterns compile and at most one is set.
    let compile = |p: &str| Regex::new(p).expect("checked by Overridable::problems");
    let multiline = match (&o.break_before, &o.break_after) {
        (Some(p), _) => Some(Multiline {
            mode: MultilineMode::BreakBefore(compile(p)),
            timeout,
        }),
        (None, Some(p)) => Some(Multiline {
            mode: MultilineMode::BreakAfter(compile(p)),
            timeout,
        }),
        (None, None) => None,
    };
    let signature = format!(
        "{paths:?} {exclude:?} {delimiter:?} {max_record_bytes} {fingerprint_bytes} {max_file_bytes} {:?} {:?}",
        o.detect_compression,
        multiline.as_ref().map(|m| (format!("{:?}", m.mode), m.timeout)),
    );
    Some(Source {
        signature,
        sinks,
        name: name.to_string(),
        paths,
        exclude,
        include_set: include.build().ok()?,
        exclude_paths: ex_paths.build().ok()?,
        exclude_names: ex_names.build().ok()?,
        framing: Framing {
            delimiter,
            max_record_bytes: max_record_bytes as usize,
            multiline,
            container: None,
        },
        fingerprint_bytes: fingerprint_bytes as usize,
        max_file_bytes,
        detect_compression: o
            .detect_compression
            .unwrap_or(log_sensor_common::agent_defaults::DETECT_COMPRESSION),
    })
}

fn absolute_pattern(base: &Path, pattern: &str) -> String {
    let p = if pattern.starts_with('/') {
        PathBuf::from(pattern)
    } else {
        base.join(pattern)
    };
    normalize(&p).to_string_lossy().into_owned()
}

#[cfg(test)]
mod tests {
    use crate::config::Config;
    use std::path::Path;

    fn parse(text: &str) -> Result<Config, String> {
        Config::parse(Path::new("/etc/ls/agent.toml"), text).map_err(|e| e.to_string())
    }

    #[test]
    fn a_mistyped_source_type_names_the_types() {
        let e = parse("[sources.n3]\ntype = \"sylsog\"\nlisten = [\"udp://127.0.0.1:5514\"]\n")
            .unwrap_err();
        assert!(
            e.contains(
                "sources.n3.type: unknown source type \"sylsog\" (expected \"file\" or \"syslog\")"
            ),
            "{e}"
        );
        assert!(!e.contains("unknown key"), "{e}");
        let e = parse("[sources.n3]\ntype = 5\npaths = [\"/x\"]\n").unwrap_err();
        assert!(e.contains("sources.n3.type: expected a string"), "{e}");
        // "file" is the type a source without one has.
        let c = parse("[sources.a]\ntype = \"file\"\npaths = [\"/x\"]\n").unwrap();
        assert_eq!(c.sources[0].name, "a");
    }

    /// Regression: a bad value in `[defaults]` was reported once per source under
    /// `sources.NAME.KEY` (a key nobody wrote), and not at all without sources.
    #[test]
    fn a_bad_default_is_one_error_on_defaults_not_on_each_source() {
        let sources = "[sources.a]\npaths = [\"/a\"]\n[sources.b]\npaths = [\"/b\"]\n";
        for (default, key) in [
            ("fingerprint_bytes = 2", "defaults.fingerprint_bytes"),
            ("max_record_bytes = 1", "defaults.max_record_bytes"),
            ("max_file_bytes = 0", "defaults.max_file_bytes"),
            ("delimiter = \"\"", "defaults.delimiter"),
            ("break_before = \"(\"", "defaults.break_before"),
            (
                "break_before = \"^a\"\nbreak_after = \"^b\"",
                "defaults.break_after",
            ),
        ] {
            for with_sources in [true, false] {
                let text = format!(
                    "[defaults]\n{default}\n{}",
                    if with_sources { sources } else { "" }
                );
                let e = parse(&text).unwrap_err();
                assert_eq!(e.matches(key).count(), 1, "{default}: {e}");
                assert!(!e.contains("sources."), "{default}: {e}");
            }
        }
        // A source's own bad value stays its own; one it overrides is not inherited.
        let e = parse(
            "[defaults]\nfingerprint_bytes = 2\n[sources.a]\npaths = [\"/a\"]\n\
             fingerprint_bytes = 3\n[sources.b]\npaths = [\"/b\"]\nfingerprint_bytes = 64\n",
        )
        .unwrap_err();
        assert_eq!(e.matches("fingerprint_bytes").count(), 2, "{e}");
        assert!(
            e.contains("defaults.fingerprint_bytes: 2 is out of range"),
            "{e}"
        );
        assert!(
            e.contains("sources.a.fingerprint_bytes: 3 is out of range"),
            "{e}"
        );
        // A pair made of the source's half and the default's half is the source's.
        let e = parse(
            "[defaults]\nbreak_before = \"^a\"\n[sources.a]\npaths = [\"/a\"]\nbreak_after = \"^b\"\n",
        )
        .unwrap_err();
        assert!(
            e.contains("sources.a.break_after: break_before and break_after"),
            "{e}"
        );
        assert!(!e.contains("defaults."), "{e}");
        // Good defaults still reach every source.
        let c = parse(&format!("[defaults]\nfingerprint_bytes = 64\n{sources}")).unwrap();
        assert!(c.sources.iter().all(|s| s.fingerprint_bytes == 64));
    }
}
