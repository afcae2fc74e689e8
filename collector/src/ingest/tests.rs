use super::*;

fn rec(host: &str, stream: &str, offset: u64, part: &str) -> String {
    format!(
        r#"{{"host":"{host}","source":"s","stream":"{stream}","path":"/var/log/x","offset":{offset},"len":5,"part":"{part}","ts":"2026-01-01T00:00:00Z","msg":"hello","extra":[1,2]}}"#
    )
}

#[test]
fn groups_by_stream_and_keeps_lines_verbatim() {
    let body = format!(
        "{}\n{}\r\n\n{}",
        rec("h", "a", 0, "whole"),
        rec("h", "b", 0, "head"),
        rec("h", "a", 6, "whole")
    );
    let batch = parse_batch(body.into_bytes(), "h").unwrap();
    assert_eq!(batch.record_count, 3);
    assert_eq!(batch.streams.len(), 2);
    assert_eq!(batch.streams[0].stream, "a");
    assert_eq!(batch.streams[0].records.len(), 2);
    assert_eq!(batch.streams[1].records[0].part, Part::Head);
    let line = batch.line(&batch.streams[0].records[1]);
    assert_eq!(line, rec("h", "a", 6, "whole").as_bytes());
    assert_eq!(
        batch.path_of(&batch.streams[0].records[0]).as_deref(),
        Some("/var/log/x")
    );
}

#[test]
fn another_host_refuses_the_whole_batch() {
    let body = format!(
        "{}\n{}\n",
        rec("h", "a", 0, "whole"),
        rec("other", "a", 6, "whole")
    );
    let err = parse_batch(body.into_bytes(), "h").unwrap_err();
    assert!(
        matches!(err, IngestError::HostMismatch { line: 2, .. }),
        "{err}"
    );
    assert_eq!(err.status(), 403);
}

#[test]
fn malformed_lines_name_the_line() {
    let err = parse_batch(b"{\"host\":\"h\"}\n".to_vec(), "h").unwrap_err();
    assert!(err.to_string().starts_with("line 1:"), "{err}");
    let mut bad = rec("h", "a", 0, "whole").into_bytes();
    let at = bad.len() - 20;
    bad[at] = 0xff;
    let err = parse_batch(bad, "h").unwrap_err();
    assert!(matches!(err, IngestError::NotUtf8 { line: 1, .. }), "{err}");
    assert!(err.to_string().contains("not UTF-8"), "{err}");
    let err = parse_batch(b"[1]\n".to_vec(), "h").unwrap_err();
    assert!(matches!(err, IngestError::NotObject { line: 1 }));
    let body = rec("h", "", 0, "whole");
    assert!(matches!(
        parse_batch(body.into_bytes(), "h"),
        Err(IngestError::BadId { .. })
    ));
}

#[test]
fn a_line_with_bad_utf8_in_a_skipped_field_is_refused() {
    // serde_json does not check the UTF-8 of values it skips; a stored
    // line must still be JSON, which is UTF-8.
    let mut body = rec("h", "a", 0, "whole").into_bytes();
    body.push(b'\n');
    let second = rec("h", "a", 9, "whole").into_bytes();
    let msg = body.len() + second.windows(5).position(|w| w == b"hello").unwrap();
    body.extend_from_slice(&second);
    body.splice(msg..msg, *b"\xff");
    let err = parse_batch(body, "h").unwrap_err();
    assert!(matches!(err, IngestError::NotUtf8 { line: 2, .. }), "{err}");
}

