//! The few facts the extension needs from the agent's TOML config: where it is, `host_id`,
//! `state_dir` and the packs. The agent validates the rest; a config that cannot be read is
//! reported and replaced by defaults, because an extension that refuses to start would take the
//! logger plugin away from osqueryd.

use log_sensor_common::packs::{self, Pack};
use log_sensor_common::{state_dir, template, toml_head};
use std::path::{Path, PathBuf};

/// Where the config is looked up when neither `--config` nor the environment names it, and that
/// environment variable: the agent's own.
pub use log_sensor_common::agent_defaults::{CONFIG_ENV, CONFIG_PATH as DEFAULT_CONFIG_PATH};

/// The agent config as the extension sees it.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// The file we looked at (it may not exist).
    pub path: PathBuf,
    /// The parsed file; `None` when missing or unreadable.
    pub table: Option<toml::Table>,
    /// Why the file could not be used, for the log and for `log_sensor_config` readers.
    pub problem: Option<String>,
    /// `host_id`, expanded; the host name by default.
    pub host_id: String,
    /// `state_dir`, resolved against the config's folder.
    pub state_dir: PathBuf,
}

/// `--config PATH`, else `$LOG_SENSOR_CONFIG`, else the default path.
pub fn locate(cli: Option<&Path>) -> PathBuf {
    if let Some(p) = cli {
        return p.to_path_buf();
    }
    match std::env::var_os(CONFIG_ENV) {
        Some(v) if !v.is_empty() => PathBuf::from(v),
        _ => PathBuf::from(DEFAULT_CONFIG_PATH),
    }
}

impl AgentConfig {
    pub fn load(path: &Path) -> AgentConfig {
        // A `.j2` config is rendered first, as the agent renders it: its raw text is no TOML.
        let text = if template::is_template(path) {
            template::render_file(path).map_err(|e| e.to_string())
        } else {
            std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read {}: {e}", path.display()))
        };
        let (table, mut problem) = match &text {
            Ok(text) => match text.parse::<toml::Table>() {
                Ok(t) => (Some(t), None),
                Err(e) => (None, Some(format!("cannot parse {}: {e}", path.display()))),
            },
            Err(e) => (None, Some(e.clone())),
        };
        // A file that does not parse still says where the agent keeps its state: the agent
        // started before the bad edit, and its CLI finds it through these top-level lines, so
        // the extension must too, or its tables would read an empty store and its logger write
        // an outbox no agent ships.
        let top = |key: &str| -> Option<toml::Value> {
            match (&table, &text) {
                (Some(t), _) => t.get(key).cloned(),
                (None, Ok(text)) => match toml_head::top_level(text, key) {
                    toml_head::TopLevel::Found(v) => Some(v),
                    _ => None,
                },
                (None, Err(_)) => None,
            }
        };
        let mut host_id = hostname();
        let mut state_dir = String::from(log_sensor_common::agent_defaults::STATE_DIR);
        {
            for (key, slot) in [("host_id", &mut host_id), ("state_dir", &mut state_dir)] {
                match top(key).as_ref() {
                    Some(toml::Value::String(s)) => match expand(s) {
                        Ok(v) => *slot = v,
                        Err(e) => problem = Some(format!("{} key {key}: {e}", path.display())),
                    },
                    Some(other) => {
                        problem = Some(format!(
                            "{} key {key}: expected a string, found {}",
                            path.display(),
                            other.type_str()
                        ))
                    }
                    None => {}
                }
            }
        }
        AgentConfig {
            path: path.to_path_buf(),
            state_dir: resolve(path, Path::new(&state_dir)),
            table,
            problem,
            host_id,
        }
    }

    /// The folder relative paths in the config are taken against.
    pub fn base_dir(&self) -> PathBuf {
        config_dir(&self.path)
    }

    pub fn store_path(&self) -> PathBuf {
        state_dir::store(&self.state_dir)
    }

    pub fn outbox_path(&self) -> PathBuf {
        state_dir::osquery_outbox(&self.state_dir)
    }

