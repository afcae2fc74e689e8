//! The config as layers, each key with its origin: built-in defaults, the enabled packs' sources,
//! the file, and temporary overrides set on the running agent (gone at the next reload).
//!
//! `get`, `list`, `set` and `del` work on dotted keys (`defaults.max_record_bytes`,
//! `sources.app.paths`). Every change is validated exactly as a config file is, by building the
//! merged table and resolving it into a [`Config`].

use super::dotted::{flatten, get_path, merge_into, remove_path, set_path};
pub use super::dotted::{parse_value, render};
use super::packs::Pack;
pub use super::packs::{available_packs, find_pack, pack_name};
pub use super::persist::persist;
use super::{Config, ConfigError, ConfigIssue};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use toml::{Table, Value};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Origin {
    Default,
    Pack,
    File,
    /// `--cert`/`--key` given to this process (kept across reloads, unlike a temporary override).
    #[serde(rename = "command_line")]
    CommandLine,
    Temporary,
}

impl Origin {
    pub fn as_str(self) -> &'static str {
        match self {
            Origin::Default => "default",
            Origin::Pack => "pack",
            Origin::File => "file",
            Origin::CommandLine => "command_line",
            Origin::Temporary => "temporary",
        }
    }
}

/// One effective setting.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Entry {
    pub key: String,
    /// The value in TOML syntax (`65536`, `"x"`, `["a", "b"]`).
    pub value: String,
    pub origin: Origin,
}

/// Built-in defaults, as TOML (what `list` shows with origin `default`).
pub const DEFAULTS: &str = r#"
state_dir = "state"
packs = []
pack_dirs = ["packs"]
[defaults]
fingerprint_bytes = 1024
max_record_bytes = 65536
max_file_bytes = 4294967296
delimiter = "\n"
detect_compression = true
multiline_timeout = "5s"
[batch]
max_records = 16384
max_bytes = "1MiB"
max_wait = "1s"
[discovery]
rescan_interval = "10s"
rotate_wait = "5s"
close_inactive = "5m"
max_partial_bytes = "64MiB"
[sink]
type = "stdout"
[monitor]
allow_non_loopback = false
"#;

/// Per-source keys a source inherits from `[defaults]`.
pub const INHERITED: [&str; 8] = [
    "fingerprint_bytes",
    "max_record_bytes",
    "max_file_bytes",
    "delimiter",
    "detect_compression",
    "break_before",
    "break_after",
    "multiline_timeout",
];

/// The sources one enabled pack switches on.
#[derive(Debug, Clone)]
pub struct PackSources {
    pub name: String,
    pub path: PathBuf,
    pub sources: Table,
}

#[derive(Debug, Clone)]
pub struct Layers {
    pub path: PathBuf,
    pub file: Table,
    pub packs: Vec<PackSources>,
    /// Dotted key → value, or None for a key deleted for now.
    pub temporary: BTreeMap<String, Option<Value>>,
    /// The file is a `.j2` template: its values were rendered, and its `vars.toml` is watched.
    pub templated: bool,
    /// Keys the command line sets over the file's (`--cert`, `--key`); re-applied on reload.
    pub command_line: Table,
}

/// The config file's text as TOML: a `.j2` file is rendered first, and one that fails to render
/// is an error as a whole (a half-rendered config never runs).
pub fn read_text(path: &Path) -> Result<String, ConfigError> {
    if super::template::is_template(path) {
        return Ok(super::template::render_file(path)?);
    }
    std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })
}

impl Layers {
    /// Reads the file and the packs it enables.
    pub fn load(path: &Path) -> Result<Layers, ConfigError> {
        Layers::load_with(path, Table::new())
    }

    /// Reads the file again for a reload, keeping what the command line set.
    pub fn reread(&self) -> Result<Layers, ConfigError> {
        Layers::load_with(&self.path, self.command_line.clone())
    }

    /// Reads the file with `command_line` keys over it.
    pub fn load_with(path: &Path, command_line: Table) -> Result<Layers, ConfigError> {
        let templated = super::template::is_template(path);
        let text = read_text(path)?;
        let file: Table = text
            .parse()
            .map_err(|e: toml::de::Error| ConfigError::Syntax {
                path: path.to_path_buf(),
                message: if templated {
                    format!(
                        "{e} (in the rendered text: `log-sensor -c {} render` shows it)",
                        path.display()
                    )
                } else {
                    e.to_string()
                },
            })?;
        let mut layers = Layers {
            path: path.to_path_buf(),
            file,
            packs: Vec::new(),
            temporary: BTreeMap::new(),
            templated,
            command_line,
        };
        layers.load_packs()?;
        Ok(layers)
    }

