//! What arrives on the sockets, turned into spool records: UDP datagrams (one message each) and
//! TCP/TLS connections (the TLS handshake, `max_connections`, framing, the pause while the
//! spool is full), each handed to its listener's writer through the bounded queue.

use super::framing::{Deframer, Frame, FramingError};
use super::listen::{Ctx, Event};
use super::records::encode_frame;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::Semaphore;

const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a connection over `max_connections` may wait for a slot before it is refused.
const FULL_GRACE: Duration = Duration::from_millis(500);
/// Connections of one listener that may wait so at once; more are refused at once.
const WAITERS: usize = 64;
/// How often a connection paused by a full spool looks again.
const FULL_POLL: Duration = Duration::from_millis(50);

/// Frames `bytes` into `out` (spool form), counting messages; the framing result is returned.
fn frame_into(
    d: &mut Deframer,
    bytes: &[u8],
    peer: SocketAddr,
    ctx: &Ctx,
    out: &mut Vec<u8>,
) -> Result<(), FramingError> {
    let ts = crate::record::now_ms();
    let mut n = 0u64;
    let mut cut = 0u64;
    let res = d.push(bytes, &mut |f| {
        n += 1;
        cut += encode_frame(f, peer, ts, out) as u64;
    });
    ctx.stats.messages.fetch_add(n, Ordering::Relaxed);
    ctx.stats.cut.fetch_add(cut, Ordering::Relaxed);
    res
}