/// `parse_batch` without the fast path: a whole-line UTF-8 check, then
/// serde_json for every line. The model the property test below compares
/// with.
fn parse_with_serde_only(
    body: &[u8],
    cert_host: &str,
) -> Result<(Vec<StreamRecords>, usize), IngestError> {
    let mut streams: Vec<StreamRecords> = Vec::new();
    let mut count = 0;
    let mut start = 0;
    let mut line_no = 0;
    while start < body.len() {
        line_no += 1;
        let end = body[start..]
            .iter()
            .position(|b| *b == b'\n')
            .map_or(body.len(), |i| start + i);
        let mut range = start..end;
        start = end + 1;
        if body[range.clone()].ends_with(b"\r") {
            range.end -= 1;
        }
        let text = &body[range.clone()];
        let Some(first) = text.iter().position(|b| !b.is_ascii_whitespace()) else {
            continue;
        };
        if text[first] != b'{' {
            return Err(IngestError::NotObject { line: line_no });
        }
        if let Err(e) = std::str::from_utf8(text) {
            return Err(IngestError::NotUtf8 {
                line: line_no,
                at: e.valid_up_to(),
            });
        }
        let rec: WireRecord<'_> =
            serde_json::from_slice(text).map_err(|source| IngestError::Json {
                line: line_no,
                source,
            })?;
        if rec.host != cert_host {
            return Err(IngestError::HostMismatch {
                line: line_no,
                record: rec.host.into_owned(),
                cert: cert_host.to_owned(),
            });
        }
        names::check_id(&rec.stream).map_err(|source| IngestError::BadId {
            line: line_no,
            field: "stream",
            source,
        })?;
        let record = Record {
            offset: rec.offset,
            part: rec.part,
            line: range,
        };
        match streams.iter_mut().find(|s| s.stream == rec.stream) {
            Some(s) => s.records.push(record),
            None => streams.push(StreamRecords {
                stream: rec.stream.into_owned(),
                records: vec![record],
            }),
        }
        count += 1;
    }
    Ok((streams, count))
}

mod model {
    use super::*;
    use proptest::prelude::*;

    /// A body line: an agent record (any message, sometimes another host
    /// or a bad stream id), maybe with a byte changed or inserted.
    fn line() -> impl Strategy<Value = Vec<u8>> {
        let host = prop_oneof![8 => Just("h"), 1 => Just("other"), 1 => Just("h\\u0000")];
        let stream = prop_oneof![4 => Just("a".to_owned()), 4 => Just("b".to_owned()), 1 => Just(String::new()), 1 => "[a-z]{79,82}"];
        let msg = any::<String>().prop_map(|m| serde_json::to_string(&m).unwrap());
        let edit = prop_oneof![
            6 => Just(None),
            1 => (any::<proptest::sample::Index>(), any::<u8>()).prop_map(Some),
            1 => (any::<proptest::sample::Index>(), prop_oneof![Just(0xffu8), Just(0xc3), Just(b'"'), Just(b'\\'), Just(1)]).prop_map(Some),
        ];
        (host, stream, any::<u32>(), msg, edit, any::<bool>()).prop_map(
            |(host, stream, offset, msg, edit, replace)| {
                let mut b = format!(
                    r#"{{"host":"{host}","stream":"{stream}","offset":{offset},"part":"whole","msg":{msg}}}"#
                )
                .into_bytes();
                if let Some((at, x)) = edit {
                    let at = at.index(b.len());
                    if replace {
                        b[at] = x;
                    } else {
                        b.insert(at, x);
                    }
                }
                b
            },
        )
    }

    fn body() -> impl Strategy<Value = Vec<u8>> {
        let sep =
            prop_oneof![6 => Just(&b"\n"[..]), 1 => Just(&b"\r\n"[..]), 1 => Just(&b"\n \n"[..])];
        (
            proptest::collection::vec((line(), sep), 0..6),
            any::<bool>(),
        )
            .prop_map(|(lines, last_newline)| {
                let mut body = Vec::new();
                for (line, sep) in &lines {
                    body.extend_from_slice(line);
                    body.extend_from_slice(sep);
                }
                if !last_newline && body.ends_with(b"\n") {
                    body.pop();
                }
                body
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 5_000, ..ProptestConfig::default() })]
        #[test]
        fn read_in_any_pieces_agrees_with_parse_batch(
            body in body(),
            sizes in proptest::collection::vec(1usize..600, 1..8),
            piece in 1u64..700,
            coding in prop_oneof![Just(None), Just(Some("gzip")), Just(Some("lz4"))],
        ) {
            let want = parse_batch(body.clone(), "h").map(|b| (b.streams, b.record_count, b.body)).map_err(|e| e.to_string());
            let wire = match coding {
                Some("gzip") => gzip(&body),
                Some(_) => lz4(&body),
                None => body.clone(),
            };
            let src = std::io::BufReader::with_capacity(97, Chunky { data: &wire, sizes, next: 0 });
            // The records handed over piece by piece only ever grow, and
            // they are the final batch's first records.
            let mut seen: Vec<usize> = Vec::new();
            let got = read_batch_in_pieces(src, coding, 1 << 20, 0, "h", piece, |_, streams: &[StreamRecords]| {
                for (i, sr) in streams.iter().enumerate() {
                    match seen.get_mut(i) {
                        Some(n) => { assert!(sr.records.len() >= *n); *n = sr.records.len(); }
                        None => seen.push(sr.records.len()),
                    }
                }
                Ok::<(), IngestError>(())
            }).map(|b| (b.streams, b.record_count, b.body)).map_err(|e| e.to_string());
            prop_assert_eq!(got, want, "{:?}", String::from_utf8_lossy(&body));
        }

