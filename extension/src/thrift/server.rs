//! The extension's own Thrift server at `<socket>.<uuid>` (osquery `extensions.h`,
//! `getExtensionSocket`), serving `Extension.ping`, `Extension.call` and `Extension.shutdown`.
//!
//! osqueryd opens a fresh connection for every call and pings first (`callExtension` and
//! `extensionPathActive` in osquery `osquery/extensions/extensions.cpp`), while its watcher pings
//! on yet another connection, so each connection gets its own thread. The handlers follow
//! `ExtensionHandler::ping/call/shutdown` in osquery `osquery/extensions/impl_thrift.cpp`: ping
//! answers code 0 with our uuid, call copies the plugin status and our uuid.

use std::io::{self, ErrorKind};
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use thrift::protocol::TFieldIdentifier;
use thrift::protocol::{
    TBinaryInputProtocol, TBinaryOutputProtocol, TInputProtocol, TMessageIdentifier, TMessageType,
    TOutputProtocol, TStructIdentifier, TType,
};
use thrift::transport::{TBufferedReadTransport, TBufferedWriteTransport};

use super::wire::{self, ExtensionResponse, ExtensionStatus, StringMap};
use crate::shutdown::{Reason, Shutdown};

/// What `Extension.call` is handed to: the extension's plugins. A trait here, implemented above
/// (`plugin::Plugins`), so the protocol layer does not import the plugins it serves.
pub trait Dispatch: Send + Sync {
    /// Handles one call to the plugin `item` of registry `registry` (`table`, `logger`, ...).
    fn call(&self, registry: &str, item: &str, request: &StringMap) -> ExtensionResponse;
}

/// Calls being handled right now; shutdown waits for them so a logger write is never cut.
#[derive(Default)]
pub struct InFlight(AtomicUsize);

