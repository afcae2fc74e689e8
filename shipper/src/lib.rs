//! log-sensor: tails log files into a SQLite offset store and ships every record at least once.
//!
//! The modules follow the data path:
//! - [`config`]: TOML (or a `.j2` template of it, [`config::template`]) → a validated
//!   [`config::Config`], every error at once with its key; packs and where they apply in
//!   [`config::packs`].
//! - [`discover`]: globs, scans and inotify wake-ups find the files (the scan is the truth).
//! - [`fingerprint`]: a stream's identity from the hash of its head (gzip decompressed first).
//! - [`read`]: opening a file at an offset, plain or gzip, and checking the bytes before it.
//! - [`frame`]: delimiters, multiline joins, head/tail of over-long records.
//! - [`input`]: inputs other than the tailer; [`input::syslog`] receives syslog from the
//!   network into a spool in the state dir.
//! - [`tail`]: the loop that follows every stream through rotation and truncation.
//! - [`batch`] and [`record`]: records gathered for a sink and their wire format.
//! - [`sink`]: where batches go; one file per kind.
//! - [`store`]: the SQLite store, the only code that touches the database.
//! - [`agent`]: wires the threads together: tail → batches → sink → acknowledgement → commit.
//! - [`commit`]: acknowledged offsets into the store; a refused commit is owed and retried.
//! - [`tls`] and [`enroll`]: rustls setup, and the identity `log-sensor enroll` obtains.
//! - [`query`]: read-only SQL over the store for `log-sensor query`.

pub mod agent;
pub mod batch;
pub mod config;
pub mod control;
pub mod discover;
pub mod enroll;
pub mod fingerprint;
pub mod frame;
pub mod input;
pub mod monitor;
pub mod pipeline;
pub mod query;
pub mod read;
pub mod record;
pub mod signals;
pub mod sink;
pub mod status;
pub mod store;
pub mod tail;
pub mod tls;
pub mod transform;
