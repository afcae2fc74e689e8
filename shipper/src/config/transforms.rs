//! `[transforms.NAME]` tables and each source's `transforms = ["a", "b"]`: which parsers and
//! scripts a source's records pass through, in order, on their way into a batch.
//!
//! Every table is read and checked here (a regex that does not compile, an unknown `type`),
//! so `check` and a reload report a broken transform with the rest of the file's errors and a
//! reload with one keeps the running config. A transform no source lists is fine (it is
//! defined for later); a source listing a name with no table is an error on
//! `sources.X.transforms`.

use super::lua::{self, LuaOptions};
use super::reader::{ConfigIssue, TableReader};
use super::sources::{Framing, Source};
use regex::bytes::Regex;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// One `[transforms.NAME]` table, checked.
#[derive(Debug, Clone)]
pub struct TransformConfig {
    pub name: String,
    pub kind: TransformKind,
}

#[derive(Debug, Clone)]
pub enum TransformKind {
    /// The line is a JSON object: its keys go into `fields`.
    Json { message_key: Option<String> },
    /// `key=value key2="quoted \" value"` (Go services' logfmt): pairs go into `fields`.
    Logfmt { message_key: Option<String> },
    /// Named groups of `pattern` go into `fields`.
    Regex { pattern: Regex },
    /// An RFC 5424 or RFC 3164 line: the header into `fields`, MSG becomes the message.
    Syslog,
    /// A CRI-O / containerd log line `TIME STREAM P|F MSG`.
    Cri,
    /// A Docker json-file line `{"log":"…","stream":"stdout","time":"…"}`.
    Docker,
    /// A user's script (`config::lua`).
    Lua(LuaOptions),
}

/// How a container runtime marks a line that continues in the next one; the framer joins
/// such parts (see `frame`) when a source's chain has the matching parser.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContainerFormat {
    /// `P` in the tag field: the line continues.
    Cri,
    /// `log` without a trailing `\n`: the line continues.
    Docker,
}

const TYPES: &str = "json, logfmt, regex, syslog, cri, docker, lua";

impl TransformKind {
    /// Its `type` as written in the config.
    pub fn type_name(&self) -> &'static str {
        match self {
            TransformKind::Json { .. } => "json",
            TransformKind::Logfmt { .. } => "logfmt",
            TransformKind::Regex { .. } => "regex",
            TransformKind::Syslog => "syslog",
            TransformKind::Cri => "cri",
            TransformKind::Docker => "docker",
            TransformKind::Lua(_) => "lua",
        }
    }

    pub fn container(&self) -> Option<ContainerFormat> {
        match self {
            TransformKind::Cri => Some(ContainerFormat::Cri),
            TransformKind::Docker => Some(ContainerFormat::Docker),
            _ => None,
        }
    }
}

/// The `[transforms.NAME]` tables: the valid ones, and the names of those left out for an
/// error (their issues say why, and the config is refused).
#[derive(Debug, Default)]
pub(super) struct Transforms {
    pub valid: Vec<TransformConfig>,
    pub invalid: BTreeSet<String>,
}

/// The keys a transform of type `kind` has defaults for, with them as a config file would write
/// them (`get` and `list` show them with origin `default`); the parsers have none.
pub(super) fn defaults(kind: &str) -> Vec<(&'static str, toml::Value)> {
    match kind {
        "lua" => lua::defaults(),
        _ => Vec::new(),
    }
}

/// Every `[transforms.NAME]`, in name order; one with an error is left out of `valid` (its
/// issues say why) and named in `invalid`, so a source listing it is not told it is unknown.
pub(super) fn read_transforms(
    top: &mut TableReader,
    base: &Path,
    issues: &mut Vec<ConfigIssue>,
) -> Transforms {
    let mut all = Transforms::default();
    let Some(t) = top.table("transforms", issues) else {
        return all;
    };
    let named: BTreeMap<&String, &toml::Value> = t.iter().collect();
    for (name, value) in named {
        match read_named(name, value, base, issues) {
            Some(kind) => all.valid.push(TransformConfig {
                name: name.clone(),
                kind,
            }),
            None => {
                all.invalid.insert(name.clone());
            }
        }
    }
    all
}

