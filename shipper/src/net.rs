//! What every client connection shares, whatever it speaks over it: reaching the first address
//! of a name that answers, and a look at an idle TLS connection for a goodbye from its peer. The
//! HTTP client (`http`) and the syslog sink both use it.

/// Connects to the first of `addrs` that answers (a name may resolve to several); the error is
/// the last address's.
pub fn connect_first(
    addrs: impl IntoIterator<Item = std::net::SocketAddr>,
    timeout: std::time::Duration,
) -> Result<std::net::TcpStream, String> {
    let mut last = String::from("no address");
    for a in addrs {
        match std::net::TcpStream::connect_timeout(&a, timeout) {
            Ok(s) => return Ok(s),
            Err(e) => last = e.to_string(),
        }
    }
    Err(last)
}

/// A non-blocking look at a TLS connection whose peer has nothing to say between our writes:
/// Ok while it is open, the reason when the peer closed it, reset it or sent a TLS alert.
/// Whatever plaintext arrived (a session ticket is absorbed by rustls; none else is expected)
/// is discarded. The socket must be non-blocking for the call.
pub fn tls_peer_check<S: std::io::Read + std::io::Write>(
    s: &mut rustls::StreamOwned<rustls::ClientConnection, S>,
) -> Result<(), String> {
    use std::io::Read;
    loop {
        match s.conn.read_tls(&mut s.sock) {
            Ok(0) => return Err("the receiver closed the connection".to_string()),
            Ok(_) => match s.conn.process_new_packets() {
                Err(e) => {
                    return Err(format!(
                        "the receiver ended the connection: {}",
                        crate::tls::describe(&e)
                    ))
                }
                Ok(state) if state.peer_has_closed() => {
                    return Err("the receiver closed the TLS session".to_string())
                }
                Ok(state) => {
                    let mut scratch = vec![0u8; state.plaintext_bytes_to_read()];
                    let _ = s.conn.reader().read(&mut scratch);
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) => {
                return Err(match crate::tls::rustls_error(&e) {
                    Some(r) => format!("connection check: {}", crate::tls::describe(r)),
                    None => format!("connection check: {e}"),
                })
            }
        }
    }
}