impl InFlight {
    /// Waits until no call is running, at most `limit`.
    pub fn drain(&self, limit: Duration) {
        let start = Instant::now();
        while self.0.load(Ordering::SeqCst) > 0 && start.elapsed() < limit {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Accepts connections until shutdown; each connection is served on its own thread.
pub fn serve(
    listener: UnixListener,
    plugins: Arc<dyn Dispatch>,
    uuid: i64,
    shutdown: Arc<Shutdown>,
    in_flight: Arc<InFlight>,
) -> io::Result<()> {
    listener.set_nonblocking(true)?;
    while !shutdown.is_triggered() {
        match listener.accept() {
            Ok((stream, _)) => {
                stream.set_nonblocking(false)?;
                let (plugins, shutdown, in_flight) =
                    (plugins.clone(), shutdown.clone(), in_flight.clone());
                std::thread::Builder::new()
                    .name("ext-conn".into())
                    .spawn(move || {
                        if let Err(e) =
                            serve_connection(stream, &*plugins, uuid, &shutdown, &in_flight)
                        {
                            tracing::debug!("extension connection ended: {e}");
                        }
                    })?;
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::Interrupted => {
                wait_readable(&listener, Duration::from_millis(200));
            }
            Err(e) => {
                tracing::warn!("accepting on the extension socket failed: {e}");
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    }
    Ok(())
}

fn wait_readable(listener: &UnixListener, timeout: Duration) {
    let mut pfd = libc::pollfd {
        fd: listener.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd for the duration of the call.
    unsafe { libc::poll(&mut pfd, 1, timeout.as_millis() as libc::c_int) };
}

fn serve_connection(
    stream: UnixStream,
    plugins: &dyn Dispatch,
    uuid: i64,
    shutdown: &Shutdown,
    in_flight: &InFlight,
) -> thrift::Result<()> {
    let read_half = stream.try_clone()?;
    let mut input = TBinaryInputProtocol::new(TBufferedReadTransport::new(read_half), false);
    let mut output = TBinaryOutputProtocol::new(TBufferedWriteTransport::new(stream), true);
    loop {
        let msg = match input.read_message_begin() {
            Ok(m) => m,
            // The peer closed the connection: osqueryd does so after every call.
            Err(thrift::Error::Transport(e)) if e.kind == thrift::TransportErrorKind::EndOfFile => {
                return Ok(())
            }
            Err(e) => return Err(e),
        };
        in_flight.0.fetch_add(1, Ordering::SeqCst);
        let result = handle(&msg, &mut input, &mut output, plugins, uuid, shutdown);
        in_flight.0.fetch_sub(1, Ordering::SeqCst);
        result?;
    }
}

fn handle(
    msg: &TMessageIdentifier,
    i: &mut dyn TInputProtocol,
    o: &mut dyn TOutputProtocol,
    plugins: &dyn Dispatch,
    uuid: i64,
    shutdown: &Shutdown,
) -> thrift::Result<()> {
    match msg.name.as_str() {
        "ping" => {
            wire::read_struct(i, |i, _, ty| i.skip(ty))?;
            i.read_message_end()?;
            let status = ExtensionStatus::success("pong", uuid);
            reply(o, msg, |o| status.write(o))
        }
        "call" => {
            let (mut registry, mut item, mut request) =
                (String::new(), String::new(), StringMap::new());
            wire::read_struct(i, |i, id, ty| match (id, ty) {
                (1, TType::String) => {
                    registry = i.read_string()?;
                    Ok(())
                }
                (2, TType::String) => {
                    item = i.read_string()?;
                    Ok(())
                }
                (3, TType::Map) => {
                    request = wire::read_string_map(i)?;
                    Ok(())
                }
                (_, ty) => i.skip(ty),
            })?;
            i.read_message_end()?;
            // A bug in a plugin must not become a dropped connection: for a logger that would be
            // a failed call, and osqueryd shuts down on a failed string/snapshot call.
            let call = std::panic::AssertUnwindSafe(|| plugins.call(&registry, &item, &request));
            let mut response: ExtensionResponse = match std::panic::catch_unwind(call) {
                Ok(r) => r,
                Err(_) if registry == "logger" => {
                    tracing::error!("the logger plugin {item} panicked; answering success to keep osqueryd running");
                    wire::success(Vec::new())
                }
                Err(_) => wire::failure(format!("{registry} plugin {item} failed internally")),
            };
            response.status.uuid = uuid;
            reply(o, msg, |o| response.write(o))
        }
        "shutdown" => {
            wire::read_struct(i, |i, _, ty| i.skip(ty))?;
            i.read_message_end()?;
            tracing::info!("osquery asked the extension to shut down");
            // Answer first: the caller waits for the void reply.
            let r = reply_void(o, msg);
            shutdown.trigger(Reason::ShutdownCall);
            r
        }
        other => {
            wire::read_struct(i, |i, _, ty| i.skip(ty))?;
            i.read_message_end()?;
            let err = thrift::ApplicationError::new(
                thrift::ApplicationErrorKind::UnknownMethod,
                format!("log_sensor extension has no method {other:?}"),
            );
            o.write_message_begin(&TMessageIdentifier::new(
                other,
                TMessageType::Exception,
                msg.sequence_number,
            ))?;
            thrift::Error::write_application_error_to_out_protocol(&err, o)?;
            o.write_message_end()?;
            o.flush()
        }
    }
}

/// Writes `<method>_result` with the success value in field 0.
fn reply(
    o: &mut dyn TOutputProtocol,
    msg: &TMessageIdentifier,
    value: impl FnOnce(&mut dyn TOutputProtocol) -> thrift::Result<()>,
) -> thrift::Result<()> {
    o.write_message_begin(&TMessageIdentifier::new(
        msg.name.clone(),
        TMessageType::Reply,
        msg.sequence_number,
    ))?;
    o.write_struct_begin(&TStructIdentifier::new(format!("{}_result", msg.name)))?;
    o.write_field_begin(&TFieldIdentifier::new("success", TType::Struct, 0))?;
    value(o)?;
    o.write_field_end()?;
    o.write_field_stop()?;
    o.write_struct_end()?;
    o.write_message_end()?;
    o.flush()
}

fn reply_void(o: &mut dyn TOutputProtocol, msg: &TMessageIdentifier) -> thrift::Result<()> {
    o.write_message_begin(&TMessageIdentifier::new(
        msg.name.clone(),
        TMessageType::Reply,
        msg.sequence_number,
    ))?;
    o.write_struct_begin(&TStructIdentifier::new(format!("{}_result", msg.name)))?;
    o.write_field_stop()?;
    o.write_struct_end()?;
    o.write_message_end()?;
    o.flush()
}
