use super::*;
use crate::config::{Framing, Multiline, MultilineMode};
use proptest::prelude::*;
use regex::bytes::Regex;
use std::time::Duration;

#[derive(Debug, Clone, PartialEq, Eq)]
struct Owned {
    offset: u64,
    len: u64,
    part: Part,
    bytes: Vec<u8>,
}

fn framing(delim: &str, max: usize, ml: Option<MultilineMode>) -> Framing {
    Framing {
        delimiter: delim.as_bytes().to_vec(),
        max_record_bytes: max,
        multiline: ml.map(|mode| Multiline {
            mode,
            timeout: Duration::from_secs(5),
        }),
        container: None,
    }
}

fn run(f: &Framing, chunks: &[&[u8]], finish: bool) -> (Vec<Owned>, u64) {
    let mut fr = Framer::new(f, 0);
    let mut out = Vec::new();
    let mut push = |r: Rec<'_>| {
        out.push(Owned {
            offset: r.offset,
            len: r.len,
            part: r.part,
            bytes: r.bytes.to_vec(),
        })
    };
    for c in chunks {
        fr.push(c, &mut push);
    }
    if finish {
        fr.finish(&mut push);
    }
    (out, fr.consumed())
}

fn whole(offset: u64, s: &str) -> Owned {
    Owned {
        offset,
        len: s.len() as u64,
        part: Part::Whole,
        bytes: s.as_bytes().to_vec(),
    }
}

#[test]
fn lines_with_offsets_crlf_dropped_and_empty_lines_skipped() {
    let f = framing("\n", 100, None);
    let (recs, consumed) = run(&f, &[b"ab\r\n\ncd\nef"], false);
    assert_eq!(recs, vec![whole(0, "ab"), whole(5, "cd")]);
    assert_eq!(consumed, 8, "the partial line 'ef' is not consumed");
    let (recs, consumed) = run(&f, &[b"ab\r\n\ncd\nef"], true);
    assert_eq!(recs.last().unwrap(), &whole(8, "ef"));
    assert_eq!(consumed, 10);
}

#[test]
fn multi_byte_delimiter_across_reads() {
    let f = framing("<|>", 100, None);
    let (recs, _) = run(&f, &[b"one<", b"|", b">two<|", b">three<|>"], false);
    assert_eq!(
        recs,
        vec![whole(0, "one"), whole(6, "two"), whole(12, "three")]
    );
}

/// Cut through a character, a line of text stays text in both parts: the head without the
/// character's first bytes, the tail from the next character on (its offset there); bytes that
/// are not text stay as they are.
#[test]
fn a_cut_through_a_character_keeps_both_parts_text() {
    let f = framing("\n", 1000, None);
    let line = "€".repeat(2000); // 6,000 bytes; 1,000 is no multiple of 3
    for chunks in [vec![format!("{line}\n").into_bytes()], {
        let b = format!("{line}\n").into_bytes();
        b.chunks(777).map(<[u8]>::to_vec).collect()
    }] {
        let chunks: Vec<&[u8]> = chunks.iter().map(Vec::as_slice).collect();
        let (recs, _) = run(&f, &chunks, false);
        assert_eq!(recs.len(), 2);
        let (head, tail) = (&recs[0], &recs[1]);
        assert_eq!((head.offset, head.part, head.len), (0, Part::Head, 6000));
        assert_eq!(std::str::from_utf8(&head.bytes).unwrap(), "€".repeat(333));
        assert_eq!(std::str::from_utf8(&tail.bytes).unwrap(), "€".repeat(333));
        assert_eq!((tail.offset, tail.part), (6000 - 999, Part::Tail));
    }
    // Not text: nothing is taken off.
    let mut bin = vec![0xffu8; 10];
    bin.extend("€".repeat(2000).as_bytes());
    bin.push(b'\n');
    let (recs, _) = run(&f, &[&bin], false);
    assert_eq!(recs[0].bytes.len(), 1000);
    let (h, t) = utf8_cut(b"ab\xe2\x82", &[0x82, 0xac, 0xff, b'a']);
    assert_eq!(
        (h, t),
        (&b"ab"[..], &[0x82, 0xac, 0xff, b'a'][..]),
        "the tail is no text"
    );
    let (h, t) = utf8_cut(b"ab\xe2\x82\xac", b"\xacxyz");
    assert_eq!((h, t), ("ab€".as_bytes(), &b"xyz"[..]));
    let (h, t) = utf8_cut(b"a\x80bc", b"\x80bc");
    assert_eq!(
        (h, t),
        (&b"a\x80bc"[..], &b"\x80bc"[..]),
        "the head is no text"
    );
}

#[test]
fn over_long_record_becomes_head_and_tail() {
    let f = framing("\n", 4, None);
    let (recs, consumed) = run(&f, &[b"0123456789\nok\n"], false);
    assert_eq!(
        recs,
        vec![
            Owned {
                offset: 0,
                len: 10,
                part: Part::Head,
                bytes: b"0123".to_vec()
            },
            Owned {
                offset: 6,
                len: 10,
                part: Part::Tail,
                bytes: b"6789".to_vec()
            },
            whole(11, "ok"),
        ]
    );
    assert_eq!(consumed, 14);
    // Same when the long line arrives a byte at a time.
    let bytes = b"0123456789\nok\n";
    let chunks: Vec<&[u8]> = bytes.chunks(1).collect();
    assert_eq!(run(&f, &chunks, false).0, recs);
}

