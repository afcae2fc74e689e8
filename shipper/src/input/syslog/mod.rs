//! The syslog server input: network listeners → a spool per listener → records with `fields`.
//!
//! The data flow, one module each: [`listen`] binds the listeners and runs them, `receive`
//! serves datagrams and connections, [`framing`] cuts a connection's bytes into frames,
//! [`parse`] reads a frame's header into fields and [`records`] makes the spool records,
//! `writer` appends them to the [`spool`] and fsyncs in groups; [`stream`] is the [`Input`]
//! that reads the spools back into batches, commits their offsets once the sink has
//! acknowledged, and reclaims what was delivered; `alerts` turns the listeners' events into
//! alerts.
//!
//! [`Input`]: crate::input::Input

mod alerts;
pub mod framing;
pub mod listen;
pub mod parse;
mod receive;
pub mod records;
pub mod spool;
pub mod stream;
mod writer;

pub use stream::SyslogInput;

#[cfg(test)]
mod tests;
