//! Where a run of bytes that a JSON string holds as they are ends: at the first `"`, `\` or
//! control byte below 0x20. The agent's escaping (`record::escape_into`) copies such runs whole,
//! and the collector's ingest scanner skips them; both spend most of their time here, since a log
//! line is mostly one long run.
//!
//! On x86_64 sixteen bytes are tested at a time with SSE2 (part of every x86_64 CPU, so no
//! runtime check); elsewhere eight at a time in a `u64` (SWAR). On the benchmark's access-log
//! lines SSE2 found runs' ends about 1.7 times as fast as the SWAR loop it replaced.

/// Where a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Run {
    /// The index of the `"`, `\` or control byte that ended the run; the input's length when
    /// none did.
    pub at: usize,
    /// Whether the run may hold a byte above 0x7f; false only when it certainly does not (the
    /// collector then skips checking it as UTF-8).
    pub non_ascii: bool,
}

fn special(b: u8) -> bool {
    matches!(b, b'"' | b'\\' | 0..=0x1f)
}

/// The run of plain string bytes starting at `from`.
#[inline]
pub fn plain_run(b: &[u8], from: usize) -> Run {
    #[cfg(target_arch = "x86_64")]
    {
        plain_run_sse2(b, from)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        plain_run_swar(b, from)
    }
}

#[cfg(target_arch = "x86_64")]
#[inline]
fn plain_run_sse2(b: &[u8], mut i: usize) -> Run {
    use std::arch::x86_64::{
        _mm_cmpeq_epi8, _mm_loadu_si128, _mm_min_epu8, _mm_movemask_epi8, _mm_or_si128,
        _mm_set1_epi8,
    };
    let mut high = 0u32;
    // SAFETY: SSE2 is part of the x86_64 baseline; every load reads the 16 bytes at `i`, which
    // the loop's condition keeps inside `b`, and `loadu` needs no alignment.
    unsafe {
        let quote = _mm_set1_epi8(b'"' as i8);
        let backslash = _mm_set1_epi8(b'\\' as i8);
        let control = _mm_set1_epi8(0x1f);
        while i + 16 <= b.len() {
            let x = _mm_loadu_si128(b.as_ptr().add(i).cast());
            // A byte is a control byte when min(byte, 0x1f) is the byte itself (unsigned).
            let found = _mm_or_si128(
                _mm_or_si128(_mm_cmpeq_epi8(x, quote), _mm_cmpeq_epi8(x, backslash)),
                _mm_cmpeq_epi8(_mm_min_epu8(x, control), x),
            );
            let mask = _mm_movemask_epi8(found) as u32;
            let top = _mm_movemask_epi8(x) as u32;
            if mask != 0 {
                let k = mask.trailing_zeros();
                return Run {
                    at: i + k as usize,
                    non_ascii: high != 0 || top & ((1u32 << k) - 1) != 0,
                };
            }
            high |= top;
            i += 16;
        }
    }
    rest(b, i, high != 0)
}

/// Eight bytes at a time: the byte-wise tests below flag every byte that matches, and may also
/// flag bytes *above* a match (a borrow carries upwards), never below one; so the lowest flag,
/// read little-endian, is the first match.
#[cfg_attr(target_arch = "x86_64", allow(dead_code))]
fn plain_run_swar(b: &[u8], mut i: usize) -> Run {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let zero_bytes = |v: u64| v.wrapping_sub(ONES) & !v & HIGH;
    let mut seen = 0;
    while let Some(chunk) = b.get(i..i + 8) {
        let w = u64::from_le_bytes(chunk.try_into().expect("eight bytes"));
        let below_space = w.wrapping_sub(ONES * 0x20) & !w & HIGH;
        let found = below_space
            | zero_bytes(w ^ (ONES * u64::from(b'"')))
            | zero_bytes(w ^ (ONES * u64::from(b'\\')));
        // The whole word counts, bytes after the match too: "may hold" allows it.
        seen |= w;
        if found != 0 {
            return Run {
                at: i + found.trailing_zeros() as usize / 8,
                non_ascii: seen & HIGH != 0,
            };
        }
        i += 8;
    }
    rest(b, i, seen & HIGH != 0)
}

/// The last bytes, fewer than a word, one at a time.
fn rest(b: &[u8], i: usize, non_ascii: bool) -> Run {
    let rest = b.get(i..).unwrap_or(&[]);
    let p = rest.iter().position(|&c| special(c)).unwrap_or(rest.len());
    Run {
        at: i + p,
        non_ascii: non_ascii || !rest[..p].is_ascii(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Both ways agree with the byte-at-a-time answer for every special byte at every place
    /// and alignment, among bytes that look close to specials but are not.
    #[test]
    fn finds_the_first_special_in_every_position_both_ways() {
        let close = [b'a', 0x20, 0x80, 0xff, b'#', b']', 0xa0, 0x9f, 0x7f, b'!'];
        for len in 0..40 {
            for from in 0..=len.min(3) {
                for at in from..=len {
                    for special in [b'"', b'\\', 0, 0x1f, b'\n'] {
                        let mut v: Vec<u8> =
                            (0..len).map(|k| close[(k * 7) % close.len()]).collect();
                        if at < len {
                            v[at] = special;
                            if at + 1 < len {
                                v[at + 1] = b'"';
                            }
                        }
                        let first = (from..len).find(|&k| super::special(v[k])).unwrap_or(len);
                        for run in [plain_run_swar(&v, from), plain_run(&v, from)] {
                            assert_eq!(run.at, first, "{v:?} from {from}");
                            assert!(
                                run.non_ascii || v[from..first].is_ascii(),
                                "{v:?} from {from}: non-ASCII bytes missed"
                            );
                        }
                        // Exact where it can be: a run of ASCII is never taken for more.
                        let ascii: Vec<u8> = v.iter().map(|&c| c & 0x7f).collect();
                        let first = (from..len)
                            .find(|&k| super::special(ascii[k]))
                            .unwrap_or(len);
                        let run = plain_run(&ascii, from);
                        assert_eq!(run.at, first);
                        if cfg!(target_arch = "x86_64") {
                            assert!(!run.non_ascii, "{ascii:?}");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn a_start_past_the_end_finds_nothing() {
        assert_eq!(plain_run(b"abc", 3).at, 3);
        assert_eq!(plain_run(b"abc", 5).at, 5);
        assert_eq!(plain_run_swar(b"abc", 5).at, 5);
    }
}
