//! Where `log_sensor_config` gets its values and sends its writes.
//!
//! Today there is one source, the config file (no agent to ask). The agent's control socket
//! (`<state_dir>/control.sock`, the issue "Operating the agent") will be a second
//! `ConfigSource` in its own module; `select` is the one place that chooses between them.

use std::path::PathBuf;

use crate::agent_config::{self, AgentConfig, DOCUMENTED_DEFAULTS};

/// One effective config value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigEntry {
    pub key: String,
    pub value: String,
    /// `default`, `file`, `pack` or `temporary`.
    pub origin: &'static str,
}

/// A write the source refused, in words for the `failure` reply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Refused(pub String);

/// A provider of config values and temporary overrides.
pub trait ConfigSource {
    /// What the `read_from` column says: `agent` or `config_file`.
    fn read_from(&self) -> &'static str;
    /// Every effective key, sorted by key.
    fn entries(&self) -> Result<Vec<ConfigEntry>, String>;
    /// `UPDATE` / `INSERT`: a temporary override in the running agent.
    fn set_override(&self, key: &str, value: &str) -> Result<(), Refused>;
    /// `DELETE`: drops a temporary override.
    fn drop_override(&self, key: &str) -> Result<(), Refused>;
}

/// Picks the source for one request. The control-socket client will be chosen here when the
/// socket answers; until then the file is read and writes are refused with the reason.
pub fn select(config: &AgentConfig) -> Box<dyn ConfigSource> {
    Box::new(FileSource {
        config: AgentConfig::load(&config.path),
    })
}

/// The config file read directly, for when no agent answers.
pub struct FileSource {
    /// Re-read on every request, so an edited file shows at once.
    config: AgentConfig,
}

impl FileSource {
    fn refusal(&self, what: &str) -> Refused {
        let sock: PathBuf = self.config.control_socket();
        let why = if sock.exists() {
            format!(
                "this extension version cannot talk to the agent's control socket {}",
                sock.display()
            )
        } else {
            format!(
                "no log-sensor agent is running (no control socket at {})",
                sock.display()
            )
        };
        Refused(format!(
            "{what} needs the running log-sensor agent: {why}; the values shown come from {}",
            self.config.path.display()
        ))
    }
}

impl ConfigSource for FileSource {
    fn read_from(&self) -> &'static str {
        "config_file"
    }

    fn entries(&self) -> Result<Vec<ConfigEntry>, String> {
        let mut out: Vec<ConfigEntry> = match &self.config.table {
            Some(t) => agent_config::flatten(t)
                .into_iter()
                .map(|(key, value)| ConfigEntry {
                    key,
                    value,
                    origin: "file",
                })
                .collect(),
            None => Vec::new(),
        };
        // Sources switched on by the enabled packs, unless the file sets the same key.
        for pack in self.config.enabled_pack_files() {
            match agent_config::pack_sources(&pack) {
                Ok(entries) => {
                    for (key, value) in entries {
                        if !out.iter().any(|e| e.key == key) {
                            out.push(ConfigEntry {
                                key,
                                value,
                                origin: "pack",
                            });
                        }
                    }
                }
                Err(e) => tracing::warn!("{e}"),
            }
        }
        let defaults = std::iter::once(("host_id", agent_config::hostname()))
            .chain(DOCUMENTED_DEFAULTS.iter().map(|(k, v)| (*k, v.to_string())));
        for (key, value) in defaults {
            if !out.iter().any(|e| e.key == key) {
                out.push(ConfigEntry {
                    key: key.to_string(),
                    value,
                    origin: "default",
                });
            }
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    fn set_override(&self, key: &str, _value: &str) -> Result<(), Refused> {
        Err(self.refusal(&format!("setting {key}")))
    }

    fn drop_override(&self, key: &str) -> Result<(), Refused> {
        Err(self.refusal(&format!("dropping the override of {key}")))
    }
}