#[test]
fn a_crlf_line_of_exactly_max_plus_cr_is_whole() {
    let f = framing("\n", 4, None);
    let (recs, _) = run(&f, &[b"01", b"23\r", b"\n"], false);
    assert_eq!(recs, vec![whole(0, "0123")]);
}

#[test]
fn java_stack_traces_break_before_a_timestamp() {
    let re = Regex::new(r"^\d{4}-\d{2}-\d{2} ").unwrap();
    let f = framing("\n", 1000, Some(MultilineMode::BreakBefore(re)));
    let text = "2026-01-01 first\njava.lang.Oops\n\tat a.b(C.java:1)\n2026-01-01 second\n2026-01-01 third\n";
    let (recs, consumed) = run(&f, &[text.as_bytes()], false);
    assert_eq!(
        recs,
        vec![
            whole(0, "2026-01-01 first\njava.lang.Oops\n\tat a.b(C.java:1)"),
            whole(50, "2026-01-01 second")
        ]
    );
    assert_eq!(
        consumed, 68,
        "the third record waits for a next line or the timeout"
    );
    let mut fr = Framer::new(&f, 0);
    let mut out = Vec::new();
    fr.push(text.as_bytes(), &mut |r| {
        out.push(String::from_utf8(r.bytes.to_vec()).unwrap())
    });
    assert!(fr.has_pending_record());
    fr.flush_pending_record(&mut |r| out.push(String::from_utf8(r.bytes.to_vec()).unwrap()));
    assert_eq!(out.last().unwrap(), "2026-01-01 third");
    assert_eq!(fr.consumed(), text.len() as u64);
}

#[test]
fn break_after_ends_records() {
    let re = Regex::new(r";$").unwrap();
    let f = framing("\n", 1000, Some(MultilineMode::BreakAfter(re)));
    let (recs, consumed) = run(&f, &[b"a\nb;\nc;\nd\n"], false);
    assert_eq!(recs, vec![whole(0, "a\nb;"), whole(5, "c;")]);
    assert_eq!(consumed, 8);
}

#[test]
fn multiline_record_over_max_is_cut() {
    let re = Regex::new(r"^S").unwrap();
    let f = framing("\n", 8, Some(MultilineMode::BreakBefore(re)));
    let (recs, _) = run(&f, &[b"S1234\n  abcdefghijkl\n  xyz\nS2\n"], false);
    let full = "S1234\n  abcdefghijkl\n  xyz";
    assert_eq!(
        recs[0],
        Owned {
            offset: 0,
            len: full.len() as u64,
            part: Part::Head,
            bytes: full.as_bytes()[..8].to_vec()
        }
    );
    assert_eq!(recs[1].part, Part::Tail);
    assert_eq!(recs[1].bytes, full.as_bytes()[full.len() - 8..].to_vec());
}

#[test]
fn non_utf8_and_nul_bytes_pass_through() {
    let f = framing("\n", 100, None);
    let (recs, _) = run(&f, &[b"\x00\xff\xfe\n"], false);
    assert_eq!(recs[0].bytes, b"\x00\xff\xfe");
}

/// Records as a simple reference would frame them: split, strip CR, cut.
fn reference(data: &[u8], delim: &[u8], max: usize) -> (Vec<Owned>, u64) {
    let mut out = Vec::new();
    let mut start = 0usize;
    let mut consumed = 0;
    let mut i = 0;
    while i + delim.len() <= data.len() {
        if &data[i..i + delim.len()] == delim {
            let mut body = &data[start..i];
            if delim == b"\n" && body.last() == Some(&b'\r') {
                body = &body[..body.len() - 1];
            }
            let len = body.len() as u64;
            if body.len() > max {
                let (head, tail) = utf8_cut(&body[..max], &body[body.len() - max..]);
                out.push(Owned {
                    offset: start as u64,
                    len,
                    part: Part::Head,
                    bytes: head.to_vec(),
                });
                out.push(Owned {
                    offset: start as u64 + len - tail.len() as u64,
                    len,
                    part: Part::Tail,
                    bytes: tail.to_vec(),
                });
            } else if !body.is_empty() {
                out.push(Owned {
                    offset: start as u64,
                    len,
                    part: Part::Whole,
                    bytes: body.to_vec(),
                });
            }
            i += delim.len();
            start = i;
            consumed = i as u64;
        } else {
            i += 1;
        }
    }
    (out, consumed)
}

proptest! {
    #[test]
    fn any_split_into_reads_frames_like_the_reference(
        data in proptest::collection::vec(prop_oneof![Just(b'a'), Just(b'\n'), Just(b'\r'), Just(b'<'), Just(b'>'), any::<u8>()], 0..400),
        cuts in proptest::collection::vec(0usize..400, 0..10),
        max in 1usize..20,
        multi in any::<bool>(),
    ) {
        let delim: &[u8] = if multi { b"<>" } else { b"\n" };
        let f = framing(std::str::from_utf8(delim).unwrap(), max, None);
        let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(data.len())).collect();
        cuts.sort();
        let mut chunks: Vec<&[u8]> = Vec::new();
        let mut prev = 0;
        for c in cuts { chunks.push(&data[prev..c]); prev = c; }
        chunks.push(&data[prev..]);
        let (got, consumed) = run(&f, &chunks, false);
        let (want, want_consumed) = reference(&data, delim, max);
        prop_assert_eq!(got, want);
        prop_assert_eq!(consumed, want_consumed);
    }
}
