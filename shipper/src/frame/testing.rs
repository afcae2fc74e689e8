//! Helpers for tests that frame container runtime lines, here and in `transform`.

use super::{Framer, Part, Rec};
use crate::config::transforms::ContainerFormat;
use crate::config::Framing;

pub(crate) fn framing(format: ContainerFormat, max: usize) -> Framing {
    Framing {
        delimiter: b"\n".to_vec(),
        max_record_bytes: max,
        multiline: None,
        container: Some(format),
    }
}

/// (offset, part, bytes) of every record, and `consumed` after each chunk.
pub(crate) fn run(f: &Framing, chunks: &[&[u8]]) -> (Vec<(u64, Part, String)>, Vec<u64>) {
    let mut fr = Framer::new(f, 0);
    let mut out = Vec::new();
    let mut consumed = Vec::new();
    for c in chunks {
        fr.push(c, &mut |r: Rec<'_>| {
            out.push((
                r.offset,
                r.part,
                String::from_utf8_lossy(r.bytes).into_owned(),
            ))
        });
        consumed.push(fr.consumed());
    }
    (out, consumed)
}
