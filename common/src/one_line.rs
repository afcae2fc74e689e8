//! Text from outside (a file's name, a peer's message, a script's error) shown in a line of
//! ours, a log line or a line of `status`, must not end that line: a file named
//! `x\n2026-12-03T… INFO log-sensor running` would forge a log line of its own. Control
//! characters are written as escapes (`\n`, `\r`, `\x1b`), the rest as it is.

use std::borrow::Cow;
use std::io::{self, Write};

/// `s` with its control characters escaped (tab kept); borrowed when it has none.
pub fn escape_controls(s: &str) -> Cow<'_, str> {
    if !s.bytes().any(is_escaped) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c if c.is_ascii() && is_escaped(c as u8) => {
                out.push_str(&format!("\\x{:02x}", c as u8));
            }
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

fn is_escaped(b: u8) -> bool {
    (b < 0x20 && b != b'\t') || b == 0x7f
}

/// A log writer that keeps each event on one line: the formatter hands it one whole event per
/// `write_all` (tracing-subscriber formats into a buffer first), whose last newline is the
/// line's end and any other control character came from a field. With `colour`, the terminal's
/// escape sequences the formatter itself writes are kept, and only line breaks are escaped.
pub struct OneLine<W> {
    inner: W,
    colour: bool,
}

impl<W: Write> OneLine<W> {
    pub fn new(inner: W, colour: bool) -> Self {
        OneLine { inner, colour }
    }
}

impl<W: Write> Write for OneLine<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_all(buf)?;
        Ok(buf.len())
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        let (body, end) = match buf.strip_suffix(b"\n") {
            Some(b) => (b, &b"\n"[..]),
            None => (buf, &b""[..]),
        };
        let colour = self.colour;
        let escaped = |b: u8| {
            if colour {
                b == b'\n' || b == b'\r'
            } else {
                is_escaped(b)
            }
        };
        if !body.iter().any(|&b| escaped(b)) {
            return self.inner.write_all(buf);
        }
        let mut out = Vec::with_capacity(buf.len() + 16);
        for &b in body {
            match b {
                b'\n' => out.extend_from_slice(b"\\n"),
                b'\r' => out.extend_from_slice(b"\\r"),
                b if escaped(b) => out.extend_from_slice(format!("\\x{b:02x}").as_bytes()),
                b => out.push(b),
            }
        }
        out.extend_from_slice(end);
        self.inner.write_all(&out)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controls_are_escaped_and_the_rest_kept() {
        assert!(matches!(escape_controls("plain/é\tpath"), Cow::Borrowed(_)));
        assert_eq!(
            escape_controls("a\nb\rc\x1b[31md\x7f"),
            "a\\nb\\rc\\x1b[31md\\x7f"
        );
    }

    #[test]
    fn an_event_stays_one_line() {
        let mut w = OneLine::new(Vec::new(), false);
        w.write_all(b"INFO following path=/l/x\n2026 INFO forged\n")
            .unwrap();
        w.write_all(b"INFO plain\n").unwrap();
        assert_eq!(
            String::from_utf8(w.inner).unwrap(),
            "INFO following path=/l/x\\n2026 INFO forged\nINFO plain\n"
        );
        // On a terminal the formatter's own colour codes stay.
        let mut w = OneLine::new(Vec::new(), true);
        w.write_all(b"\x1b[32mINFO\x1b[0m a\nb\n").unwrap();
        assert_eq!(w.inner, b"\x1b[32mINFO\x1b[0m a\\nb\n");
    }
}
