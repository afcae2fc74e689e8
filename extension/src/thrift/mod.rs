//! osquery's Thrift protocol, extension side: the wire structs, a client for the core's
//! `ExtensionManager`, and the server for our own `Extension` socket.

pub mod client;
pub mod server;
pub mod wire;
