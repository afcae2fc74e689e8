//! A client for osquery's `ExtensionManager` service (the core's socket, `--socket`).
//!
//! Transport and protocol as osquery's own client uses them: a UNIX stream socket wrapped in
//! `TBufferedTransport` and `TBinaryProtocol` (osquery `osquery/extensions/impl_thrift.cpp`,
//! `ImplExtensionClient`). One connection per client, like the C++ SDK.

use std::collections::BTreeMap;
use std::io;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use thrift::protocol::{
    TBinaryInputProtocol, TBinaryOutputProtocol, TFieldIdentifier, TInputProtocol,
    TMessageIdentifier, TMessageType, TOutputProtocol, TStructIdentifier, TType,
};
use thrift::transport::{TBufferedReadTransport, TBufferedWriteTransport};

use super::wire::{
    self, ExtensionInfo, ExtensionRegistry, ExtensionResponse, ExtensionStatus, OptionInfo,
};

/// Why a call to the extension manager failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect to osquery's extension socket {path}: {source}")]
    Connect { path: PathBuf, source: io::Error },
    #[error("osquery's extension socket {path} did not appear within {waited:?}")]
    NoSocket { path: PathBuf, waited: Duration },
    #[error("call {method} on osquery's extension socket {path} failed: {source}")]
    Call {
        method: &'static str,
        path: PathBuf,
        source: thrift::Error,
    },
}

/// A connected `ExtensionManager` client.
pub struct ManagerClient {
    /// The socket we talk to, for error messages.
    path: PathBuf,
    /// Reads replies.
    input: TBinaryInputProtocol<TBufferedReadTransport<UnixStream>>,
    /// Writes calls.
    output: TBinaryOutputProtocol<TBufferedWriteTransport<UnixStream>>,
    /// Thrift's sequence number, checked against each reply.
    seq: i32,
}

impl ManagerClient {
    /// Connects once; `io_timeout` bounds every read and write so a wedged core cannot hang us.
    pub fn connect(path: &Path, io_timeout: Duration) -> Result<Self, ClientError> {
        let connect_err = |source| ClientError::Connect {
            path: path.to_path_buf(),
            source,
        };
        let stream = UnixStream::connect(path).map_err(connect_err)?;
        stream
            .set_read_timeout(Some(io_timeout))
            .map_err(connect_err)?;
        stream
            .set_write_timeout(Some(io_timeout))
            .map_err(connect_err)?;
        let read_half = stream.try_clone().map_err(connect_err)?;
        Ok(ManagerClient {
            path: path.to_path_buf(),
            input: TBinaryInputProtocol::new(TBufferedReadTransport::new(read_half), false),
            output: TBinaryOutputProtocol::new(TBufferedWriteTransport::new(stream), true),
            seq: 0,
        })
    }

