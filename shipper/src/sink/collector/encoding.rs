//! How a request body is encoded, and which encoding a collector is sent.
//!
//! gzip (level 1) was the only codec, and on log text it cost the agent about as much CPU as
//! everything else in the path together; the LZ4 frame format (`Content-Encoding: lz4`, what the
//! `lz4` tool writes) saves most of the bytes gzip saves at a small part of its CPU. A collector
//! that reads lz4 says so in the `Accept-Encoding` of its ingest replies (RFC 9110 section
//! 12.5.3); older collectors send no such header and refuse lz4 with 415. So with `auto` (the
//! default) every connection starts in gzip, which every collector reads, and moves to lz4 after
//! a reply announcing it: a collector replaced by an older one behind the same address is never
//! sent a body it cannot read.

use crate::config::Compression;
use std::io::Write;

/// One request body's encoding, as named in `Content-Encoding`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Identity,
    Gzip,
    Lz4,
}

impl Encoding {
    /// The `Content-Encoding` header's value; None for a plain body.
    pub fn header(self) -> Option<&'static str> {
        match self {
            Encoding::Identity => None,
            Encoding::Gzip => Some("gzip"),
            Encoding::Lz4 => Some("lz4"),
        }
    }
}

/// Whether an `Accept-Encoding` value lists `lz4` (a coding with `q=0` is refused, RFC 9110
/// section 12.4.2).
fn accepts_lz4(accept: &str) -> bool {
    accept.split(',').any(|item| {
        let mut parts = item.split(';').map(str::trim);
        let coding = parts.next().unwrap_or("");
        let refused = parts.any(|p| {
            p.strip_prefix("q=")
                .and_then(|q| q.parse::<f32>().ok())
                .is_some_and(|q| q == 0.0)
        });
        coding.eq_ignore_ascii_case("lz4") && !refused
    })
}

/// The sink's encoder: its `compression` setting, what the current connection's collector
/// announced, and the buffer the encoded body is built in (reused between requests).
pub struct Encoder {
    choice: Compression,
    /// With `auto`: the last reply on this connection announced lz4.
    lz4_announced: bool,
    out: Vec<u8>,
}

impl Encoder {
    pub fn new(choice: Compression) -> Encoder {
        Encoder {
            choice,
            lz4_announced: false,
            out: Vec::new(),
        }
    }

    /// The encoding of the next request.
    pub fn current(&self) -> Encoding {
        match self.choice {
            Compression::None => Encoding::Identity,
            Compression::Gzip => Encoding::Gzip,
            Compression::Lz4 => Encoding::Lz4,
            Compression::Auto if self.lz4_announced => Encoding::Lz4,
            Compression::Auto => Encoding::Gzip,
        }
    }

    /// Takes in a reply's `Accept-Encoding` (every reply's, so a collector that stops announcing
    /// lz4 is sent gzip again). Returns the new encoding when it changed.
    pub fn announced(&mut self, accept: Option<&str>) -> Option<Encoding> {
        let before = self.current();
        self.lz4_announced = accept.is_some_and(accepts_lz4);
        let now = self.current();
        (now != before).then_some(now)
    }

    /// A new connection may lead to another collector: back to what every collector reads.
    pub fn reconnected(&mut self) {
        self.lz4_announced = false;
    }

    /// `ndjson` in the current encoding, and that encoding.
    pub fn encode<'a>(&'a mut self, ndjson: &'a [u8]) -> std::io::Result<(&'a [u8], Encoding)> {
        let encoding = self.current();
        if encoding == Encoding::Identity {
            return Ok((ndjson, encoding));
        }
        let mut out = std::mem::take(&mut self.out);
        out.clear();
        match encoding {
            Encoding::Identity => unreachable!("returned above"),
            Encoding::Gzip => {
                // Level 1: most of gzip's saving on log text at a fraction of its CPU.
                let mut enc = flate2::write::GzEncoder::new(out, flate2::Compression::fast());
                enc.write_all(ndjson)?;
                out = enc.finish()?;
            }
            Encoding::Lz4 => {
                out.reserve(lz4_flex::block::get_maximum_output_size(ndjson.len()));
                // Independent 256 KiB blocks: a quarter of the 64 KiB default's block restarts
                // (LZ4 looks back 64 KiB at most, so larger blocks would save no more bytes),
                // and the collector's decoder holds one block, not megabytes, per request. No
                // content checksum: TLS already authenticates every byte, and the collector
                // parses every line it stores.
                let info = lz4_flex::frame::FrameInfo::new()
                    .block_size(lz4_flex::frame::BlockSize::Max256KB);
                let mut enc = lz4_flex::frame::FrameEncoder::with_frame_info(info, out);
                enc.write_all(ndjson)?;
                out = enc.finish().map_err(std::io::Error::other)?;
            }
        }
        self.out = out;
        Ok((&self.out, encoding))
    }

    /// Gives back the encoding buffer when it grew past what a steady stream of batches needs.
    pub fn shrink(&mut self, keep: usize) {
        if self.out.capacity() > keep {
            self.out = Vec::new();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn auto_moves_to_lz4_only_while_the_collector_announces_it() {
        let mut e = Encoder::new(Compression::Auto);
        assert_eq!(
            e.current(),
            Encoding::Gzip,
            "a new connection starts in gzip"
        );
        assert_eq!(e.announced(None), None, "an older collector: gzip stays");
        assert_eq!(e.announced(Some("gzip")), None);
        assert_eq!(e.announced(Some("gzip, LZ4")), Some(Encoding::Lz4));
        assert_eq!(e.announced(Some("lz4;q=0.5")), None, "still lz4");
        assert_eq!(e.announced(Some("lz4;q=0, gzip")), Some(Encoding::Gzip));
        e.announced(Some("lz4"));
        e.reconnected();
        assert_eq!(e.current(), Encoding::Gzip);
        // An explicit choice is kept whatever the collector says.
        let mut e = Encoder::new(Compression::Lz4);
        assert_eq!(e.announced(None), None);
        assert_eq!(e.current(), Encoding::Lz4);
        let mut e = Encoder::new(Compression::None);
        assert_eq!(e.announced(Some("lz4, gzip")), None);
        assert_eq!(e.current(), Encoding::Identity);
    }

    #[test]
    fn every_encoding_decodes_back_to_the_ndjson() {
        let ndjson: Vec<u8> = (0..20_000)
            .flat_map(|i| format!("{{\"offset\":{i},\"msg\":\"line {i}\"}}\n").into_bytes())
            .collect();
        for choice in [Compression::None, Compression::Gzip, Compression::Lz4] {
            let mut e = Encoder::new(choice);
            // Twice: the reused buffer holds no leftovers of the first body.
            for _ in 0..2 {
                let (body, encoding) = e.encode(&ndjson).unwrap();
                let mut back = Vec::new();
                match encoding {
                    Encoding::Identity => back.extend_from_slice(body),
                    Encoding::Gzip => {
                        flate2::read::MultiGzDecoder::new(body)
                            .read_to_end(&mut back)
                            .unwrap();
                    }
                    Encoding::Lz4 => {
                        assert!(body.len() < ndjson.len() / 2, "lz4 compresses");
                        lz4_flex::frame::FrameDecoder::new(body)
                            .read_to_end(&mut back)
                            .unwrap();
                    }
                }
                assert_eq!(back, ndjson, "{choice:?}");
            }
        }
    }
}
