//! log-sensor-collector: the server log-sensor agents ship to.
//!
//! Layout, one idea per module, in the order data flows:
//! * `config`    — the `--dir` layout and `collector.toml`.
//! * `pki`       — the CA: created at `init`, signs host CSRs.
//! * `users`     — enrolment accounts (argon2id) and password input.
//! * `db`        — the only code that touches SQLite (the embedded
//!   backend's accounts, certificates, index and alerts).
//! * `tls`       — rustls server config, the revocation-aware client
//!   verifier, a peer's identity from its certificate.
//! * `revoke`    — `revoke` in the database; the poller that lets open
//!   connections see it.
//! * `ratelimit` — failed-enrolment limits per address and per user,
//!   counting tries in flight.
//! * `renew_limit` — renewals per host within a sliding window.
//! * `verify`    — password checks bounded in number, and their memory
//!   returned after a burst.
//! * `enroll`    — `/v1/enroll` and `/v1/renew`.
//! * `ingest`    — an ingest body to a checked batch (gzip, NDJSON, host).
//! * `names`     — host and stream ids to safe file names.
//! * `storage`   — the `Store` trait: everything `serve` keeps (accounts,
//!   certificates, revocations, marks, records, alerts), and its backends:
//!   `embedded` (SQLite plus `files`: append-only per-stream files,
//!   high-water marks, crash recovery, files an operator moves away
//!   followed) and `jetstream` (a NATS cluster
//!   shared by several collectors: `batch` for records exactly once,
//!   `accounts`, `export`, `api` for the JetStream requests).
//! * `alerts`    — over-length streaks and `alerts.log`.
//! * `metrics`   — counters and their Prometheus text.
//! * `server`    — `serve(listener, shutdown)`; `connection` (limits,
//!   handshake, cutting revoked ones), `routes`, `upload` (`/v1/ingest`),
//!   `reply` (errors and bounded bodies).

pub mod alerts;
pub mod config;
pub mod db;
pub mod enroll;
pub mod ingest;
pub mod metrics;
pub mod names;
pub mod pki;
pub mod ratelimit;
pub mod renew_limit;
pub mod revoke;
pub mod server;
pub mod storage;
pub mod tls;
pub mod users;
pub mod verify;

pub use server::{serve, Server};
