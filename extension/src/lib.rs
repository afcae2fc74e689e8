//! log-sensor's osquery extension: tables over the agent's store and config, and a logger
//! plugin that never fails osqueryd.
//!
//! Layout, by what each module owns:
//! - `thrift/`: osquery's Thrift protocol on the `thrift` crate — `wire` (structs),
//!   `client` (the core's `ExtensionManager`), `server` (our `<socket>.<uuid>` socket).
//! - `plugin`: the plugin interface the server dispatches `call` to.
//! - `table/`: one file per table, plus `context` (osquery's query context) and `mod`
//!   (columns, routes, the writable-table protocol).
//! - `logger/`: the `log_sensor` logger — `outbox` (durable bounded queue), `heartbeat`
//!   (queue-query heartbeats), `calendar` (osquery's time formats).
//! - `agent_config`: the few agent config facts we need; `agent_socket`: the client for the
//!   agent's control socket (bounded waits); `config_source/`: where `log_sensor_config` reads
//!   and writes — `agent` (the running agent) or `file` (no agent answered).
//! - `store`: read-only access to the agent's store.
//! - `extension`: startup, registration, the manager watcher and shutdown.
//! - `shutdown`: the shared stop signal.

pub mod agent_config;
pub mod agent_socket;
pub mod config_source;
pub mod extension;
pub mod logger;
pub mod plugin;
pub mod shutdown;
pub mod store;
pub mod table;
pub mod thrift;