pub(super) async fn serve_udp(sock: tokio::net::UdpSocket, ctx: Arc<Ctx>) {
    let mut buf = vec![0u8; 65536];
    let mut stop = ctx.stop.clone();
    loop {
        let got = tokio::select! {
            r = sock.recv_from(&mut buf) => r,
            _ = stop.wait_for(|s| *s) => return,
        };
        let (n, peer) = match got {
            Ok(r) => r,
            Err(e) => {
                // ICMP errors and the like: one datagram, not the listener.
                tracing::debug!("{}: {e}", ctx.url);
                continue;
            }
        };
        ctx.stats.bytes.fetch_add(n as u64, Ordering::Relaxed);
        if ctx.spool_full() {
            ctx.stats.dropped.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        let mut d = &buf[..n];
        // One message per datagram; a trailing newline some senders add is no part of it.
        if let Some(s) = d.strip_suffix(b"\n") {
            d = s.strip_suffix(b"\r").unwrap_or(s);
        }
        if d.is_empty() {
            continue;
        }
        let max = ctx.max_message_bytes;
        let frame = if d.len() <= max {
            Frame::Whole(d)
        } else {
            Frame::Cut {
                head: &d[..max],
                tail: &d[d.len() - max..],
                len: d.len() as u64,
            }
        };
        let mut out = Vec::with_capacity(d.len() + 128);
        let cut = encode_frame(frame, peer, crate::record::now_ms(), &mut out);
        ctx.stats.messages.fetch_add(1, Ordering::Relaxed);
        ctx.stats.cut.fetch_add(cut as u64, Ordering::Relaxed);
        if ctx.queue.send(out).await.is_err() {
            return;
        }
    }
}

pub(super) async fn accept_loop(
    listener: tokio::net::TcpListener,
    ctx: Arc<Ctx>,
    tls: Option<tokio_rustls::TlsAcceptor>,
    permits: Arc<Semaphore>,
    max: usize,
) {
    let waiters = Arc::new(Semaphore::new(WAITERS));
    let mut stop = ctx.stop.clone();
    loop {
        let got = tokio::select! {
            r = listener.accept() => r,
            _ = stop.wait_for(|s| *s) => return,
        };
        let (stream, peer) = match got {
            Ok(r) => r,
            Err(e) => {
                // Out of descriptors and the like: wait a little rather than spin.
                tracing::warn!("{}: accept: {e}", ctx.url);
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let permit = permits.clone().try_acquire_owned();
        if permit.is_ok() {
            ctx.conn_full_alerted.store(false, Ordering::Release);
        }
        // Over the limit: a slot freed a moment later (a sender closing one connection and
        // opening the next) is used; only one still over after the grace is refused. At most
        // a few wait, so a flood of connections holds no more descriptors than that.
        let waiting = match &permit {
            Ok(_) => None,
            Err(_) => match waiters.clone().try_acquire_owned() {
                Ok(w) => Some(w),
                Err(_) => {
                    refuse(&ctx, max);
                    continue;
                }
            },
        };
        let ctx = ctx.clone();
        let tls = tls.clone();
        let permits = permits.clone();
        tokio::spawn(async move {
            let permit = match permit {
                Ok(p) => p,
                Err(_) => match tokio::time::timeout(FULL_GRACE, permits.acquire_owned()).await {
                    Ok(Ok(p)) => p,
                    _ => {
                        refuse(&ctx, max);
                        return;
                    }
                },
            };
            drop(waiting);
            let _ = stream.set_nodelay(true);
            ctx.stats.accepted.fetch_add(1, Ordering::Relaxed);
            ctx.stats.connections.fetch_add(1, Ordering::Relaxed);
            match tls {
                None => serve_stream(stream, peer, &ctx).await,
                Some(acceptor) => {
                    match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await
                    {
                        Ok(Ok(s)) => serve_stream(s, peer, &ctx).await,
                        // Closed before saying anything: a port probe or a health check, not
                        // a TLS client; counted, not alerted.
                        Ok(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                            ctx.stats.tls_failed.fetch_add(1, Ordering::Relaxed);
                            tracing::debug!("{}: {peer}: closed during the TLS handshake", ctx.url);
                        }
                        Ok(Err(e)) => tls_refused(&ctx, peer, e.to_string()),
                        Err(_) => tls_refused(&ctx, peer, "handshake timed out".into()),
                    }
                }
            }
            ctx.stats.connections.fetch_sub(1, Ordering::Relaxed);
            drop(permit);
        });
    }
}

/// A connection over `max_connections`: closed (by dropping it), counted, alerted once per
/// episode.
fn refuse(ctx: &Ctx, max: usize) {
    ctx.stats.refused.fetch_add(1, Ordering::Relaxed);
    if !ctx.conn_full_alerted.swap(true, Ordering::AcqRel) {
        let _ = ctx.events.send(Event::ConnectionsFull {
            listener: ctx.url.clone(),
            max,
        });
    }
}

fn tls_refused(ctx: &Ctx, peer: SocketAddr, error: String) {
    ctx.stats.tls_failed.fetch_add(1, Ordering::Relaxed);
    if ctx.first_for(peer, &error) {
        let _ = ctx.events.send(Event::TlsRefused {
            listener: ctx.url.clone(),
            peer,
            error,
        });
    }
}

async fn serve_stream<S: AsyncRead + Unpin>(mut stream: S, peer: SocketAddr, ctx: &Ctx) {
    let mut d = Deframer::new(ctx.max_message_bytes);
    let mut buf = vec![0u8; 16 << 10];
    let mut stop = ctx.stop.clone();
    loop {
        // A full spool: stop reading, so the kernel's window closes and the sender waits.
        while ctx.spool_full() {
            if *stop.borrow() {
                return;
            }
            tokio::time::sleep(FULL_POLL).await;
        }
        // Stopping: what was framed is handed over already; a frame still open is dropped
        // with the connection (its sender never finished it).
        let got = tokio::select! {
            r = stream.read(&mut buf) => r,
            _ = stop.wait_for(|s| *s) => return,
        };
        let n = match got {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) => {
                tracing::debug!("{}: {peer}: {e}", ctx.url);
                break;
            }
        };
        ctx.stats.bytes.fetch_add(n as u64, Ordering::Relaxed);
        let mut out = Vec::new();
        let res = frame_into(&mut d, &buf[..n], peer, ctx, &mut out);
        if !out.is_empty() && ctx.queue.send(out).await.is_err() {
            return;
        }
        if let Err(e) = res {
            ctx.stats.framing_errors.fetch_add(1, Ordering::Relaxed);
            if ctx.first_for(peer, "framing") {
                let _ = ctx.events.send(Event::FramingError {
                    listener: ctx.url.clone(),
                    peer,
                    error: e.to_string(),
                });
            }
            return;
        }
    }
    let mut out = Vec::new();
    let ts = crate::record::now_ms();
    let mut n = 0;
    d.finish(&mut |f| {
        n += 1;
        encode_frame(f, peer, ts, &mut out);
    });
    ctx.stats.messages.fetch_add(n, Ordering::Relaxed);
    if !out.is_empty() {
        let _ = ctx.queue.send(out).await;
    }
}