    fn base_dir(&self) -> PathBuf {
        super::absolute(&self.path)
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("/"))
    }

    /// The pack folders and enabled packs as the file (with temporary overrides) names them.
    fn pack_settings(&self) -> (Vec<String>, Vec<PathBuf>) {
        let merged = self.merged_without_packs();
        let strings = |k: &str| -> Option<Vec<String>> {
            merged.get(k)?.as_array().map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect()
            })
        };
        let base = self.base_dir();
        let dirs = strings("pack_dirs")
            .map(|d| d.iter().map(|x| base.join(x)).collect())
            .unwrap_or_else(|| vec![base.join("packs")]);
        (strings("packs").unwrap_or_default(), dirs)
    }

    fn load_packs(&mut self) -> Result<(), ConfigError> {
        let (names, dirs) = self.pack_settings();
        let mut issues = Vec::new();
        let mut packs = Vec::new();
        // Facts, environment and vars.toml are read once, and only when a pack is enabled.
        let mut ctx = None;
        for (i, name) in names.iter().enumerate() {
            let key = format!("packs[{i}]");
            let Some(path) = find_pack(name, &dirs, &self.base_dir()) else {
                issues.push(ConfigIssue {
                    key,
                    message: format!(
                        "pack {name:?} not found in {}",
                        dirs.iter()
                            .map(|d| d.display().to_string())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                });
                continue;
            };
            let placed = Pack::read(&path).and_then(|p| {
                let ctx =
                    ctx.get_or_insert_with(|| super::template::Context::for_template(&self.path));
                match ctx {
                    Ok(ctx) => p.place(ctx),
                    Err(e) => Err(e.to_string()),
                }
            });
            match placed {
                // A pack that does not apply here adds nothing: one fleet-wide list of packs
                // serves every kind of host (`pack enable` is where "not here" is refused).
                Ok(placed) => packs.push(PackSources {
                    name: pack_name(&path),
                    path,
                    sources: placed.sources,
                }),
                Err(message) => issues.push(ConfigIssue { key, message }),
            }
        }
        // Two packs defining one source would be ambiguous; a file may refine a pack's source.
        let mut owner: BTreeMap<String, String> = BTreeMap::new();
        for p in &packs {
            for s in p.sources.keys() {
                if let Some(other) = owner.insert(s.clone(), p.name.clone()) {
                    issues.push(ConfigIssue {
                        key: format!("sources.{s}"),
                        message: format!("defined by both pack {other} and pack {}", p.name),
                    });
                }
            }
        }
        if !issues.is_empty() {
            return Err(ConfigError::Invalid {
                path: self.path.clone(),
                issues,
            });
        }
        self.packs = packs;
        Ok(())
    }

    fn merged_without_packs(&self) -> Table {
        let mut t = self.file.clone();
        merge_into(&mut t, &self.command_line);
        for (k, v) in &self.temporary {
            let parts: Vec<&str> = k.split('.').collect();
            match v {
                Some(v) => set_path(&mut t, &parts, v.clone()),
                None => {
                    remove_path(&mut t, &parts);
                }
            }
        }
        t
    }

    /// The tables merged: pack sources under the file, temporary overrides on top.
    pub fn merged(&self) -> Table {
        let mut t = Table::new();
        for p in &self.packs {
            let sources = t
                .entry("sources")
                .or_insert_with(|| Value::Table(Table::new()));
            if let Value::Table(st) = sources {
                for (name, v) in &p.sources {
                    st.insert(name.clone(), v.clone());
                }
            }
        }
        merge_into(&mut t, &self.merged_without_packs());
        t
    }

    pub fn resolve(&self) -> Result<Config, ConfigError> {
        Config::from_table(&self.path, &self.merged())
    }

    /// Names of the sources that come from packs (and are not redefined by the file).
    pub fn pack_source_names(&self) -> Vec<String> {
        let file_sources = self.file.get("sources").and_then(Value::as_table);
        self.packs
            .iter()
            .flat_map(|p| p.sources.keys().cloned())
            .filter(|s| file_sources.map(|f| !f.contains_key(s)).unwrap_or(true))
            .collect()
    }

    /// The files whose change means a reload: the config file, every enabled pack and the Lua
    /// transforms' script files.
    pub fn watched_files(&self) -> Vec<PathBuf> {
        let vars = self
            .templated
            .then(|| super::template::vars_path(&self.path));
        let dir = super::config_dir(&self.path);
        std::iter::once(self.path.clone())
            .chain(vars)
            .chain(self.packs.iter().map(|p| p.path.clone()))
            .chain(super::lua::script_files(&self.merged(), &dir))
            .collect()
    }

    fn origin_of(&self, key: &str) -> Origin {
        let parts: Vec<&str> = key.split('.').collect();
        // A table set for now (`set sink '{type = "file", …}'`) replaced the file's: every key
        // under it is temporary too.
        let under_temporary = self.temporary.iter().any(|(t, v)| {
            v.is_some()
                && key.len() > t.len()
                && key.starts_with(t.as_str())
                && key[t.len()..].starts_with('.')
        });
        if self.temporary.contains_key(key) || under_temporary {
            Origin::Temporary
        } else if get_path(&self.command_line, &parts).is_some() {
            Origin::CommandLine
        } else if get_path(&self.file, &parts).is_some() {
            Origin::File
        } else {
            Origin::Pack
        }
    }

    /// The defaults of the tables whose keys depend on their `type` (syslog sources, transforms,
    /// sinks), as dotted keys under each table; the values are the parsers' own defaults.
    fn typed_defaults(&self, merged: &Table) -> Vec<(String, Value)> {
        let tables = |k: &str| {
            merged
                .get(k)
                .and_then(Value::as_table)
                .into_iter()
                .flatten()
                .filter_map(|(name, v)| Some((name, v.as_table()?)))
        };
        let kind = |t: &Table| t.get("type").and_then(Value::as_str).map(str::to_string);
        let mut out: Vec<(String, Vec<(&'static str, Value)>)> = Vec::new();
        for (name, t) in tables("sources") {
            if super::syslog::is_syslog(t) {
                out.push((format!("sources.{name}"), super::syslog::defaults()));
            }
        }
        for (name, t) in tables("transforms") {
            if let Some(k) = kind(t) {
                out.push((
                    format!("transforms.{name}"),
                    super::transforms::defaults(&k),
                ));
            }
        }
        // A collector sink's files are under the state dir, as `Config::from_table` finds it.
        let state_dir = self.base_dir().join(
            merged
                .get("state_dir")
                .and_then(Value::as_str)
                .map(|s| super::expand::expand(s).unwrap_or_else(|_| s.to_string()))
                .unwrap_or_else(|| log_sensor_common::agent_defaults::STATE_DIR.into()),
        );
        let sinks = merged
            .get("sink")
            .and_then(Value::as_table)
            .map(|t| ("sink".to_string(), t))
            .into_iter()
            .chain(tables("sinks").map(|(name, t)| (format!("sinks.{name}"), t)));
        for (prefix, t) in sinks {
            if let Some(k) = kind(t) {
                out.push((prefix, super::sinks::defaults(&k, &state_dir)));
            }
        }
        out.into_iter()
            .flat_map(|(prefix, keys)| {
                keys.into_iter()
                    .map(move |(k, v)| (format!("{prefix}.{k}"), v))
            })
            .collect()
    }

    /// Every effective key equal to or under `prefix` ("" for all), with value and origin.
    pub fn entries(&self, prefix: &str) -> Vec<Entry> {
        let merged = self.merged();
        let mut out: BTreeMap<String, Entry> = BTreeMap::new();
        let mut leaves = Vec::new();
        flatten("", &merged, &mut leaves);
        for (k, v) in leaves {
            let origin = self.origin_of(&k);
            out.insert(
                k.clone(),
                Entry {
                    key: k,
                    value: render(&v),
                    origin,
                },
            );
        }
        let defaults: Table = DEFAULTS.parse().expect("built-in defaults parse");
        let mut dleaves = Vec::new();
        flatten("", &defaults, &mut dleaves);
        dleaves.push(("host_id".into(), Value::String(super::hostname())));
        // `[sinks.*]` replaces `[sink]`: its default would be a sink that is not there.
        let named_sinks = merged.contains_key("sinks");
        dleaves.retain(|(k, _)| !(named_sinks && k.starts_with("sink.")));
        // What each syslog source, transform and sink leaves at the default of its type.
        dleaves.extend(self.typed_defaults(&merged));
        for (k, v) in dleaves {
            out.entry(k.clone()).or_insert(Entry {
                key: k,
                value: render(&v),
                origin: Origin::Default,
            });
        }
        // What each source inherits shows under the source, with the origin of where it came from.
        if let Some(Value::Table(sources)) = merged.get("sources") {
            for (name, source) in sources {
                // A syslog source inherits nothing from [defaults] (those are file settings).
                if source.as_table().is_some_and(super::syslog::is_syslog) {
                    continue;
                }
                for k in INHERITED {
                    let key = format!("sources.{name}.{k}");
                    if out.contains_key(&key) {
                        continue;
                    }
                    if let Some(e) = out.get(&format!("defaults.{k}")).cloned() {
                        out.insert(
                            key.clone(),
                            Entry {
                                key,
                                value: e.value,
                                origin: e.origin,
                            },
                        );
                    }
                }
            }
        }
        out.into_values()
            .filter(|e| {
                prefix.is_empty() || e.key == prefix || e.key.starts_with(&format!("{prefix}."))
            })
            .collect()
    }

    /// Sets a temporary override; refused (and not kept) if the result does not validate.
    pub fn set_temporary(&mut self, key: &str, value: Value) -> Result<Config, ConfigError> {
        check_key(&self.path, key)?;
        let before = self.temporary.insert(key.to_string(), Some(value));
        self.try_resolve_or_restore(key, before)
    }

    /// Drops a key for now: a temporary override is removed; a file or pack key is hidden until
    /// the next reload (its default, if any, shows again).
    pub fn del_temporary(&mut self, key: &str) -> Result<Config, ConfigError> {
        check_key(&self.path, key)?;
        // Hiding what is set nowhere changes nothing, and saying "dropped" hid a mistyped key.
        let under = format!("{key}.");
        let set = self
            .entries(key)
            .iter()
            .any(|e| (e.key == key || e.key.starts_with(&under)) && e.origin != Origin::Default);
        if !set {
            return Err(ConfigError::Invalid {
                path: self.path.clone(),
                issues: vec![ConfigIssue {
                    key: key.to_string(),
                    message:
                        "is not set in the file, a pack or a temporary change: nothing to delete"
                            .into(),
                }],
            });
        }
        let before = if matches!(self.temporary.get(key), Some(Some(_))) {
            self.temporary.remove(key)
        } else {
            self.temporary.insert(key.to_string(), None)
        };
        self.try_resolve_or_restore(key, before)
    }

    fn try_resolve_or_restore(
        &mut self,
        key: &str,
        before: Option<Option<Value>>,
    ) -> Result<Config, ConfigError> {
        let packs_before = self.packs.clone();
        let result = self.load_packs().and_then(|_| self.resolve());
        if result.is_err() {
            match before {
                Some(v) => self.temporary.insert(key.to_string(), v),
                None => self.temporary.remove(key),
            };
            self.packs = packs_before;
        }
        result
    }
}

pub(super) fn check_key(path: &Path, key: &str) -> Result<(), ConfigError> {
    if key.is_empty() || key.split('.').any(str::is_empty) {
        return Err(ConfigError::Invalid {
            path: path.to_path_buf(),
            issues: vec![ConfigIssue {
                key: key.to_string(),
                message: "not a dotted key such as defaults.max_record_bytes".into(),
            }],
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layers(text: &str) -> (tempfile::TempDir, Layers) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("packs")).unwrap();
        std::fs::write(
            dir.path().join("packs/web.json"),
            r#"{"queries":{}, "log_sensor": {"sources": {"nginx": {"paths": ["/var/log/nginx/*.log"], "max_record_bytes": 4096}}}}"#,
        )
        .unwrap();
        std::fs::write(dir.path().join("agent.toml"), text).unwrap();
        let l = Layers::load(&dir.path().join("agent.toml")).unwrap();
        (dir, l)
    }

    fn find<'a>(e: &'a [Entry], k: &str) -> &'a Entry {
        e.iter()
            .find(|x| x.key == k)
            .unwrap_or_else(|| panic!("no {k} in {e:?}"))
    }

    #[test]
    fn origins_of_default_file_pack_and_temporary() {
        let (_d, mut l) = layers("packs = [\"web\"]\n[defaults]\nmax_file_bytes = 1000\n[sources.app]\npaths = [\"a/*.log\"]\n");
        let e = l.entries("");
        assert_eq!(
            find(&e, "defaults.max_record_bytes").origin,
            Origin::Default
        );
        assert_eq!(find(&e, "defaults.max_file_bytes").origin, Origin::File);
        assert_eq!(find(&e, "sources.nginx.paths").origin, Origin::Pack);
        assert_eq!(find(&e, "sources.nginx.max_record_bytes").value, "4096");
        // Inherited values show under the source with the origin they come from.
        assert_eq!(find(&e, "sources.app.max_file_bytes").origin, Origin::File);
        assert_eq!(
            find(&e, "sources.app.max_record_bytes").origin,
            Origin::Default
        );
        let cfg = l
            .set_temporary("defaults.max_record_bytes", parse_value("131072"))
            .unwrap();
        assert_eq!(
            cfg.sources
                .iter()
                .find(|s| s.name == "app")
                .unwrap()
                .framing
                .max_record_bytes,
            131072
        );
        let e = l.entries("defaults.max_record_bytes");
        assert_eq!(e.len(), 1);
        assert_eq!(
            (e[0].value.as_str(), e[0].origin),
            ("131072", Origin::Temporary)
        );
        assert_eq!(l.pack_source_names(), vec!["nginx".to_string()]);
    }

    #[test]
    fn a_bad_temporary_value_is_refused_with_the_reason_and_not_kept() {
        let (_d, mut l) = layers("[sources.app]\npaths = [\"a/*.log\"]\n");
        let err = l
            .set_temporary("sources.app.break_before", parse_value("\"(unclosed\""))
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("sources.app.break_before: bad regex"),
            "{err}"
        );
        assert!(l.temporary.is_empty());
        let err = l
            .set_temporary("sources.app.colour", parse_value("blue"))
            .unwrap_err();
        assert!(err.to_string().contains("unknown key"), "{err}");
        assert!(l.temporary.is_empty());
    }

    #[test]
    fn del_hides_a_file_key_until_reload_and_removes_an_override() {
        let (_d, mut l) =
            layers("[defaults]\nmax_record_bytes = 1000\n[sources.app]\npaths = [\"a/*.log\"]\n");
        l.del_temporary("defaults.max_record_bytes").unwrap();
        let e = l.entries("defaults.max_record_bytes");
        assert_eq!(
            (e[0].value.as_str(), e[0].origin),
            ("65536", Origin::Default)
        );
        l.set_temporary("defaults.max_record_bytes", parse_value("2000"))
            .unwrap();
        l.del_temporary("defaults.max_record_bytes").unwrap();
        assert_eq!(
            l.entries("defaults.max_record_bytes")[0].origin,
            Origin::File
        );
        // A table goes as a whole; what is set nowhere (a default, a typo) is refused by name.
        l.del_temporary("sources.app").unwrap();
        for missing in [
            "defaults.max_line_bytes",
            "sources.app",
            "discovery.rotate_wait",
        ] {
            let err = l.del_temporary(missing).unwrap_err().to_string();
            assert!(
                err.contains(missing) && err.contains("nothing to delete"),
                "{err}"
            );
        }
    }

    /// A table set for now replaces the file's: its keys showed as `file` (or `pack`), so the
    /// operator could not tell the next reload would drop them (found by a probe).
    #[test]
    fn the_keys_of_a_table_set_for_now_are_temporary() {
        let (_d, mut l) =
            layers("[sources.app]\npaths = [\"a/*.log\"]\n[sink]\ntype = \"stdout\"\n");
        l.set_temporary(
            "sink",
            parse_value("{type = \"file\", path = \"/tmp/x.ndjson\"}"),
        )
        .unwrap();
        let e = l.entries("sink");
        let of = |k: &str| e.iter().find(|e| e.key == k).map(|e| e.origin);
        assert_eq!(of("sink.type"), Some(Origin::Temporary));
        assert_eq!(of("sink.path"), Some(Origin::Temporary));
        assert_eq!(l.entries("sources.app.paths")[0].origin, Origin::File);
    }

    /// A config with a syslog source, transforms and sinks of every type, each with one key
    /// set; everything else is its type's default.
    const TYPED: &str = r#"
[sources.net]
type = "syslog"
listen = ["udp://127.0.0.1:5514"]
max_connections = 10
transforms = ["lu"]
[transforms.lu]
type = "lua"
source = 'function process(r) return r end'
time_limit = "2s"
[transforms.j]
type = "json"
[transforms.re]
type = "regex"
pattern = '(?P<a>\S+)'
[sinks.f]
type = "file"
path = "out.ndjson"
[sinks.o]
type = "stdout"
[sinks.c]
type = "collector"
url = "https://collector.example"
[sinks.s]
type = "syslog"
address = "relay:514"
tls = false
"#;

    #[test]
    fn syslog_sources_transforms_and_sinks_show_their_defaults() {
        let (d, l) = layers(TYPED);
        let e = l.entries("");
        use Origin::{Default, File};
        is_in(&e, "sources.net.max_connections", "10", File);
        is_in(&e, "sources.net.max_message_bytes", "65536", Default);
        is_in(&e, "sources.net.spool_max_bytes", "1073741824", Default);
        // A syslog source inherits none of [defaults].
        assert!(!e.iter().any(|x| x.key == "sources.net.max_record_bytes"));
        is_in(&e, "transforms.lu.time_limit", "\"2s\"", File);
        is_in(&e, "transforms.lu.function", "\"process\"", Default);
        is_in(&e, "transforms.lu.memory_limit", "67108864", Default);
        is_in(&e, "transforms.lu.instruction_limit", "1000000", Default);
        // Types without defaults add nothing.
        assert_eq!(l.entries("transforms.j").len(), 1);
        assert_eq!(l.entries("transforms.re").len(), 2);
        is_in(&e, "sinks.f.mode", "\"0600\"", Default);
        is_in(&e, "sinks.f.sync", "true", Default);
        assert_eq!(l.entries("sinks.o").len(), 1);
        is_in(&e, "sinks.c.compression", "\"auto\"", Default);
        is_in(&e, "sinks.c.timeout", "\"60s\"", Default);
        is_in(&e, "sinks.c.alert_after", "\"30s\"", Default);
        is_in(&e, "sinks.c.failback_after", "\"5m\"", Default);
        is_in(
            &e,
            "sinks.c.renew_at",
            &render(&Value::Float(2.0 / 3.0)),
            Default,
        );
        let tls = d.path().join("state/tls");
        is_in(
            &e,
            "sinks.c.ca",
            &format!("{:?}", tls.join("ca.pem").display().to_string()),
            Default,
        );
        is_in(
            &e,
            "sinks.c.key",
            &format!("{:?}", tls.join("key.pem").display().to_string()),
            Default,
        );
        is_in(&e, "sinks.s.tls", "false", File);
        is_in(&e, "sinks.s.app_name", "\"log-sensor\"", Default);
        is_in(&e, "sinks.s.facility", "\"user\"", Default);
        is_in(&e, "sinks.s.structured_data", "\"full\"", Default);
        // [sinks.*] replaces [sink]: no default [sink] shows beside them.
        assert!(l.entries("sink").is_empty(), "{:?}", l.entries("sink"));

        let (_d, l) = layers("[sink]\ntype = \"file\"\npath = \"out\"\n");
        let e = l.entries("sink");
        is_in(&e, "sink.mode", "\"0600\"", Default);
        is_in(&e, "sink.type", "\"file\"", File);
        let (_d, l) = layers("");
        assert_eq!(
            l.entries("sink").len(),
            1,
            "the default stdout sink has only its type"
        );
    }

    fn is_in(e: &[Entry], k: &str, v: &str, o: Origin) {
        let x = find(e, k);
        assert_eq!((x.value.as_str(), x.origin), (v, o), "{k}");
    }

    #[test]
    fn every_default_shown_is_a_key_its_parser_takes_at_that_value() {
        let (_d, mut l) = layers(TYPED);
        let before = format!("{:?}", l.resolve().unwrap());
        let defaults: Vec<Entry> = l
            .entries("")
            .into_iter()
            .filter(|e| e.origin == Origin::Default && e.key != "host_id")
            .collect();
        assert!(defaults.iter().any(|e| e.key == "sinks.c.renew_at"));
        for e in &defaults {
            l.set_temporary(&e.key, parse_value(&e.value))
                .unwrap_or_else(|err| panic!("{} = {}: {err}", e.key, e.value));
        }
        // Written out, the defaults make the same config.
        assert_eq!(format!("{:?}", l.resolve().unwrap()), before);
    }

    #[test]
    fn a_missing_pack_names_its_entry() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("agent.toml"), "packs = [\"nope\"]\n").unwrap();
        let err = Layers::load(&dir.path().join("agent.toml")).unwrap_err();
        assert!(
            err.to_string().contains("packs[0]") && err.to_string().contains("nope"),
            "{err}"
        );
    }
}
