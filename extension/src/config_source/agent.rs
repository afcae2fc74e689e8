//! The running agent, asked through its control socket: what it really runs with (including
//! temporary overrides and what each source inherits), and the only place a temporary override
//! can be set or dropped.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::{ConfigEntry, ConfigSource, Refused};
use crate::agent_config::show_toml_text;
use crate::agent_socket::{AgentClient, AgentSocketError, Request, Response, Timeouts};

/// Why the agent's values could not be read; the file is read instead.
#[derive(Debug, thiserror::Error)]
pub enum Unanswered {
    #[error(transparent)]
    Socket(#[from] AgentSocketError),
    #[error("the log-sensor agent on {path} refused to list its config: {error}")]
    ListRefused { path: PathBuf, error: String },
}

impl Unanswered {
    /// True when no agent is there at all (as opposed to one that misbehaves).
    pub fn is_not_running(&self) -> bool {
        matches!(
            self,
            Unanswered::Socket(AgentSocketError::NotRunning(_) | AgentSocketError::Stale(_))
        )
    }
}

pub struct AgentSource {
    /// Kept open from the `list` that proved the agent answers, so a write costs no second
    /// connect; behind a mutex because `ConfigSource` methods take `&self`.
    client: Mutex<AgentClient>,
    /// The `list` answer: what osquery's `generate` shows and how an `UPDATE`/`DELETE` rowid is
    /// turned back into its key.
    entries: Vec<ConfigEntry>,
}

impl AgentSource {
    /// Connects and asks for every effective key; any failure means "read the file instead".
    pub fn open(socket: &Path, timeouts: Timeouts) -> Result<AgentSource, Unanswered> {
        let mut client = AgentClient::connect(socket, timeouts)?;
        let resp = client.request(&Request::list_all())?;
        if !resp.ok {
            return Err(Unanswered::ListRefused {
                path: socket.to_path_buf(),
                error: reason(&resp),
            });
        }
        let mut entries: Vec<ConfigEntry> = resp
            .entries
            .unwrap_or_default()
            .into_iter()
            .map(|e| ConfigEntry {
                value: show_toml_text(&e.value),
                key: e.key,
                origin: e.origin,
            })
            .collect();
        entries.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(AgentSource {
            client: Mutex::new(client),
            entries,
        })
    }

    /// One change request; `what` words the failure ("setting KEY").
    fn change(&self, req: &Request, what: &str) -> Result<(), Refused> {
        // A poisoned lock is taken over: the client itself records whether its connection is
        // still in step (`AgentSocketError::OutOfStep`), which is all a later request needs.
        let mut client = self.client.lock().unwrap_or_else(|p| p.into_inner());
        match client.request(req) {
            Ok(resp) if resp.ok => Ok(()),
            Ok(resp) => Err(Refused(format!(
                "the log-sensor agent refused {what}: {}",
                reason(&resp)
            ))),
            // The request went out; only the agent knows whether it applied it.
            Err(e @ AgentSocketError::NoAnswer { .. }) => Err(Refused(format!(
                "{what}: {e}; the agent may still apply it (SELECT the key to see)"
            ))),
            Err(e) => Err(Refused(format!("{what}: {e}"))),
        }
    }
}

fn reason(resp: &Response) -> String {
    resp.error
        .clone()
        .unwrap_or_else(|| "it gave no reason".to_string())
}

impl ConfigSource for AgentSource {
    fn read_from(&self) -> &'static str {
        "agent"
    }

    fn entries(&self) -> Result<Vec<ConfigEntry>, String> {
        Ok(self.entries.clone())
    }

    fn set_override(&self, key: &str, value: &str) -> Result<(), Refused> {
        self.change(
            &Request::set(key, value),
            &format!("setting {key} to {value:?}"),
        )
    }

    fn drop_override(&self, key: &str) -> Result<(), Refused> {
        self.change(&Request::del(key), &format!("dropping {key}"))
    }
}
