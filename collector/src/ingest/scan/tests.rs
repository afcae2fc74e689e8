use super::*;
use proptest::prelude::*;

/// A line exactly as the agent writes it.
fn agent_line(offset: u64, part: &str, msg_field: &str) -> String {
    format!(
        r#"{{"host":"bench-host","source":"bench","stream":"3f2a9c0d4e5b6a71","fingerprint":"00000000deadbeef","path":"/x/input.log","offset":{offset},"len":210,"part":"{part}","ts":"2026-11-26T10:00:00.000Z",{msg_field}}}"#
    )
}

fn serde(line: &[u8]) -> Option<WireRecord<'_>> {
    serde_json::from_slice(line).ok()
}

/// The one rule, for one line: the fast path defers, or it agrees with
/// serde_json.
fn agrees(line: &[u8]) -> Result<(), TestCaseError> {
    if let Some(fast) = wire_record(line) {
        let slow = serde_json::from_slice::<WireRecord<'_>>(line);
        prop_assert!(
            slow.is_ok(),
            "fast path accepted what serde_json refuses ({:?}): {:?}",
            slow.err(),
            String::from_utf8_lossy(line)
        );
        prop_assert_eq!(fast, slow.unwrap(), "{:?}", String::from_utf8_lossy(line));
    }
    Ok(())
}