        #[test]
        fn parse_batch_agrees_with_serde_only(body in body()) {
            let want = parse_with_serde_only(&body, "h").map_err(|e| e.to_string());
            let got = parse_batch(body.clone(), "h")
                .map(|b| (b.streams, b.record_count))
                .map_err(|e| e.to_string());
            prop_assert_eq!(got, want, "{:?}", String::from_utf8_lossy(&body));
        }
    }
}

/// Hands out `data` in the sizes given, again and again, like a body
/// arriving in TLS records of any size.
struct Chunky<'a> {
    data: &'a [u8],
    sizes: Vec<usize>,
    next: usize,
}

impl Read for Chunky<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let want = self.sizes[self.next % self.sizes.len()].max(1);
        self.next += 1;
        let n = want.min(buf.len()).min(self.data.len());
        buf[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Ok(n)
    }
}

fn gzip(data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(data).unwrap();
    enc.finish().unwrap()
}

/// The LZ4 frame an agent sends, in blocks small enough that a test body spans several.
fn lz4(data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let info = lz4_flex::frame::FrameInfo::new().block_size(lz4_flex::frame::BlockSize::Max64KB);
    let mut enc = lz4_flex::frame::FrameEncoder::with_frame_info(info, Vec::new());
    enc.write_all(data).unwrap();
    enc.finish().unwrap()
}

/// As gzip is: decoded, bounded after decoding, and refused when corrupt or cut short,
/// with an error naming the encoding.
#[test]
fn lz4_is_decoded_and_bounded() {
    let plain = lines(3000);
    let z = lz4(&plain);
    assert!(z.len() < plain.len() / 3, "several blocks, compressed");
    let whole = |body: &[u8], limit| read_batch(body, Some("lz4"), limit, 0, "h");
    let batch = whole(&z, plain.len() as u64).unwrap();
    assert_eq!((batch.record_count, batch.body), (3000, plain.clone()));
    // Two frames back to back are one body, as two gzip members are.
    let mut two = lz4(&plain[..plain.len() / 2]);
    two.extend(lz4(&plain[plain.len() / 2..]));
    assert_eq!(whole(&two, 1 << 24).unwrap().record_count, 3000);
    assert!(matches!(
        whole(&z, plain.len() as u64 - 1),
        Err(IngestError::TooLarge { .. })
    ));
    // Cut between two blocks (the end mark gone, or a whole block too), or followed by bytes
    // that are no frame: the decoder alone took each for a whole body.
    let last_block = z.len() - 4 - block_size_at_end(&z);
    let junk_after = [&z[..], b"junk"].concat();
    for bad in [
        &z[..z.len() - 10],
        &z[..z.len() / 2],
        &z[..z.len() - 4],
        &z[..last_block],
        &junk_after[..],
        &b"{\"host\":\"h\"}\n"[..],
    ] {
        let err = whole(bad, 1 << 24).unwrap_err();
        assert!(matches!(err, IngestError::Lz4(_)), "{err}");
        assert_eq!(err.status(), 400);
        assert!(err.to_string().contains("Content-Encoding: lz4"), "{err}");
    }
    let mut flipped = z.clone();
    let mid = flipped.len() / 2;
    flipped[mid] ^= 0xff;
    flipped[mid + 1] ^= 0x55;
    // A changed byte either breaks the frame or changes a line, which parsing then refuses
    // (or stores as the agent could have sent it: TLS, not LZ4, guards the bytes).
    if let Err(err) = whole(&flipped, 1 << 24) {
        assert_eq!(err.status(), 400, "{err}");
    }
}

/// The size, with its size word, of the last block of a frame without checksums.
fn block_size_at_end(frame: &[u8]) -> usize {
    let mut at = 7;
    let mut last = 0;
    loop {
        let word = u32::from_le_bytes(frame[at..at + 4].try_into().unwrap());
        if word == 0 {
            return last;
        }
        last = 4 + (word & 0x7FFF_FFFF) as usize;
        at += last;
    }
}

