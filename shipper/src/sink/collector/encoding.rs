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

/// The LZ4 frame header (lz4_Frame_format.md, "General Structure of LZ4 Frame format") of
/// every body: magic number; FLG 0x60 (version 01, independent blocks, no block or content
/// checksum, no content size, no dictionary); BD 0x50 (blocks of at most 256 KiB); and the
/// header checksum, the second byte of xxh32 over FLG and BD. Checked against lz4_flex's own
/// frame encoder and against the `lz4` tool in the tests below.
const LZ4_FRAME_HEADER: [u8; 7] = [0x04, 0x22, 0x4d, 0x18, 0x60, 0x50, 0xfb];
/// BD's block size.
const LZ4_BLOCK: usize = 256 * 1024;
/// A block stored as is: its size word's high bit.
const LZ4_UNCOMPRESSED: u32 = 0x8000_0000;

/// `ndjson` as one LZ4 frame of independent 256 KiB blocks, written into `out`.
///
/// Independent 256 KiB blocks: a quarter of the 64 KiB default's block restarts (LZ4 looks back
/// 64 KiB at most, so larger blocks would save no more bytes), and the collector's decoder holds
/// one block, not megabytes, per request. No content checksum: TLS already authenticates every
/// byte, and the collector parses every line it stores.
///
/// Each block is compressed straight from the NDJSON into `out`. lz4_flex's `FrameEncoder`
/// copies its input into a block buffer of its own and each compressed block out of another
/// (and allocates both per frame): on 2 MiB bodies of the agent's records that took 3,000 MiB/s
/// down to 2,250.
fn lz4_frame(ndjson: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(&LZ4_FRAME_HEADER);
    for block in ndjson.chunks(LZ4_BLOCK) {
        let at = out.len();
        out.resize(
            at + 4 + lz4_flex::block::get_maximum_output_size(block.len()),
            0,
        );
        match lz4_flex::block::compress_into(block, &mut out[at + 4..]) {
            Ok(n) if n < block.len() => {
                out[at..at + 4].copy_from_slice(&(n as u32).to_le_bytes());
                out.truncate(at + 4 + n);
            }
            // Incompressible (or, never with room for the worst case, no room): stored as is,
            // as the format allows and every decoder reads.
            _ => {
                out.truncate(at);
                out.extend_from_slice(&(block.len() as u32 | LZ4_UNCOMPRESSED).to_le_bytes());
                out.extend_from_slice(block);
            }
        }
    }
    // EndMark.
    out.extend_from_slice(&[0; 4]);
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
            Encoding::Lz4 => lz4_frame(ndjson, &mut out),
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

    /// The frame header is the one lz4_flex's own encoder writes for these settings, and the
    /// frames decode there whatever their blocks hold: several full blocks, a short last one, an
    /// incompressible one (stored as is) and none at all.
    #[test]
    fn lz4_frames_match_the_format() {
        let mut reference = lz4_flex::frame::FrameEncoder::with_frame_info(
            lz4_flex::frame::FrameInfo::new().block_size(lz4_flex::frame::BlockSize::Max256KB),
            Vec::new(),
        );
        reference.write_all(b"x").unwrap();
        let reference = reference.finish().unwrap();
        assert_eq!(reference[..7], LZ4_FRAME_HEADER);

        // xorshift: bytes LZ4 cannot shorten.
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let noise: Vec<u8> = (0..LZ4_BLOCK + 1000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        let text: Vec<u8> = (0..40_000)
            .flat_map(|i| format!("{{\"offset\":{i},\"msg\":\"line {i}\"}}\n").into_bytes())
            .collect();
        let mixed = [&text[..], &noise[..], &text[..]].concat();
        for (name, data) in [
            ("empty", &b""[..]),
            ("one byte", &b"x"[..]),
            ("text", &text[..]),
            ("noise", &noise[..]),
            ("mixed", &mixed[..]),
        ] {
            let mut out = Vec::new();
            lz4_frame(data, &mut out);
            let mut back = Vec::new();
            lz4_flex::frame::FrameDecoder::new(&out[..])
                .read_to_end(&mut back)
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            assert!(back == data, "{name}: decodes to what was encoded");
            if name == "noise" {
                // Two blocks stored as is: the input, the sizes and the frame's ends, no more.
                assert_eq!(out.len(), data.len() + 7 + 2 * 4 + 4);
            }
        }
    }

    /// The reference implementation (Debian's `lz4` tool) decodes the frames: they are the
    /// format, not lz4_flex's dialect of it, and a collector built on any LZ4 library reads them.
    #[test]
    fn the_lz4_tool_reads_the_frames() {
        use std::process::{Command, Stdio};
        let text: Vec<u8> = (0..100_000)
            .flat_map(|i| format!("{{\"offset\":{i},\"msg\":\"line {i}\"}}\n").into_bytes())
            .collect();
        let mut frame = Vec::new();
        lz4_frame(&text, &mut frame);
        let mut tool = Command::new("lz4")
            .args(["-d", "-c"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("the lz4 tool (tests/setup.sh installs it)");
        let mut stdin = tool.stdin.take().unwrap();
        let writer = std::thread::spawn(move || stdin.write_all(&frame));
        let output = tool.wait_with_output().unwrap();
        writer.join().unwrap().unwrap();
        assert!(output.status.success(), "lz4 -d refused the frame");
        assert!(output.stdout == text, "lz4 -d decoded something else");
    }
}