/// One `[transforms.NAME]`; None after an issue.
fn read_named(
    name: &str,
    value: &toml::Value,
    base: &Path,
    issues: &mut Vec<ConfigIssue>,
) -> Option<TransformKind> {
    let key = format!("transforms.{name}");
    if !valid_name(name) {
        issues.push(ConfigIssue {
            key,
            message: "transform names use letters, digits, '_' and '-'".into(),
        });
        return None;
    }
    let Some(table) = value.as_table() else {
        issues.push(ConfigIssue {
            key,
            message: "expected a table".into(),
        });
        return None;
    };
    if table.get("type").and_then(|t| t.as_str()) == Some("lua") {
        return match lua::read(name, table, base) {
            Ok(o) => Some(TransformKind::Lua(o)),
            Err(e) => {
                issues.extend(e);
                None
            }
        };
    }
    read_one(&key, table, issues)
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

fn read_one(
    key: &str,
    table: &toml::Table,
    issues: &mut Vec<ConfigIssue>,
) -> Option<TransformKind> {
    let before = issues.len();
    let mut r = TableReader::new(key, table);
    let Some(kind) = r.string("type", issues) else {
        if issues.len() == before {
            issues.push(ConfigIssue {
                key: format!("{key}.type"),
                message: format!("required: one of {TYPES}"),
            });
        }
        return None;
    };
    let kind = match kind.as_str() {
        "json" => TransformKind::Json {
            message_key: r.string("message_key", issues),
        },
        "logfmt" => TransformKind::Logfmt {
            message_key: r.string("message_key", issues),
        },
        "regex" => match r.string("pattern", issues) {
            None if issues.len() == before => {
                issues.push(ConfigIssue {
                    key: format!("{key}.pattern"),
                    message: "required for type = \"regex\"".into(),
                });
                return None;
            }
            None => return None,
            Some(p) => match Regex::new(&p) {
                Ok(re) if re.capture_names().flatten().next().is_none() => {
                    issues.push(ConfigIssue {
                        key: format!("{key}.pattern"),
                        message: "has no named group ((?P<name>…)) to put into fields".into(),
                    });
                    return None;
                }
                Ok(re) => TransformKind::Regex { pattern: re },
                Err(e) => {
                    issues.push(ConfigIssue {
                        key: format!("{key}.pattern"),
                        message: format!("bad regex: {e}"),
                    });
                    return None;
                }
            },
        },
        "syslog" => TransformKind::Syslog,
        "cri" => TransformKind::Cri,
        "docker" => TransformKind::Docker,
        other => {
            issues.push(ConfigIssue {
                key: format!("{key}.type"),
                message: format!("unknown transform type {other:?} (one of {TYPES})"),
            });
            return None;
        }
    };
    r.finish(issues);
    (issues.len() == before).then_some(kind)
}

/// `sources.NAME.transforms` of one source table, read before the table goes to the reader of
/// its kind; returns the table without that key, so that reader sees only its own keys.
pub(super) fn take_chain(
    key: &str,
    table: &toml::Table,
    issues: &mut Vec<ConfigIssue>,
) -> Option<(toml::Table, Vec<String>)> {
    table.get("transforms")?;
    let mut r = TableReader::new(key, table);
    let chain = r.strings("transforms", issues).unwrap_or_default();
    let mut rest = table.clone();
    rest.remove("transforms");
    Some((rest, chain))
}

/// Checks every source's chain against the transforms defined, and gives each file source
/// whose chain parses container logs the framing that joins their partial lines. A name whose
/// table is invalid is defined: its own issues are enough (the chain is not checked further).
pub(super) fn resolve_chains(
    chains: &BTreeMap<String, Vec<String>>,
    transforms: &Transforms,
    sources: &mut [Source],
    issues: &mut Vec<ConfigIssue>,
) {
    let by_name: BTreeMap<&str, &TransformConfig> = transforms
        .valid
        .iter()
        .map(|t| (t.name.as_str(), t))
        .collect();
    for (source, chain) in chains {
        let key = format!("sources.{source}.transforms");
        let mut container: Option<(ContainerFormat, &str)> = None;
        for name in chain {
            if transforms.invalid.contains(name) {
                continue;
            }
            let Some(t) = by_name.get(name.as_str()) else {
                let defined: BTreeSet<&str> = by_name
                    .keys()
                    .copied()
                    .chain(transforms.invalid.iter().map(String::as_str))
                    .collect();
                issues.push(ConfigIssue {
                    key: key.clone(),
                    message: format!(
                        "unknown transform {name:?} (defined: {})",
                        if defined.is_empty() {
                            "none".to_string()
                        } else {
                            defined.into_iter().collect::<Vec<_>>().join(", ")
                        }
                    ),
                });
                continue;
            };
            if let Some(f) = t.kind.container() {
                if let Some((_, first)) = container {
                    issues.push(ConfigIssue {
                        key: key.clone(),
                        message: format!(
                            "{first:?} and {name:?} both join container partial lines; a source has one log format"
                        ),
                    });
                }
                container = Some((f, name));
            }
        }
        let Some((format, name)) = container else {
            continue;
        };
        if let Some(s) = sources.iter_mut().find(|s| &s.name == source) {
            join_container_parts(s, format, name, &key, issues);
        }
    }
}

fn join_container_parts(
    s: &mut Source,
    format: ContainerFormat,
    name: &str,
    key: &str,
    issues: &mut Vec<ConfigIssue>,
) {
    if s.framing.multiline.is_some() {
        issues.push(ConfigIssue {
            key: key.into(),
            message: format!(
                "{name:?} joins the runtime's partial lines itself; break_before / break_after cannot be set too"
            ),
        });
        return;
    }
    if s.framing.delimiter != b"\n" {
        issues.push(ConfigIssue {
            key: key.into(),
            message: format!("{name:?} reads newline-delimited container logs; remove delimiter"),
        });
        return;
    }
    let Framing { container, .. } = &mut s.framing;
    *container = Some(format);
    // Joining changes what a record is: a reload that adds or removes it restarts the streams.
    s.signature.push_str(&format!(" {format:?}"));
}

#[cfg(test)]
mod tests {
    use crate::config::{Config, ConfigError};
    use std::path::Path;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(Path::new("/etc/ls/agent.toml"), text)
    }

    fn keys(err: ConfigError) -> Vec<String> {
        match err {
            ConfigError::Invalid { issues, .. } => issues.into_iter().map(|i| i.key).collect(),
            other => panic!("expected Invalid, got {other}"),
        }
    }

    #[test]
    fn chains_keep_their_order_and_unused_transforms_are_fine() {
        let c = parse(
            r#"
[sources.web]
paths = ["/var/log/nginx/access.log"]
transforms = ["access", "kv"]
[transforms.kv]
type = "logfmt"
[transforms.access]
type = "regex"
pattern = '^(?P<client>\S+) '
[transforms.spare]
type = "json"
message_key = "message"
"#,
        )
        .unwrap();
        assert_eq!(c.source_transforms["web"], vec!["access", "kv"]);
        let names: Vec<&str> = c.transforms.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, vec!["access", "kv", "spare"]);
        assert!(c.sources[0].framing.container.is_none());
    }

    #[test]
    fn every_transform_error_names_its_key() {
        let err = parse(
            r#"
[sources.web]
paths = ["/x.log"]
transforms = ["access", "nope"]
[transforms.access]
type = "regex"
pattern = '(?P<client>\S+'
[transforms.plain]
type = "regex"
pattern = '\S+'
[transforms.odd]
type = "xml"
[transforms.typo]
type = "json"
mesage_key = "m"
[transforms.untyped]
pattern = "x"
"#,
        )
        .unwrap_err();
        let keys = keys(err);
        for k in [
            "transforms.access.pattern",
            "transforms.plain.pattern",
            "transforms.odd.type",
            "transforms.typo.mesage_key",
            "transforms.untyped.type",
            "sources.web.transforms",
        ] {
            assert!(keys.iter().any(|x| x == k), "missing {k} in {keys:?}");
        }
    }

    #[test]
    fn a_defined_but_invalid_transform_is_not_also_unknown() {
        let err = parse(
            r#"
[sources.s]
paths = ["/x.log"]
transforms = ["bad", "odd", "lu", "name.dot", "nope"]
[transforms.bad]
type = "regex"
pattern = '(?P<a>\S+'
[transforms.odd]
type = "xml"
[transforms.lu]
type = "lua"
source = "syntax error here"
[transforms."name.dot"]
type = "json"
"#,
        )
        .unwrap_err();
        let text = err.to_string();
        let on_chain: Vec<&str> = text
            .lines()
            .filter(|l| l.contains("sources.s.transforms"))
            .collect();
        // Only the name that has no table at all is unknown, and the list of what is
        // defined names the invalid ones too.
        assert_eq!(
            on_chain,
            ["  sources.s.transforms: unknown transform \"nope\" (defined: bad, lu, name.dot, odd)"],
            "{text}"
        );
        assert!(text.contains("transforms.bad.pattern: bad regex"), "{text}");
        assert!(text.contains("transforms.odd.type"), "{text}");
    }

    #[test]
    fn a_container_parser_joins_partial_lines_in_the_framer() {
        let c = parse(
            r#"
[sources.k8s]
paths = ["/var/log/containers/*.log"]
transforms = ["cri"]
[transforms.cri]
type = "cri"
"#,
        )
        .unwrap();
        assert_eq!(
            c.sources[0].framing.container,
            Some(super::ContainerFormat::Cri)
        );
        let err = parse(
            r#"
[sources.k8s]
paths = ["/var/log/containers/*.log"]
transforms = ["cri", "docker"]
break_before = '^\d'
[transforms.cri]
type = "cri"
[transforms.docker]
type = "docker"
"#,
        )
        .unwrap_err();
        assert!(keys(err).iter().any(|k| k == "sources.k8s.transforms"));
    }
}