    pub fn control_socket(&self) -> PathBuf {
        state_dir::control_socket(&self.state_dir)
    }

    /// String arrays such as `packs` and `pack_dirs`, expanded.
    fn strings(&self, key: &str) -> Vec<String> {
        match self.table.as_ref().and_then(|t| t.get(key)) {
            Some(toml::Value::Array(a)) => a
                .iter()
                .filter_map(|v| v.as_str())
                .filter_map(|s| expand(s).ok())
                .collect(),
            _ => Vec::new(),
        }
    }

    /// The pack folders: `pack_dirs`, default `<config dir>/packs`.
    pub fn pack_dirs(&self) -> Vec<PathBuf> {
        let mut dirs: Vec<PathBuf> = self
            .strings("pack_dirs")
            .iter()
            .map(|d| resolve(&self.path, Path::new(d)))
            .collect();
        if dirs.is_empty() {
            dirs.push(self.base_dir().join("packs"));
        }
        dirs
    }

    /// The packs the agent has enabled (`packs`), found as the agent finds them: a name in the
    /// pack folders, a path relative to the config's folder; one that does not exist is left
    /// out (the agent refuses such a config, and names the entry).
    pub fn enabled_pack_files(&self) -> Vec<PathBuf> {
        let (dirs, base) = (self.pack_dirs(), self.base_dir());
        self.strings("packs")
            .iter()
            .filter_map(|entry| packs::find_pack(entry, &dirs, &base))
            .collect()
    }

    /// Pack files the extension reads `log_sensor.queue_queries` from: every `*.json` in the
    /// pack folders plus the enabled packs. Only packs osquery actually schedules matter: the
    /// schedule is matched later.
    pub fn pack_files(&self) -> Vec<PathBuf> {
        let mut files = Vec::new();
        for d in &self.pack_dirs() {
            if let Ok(rd) = std::fs::read_dir(d) {
                let mut found: Vec<PathBuf> = rd
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| p.extension().is_some_and(|x| x == "json"))
                    .collect();
                found.sort();
                files.extend(found);
            }
        }
        for p in self.enabled_pack_files() {
            if !files.contains(&p) {
                files.push(p);
            }
        }
        files
    }
}

/// The agent sources a pack switches on (`log_sensor.sources`) on this host, placed as the
/// agent places them (platform, `when`, templates rendered with the `vars.toml` beside
/// `config_path`), as dotted keys `sources.<name>.<key>` with values shown like the config
/// file's. A pack that does not apply here switches nothing on.
pub fn pack_sources(pack: &Path, config_path: &Path) -> Result<Vec<(String, String)>, String> {
    let ctx = template::Context::for_template(config_path).map_err(|e| e.to_string())?;
    let placed = Pack::read(pack)?.place(&ctx)?;
    let mut out = Vec::new();
    if placed.refused.is_none() {
        flatten_into("sources", &placed.sources, &mut out);
    }
    Ok(out)
}

fn config_dir(config_path: &Path) -> PathBuf {
    match config_path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Relative paths in the config are relative to the config file's folder.
pub fn resolve(config_path: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        config_dir(config_path).join(p)
    }
}

/// `${hostname}` and `${env:NAME}` exactly as the agent expands them.
pub use log_sensor_common::expand::{expand, hostname};

/// Flattens a TOML table into dotted keys; arrays and arrays of tables become JSON text, strings
/// are expanded as the agent expands them (an unexpandable one is shown as written).
pub fn flatten(table: &toml::Table) -> Vec<(String, String)> {
    let mut out = Vec::new();
    flatten_into("", table, &mut out);
    out
}

fn flatten_into(prefix: &str, table: &toml::Table, out: &mut Vec<(String, String)>) {
    for (k, v) in table {
        let key = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        match v {
            toml::Value::Table(t) => flatten_into(&key, t, out),
            toml::Value::String(s) => out.push((key, expand(s).unwrap_or_else(|_| s.clone()))),
            toml::Value::Array(_) => out.push((key, to_json(v, true).to_string())),
            other => out.push((key, other.to_string())),
        }
    }
}

