//! How the CLI reaches the running agent: where its control socket is, even when the config file
//! no longer parses (the agent keeps running on its last good config, and the operator must still
//! see and stop it); asking it, waiting a turn while the socket is busy; and the exit codes that
//! tell "not running" from "not allowed to know".

use anyhow::bail;
use log_sensor::config::{Config, ConfigError};
use log_sensor::control::{self, ClientError, Request, Response};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// LSB's "program is not running" exit code for status.
pub const EXIT_NOT_RUNNING: u8 = 3;
/// LSB's "user had insufficient privilege" (for status: "status unknown", which is what another
/// user refused by the socket's 0600 knows). Anything else failing exits 1.
pub const EXIT_NO_PERMISSION: u8 = 4;
/// How long a call waits for a turn on a busy socket. The agent cuts idle connections after
/// `control::server::IDLE_TIMEOUT`, so a turn comes well within this unless clients keep every
/// slot working.
const BUSY_PATIENCE: Duration = Duration::from_secs(30);
const BUSY_RETRY: Duration = Duration::from_millis(250);

/// Where the agent of a config file is, and that file's config when it is valid.
pub struct Agent {
    pub state_dir: PathBuf,
    pub config: Result<Config, ConfigError>,
}

impl Agent {
    /// The agent of the file at `path`. An invalid file still gives the state dir when its
    /// `state_dir` line can be read (see `Config::state_dir_lenient`); otherwise its error.
    ///
    /// Read from the file rather than from a record the agent leaves somewhere: the packaged
    /// unit lets the agent write only its state dir. `state_dir` cannot change while the agent
    /// runs, but the file can be edited under it: `stop` and `status` then also look for an
    /// agent running with this file (`log_sensor::agent::peers`), and `run` refuses to start
    /// beside one.
    pub fn locate(path: &Path) -> Result<Agent, ConfigError> {
        match Config::load(path) {
            Ok(cfg) => Ok(Agent::of(cfg)),
            Err(e) => match Config::state_dir_lenient(path) {
                Some(state_dir) => Ok(Agent {
                    state_dir,
                    config: Err(e),
                }),
                None => Err(e),
            },
        }
    }

    pub fn of(cfg: Config) -> Agent {
        Agent {
            state_dir: cfg.state_dir.clone(),
            config: Ok(cfg),
        }
    }

    /// Says on stderr that the file is invalid and what is done anyway.
    pub fn warn_if_invalid(&self) {
        if let Err(e) = &self.config {
            eprintln!("log-sensor: warning: {e}");
            eprintln!(
                "log-sensor: warning: the file is not used; a running agent keeps its last good \
                 config (asking the agent in {})",
                self.state_dir.display()
            );
        }
    }

    /// One request; a busy socket is retried until [`BUSY_PATIENCE`], saying so once.
    pub fn call(&self, req: &Request) -> Result<Response, ClientError> {
        let deadline = Instant::now() + BUSY_PATIENCE;
        let mut said = false;
        loop {
            match control::call(&self.state_dir, req) {
                Err(ClientError::Busy { path, detail }) if Instant::now() < deadline => {
                    if !said {
                        eprintln!(
                            "log-sensor: the control socket {} is busy ({detail}); waiting up to \
                             {} s for a turn",
                            path.display(),
                            BUSY_PATIENCE.as_secs()
                        );
                        said = true;
                    }
                    std::thread::sleep(BUSY_RETRY);
                }
                other => return other,
            }
        }
    }

    /// One request; an `ok: false` answer is an error with its message.
    pub fn ask(
        &self,
        cmd: &str,
        key: Option<&str>,
        value: Option<&str>,
    ) -> anyhow::Result<Response> {
        let resp = self.call(&Request {
            cmd: cmd.into(),
            key: key.map(str::to_string),
            value: value.map(str::to_string),
        })?;
        if !resp.ok {
            bail!("{}", resp.error.unwrap_or_else(|| "refused".into()));
        }
        Ok(resp)
    }

    /// The running agent's pid; `None` only when certainly none runs. Any other failure
    /// (permission denied above all) is an error: "not running" would be a lie.
    pub fn running(&self) -> Result<Option<u32>, ClientError> {
        let req = Request {
            cmd: "status".into(),
            key: None,
            value: None,
        };
        match self.call(&req) {
            Ok(resp) => Ok(resp.status.map(|s| s.pid)),
            Err(ClientError::NotRunning(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// True when `e` says that no agent runs (and nothing worse).
pub fn is_not_running(e: &anyhow::Error) -> bool {
    matches!(
        e.downcast_ref::<ClientError>(),
        Some(ClientError::NotRunning(_))
    )
}

/// The exit code for a failed command.
pub fn exit_code(e: &anyhow::Error) -> u8 {
    let denied = e.chain().any(|c| {
        matches!(
            c.downcast_ref::<ClientError>(),
            Some(ClientError::PermissionDenied { .. })
        )
    });
    if denied {
        EXIT_NO_PERMISSION
    } else {
        1
    }
}
