//! What log-sensor's three crates (the agent `log-sensor`, `log-sensor-collector` and the
//! osquery extension) share, written once so they cannot drift apart. It depends on none of them.
//!
//! Layout, by what each module owns:
//! - [`agent_defaults`]: where the agent's config is, and the defaults an operator is shown.
//! - [`record`]: the NDJSON record format — [`record::Part`], the field names, JSON string
//!   escaping, `msg`/`msg_b64`, RFC 3339 time stamps.
//! - [`json_text`]: where a run of bytes a JSON string holds as they are ends (the agent's
//!   escaping and the collector's ingest scanner).
//! - [`enroll`]: the bodies of the collector's `/v1/enroll` and `/v1/renew`.
//! - [`control`]: the agent's control-socket lines (requests, answers, config entries).
//! - [`state_dir`]: the file names inside the agent's state dir.
//! - [`expand`]: `${hostname}` and `${env:NAME}` in config strings.
//! - [`packs`]: where a pack named in the config is found, and what it does on a host.
//! - [`template`]: `.j2` config files and pack values rendered with minijinja.
//! - [`toml_inline`]: TOML values written on one line.
//! - [`toml_head`]: a top-level key of a config file that may not parse.
//! - [`pem`]: certificates and keys from PEM files.
//! - [`fsutil`]: atomic and create-only file writes.
//! - [`clock`]: wall-clock time as unix seconds and milliseconds.
//! - [`error_text`]: an error and its causes on one line, each once.
//! - [`one_line`]: outside text kept from breaking a log or status line.

pub mod agent_defaults;
pub mod clock;
pub mod control;
pub mod enroll;
pub mod error_text;
pub mod expand;
pub mod fsutil;
pub mod json_text;
pub mod one_line;
pub mod packs;
pub mod pem;
pub mod record;
pub mod state_dir;
pub mod template;
pub mod toml_head;
pub mod toml_inline;