/// A frame that ends exactly where a piece of the body does is followed by the next frame's
/// lines, not taken for the body's end.
#[test]
fn an_lz4_frame_ending_at_a_piece_boundary_is_not_the_end() {
    let plain = lines(2000);
    let cut = plain[..plain.len() / 2]
        .iter()
        .rposition(|&b| b == b'\n')
        .unwrap()
        + 1;
    let mut two = lz4(&plain[..cut]);
    two.extend(lz4(&plain[cut..]));
    let got = read_batch_in_pieces(
        &two[..],
        Some("lz4"),
        1 << 24,
        0,
        "h",
        cut as u64,
        |_, _| Ok::<_, IngestError>(()),
    )
    .unwrap();
    assert_eq!((got.record_count, got.body), (2000, plain));
}

fn lines(n: u64) -> Vec<u8> {
    (0..n)
        .map(|i| rec("h", "a", i, "whole") + "\n")
        .collect::<String>()
        .into_bytes()
}

#[test]
fn gzip_is_decoded_and_bounded() {
    let plain = lines(40);
    let gz = gzip(&plain);
    let whole = |limit| read_batch(&gz[..], Some("gzip"), limit, 0, "h");
    let batch = whole(plain.len() as u64).unwrap();
    assert_eq!((batch.record_count, batch.body), (40, plain.clone()));
    assert!(matches!(
        whole(plain.len() as u64 - 1),
        Err(IngestError::TooLarge { .. })
    ));
    assert!(matches!(
        read_batch(&plain[..], None, plain.len() as u64 - 1, 0, "h"),
        Err(IngestError::TooLarge { .. })
    ));
    assert!(matches!(
        read_batch(&[1u8, 2][..], Some("br"), 10, 0, "h"),
        Err(IngestError::Encoding(_))
    ));
    let truncated = &gz[..gz.len() - 10];
    assert!(matches!(
        read_batch(truncated, Some("gzip"), 1 << 20, 0, "h"),
        Err(IngestError::Gzip(_))
    ));
}

/// Members back to back (`cat a.gz b.gz`) are one body; bytes after the last member that start
/// no other are refused naming them, where they were refused as "unexpected end of file".
#[test]
fn gzip_members_are_one_body_and_trailing_bytes_are_named() {
    let plain = lines(40);
    let cut = plain[..plain.len() / 2]
        .iter()
        .rposition(|&b| b == b'\n')
        .unwrap()
        + 1;
    let two = [gzip(&plain[..cut]), gzip(&plain[cut..])].concat();
    let batch = read_batch(&two[..], Some("gzip"), 1 << 20, 0, "h").unwrap();
    assert_eq!((batch.record_count, batch.body), (40, plain.clone()));
    // The bound holds across members: the first alone fits, both do not.
    assert!(matches!(
        read_batch(&two[..], Some("gzip"), plain.len() as u64 - 1, 0, "h"),
        Err(IngestError::TooLarge { .. })
    ));
    for junk in [&b"\n\n"[..], b"junk", &[0u8; 300]] {
        let body = [&two[..], junk].concat();
        let err = read_batch(&body[..], Some("gzip"), 1 << 20, 0, "h").unwrap_err();
        assert!(
            matches!(err, IngestError::GzipTrailing { at, len } if at == two.len() as u64 && len == junk.len() as u64),
            "{err}"
        );
        assert_eq!(err.status(), 400);
        let says = format!("{} trailing bytes after the gzip stream", junk.len());
        assert!(err.to_string().contains(&says), "{err}");
        assert!(err.to_string().contains("Content-Encoding: gzip"), "{err}");
    }
}

/// A body whose source fails (the connection broke, or the pump
/// refused it) is never a batch, whatever came before.
#[test]
fn a_body_cut_short_is_no_batch() {
    struct Cut<'a>(&'a [u8]);
    impl Read for Cut<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            if self.0.is_empty() {
                return Err(std::io::Error::other(BodyCut));
            }
            let n = self.0.len().min(buf.len());
            buf[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }
    let plain = lines(3);
    assert!(matches!(
        read_batch(std::io::BufReader::new(Cut(&plain)), None, 1 << 20, 0, "h"),
        Err(IngestError::Cut)
    ));
    let gz = gzip(&plain);
    assert!(matches!(
        read_batch(
            std::io::BufReader::new(Cut(&gz)),
            Some("gzip"),
            1 << 20,
            0,
            "h"
        ),
        Err(IngestError::Cut)
    ));
}
