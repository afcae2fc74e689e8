//! Where an LZ4 body's frames begin and end, followed as the compressed bytes pass through to
//! the decoder.
//!
//! lz4_flex's `FrameDecoder` takes the input running out between two blocks, or after a
//! frame's magic number, for a clean end, and reports each frame's end mark as the end of its
//! output. A body cut at a block boundary (by a broken proxy or sender that fixed up
//! `Content-Length`) then decoded to fewer lines than were sent, and was acknowledged; bytes
//! after the last frame were dropped unread, and a frame after another that ended exactly at
//! a piece boundary was never read. [`Frames`] walks the frame format itself (the LZ4 Frame
//! Format Description, lz4_Frame_format.md, followed field by field below): a body is whole
//! only when it ends right after a frame's end mark (and content checksum), and anything
//! between frames that is not another frame is refused. It only counts bytes; decoding and
//! every checksum stay the decoder's.

use std::io::{self, BufRead, Read};

const MAGIC: u32 = 0x184D_2204;
const LEGACY_MAGIC: u32 = 0x184C_2102;
const SKIPPABLE: std::ops::RangeInclusive<u32> = 0x184D_2A50..=0x184D_2A5F;

/// Where in the frame format the next byte falls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum At {
    /// A frame's magic number, or the end of the body.
    Magic,
    /// FLG and BD.
    Descriptor,
    /// The rest of the header (content size, dictionary id, header checksum).
    HeaderRest { flags: u8 },
    /// A block's size word, or the end mark.
    BlockSize,
    /// `left` bytes of a block's data (and its checksum).
    BlockData { left: u64 },
    /// The content checksum after the end mark.
    ContentChecksum,
}

/// The flags of the frame being read (FLG).
#[derive(Debug, Clone, Copy, Default)]
struct Flags(u8);

impl Flags {
    fn block_checksum(self) -> bool {
        self.0 & 0x10 != 0
    }
    fn content_size(self) -> bool {
        self.0 & 0x08 != 0
    }
    fn content_checksum(self) -> bool {
        self.0 & 0x04 != 0
    }
    fn dict_id(self) -> bool {
        self.0 & 0x01 != 0
    }
}

/// The compressed body on its way to the decoder, its frames followed.
pub(super) struct Frames<R> {
    inner: R,
    at: At,
    flags: Flags,
    /// A fixed-size field's bytes so far (at most 13: content size, dictionary id, checksum).
    field: [u8; 13],
    have: usize,
    /// Bytes of the body passed on so far.
    offset: u64,
    frames: u64,
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

impl<R: BufRead> Frames<R> {
    pub(super) fn new(inner: R) -> Frames<R> {
        Frames {
            inner,
            at: At::Magic,
            flags: Flags::default(),
            field: [0; 13],
            have: 0,
            offset: 0,
            frames: 0,
        }
    }

    /// After the decoder reported an end: true when another frame follows (the decoder reads
    /// it on its next call); false at the body's end, which is an error unless the last frame
    /// was whole.
    pub(super) fn more(&mut self) -> io::Result<bool> {
        if !self.inner.fill_buf()?.is_empty() {
            return Ok(true);
        }
        let inside = match self.at {
            At::Magic if self.have == 0 && self.frames > 0 => return Ok(false),
            At::Magic if self.have == 0 => return Err(invalid("the body holds no frame".into())),
            At::Magic | At::Descriptor | At::HeaderRest { .. } => "in a frame's header",
            At::BlockSize if self.have == 0 => "between two blocks, before the frame's end mark",
            At::BlockSize | At::BlockData { .. } => "inside a block",
            At::ContentChecksum => "inside the content checksum",
        };
        Err(invalid(format!(
            "the body ends {inside} (after {} bytes): it was cut short",
            self.offset
        )))
    }

    /// Collects a fixed-size field of `len` bytes from `bytes`; returns how many it took and
    /// whether the field is complete.
    fn collect(&mut self, bytes: &[u8], len: usize) -> (usize, bool) {
        let take = (len - self.have).min(bytes.len());
        self.field[self.have..self.have + take].copy_from_slice(&bytes[..take]);
        self.have += take;
        (take, self.have == len)
    }

    fn word(&self) -> u32 {
        u32::from_le_bytes(self.field[..4].try_into().expect("four bytes"))
    }