#[test]
fn reads_agent_lines() {
    for (line, part) in [
        (
            agent_line(123, "whole", r#""msg":"GET \"/\" 200\tok é漢🙂 \u00e9\/""#),
            Part::Whole,
        ),
        (agent_line(0, "head", r#""msg_b64":"/wBvaw==""#), Part::Head),
        (agent_line(u64::MAX, "tail", r#""msg":"""#), Part::Tail),
    ] {
        let fast = wire_record(line.as_bytes()).expect("agent lines take the fast path");
        assert_eq!(fast, serde(line.as_bytes()).unwrap());
        assert_eq!(fast.part, part);
        assert!(matches!(fast.host, Cow::Borrowed("bench-host")));
    }
}

/// A record with `fields` (a syslog input's, a parser's) carries a
/// nested object on every line: it stays on the fast path.
#[test]
fn reads_agent_lines_with_nested_fields() {
    let fields = r#""fields":{"facility":"local4","severity":"info","structured_data":{"ex@32473":{"iut":"3","k":["a",{"b":null}]}},"peer":"10.0.0.1:514","n":-1.5e3,"ok":true,"e":{},"l":[]}"#;
    let line = agent_line(9, "whole", &format!(r#""msg":"m",{fields}"#));
    let fast = wire_record(line.as_bytes()).expect("nested fields take the fast path");
    assert_eq!(fast, serde(line.as_bytes()).unwrap());
    // Spacing and the nesting's own errors, as serde_json sees them.
    for (value, fine) in [
        (
            " { \"a\" : [ 1 , { } , [ ] ] , \"b\" : { \"c\" : \"d\" } } ",
            true,
        ),
        (r#"{"a":1,"a":2}"#, true),
        (r#"[[[[[]]]]]"#, true),
        (r#"{"a":1,}"#, false),
        (r#"[1,]"#, false),
        (r#"[1 2]"#, false),
        (r#"{"a" 1}"#, false),
        (r#"{1:2}"#, false),
        (r#"{"a":1]"#, false),
        (r#"[1}"#, false),
        (r#"[01]"#, false),
        (r#"{"a":[1,{"b":2}}"#, false),
        (r#"{"a":"\x"}"#, false),
        (r#"{"a\u0041":"\u00e9"}"#, true),
    ] {
        let line = agent_line(9, "whole", &format!(r#""msg":"m","fields":{value}"#));
        assert_eq!(
            wire_record(line.as_bytes()).is_some(),
            fine,
            "{value}: {:?}",
            serde(line.as_bytes())
        );
        assert_eq!(serde(line.as_bytes()).is_some(), fine, "{value}");
        agrees(line.as_bytes()).unwrap();
    }
}

#[test]
fn values_nested_past_max_depth_defer_to_serde() {
    let nest = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
    let line = |n| agent_line(1, "whole", &format!(r#""msg":"m","fields":{}"#, nest(n)));
    let at_max = line(MAX_DEPTH as usize);
    assert!(wire_record(at_max.as_bytes()).is_some());
    agrees(at_max.as_bytes()).unwrap();
    let deeper = line(MAX_DEPTH as usize + 1);
    assert_eq!(wire_record(deeper.as_bytes()), None);
}

#[test]
fn whitespace_and_key_order_are_fine() {
    let line =
        " {\t\"part\" : \"head\" ,\"offset\":7,\r\"stream\":\"s\",\"x\":[ ],\"host\":\"h\"} \r";
    assert_eq!(wire_record(line.as_bytes()), serde(line.as_bytes()));
    assert!(wire_record(line.as_bytes()).is_some());
    let line =
        " {\t\"part\" : \"head\" ,\"offset\":7,\r\"stream\":\"s\",\"x\":-0.5e+3,\"host\":\"h\"} \r";
    assert_eq!(wire_record(line.as_bytes()), serde(line.as_bytes()));
    assert!(wire_record(line.as_bytes()).is_some());
}

/// Lines serde_json refuses or reads differently; each must defer.
#[test]
fn defers_whatever_is_not_plain() {
    let base = agent_line(5, "whole", r#""msg":"m""#);
    let cases = [
        base.replace(r#""host":"bench-host""#, r#""host":"bench\u002dhost""#),
        base.replace(r#""host""#, r#""ho\u0073t""#),
        base.replace(r#""stream":"3f2a9c0d4e5b6a71""#, r#""stream":"3f\n""#),
        base.replace(r#""offset":5"#, r#""offset":05"#),
        base.replace(r#""offset":5"#, r#""offset":-5"#),
        base.replace(r#""offset":5"#, r#""offset":5.0"#),
        base.replace(r#""offset":5"#, r#""offset":5e0"#),
        base.replace(r#""offset":5"#, r#""offset":18446744073709551616"#),
        base.replace(r#""offset":5"#, r#""offset":"5""#),
        base.replace(r#""part":"whole""#, r#""part":"Whole""#),
        base.replace(r#""part":"whole""#, r#""part":{"whole":null}"#),
        base.replace(r#""len":210"#, r#""len":0210"#),
        base.replace(r#""len":210"#, r#""len":1."#),
        base.replace(r#""len":210"#, r#""len":tru"#),
        base.replace(r#""msg":"m""#, r#""msg":"a\x""#),
        base.replace(r#""msg":"m""#, r#""msg":"\u12""#),
        base.replace(r#""msg":"m""#, r#""msg":"\u123""#),
        base.replace(r#""msg":"m""#, r#""msg":"\u00g0""#),
        base.replace(r#""msg":"m""#, r#""msg":"\U0041""#),
        base.replace(r#""msg":"m""#, "\"msg\":\"tab\there\""),
        base.replace(r#""len":210,"#, r#""offset":6,"#),
        base.replace(r#""len":210,"#, r#""len":210,,"#),
        base.replace('}', ",}"),
        base.replace('}', "}x"),
        base[..base.len() - 1].to_owned(),
        format!("\x0c{base}"),
        format!("[{base}]"),
        "{}".to_owned(),
    ];
    for line in &cases {
        assert_eq!(wire_record(line.as_bytes()), None, "{line}");
        agrees(line.as_bytes()).unwrap();
    }
}

#[test]
fn defers_lines_that_are_not_utf8() {
    let base = agent_line(5, "whole", r#""msg":"caf\u00e9 é""#);
    for (from, to) in [
        // serde_json refuses these: a key and a kept value.
        (&b"\"path\""[..], &b"\"p\xffth\""[..]),
        (b"bench-host", b"bench-h\xc3st"),
        // serde_json takes this one (it never decodes `msg`), and
        // still gets it: the fast path reads only lines that are
        // UTF-8 all through.
        ("é".as_bytes(), b"\xe9"),
    ] {
        let at = base.find(std::str::from_utf8(from).unwrap()).unwrap();
        let mut line = base.as_bytes().to_vec();
        line.splice(at..at + from.len(), to.iter().copied());
        assert_eq!(
            wire_record(&line),
            None,
            "{}",
            String::from_utf8_lossy(&line)
        );
        agrees(&line).unwrap();
    }
    assert!(wire_record(base.as_bytes()).is_some());
}

#[test]
fn find_special_finds_the_first_in_every_position() {
    for len in 0..20 {
        for at in 0..len {
            for special in [b'"', b'\\', 0, 0x1f] {
                let mut v = vec![b'a'; len];
                // Bytes that look close to the specials but are not.
                for (k, x) in v.iter_mut().enumerate() {
                    *x = [b'a', 0x20, 0x80, 0xff, b'#', b']', 0xa0, 0x9f][k % 8];
                }
                v[at] = special;
                if at + 1 < len {
                    v[at + 1] = b'"';
                }
                let run = find_special(&v, 0).unwrap();
                assert_eq!(run.at, at, "{v:?}");
                assert!(run.non_ascii || v[..at].is_ascii(), "{v:?}");
            }
        }
        let plain: Vec<u8> = (0..len).map(|k| [b'a', 0x20, 0xff][k % 3]).collect();
        assert!(find_special(&plain, 0).is_none());
    }
}

/// A value for an unknown key: mostly flat, sometimes nested or broken.
fn value() -> impl Strategy<Value = String> {
    prop_oneof![
        8 => any::<String>().prop_map(|s| serde_json::to_string(&s).unwrap()),
        4 => any::<i64>().prop_map(|n| n.to_string()),
        4 => any::<f64>().prop_map(|f| serde_json::to_string(&f).unwrap()),
        1 => Just("true".to_owned()),
        1 => Just("false".to_owned()),
        1 => Just("null".to_owned()),
        1 => Just("[1,{\"host\":\"x\"}]".to_owned()),
        1 => Just("{\"offset\":1}".to_owned()),
        3 => nested(),
        1 => Just("\"\\ud800\"".to_owned()),
        1 => Just("\"\\uD83D\\uDE00\"".to_owned()),
        2 => "[-+.0-9eE]{1,6}",
    ]
}

/// A nested value (what `fields` holds), sometimes spaced.
fn nested() -> impl Strategy<Value = String> {
    let leaf = prop_oneof![
        any::<String>().prop_map(|s| serde_json::to_string(&s).unwrap()),
        any::<i32>().prop_map(|n| n.to_string()),
        Just("null".to_owned()),
        Just("true".to_owned()),
    ];
    let ws = || prop_oneof![4 => Just(""), 1 => Just(" "), 1 => Just("\n")];
    leaf.prop_recursive(5, 48, 4, move |inner| {
        prop_oneof![
            (proptest::collection::vec(inner.clone(), 0..4), ws())
                .prop_map(|(v, w)| format!("[{w}{}]", v.join(&format!("{w},")))),
            (
                proptest::collection::vec(("[a-z\"\\\\é]{0,4}", inner), 0..4),
                ws()
            )
                .prop_map(|(kv, w)| {
                    let kv: Vec<String> = kv
                        .iter()
                        .map(|(k, v)| format!("{}{w}:{v}", serde_json::to_string(k).unwrap()))
                        .collect();
                    format!("{{{w}{}{w}}}", kv.join(","))
                }),
        ]
    })
}

/// A string for a field the collector keeps: usually plain, sometimes
/// with escapes, control bytes or odd characters.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        8 => "[a-z0-9-]{0,12}".prop_map(|s| format!("\"{s}\"")),
        1 => any::<String>().prop_map(|s| serde_json::to_string(&s).unwrap()),
        1 => "[a-z\\\\\"\u{1}\u{7f}é/u0-9]{0,8}".prop_map(|s| format!("\"{s}\"")),
    ]
}

fn offset() -> impl Strategy<Value = String> {
    prop_oneof![
        8 => any::<u64>().prop_map(|n| n.to_string()),
        4 => (0..100u64).prop_map(|n| n.to_string()),
        1 => any::<i64>().prop_map(|n| n.to_string()),
        1 => any::<f64>().prop_map(|f| serde_json::to_string(&f).unwrap()),
        1 => Just("18446744073709551616".to_owned()),
        1 => "0[0-9]{1,3}|[0-9]{1,3}[.eE][0-9]?|\"[0-9]+\"",
    ]
}

fn part() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => prop_oneof![Just("whole"), Just("head"), Just("tail")].prop_map(|p| format!("\"{p}\"")),
        1 => prop_oneof![Just("\"Whole\""), Just("\"wh\\u006fle\""), Just("{\"head\":null}"), Just("null")].prop_map(str::to_owned),
    ]
}

/// A line: the agent's fields, shuffled, maybe one dropped, with
/// unknown (or repeated) keys and odd whitespace, then mutated at the
/// byte level.
fn line() -> impl Strategy<Value = Vec<u8>> {
    let known = (text(), text(), offset(), part()).prop_map(|(h, s, o, p)| {
        vec![
            ("host".to_owned(), h),
            ("stream".to_owned(), s),
            ("offset".to_owned(), o),
            ("part".to_owned(), p),
        ]
    });
    let unknown = proptest::collection::vec(
        (
            prop_oneof![
                6 => Just("msg".to_owned()),
                6 => Just("path".to_owned()),
                6 => "[a-z_]{0,6}",
                1 => Just("ho\\u0073t".to_owned()),
                1 => Just("offset".to_owned()),
                1 => Just("host".to_owned()),
            ],
            value(),
        ),
        0..4,
    );
    let fields = (
        known,
        unknown,
        any::<proptest::sample::Index>(),
        proptest::bool::weighted(0.1),
    )
        .prop_map(|(mut fields, unknown, drop, drop_one)| {
            if drop_one {
                fields.remove(drop.index(fields.len()));
            }
            fields.extend(unknown);
            fields
        })
        .prop_shuffle();
    let ws = prop_oneof![
        40 => Just(""),
        2 => Just(" "),
        1 => Just("\t"),
        1 => Just("\r"),
        1 => Just("\n"),
        1 => Just("\x0c"),
    ];
    (
        fields,
        proptest::collection::vec(ws, 7),
        prop_oneof![
            2 => Just(Vec::new()),
            1 => proptest::collection::vec(mutation(), 1..3),
        ],
    )
        .prop_map(|(fields, ws, mutations)| {
            let mut s = format!("{}{{", ws[0]);
            for (k, (key, value)) in fields.iter().enumerate() {
                if k > 0 {
                    s.push_str(ws[1]);
                    s.push(',');
                }
                s += &format!("{}\"{key}\"{}:{}{value}", ws[2], ws[3], ws[4]);
            }
            s += &format!("{}}}{}", ws[5], ws[6]);
            let mut bytes = s.into_bytes();
            for m in mutations {
                m.apply(&mut bytes);
            }
            bytes
        })
}

#[derive(Debug, Clone)]
enum Mutation {
    Flip(proptest::sample::Index, u8),
    Truncate(proptest::sample::Index),
    Insert(proptest::sample::Index, &'static [u8]),
    Delete(proptest::sample::Index),
    /// One bracket made the other kind (`[` and `{`, `]` and `}`).
    Rebracket(proptest::sample::Index),
}

impl Mutation {
    fn apply(&self, b: &mut Vec<u8>) {
        if b.is_empty() {
            return;
        }
        match self {
            Mutation::Flip(at, x) => {
                let at = at.index(b.len());
                b[at] = *x;
            }
            Mutation::Truncate(at) => b.truncate(at.index(b.len())),
            Mutation::Insert(at, what) => {
                let at = at.index(b.len() + 1);
                b.splice(at..at, what.iter().copied());
            }
            Mutation::Delete(at) => {
                b.remove(at.index(b.len()));
            }
            Mutation::Rebracket(at) => {
                let brackets: Vec<usize> = (0..b.len())
                    .filter(|&k| matches!(b[k], b'[' | b']' | b'{' | b'}'))
                    .collect();
                if !brackets.is_empty() {
                    let k = brackets[at.index(brackets.len())];
                    // `[`/`{` and `]`/`}` differ in one bit.
                    b[k] ^= b'[' ^ b'{';
                }
            }
        }
    }
}

fn mutation() -> impl Strategy<Value = Mutation> {
    use proptest::sample::Index;
    let snippet = prop_oneof![
        Just(&b"\\"[..]),
        Just(&b"\""[..]),
        Just(&b"\\u00"[..]),
        Just(&b"\\u00e9"[..]),
        Just(&b"\\u12"[..]),
        Just(&b"\\u0g"[..]),
        Just(&b"\\x"[..]),
        Just(&b"\\ud83d"[..]),
        Just(&b"\x01"[..]),
        Just(&b"\x7f"[..]),
        Just(&b"\xff"[..]),
        Just(&b"\xc3"[..]),
        Just(&b"\xc3\xa9"[..]),
        Just(&b"{"[..]),
        Just(&b"}"[..]),
        Just(&b"["[..]),
        Just(&b"]"[..]),
        Just(&b","[..]),
        Just(&b":"[..]),
        Just(&b" "[..]),
        Just(&b"0"[..]),
        Just(&b"-"[..]),
        Just(&b"."[..]),
        Just(&b"e"[..]),
        Just(&b"\"host\":\"h\","[..]),
        Just(&b"\"offset\":1,"[..]),
    ];
    prop_oneof![
        (any::<Index>(), any::<u8>()).prop_map(|(i, x)| Mutation::Flip(i, x)),
        any::<Index>().prop_map(Mutation::Truncate),
        (any::<Index>(), snippet).prop_map(|(i, s)| Mutation::Insert(i, s)),
        any::<Index>().prop_map(Mutation::Delete),
        any::<Index>().prop_map(Mutation::Rebracket),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 20_000, ..ProptestConfig::default() })]

    #[test]
    fn defers_or_agrees_with_serde(line in line()) {
        agrees(&line)?;
    }

    #[test]
    fn agent_lines_with_any_fields_take_the_fast_path(fields in nested().prop_map(|v| format!("{{\"x\":{v}}}"))) {
        let line = agent_line(3, "whole", &format!("\"msg\":\"m\",\"fields\":{fields}"));
        prop_assert!(wire_record(line.as_bytes()).is_some(), "{}", line);
        agrees(line.as_bytes())?;
    }

    #[test]
    fn agent_lines_with_any_message_agree(offset in any::<u64>(), msg in any::<String>(), part in prop_oneof![Just("whole"), Just("head"), Just("tail")]) {
        let field = format!("\"msg\":{}", serde_json::to_string(&msg).unwrap());
        let line = agent_line(offset, part, &field);
        prop_assert!(wire_record(line.as_bytes()).is_some(), "{}", line);
        agrees(line.as_bytes())?;
    }
}
