//! The config file read directly, for when no agent answers: the file's keys, the sources its
//! enabled packs switch on, and the documented defaults. Writes are refused with the reason the
//! agent did not answer, because a temporary override only exists in a running agent.

use super::{ConfigEntry, ConfigSource, Refused, Unanswered};
use crate::agent_config::{self, AgentConfig};

pub struct FileSource {
    /// Re-read on every request, so an edited file shows at once.
    config: AgentConfig,
    /// Why the agent was not asked; every refused write says it.
    agent: Unanswered,
}

impl FileSource {
    pub fn new(config: AgentConfig, agent: Unanswered) -> FileSource {
        FileSource { config, agent }
    }

    fn refusal(&self, what: &str) -> Refused {
        Refused(format!(
            "{what} needs the running log-sensor agent: {}; the values shown come from {}",
            self.agent,
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
                    origin: "file".into(),
                })
                .collect(),
            None => Vec::new(),
        };
        // Sources switched on by the enabled packs, unless the file sets the same key.
        for pack in self.config.enabled_pack_files() {
            match agent_config::pack_sources(&pack, &self.config.path) {
                Ok(entries) => {
                    for (key, value) in entries {
                        if !out.iter().any(|e| e.key == key) {
                            out.push(ConfigEntry {
                                key,
                                value,
                                origin: "pack".into(),
                            });
                        }
                    }
                }
                Err(e) => tracing::warn!("{e}"),
            }
        }
        let defaults = std::iter::once(("host_id", agent_config::hostname()))
            // The agent's defaults, shown with origin `default` for the keys the file does not set.
            .chain(log_sensor_common::agent_defaults::documented());
        for (key, value) in defaults {
            if !out.iter().any(|e| e.key == key) {
                out.push(ConfigEntry {
                    key: key.to_string(),
                    value,
                    origin: "default".into(),
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