/// A value as the agent's control socket sends it (TOML text: `65536`, `"text"`, `["a", "b"]`)
/// shown the way `flatten` shows the file's values — strings bare, arrays and tables as JSON —
/// so `log_sensor_config.value` means the same whether the agent or the file answered. The agent
/// has already expanded its strings, so nothing is expanded again. Text that is not TOML is
/// shown as sent.
pub fn show_toml_text(text: &str) -> String {
    match format!("v = {text}").parse::<toml::Table>() {
        Ok(mut t) => match t.remove("v") {
            Some(toml::Value::String(s)) => s,
            Some(v @ (toml::Value::Array(_) | toml::Value::Table(_))) => {
                to_json(&v, false).to_string()
            }
            Some(other) => other.to_string(),
            None => text.to_string(),
        },
        Err(_) => text.to_string(),
    }
}

/// `expand_strings`: whether `${…}` in strings is expanded (the file's raw values) or kept (values the
/// agent already expanded).
fn to_json(v: &toml::Value, expand_strings: bool) -> serde_json::Value {
    use serde_json::Value as J;
    let j = |v: &toml::Value| to_json(v, expand_strings);
    match v {
        toml::Value::String(s) if expand_strings => {
            J::String(expand(s).unwrap_or_else(|_| s.clone()))
        }
        toml::Value::String(s) => J::String(s.clone()),
        toml::Value::Integer(i) => J::from(*i),
        toml::Value::Float(f) => J::from(*f),
        toml::Value::Boolean(b) => J::Bool(*b),
        toml::Value::Datetime(d) => J::String(d.to_string()),
        toml::Value::Array(a) => J::Array(a.iter().map(j).collect()),
        toml::Value::Table(t) => J::Object(t.iter().map(|(k, v)| (k.clone(), j(v))).collect()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flattens_nested_tables_and_arrays() {
        let t: toml::Table = r#"
            host_id = "h1"
            [defaults]
            max_record_bytes = 100
            [sources.app]
            paths = ["a/*.log", "b"]
            break_before = '^\d'
        "#
        .parse()
        .unwrap();
        let flat = flatten(&t);
        assert!(flat.contains(&("host_id".into(), "h1".into())));
        assert!(flat.contains(&("defaults.max_record_bytes".into(), "100".into())));
        assert!(flat.contains(&("sources.app.paths".into(), r#"["a/*.log","b"]"#.into())));
        assert!(flat.contains(&("sources.app.break_before".into(), r"^\d".into())));
    }

    #[test]
    fn a_config_that_does_not_parse_still_gives_its_state_dir_and_host_id() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.toml");
        std::fs::write(
            &path,
            "host_id = \"agent-1\"\nstate_dir = \"/var/lib/elsewhere\"\n[sources.a]\npaths = [\"x\"]\noops = \n",
        )
        .unwrap();
        let c = AgentConfig::load(&path);
        assert!(
            c.problem.as_deref().unwrap().contains("cannot parse"),
            "{c:?}"
        );
        assert!(c.table.is_none());
        assert_eq!(c.state_dir, Path::new("/var/lib/elsewhere"));
        assert_eq!(c.host_id, "agent-1");
        assert_eq!(
            c.outbox_path(),
            state_dir::osquery_outbox(Path::new("/var/lib/elsewhere"))
        );
    }

    #[test]
    fn agent_values_show_like_file_values() {
        assert_eq!(show_toml_text("65536"), "65536");
        assert_eq!(show_toml_text("true"), "true");
        assert_eq!(show_toml_text(r#""state""#), "state");
        assert_eq!(show_toml_text(r#""\n""#), "\n");
        assert_eq!(show_toml_text(r#""^\\d{4}""#), r"^\d{4}");
        assert_eq!(
            show_toml_text(r#"["logs/*.log", "b"]"#),
            r#"["logs/*.log","b"]"#
        );
        assert_eq!(show_toml_text(r#""${hostname}""#), "${hostname}");
        assert_eq!(show_toml_text("not toml ["), "not toml [");
    }

    #[test]
    fn a_bad_variable_reads_as_the_agent_reports_it() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(&p, "host_id = \"${nope}\"\n").unwrap();
        let problem = AgentConfig::load(&p).problem.unwrap();
        // The agent's own words, list of known variables included.
        assert!(
            problem.contains("key host_id: unknown variable ${nope}")
                && problem.contains("(known: ${hostname}, ${env:NAME})"),
            "{problem}"
        );
    }

    #[test]
    fn enabled_packs_are_found_as_the_agent_finds_them() {
        let dir = tempfile::tempdir().unwrap();
        let packs = dir.path().join("packs");
        std::fs::create_dir_all(&packs).unwrap();
        std::fs::write(packs.join("web.json"), "{}").unwrap();
        std::fs::write(dir.path().join("mine.json"), "{}").unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(
            &p,
            "packs = [\"web\", \"mine.json\", \"gone\", \"./gone.json\"]\n",
        )
        .unwrap();
        // A path to no file is no pack, as a name in no folder is not (the agent refuses both).
        assert_eq!(
            AgentConfig::load(&p).enabled_pack_files(),
            [packs.join("web.json"), dir.path().join("mine.json")]
        );
    }

    #[test]
    fn state_dir_is_relative_to_the_config_folder() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(&p, "state_dir = \"st\"\nhost_id = \"x-${hostname}\"\n").unwrap();
        let c = AgentConfig::load(&p);
        assert_eq!(c.state_dir, dir.path().join("st"));
        assert_eq!(c.host_id, format!("x-{}", hostname()));
        assert!(c.problem.is_none());
    }

    /// A `.j2` config names its state dir (and so the store and the outbox) only once rendered:
    /// read raw, the extension would have written the outbox where no agent reads it.
    #[test]
    fn a_template_config_is_rendered_as_the_agent_renders_it() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("vars.toml"), "site = \"paris\"\n").unwrap();
        let p = dir.path().join("agent.toml.j2");
        std::fs::write(
            &p,
            "state_dir = \"st-{{ vars.site }}\"\nhost_id = \"{{ host.hostname }}-{{ vars.site }}\"\n",
        )
        .unwrap();
        let c = AgentConfig::load(&p);
        assert!(c.problem.is_none(), "{:?}", c.problem);
        assert_eq!(c.state_dir, dir.path().join("st-paris"));
        assert_eq!(c.host_id, format!("{}-paris", hostname()));
        std::fs::write(&p, "state_dir = \"{{ vars.nope }}\"\n").unwrap();
        let problem = AgentConfig::load(&p).problem.unwrap();
        assert!(problem.contains("agent.toml.j2 line 1"), "{problem}");
    }

    /// A pack's sources show as the agent places them on this host: templates rendered, sources
    /// whose `when` is false left out, placement keys gone, `name` honoured.
    #[test]
    fn pack_sources_are_placed_as_the_agent_places_them() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("vars.toml"), "logs = \"/srv/logs\"\n").unwrap();
        let config = dir.path().join("agent.toml");
        let pack = dir.path().join("web.json");
        std::fs::write(
            &pack,
            r#"{"log_sensor": {"sources": {
                "web_a": {"name": "web", "when": "true", "paths": ["{{ vars.logs }}/a.log"]},
                "never": {"when": "false", "paths": ["/x"]}
            }}}"#,
        )
        .unwrap();
        assert_eq!(
            pack_sources(&pack, &config).unwrap(),
            [(
                "sources.web.paths".to_string(),
                r#"["/srv/logs/a.log"]"#.to_string()
            )]
        );
        std::fs::write(
            &pack,
            r#"{"platform": "windows", "log_sensor": {"sources": {"w": {"paths": ["c"]}}}}"#,
        )
        .unwrap();
        assert!(
            pack_sources(&pack, &config).unwrap().is_empty(),
            "not on this host"
        );
    }
}
