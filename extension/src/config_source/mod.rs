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
        Ok(agent) => Box::new(agent),
        Err(why) => {
            // No agent is an ordinary state (osquery may run without one); an agent that is
            // there but does not answer properly is worth a warning.
            if why.is_not_running() {
                tracing::debug!("log_sensor_config reads the config file: {why}");
            } else {
                tracing::warn!("log_sensor_config reads the config file: {why}");
            }
            Box::new(FileSource::new(config, why))
        }
    }
}
