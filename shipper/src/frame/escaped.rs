//! Cutting JSON string content (the text between the quotes, escaped as `serde_json` writes it)
//! so that a piece is still valid content on its own: never inside an escape (`\n`, `\"`, `\\`,
//! `\u001b`) nor inside a UTF-8 character.
//!
//! A Docker record joined from partial lines holds its `log` escaped; when it is cut for length,
//! each part is written back as a JSON object, and a part that began or ended inside an escape
//! would not parse, so the `docker` transform would give it no `fields`.

/// The length of the token (an escape or one character) starting at `s[i]`, a token start.
fn token_len(s: &[u8], i: usize) -> usize {
    match s[i] {
        b'\\' if s.get(i + 1) == Some(&b'u') => 6,
        b'\\' => 2,
        c if c < 0x80 => 1,
        c if c >= 0xF0 => 4,
        c if c >= 0xE0 => 3,
        _ => 2,
    }
}

fn is_continuation(c: u8) -> bool {
    (0x80..0xC0).contains(&c)
}

/// The end of the longest prefix of `s` made of whole tokens; `s` starts where the content
/// starts, so every token is known from there.
pub fn prefix_end(s: &[u8]) -> usize {
    let mut i = 0;
    while i < s.len() {
        let n = token_len(s, i);
        if i + n > s.len() {
            break;
        }
        i += n;
    }
    i
}

/// Where the first token of `s` that surely starts inside it begins; `s` ends where the content
/// ends, but starts anywhere, so its first bytes may finish an escape or a character begun
/// before it.
pub fn suffix_start(s: &[u8]) -> usize {
    // Non-backslash bytes just before `p`.
    let mut plain = 0;
    for (p, &c) in s.iter().enumerate() {
        if c == b'\\' {
            // Only `\\` has a backslash as its second byte, so one after another byte starts
            // an escape.
            if p > 0 && s[p - 1] != b'\\' {
                return p;
            }
            plain = 0;
        } else {
            // An escape is at most 6 bytes: 5 bytes without a backslash close any open one.
            if plain >= 5 && !is_continuation(c) {
                return p;
            }
            plain += 1;
        }
    }
    // Nothing certain before the end. Backslashes alone that end where the content ends are
    // `\\` pairs counted from that end; anything else is too short to place and is left out.
    if s.iter().all(|&c| c == b'\\') {
        s.len() % 2
    } else {
        s.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Every token boundary of `content`, found from its start.
    fn boundaries(content: &[u8]) -> Vec<usize> {
        let mut at = vec![0];
        let mut i = 0;
        while i < content.len() {
            i += token_len(content, i);
            at.push(i);
        }
        at
    }

    fn parses(piece: &[u8]) -> bool {
        let quoted = [b"\"", piece, b"\""].concat();
        serde_json::from_slice::<String>(&quoted).is_ok()
    }

    fn escaped(text: &str) -> Vec<u8> {
        let q = serde_json::to_vec(text).unwrap();
        q[1..q.len() - 1].to_vec()
    }

    proptest! {
        #[test]
        fn every_cut_lands_on_a_token_boundary(
            text in proptest::collection::vec(
                prop_oneof![
                    Just('\\'), Just('"'), Just('\n'), Just('\u{1b}'), Just('u'), Just('0'),
                    Just('a'), Just('é'), Just('中'), Just('😀'), Just(' '),
                ],
                0..60,
            ).prop_map(|cs| cs.into_iter().collect::<String>())
        ) {
            let content = escaped(&text);
            let at = boundaries(&content);
            for cut in 0..=content.len() {
                let end = prefix_end(&content[..cut]);
                prop_assert!(at.contains(&end) && cut - end < 6, "prefix {cut} -> {end}");
                prop_assert!(parses(&content[..end]));
                let start = cut + suffix_start(&content[cut..]);
                prop_assert!(at.contains(&start), "suffix {cut} -> {start} of {:?}", text);
                prop_assert!(parses(&content[start..]));
            }
        }
    }

    #[test]
    fn a_suffix_of_text_loses_at_most_the_token_it_starts_in() {
        let content = escaped("GET /a?q=\"x\" 200 \u{1b}[0m done\n");
        for cut in 0..content.len() {
            let start = cut + suffix_start(&content[cut..]);
            assert!(start - cut <= 6, "{cut} -> {start}");
        }
        // Backslashes alone are pairs from the end.
        assert_eq!(suffix_start(br"\\\\\"), 1);
        assert_eq!(suffix_start(br"\\\\"), 0);
    }
}