    /// Follows `bytes`, the next bytes of the body.
    fn follow(&mut self, mut bytes: &[u8]) -> io::Result<()> {
        while !bytes.is_empty() {
            let at = self.offset;
            let taken = match self.at {
                At::BlockData { left } => {
                    let take = left.min(bytes.len() as u64);
                    self.at = match left - take {
                        0 => At::BlockSize,
                        left => At::BlockData { left },
                    };
                    take as usize
                }
                At::Magic => {
                    let (n, done) = self.collect(bytes, 4);
                    if done {
                        self.have = 0;
                        self.at = match self.word() {
                            MAGIC => At::Descriptor,
                            LEGACY_MAGIC => {
                                return Err(invalid(format!(
                                    "byte {}: a legacy LZ4 frame (lz4 -l), which is not read here: send the frame format",
                                    at + n as u64 - 4
                                )))
                            }
                            m if SKIPPABLE.contains(&m) => {
                                return Err(invalid(format!(
                                    "byte {}: a skippable LZ4 frame, which is not read here",
                                    at + n as u64 - 4
                                )))
                            }
                            m => {
                                return Err(invalid(format!(
                                    "byte {}: not the start of an LZ4 frame (magic number {m:#010x})",
                                    at + n as u64 - 4
                                )))
                            }
                        };
                    }
                    n
                }
                At::Descriptor => {
                    let (n, done) = self.collect(bytes, 2);
                    if done {
                        self.have = 0;
                        let flags = self.field[0];
                        if flags >> 6 != 0b01 {
                            return Err(invalid(format!(
                                "byte {}: LZ4 frame version {} (only 1 exists)",
                                at + n as u64 - 2,
                                flags >> 6
                            )));
                        }
                        self.at = At::HeaderRest { flags };
                    }
                    n
                }
                At::HeaderRest { flags } => {
                    let f = Flags(flags);
                    let len = 8 * usize::from(f.content_size()) + 4 * usize::from(f.dict_id()) + 1;
                    let (n, done) = self.collect(bytes, len);
                    if done {
                        self.have = 0;
                        self.flags = f;
                        self.at = At::BlockSize;
                    }
                    n
                }
                At::BlockSize => {
                    let (n, done) = self.collect(bytes, 4);
                    if done {
                        self.have = 0;
                        self.at = match self.word() {
                            0 if self.flags.content_checksum() => At::ContentChecksum,
                            0 => {
                                self.frames += 1;
                                At::Magic
                            }
                            size => {
                                let data = u64::from(size & 0x7FFF_FFFF)
                                    + 4 * u64::from(self.flags.block_checksum());
                                match data {
                                    0 => At::BlockSize,
                                    left => At::BlockData { left },
                                }
                            }
                        };
                    }
                    n
                }
                At::ContentChecksum => {
                    let (n, done) = self.collect(bytes, 4);
                    if done {
                        self.have = 0;
                        self.frames += 1;
                        self.at = At::Magic;
                    }
                    n
                }
            };
            bytes = &bytes[taken..];
            self.offset += taken as u64;
        }
        Ok(())
    }
}

impl<R: BufRead> Read for Frames<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.follow(&buf[..n])?;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn frame(data: &[u8], info: lz4_flex::frame::FrameInfo) -> Vec<u8> {
        let mut enc = lz4_flex::frame::FrameEncoder::with_frame_info(info, Vec::new());
        enc.write_all(data).unwrap();
        enc.finish().unwrap()
    }

    /// Feeds `body` through in pieces of `step` bytes, then asks for more at its end.
    fn walk(body: &[u8], step: usize) -> io::Result<u64> {
        let mut f = Frames::new(body);
        let mut buf = vec![0; step];
        while f.read(&mut buf)? > 0 {}
        match f.more()? {
            true => unreachable!("the body was read to its end"),
            false => Ok(f.frames),
        }
    }

    /// Frames of every kind of header (content size, checksums of blocks and of the content),
    /// one after another, are followed to their ends whatever the pieces they arrive in; every
    /// cut short of a frame's end is refused, saying where it fell.
    #[test]
    fn frames_are_followed_to_their_ends_and_every_cut_is_seen() {
        use lz4_flex::frame::{BlockMode, BlockSize, FrameInfo};
        let text: Vec<u8> = (0..3000)
            .flat_map(|i| format!("line {i} of the body\n").into_bytes())
            .collect();
        let mut body = Vec::new();
        let infos = [
            FrameInfo::new().block_size(BlockSize::Max64KB),
            FrameInfo::new()
                .block_size(BlockSize::Max64KB)
                .block_checksums(true)
                .content_checksum(true)
                .content_size(Some(text.len() as u64)),
            FrameInfo::new().block_mode(BlockMode::Linked),
        ];
        let mut ends = Vec::new();
        for info in infos {
            body.extend(frame(&text, info));
            ends.push(body.len());
        }
        for step in [1, 3, 7, 4096, 1 << 20] {
            assert_eq!(walk(&body, step).unwrap(), 3, "pieces of {step}");
        }
        for cut in 0..body.len() {
            let result = walk(&body[..cut], 4096);
            if ends.contains(&cut) {
                assert!(result.is_ok(), "a body of whole frames, cut at {cut}");
            } else {
                let err = result.expect_err("cut inside a frame");
                assert!(
                    err.to_string().contains("cut short") || err.to_string().contains("no frame"),
                    "{cut}: {err}"
                );
            }
        }
    }

    #[test]
    fn what_is_not_a_frame_is_named() {
        let whole = frame(b"x\n", Default::default());
        let after = format!("byte {}: not the start of an LZ4 frame", whole.len());
        let cases: [(Vec<u8>, &str); 4] = [
            ([&whole[..], b"junk"].concat(), &after),
            (
                [&0x184C_2102u32.to_le_bytes()[..], &[0; 8]].concat(),
                "legacy",
            ),
            (
                [&0x184D_2A50u32.to_le_bytes()[..], &[0; 8]].concat(),
                "skippable",
            ),
            (vec![0x04, 0x22, 0x4d, 0x18, 0xC0, 0x40, 0], "version 3"),
        ];
        for (body, says) in cases {
            let err = walk(&body, 4096).unwrap_err();
            assert!(err.to_string().contains(says), "{says}: {err}");
        }
    }
}
