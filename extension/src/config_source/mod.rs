//! Where `log_sensor_config` gets its values and sends its writes: the running agent through
//! its control socket (`agent`), else the config file read directly (`file`). `select` is the
//! one place that chooses between them, once per table request.

pub mod agent;
pub mod file;

use crate::agent_config::AgentConfig;
use crate::agent_socket::Timeouts;
pub use agent::{AgentSource, Unanswered};
pub use file::FileSource;

/// One effective config value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigEntry {
    pub key: String,
    /// Shown as the file shows it: strings bare, arrays and tables as JSON.
    pub value: String,
    /// `default`, `file`, `pack` or `temporary`; owned because the agent names it, and an
    /// origin a newer agent adds is shown rather than refused.
    pub origin: String,
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

/// Picks the source for one request: the agent when its control socket answers a `list` within
/// `timeouts`, else the file (which refuses writes, saying why the agent did not answer).
///
/// The config file is read again each time, as the agent's own CLI does: an edited file shows
/// at once, and the socket is looked for in the state dir the file names now.
pub fn select(config: &AgentConfig, timeouts: Timeouts) -> Box<dyn ConfigSource> {
    let config = AgentConfig::load(&config.path);
    match AgentSource::open(&config.control_socket(), timeouts) {
        Ok(agent) => {
            answered();
            Box::new(agent)
        }
        Err(why) => {
            // No agent is an ordinary state (osquery may run without one); an agent that is
            // there but does not answer properly is worth a warning, once for as long as the
            // reason stays the same: every query of the table comes here, and a pack querying
            // it every few seconds made a line each time.
            let text = why.to_string();
            if why.is_not_running() {
                tracing::debug!("log_sensor_config reads the config file: {text}");
            } else if first_time(&text) {
                tracing::warn!(
                    "log_sensor_config reads the config file: {text} (said once until the \
                     reason changes or the agent answers)"
                );
            }
            Box::new(FileSource::new(config, why))
        }
    }
}

/// The reason last warned about, so that a lasting one is said once.
static LAST_WARNING: std::sync::Mutex<Option<String>> = std::sync::Mutex::new(None);

/// Whether `reason` differs from the last one warned about (and is now that one).
fn first_time(reason: &str) -> bool {
    let mut last = LAST_WARNING.lock().unwrap_or_else(|p| p.into_inner());
    if last.as_deref() == Some(reason) {
        return false;
    }
    *last = Some(reason.to_string());
    true
}

/// The agent answered: the next failure is worth a warning again.
fn answered() {
    *LAST_WARNING.lock().unwrap_or_else(|p| p.into_inner()) = None;
}

#[cfg(test)]
mod tests {
    use super::{answered, first_time};

    #[test]
    fn a_lasting_reason_is_warned_about_once() {
        assert!(first_time("permission denied"));
        assert!(!first_time("permission denied"));
        assert!(first_time("did not answer"));
        assert!(first_time("permission denied"));
        answered();
        assert!(first_time("permission denied"));
    }
}
