//! log-sensor: tails log files (and takes what osquery logged) into batches for a sink, and
//! commits each stream's position in a SQLite store only once the sink has acknowledged it.
//!
//! The modules follow the data path, the wiring at the top:
//! - [`agent`]: the wiring: a pipeline per group of sources routed to the same sinks, a thread
//!   per sink, the control socket, the config watch and the monitor.
//! - [`pipeline`]: one thread owns the batch being built and gives every input its turn; when a
//!   batch is handed over; a sink's thread ([`pipeline::ship`]); a group's shipping side, which
//!   commits a batch once every sink of the group acknowledged it ([`pipeline::fanout`]); the
//!   committer that gives acknowledgements back ([`pipeline::commit`]).
//! - [`input`]: the [`input::Input`] trait every input implements, the osquery outbox as one
//!   ([`input::osquery`]) and the syslog server ([`input::syslog`]: network listeners into a
//!   spool per listener in the state dir, read back as streams); [`tail`]: the file tailer,
//!   the input that follows every stream
//!   through rotation and truncation; [`discover`]: globs, scans and inotify wake-ups find the
//!   files (the scan is the truth).
//! - [`transform`]: the per-source chain every record passes on its way into a batch: the
//!   parsers (json, logfmt, regex, syslog, cri, docker), Lua scripts ([`transform::lua`], run
//!   in the sandbox [`config::lua::sandbox`] loads them into), and the builder that makes the
//!   chains from the config ([`transform::build`]).
//! - [`batch`]: records gathered for a sink, the [`batch::Intake`] that is the only way in, and
//!   the acknowledgement each stream slot carries back to its input ([`batch::Ack`]).
//! - [`file`]: a log file on disk: its identity from the hash of its head ([`file::head`]) and
//!   opening it at an offset, plain or gzip ([`file::open`]); [`frame`]: delimiters, multiline
//!   joins, head/tail of over-long records; [`record`]: the NDJSON record format.
//! - [`sink`]: where batches go, one file per kind; each sink says which encoding it wants.
//! - [`store`]: the SQLite store, the only code that touches `store.db`.
//! - [`status`]: a leaf: the counters the pipeline reports into, and the status built from them
//!   and the store; [`monitor`] and [`control`] serve it.
//! - [`config`]: TOML (or a `.j2` template of it, [`config::template`]) → a validated
//!   [`config::Config`], every error at once with its key; packs in [`config::packs`]; which
//!   source goes to which sinks in [`config::routes`]. The
//!   bottom layer: plain data and its validation, importing no other module (each sink's
//!   options are here, so `sink` imports `config`, never the reverse).
//! - [`tls`] and [`enroll`]: rustls setup, and the identity `log-sensor enroll` obtains;
//!   [`identity`]: the client key and its CSR, made by enrolment and asked again at renewal.
//! - [`http`]: the blocking HTTP/1.1 client over TLS that the collector sink and `enroll` use;
//!   [`net`]: what every client connection shares (first address that answers, TLS goodbyes).
//! - [`query`]: presents `log-sensor query`'s rows; the read-only SQL runs in [`store::query`].
//!   [`signals`]: SIGTERM and SIGINT into the agent's stop flag.
//!
//! On the data path imports point down: agent → pipeline → input, tail → transform → batch →
//! record, frame, file → store, status → config. An input never imports the pipeline or
//! another input; a sink never imports an input. What the three crates share (record format,
//! wire types, state-dir names, PEM and atomic writes) is in the `log-sensor-common` crate.
//! `tests/module_graph.rs` fails on any import cycle between these modules.

pub mod agent;
pub mod batch;
pub mod config;
pub mod control;
pub mod discover;
pub mod enroll;
pub mod file;
pub mod frame;
pub mod http;
pub mod identity;
pub mod input;
pub mod monitor;
pub mod net;
pub mod pipeline;
pub mod query;
pub mod record;
pub mod signals;
pub mod sink;
pub mod status;
pub mod store;
pub mod tail;
pub mod tls;
pub mod transform;