    /// Waits up to `wait` for the socket to accept a connection and answer a ping, as the C++
    /// SDK's `extensionPathActive(path, use_timeout=true)` does (osquery
    /// `osquery/extensions/extensions.cpp`): an autoloaded extension may start before osqueryd
    /// has created its socket.
    pub fn connect_waiting(
        path: &Path,
        wait: Duration,
        io_timeout: Duration,
        stop: &dyn Fn() -> bool,
    ) -> Result<Self, ClientError> {
        let started = Instant::now();
        let mut last_problem = None;
        loop {
            match Self::connect(path, io_timeout) {
                Ok(mut c) => match c.ping() {
                    Ok(_) => return Self::connect(path, io_timeout),
                    Err(e) => last_problem = Some(e),
                },
                Err(ClientError::Connect { source, .. })
                    if source.kind() == io::ErrorKind::NotFound => {}
                Err(e) => last_problem = Some(e),
            }
            if started.elapsed() >= wait || stop() {
                // A socket that exists but never answered says more than "did not appear".
                return Err(last_problem.unwrap_or(ClientError::NoSocket {
                    path: path.to_path_buf(),
                    waited: wait,
                }));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    pub fn ping(&mut self) -> Result<ExtensionStatus, ClientError> {
        self.call("ping", |_| Ok(()), |i| ExtensionStatus::read(i))
    }

    pub fn register_extension(
        &mut self,
        info: &ExtensionInfo,
        registry: &ExtensionRegistry,
    ) -> Result<ExtensionStatus, ClientError> {
        self.call(
            "registerExtension",
            |o| {
                o.write_field_begin(&TFieldIdentifier::new("info", TType::Struct, 1))?;
                info.write(o)?;
                o.write_field_end()?;
                o.write_field_begin(&TFieldIdentifier::new("registry", TType::Map, 2))?;
                wire::write_registry(o, registry)?;
                o.write_field_end()
            },
            |i| ExtensionStatus::read(i),
        )
    }

    pub fn deregister_extension(&mut self, uuid: i64) -> Result<ExtensionStatus, ClientError> {
        self.call(
            "deregisterExtension",
            |o| {
                o.write_field_begin(&TFieldIdentifier::new("uuid", TType::I64, 1))?;
                o.write_i64(uuid)?;
                o.write_field_end()
            },
            |i| ExtensionStatus::read(i),
        )
    }

    pub fn extensions(&mut self) -> Result<BTreeMap<i64, ExtensionInfo>, ClientError> {
        self.call("extensions", |_| Ok(()), |i| wire::read_extension_list(i))
    }

    pub fn options(&mut self) -> Result<BTreeMap<String, OptionInfo>, ClientError> {
        self.call("options", |_| Ok(()), |i| wire::read_option_list(i))
    }

    /// Runs SQL in osquery (`ExtensionManager.query`).
    pub fn query(&mut self, sql: &str) -> Result<ExtensionResponse, ClientError> {
        self.call(
            "query",
            |o| {
                o.write_field_begin(&TFieldIdentifier::new("sql", TType::String, 1))?;
                o.write_string(sql)?;
                o.write_field_end()
            },
            |i| ExtensionResponse::read(i),
        )
    }

    /// One Thrift call: `<method>_args` out, `<method>_result` (field 0 = success) back.
    fn call<R>(
        &mut self,
        method: &'static str,
        args: impl FnOnce(&mut dyn TOutputProtocol) -> thrift::Result<()>,
        success: impl FnOnce(&mut dyn TInputProtocol) -> thrift::Result<R>,
    ) -> Result<R, ClientError> {
        let result = self.call_inner(method, args, success);
        result.map_err(|source| ClientError::Call {
            method,
            path: self.path.clone(),
            source,
        })
    }

    fn call_inner<R>(
        &mut self,
        method: &'static str,
        args: impl FnOnce(&mut dyn TOutputProtocol) -> thrift::Result<()>,
        success: impl FnOnce(&mut dyn TInputProtocol) -> thrift::Result<R>,
    ) -> thrift::Result<R> {
        self.seq = self.seq.wrapping_add(1);
        let o: &mut dyn TOutputProtocol = &mut self.output;
        o.write_message_begin(&TMessageIdentifier::new(
            method,
            TMessageType::Call,
            self.seq,
        ))?;
        o.write_struct_begin(&TStructIdentifier::new(format!("{method}_args")))?;
        args(o)?;
        o.write_field_stop()?;
        o.write_struct_end()?;
        o.write_message_end()?;
        o.flush()?;

        let i: &mut dyn TInputProtocol = &mut self.input;
        let msg = i.read_message_begin()?;
        if msg.message_type == TMessageType::Exception {
            let err = thrift::Error::read_application_error_from_in_protocol(i)?;
            i.read_message_end()?;
            return Err(thrift::Error::Application(err));
        }
        if msg.name != method || msg.sequence_number != self.seq {
            return Err(thrift::new_application_error(
                thrift::ApplicationErrorKind::WrongMethodName,
                format!(
                    "expected a reply to {method}#{}, got {}#{}",
                    self.seq, msg.name, msg.sequence_number
                ),
            ));
        }
        let mut value = None;
        let mut success = Some(success);
        wire::read_struct(i, |i, id, ty| {
            if id == 0 {
                if let Some(f) = success.take() {
                    value = Some(f(i)?);
                    return Ok(());
                }
            }
            i.skip(ty)
        })?;
        i.read_message_end()?;
        value.ok_or_else(|| {
            thrift::new_application_error(
                thrift::ApplicationErrorKind::MissingResult,
                format!("{method} reply carried no result"),
            )
        })
    }
}
