//! LuaTransform on records: what a script may change, what it may not, and what a failure
//! leaves. That no outcome changes which offsets commit is tested where the Intake lives
//! (`batch/outcomes.rs`): a transform's tests importing the batch would close an import cycle.

use super::*;
use crate::config::lua::{
    LuaOptions, DEFAULT_INSTRUCTION_LIMIT, DEFAULT_MEMORY_LIMIT, DEFAULT_TIME_LIMIT,
};
use crate::frame::Part;
use crate::record::StreamMeta;

fn opts(code: &str) -> LuaOptions {
    LuaOptions {
        code: code.into(),
        origin: "t.lua".into(),
        function: "process".into(),
        memory_limit: DEFAULT_MEMORY_LIMIT,
        instruction_limit: DEFAULT_INSTRUCTION_LIMIT,
        time_limit: DEFAULT_TIME_LIMIT,
    }
}

fn meta() -> StreamMeta {
    StreamMeta {
        id: "00ab".into(),
        source: "app".into(),
        fingerprint: Some(1),
        path: "/var/log/app.log".into(),
    }
}

/// What became of one record: kept (msg, fields as JSON) or dropped.
fn apply(
    t: &mut LuaTransform,
    msg: &str,
    fields: Option<&str>,
    offset: u64,
) -> Option<(String, Option<serde_json::Value>)> {
    let m = meta();
    let mut d = Draft {
        stream: &m,
        offset,
        len: msg.len() as u64 + 1,
        part: Part::Whole,
        bytes: Cow::Owned(msg.as_bytes().to_vec()),
        fields: fields.map(|f| Cow::Owned(f.as_bytes().to_vec())),
    };
    let v = t.apply(&mut d);
    assert_eq!(d.offset, offset, "a script cannot move an offset");
    match v {
        Verdict::Drop => None,
        Verdict::Keep => Some((
            String::from_utf8(d.bytes.to_vec()).unwrap(),
            d.fields.map(|f| serde_json::from_slice(&f).unwrap()),
        )),
    }
}

fn lua(code: &str) -> LuaTransform {
    LuaTransform::new("t", &opts(code))
        .unwrap()
        .with_host("h1")
        .unwrap()
}

#[test]
fn the_record_table_has_every_key() {
    let mut t = lua(r#"function process(r)
        r.msg = table.concat({r.source, r.path, r.stream, r.offset, r.part, r.host,
                              type(r.fields)}, "|")
        return r end"#);
    let (msg, fields) = apply(&mut t, "x", None, 42).unwrap();
    assert_eq!(msg, "app|/var/log/app.log|00ab|42|whole|h1|table");
    assert_eq!(fields, None, "an untouched empty fields table adds none");
}

#[test]
fn the_record_table_walks_and_grows_like_any_table() {
    // Records are stamped from a template (stamp.rs): `pairs` sees each key once, and keys
    // the script adds go in beside them, through a run of several records.
    let mut t = lua(r#"function process(r)
        r.extra1, r.extra2 = 1, 2
        local keys = {}
        for k in pairs(r) do keys[#keys + 1] = k end
        table.sort(keys)
        r.msg = r.msg .. ":" .. table.concat(keys, ",")
        return r end"#);
    let got = apply_run(&mut t, &["a", "b", "c"]);
    for (i, (o, msg, _)) in got.iter().enumerate() {
        assert!(matches!(o.verdict, Verdict::Keep));
        let want = "extra1,extra2,fields,host,msg,offset,part,path,source,stream";
        assert_eq!(msg, &format!("{}:{want}", ["a", "b", "c"][i]));
    }
}

#[test]
fn drop_rewrite_enrich() {
    let mut t = lua(r#"function process(r)
        if r.msg:find("DEBUG", 1, true) then return nil end
        r.msg = r.msg:gsub("token=%w+", "token=***")
        r.fields.level = r.msg:match("^(%u+)")
        r.fields.n = (r.fields.n or 0) + 1
        return r end"#);
    assert_eq!(apply(&mut t, "DEBUG noise", None, 0), None);
    let (msg, fields) = apply(
        &mut t,
        "INFO token=abc123 ok",
        Some(r#"{"n":4,"a":[1,"b"]}"#),
        12,
    )
    .unwrap();
    assert_eq!(msg, "INFO token=*** ok");
    let f = fields.unwrap();
    assert_eq!(f["level"], "INFO");
    assert_eq!(f["n"], 5);
    assert_eq!(
        f["a"],
        serde_json::json!([1, "b"]),
        "lists come back as lists"
    );
    assert_eq!(t.fault(), Fault::None);
}

#[test]
fn globals_persist_between_calls() {
    let mut t = lua("n = 0 function process(r) n = n + 1 r.msg = tostring(n) return r end");
    for i in 1..=3 {
        assert_eq!(apply(&mut t, "x", None, i).unwrap().0, i.to_string());
    }
}

#[test]
fn a_record_grown_past_the_source_limit_ships_as_it_came() {
    // A record of any size went to the sinks whole: one past the collector's max_batch_bytes
    // was refused at every retry and held its sources back for good.
    let mut t = lua(r#"function process(r)
        if r.msg == "grow" then r.msg = string.rep("x", 1025) end
        if r.msg == "enrich" then r.fields = {big = string.rep("y", 2000)} end
        if r.msg == "wide" then r.fields = {big = string.rep("y", 2049)} end
        r.fields = r.fields or {} r.fields.seen = true
        return r end"#)
    .with_limit(1024);
    for (msg, what) in [("grow", "msg of 1025 bytes"), ("wide", "fields of 20")] {
        let (out, fields) = apply(&mut t, msg, Some(r#"{"k":"v"}"#), 5).unwrap();
        assert_eq!(out, msg, "the record ships as it came");
        let f = fields.unwrap();
        assert_eq!(f["k"], "v");
        assert!(f.get("seen").is_none(), "{f}");
        let e = f["transform_error"].as_str().unwrap();
        assert!(
            e.contains(what) && e.contains("1024 (max_record_bytes)"),
            "{e}"
        );
    }
    // At the limit is fine: a msg of 1024 bytes may come with fields up to twice that.
    let (out, fields) = apply(&mut t, &"z".repeat(1024), None, 6).unwrap();
    assert_eq!(out.len(), 1024);
    assert_eq!(fields.unwrap()["seen"], true);
    assert_eq!(
        apply(&mut t, "enrich", None, 7).unwrap().1.unwrap()["seen"],
        true
    );
}

#[test]
fn an_error_keeps_the_record_with_transform_error() {
    let mut t = lua(r#"function process(r)
        if r.msg == "bad" then error("no good") end
        r.msg = "changed" return r end"#);
    let (msg, fields) = apply(&mut t, "bad", Some(r#"{"k":"v"}"#), 5).unwrap();
    assert_eq!(msg, "bad", "the record ships as it came");
    let f = fields.unwrap();
    assert_eq!(f["k"], "v");
    let e = f["transform_error"].as_str().unwrap();
    assert!(
        e.starts_with("t: ") && e.contains("t.lua:2: no good"),
        "{e}"
    );
    assert!(!e.contains("traceback"), "{e}");
    assert_eq!(t.fault(), Fault::Error, "the chain counts it");
    assert_eq!(apply(&mut t, "fine", None, 6).unwrap().0, "changed");
    assert_eq!(t.fault(), Fault::None);
}

#[test]
fn what_a_script_returns_wrongly_is_an_error() {
    for (code, want) in [
        ("function process(r) return 'x' end", "returned a string"),
        ("function process(r) r.msg = nil return r end", "msg is nil"),
        (
            "function process(r) r.msg = {} return r end",
            "msg is a table",
        ),
        (
            "function process(r) r.fields.f = print or function() end return r end",
            "fields.f is a function",
        ),
        (
            "function process(r) r.fields.me = r.fields return r end",
            "cycle",
        ),
        (
            "function process(r) r.fields.x = 0/0 return r end",
            "JSON cannot carry",
        ),
        (
            "function process(r) r.fields = 3 return r end",
            "fields is an integer",
        ),
    ] {
        let mut t = lua(code);
        let (msg, fields) = apply(&mut t, "m", None, 0).unwrap();
        assert_eq!(msg, "m");
        let e = fields.unwrap()["transform_error"]
            .as_str()
            .unwrap()
            .to_string();
        assert!(e.contains(want), "{code}: {e}");
    }
}

#[test]
fn a_broken_limit_rebuilds_the_state_and_the_next_record_runs() {
    let mut t = lua(r#"n = 0
        function process(r)
          n = n + 1
          if r.msg == "loop" then while true do end end
          if r.msg == "bomb" then local t = {} for i = 1, 1e9 do t[i] = string.rep("x", 1000) .. i end end
          if r.msg == "pattern" then string.rep("a", 2e5):find(".-.-b") end
          r.msg = tostring(n) return r end"#);
    assert_eq!(apply(&mut t, "a", None, 0).unwrap().0, "1");
    assert_eq!(apply(&mut t, "b", None, 1).unwrap().0, "2");
    for bad in ["loop", "bomb", "pattern"] {
        let (msg, fields) = apply(&mut t, bad, None, 2).unwrap();
        assert_eq!(msg, bad);
        let e = fields.unwrap()["transform_error"]
            .as_str()
            .unwrap()
            .to_string();
        assert!(e.starts_with("t: "), "{e}");
    }
    // loop and bomb broke limits (fresh state, n from 0); the pattern was refused, an error.
    assert_eq!(apply(&mut t, "c", None, 3).unwrap().0, "2");
}

#[test]
fn fields_with_an_earlier_error_keep_it() {
    let f = json::with_error(Some(br#"{"transform_error":"a: x"}"#), "b: y");
    let v: serde_json::Value = serde_json::from_slice(&f).unwrap();
    assert_eq!(v["transform_error"], "a: x; b: y");
    let f = json::with_error(Some(b"[1]"), "b: y");
    let v: serde_json::Value = serde_json::from_slice(&f).unwrap();
    assert_eq!(v["fields_invalid"], "[1]");
}

/// What became of each record of one run: its outcome, message and fields.
fn apply_run(
    t: &mut LuaTransform,
    msgs: &[&str],
) -> Vec<(Outcome, String, Option<serde_json::Value>)> {
    let m = meta();
    let mut run: Vec<Draft<'_>> = msgs
        .iter()
        .enumerate()
        .map(|(i, msg)| Draft {
            stream: &m,
            offset: i as u64 * 100,
            len: msg.len() as u64 + 1,
            part: Part::Whole,
            bytes: Cow::Owned(msg.as_bytes().to_vec()),
            fields: (i % 2 == 0).then(|| Cow::Owned(format!(r#"{{"i":{i}}}"#).into_bytes())),
        })
        .collect();
    let mut out = Vec::new();
    t.apply_run(&mut run, &mut out);
    assert_eq!(out.len(), msgs.len(), "one outcome per record");
    for (i, d) in run.iter().enumerate() {
        assert_eq!(d.offset, i as u64 * 100, "a script cannot move an offset");
    }
    run.iter()
        .zip(out)
        .map(|(d, o)| {
            let f = d
                .fields
                .as_ref()
                .map(|f| serde_json::from_slice(f).unwrap());
            (o, String::from_utf8(d.bytes.to_vec()).unwrap(), f)
        })
        .collect()
}

fn error_of(f: &Option<serde_json::Value>) -> Option<String> {
    f.as_ref()?
        .get("transform_error")
        .map(|e| e.as_str().unwrap().to_string())
}

#[test]
fn an_error_on_one_record_of_a_run_fails_that_record_alone() {
    let mut t = lua(r#"n = 0
        function process(r)
          n = n + 1
          if r.msg == "bad" then error("no good") end
          if r.msg == "drop" then return nil end
          r.msg = r.msg .. n
          r.fields.n = n
          return r end"#);
    let got = apply_run(&mut t, &["a", "b", "bad", "c", "drop", "d", "bad"]);
    let msgs: Vec<&str> = got.iter().map(|g| g.1.as_str()).collect();
    // The state goes on after a script error: n counts every call, the failed ones too.
    assert_eq!(msgs, ["a1", "b2", "bad", "c4", "drop", "d6", "bad"]);
    for (i, (o, _, f)) in got.iter().enumerate() {
        let e = error_of(f);
        if i == 2 || i == 6 {
            assert_eq!(o.fault, Fault::Error, "record {i}");
            assert!(e.unwrap().contains("no good"));
        } else {
            assert_eq!(o.fault, Fault::None, "record {i}");
            assert_eq!(e, None, "record {i}: {f:?}");
        }
    }
    assert_eq!(got[4].0.verdict, Verdict::Drop);
    assert_eq!(
        got[2].2.as_ref().unwrap()["i"],
        2,
        "its own fields are kept"
    );
    assert_eq!(got[0].2, Some(serde_json::json!({"i": 0, "n": 1})));
    assert_eq!(got[1].2, Some(serde_json::json!({"n": 2})));
    assert_eq!(t.fault(), Fault::Error, "the last record failed");
}

#[test]
fn a_limit_broken_mid_run_keeps_what_came_before_and_reruns_the_rest_in_a_fresh_state() {
    let mut t = lua(r#"n = 0
        function process(r)
          n = n + 1
          if r.msg == "loop" then while true do end end
          r.msg = r.msg .. n
          return r end"#);
    let got = apply_run(&mut t, &["a", "b", "loop", "c", "d"]);
    let msgs: Vec<&str> = got.iter().map(|g| g.1.as_str()).collect();
    // Before the loop: the old state's results; after it: a fresh state, n from 0 again.
    assert_eq!(msgs, ["a1", "b2", "loop", "c1", "d2"]);
    let errors: Vec<bool> = got.iter().map(|g| error_of(&g.2).is_some()).collect();
    assert_eq!(errors, [false, false, true, false, false]);
    assert!(error_of(&got[2].2).unwrap().contains("instruction limit"));
    assert_eq!(t.fault(), Fault::None, "the streak ended with the run");
}

#[test]
fn each_record_of_a_run_has_its_own_instruction_budget() {
    let mut o = opts(
        r#"function process(r)
          local x = 0
          for i = 1, 20000 do x = x + i end
          r.fields.x = x
          return r end"#,
    );
    // Each record takes about 60,000 instructions: well within the budget, which the run as
    // a whole (40 records) would break forty times over.
    o.instruction_limit = 100_000;
    let mut t = LuaTransform::new("t", &o).unwrap();
    let msgs: Vec<String> = (0..40).map(|i| format!("m{i}")).collect();
    let msgs: Vec<&str> = msgs.iter().map(|s| s.as_str()).collect();
    for (i, (o, _, f)) in apply_run(&mut t, &msgs).iter().enumerate() {
        assert_eq!(o.fault, Fault::None, "record {i}: {f:?}");
    }
    // And one record over it still breaks it.
    let mut o =
        opts("function process(r) local x = 0 for i = 1, 1e6 do x = x + i end return r end");
    o.instruction_limit = 100_000;
    let mut t = LuaTransform::new("t", &o).unwrap();
    let got = apply_run(&mut t, &["a"]);
    assert!(error_of(&got[0].2).unwrap().contains("instruction limit"));
}

#[test]
fn a_record_whose_fields_are_not_an_object_fails_alone_within_its_run() {
    let mut t = lua("function process(r) r.msg = r.msg .. '!' return r end");
    let m = meta();
    let mut run: Vec<Draft<'_>> = ["a", "b", "c"]
        .iter()
        .map(|msg| Draft {
            stream: &m,
            offset: 0,
            len: 2,
            part: Part::Whole,
            bytes: Cow::Borrowed(msg.as_bytes()),
            fields: None,
        })
        .collect();
    run[1].fields = Some(Cow::Borrowed(b"[1,2]"));
    let mut out = Vec::new();
    t.apply_run(&mut run, &mut out);
    let msgs: Vec<&[u8]> = run.iter().map(|d| &*d.bytes).collect();
    assert_eq!(msgs, [&b"a!"[..], b"b", b"c!"]);
    let faults: Vec<Fault> = out.iter().map(|o| o.fault).collect();
    assert_eq!(faults, [Fault::None, Fault::Error, Fault::None]);
}

/// The quick read of a flat `fields` table ([`readback`]) writes byte for byte what the
/// general conversion writes, whatever the values (escapes, floats, booleans, keys in any
/// order); tables it does not read flat (nested, integer keys) go the general way and come
/// out the same too. What neither can write is in
/// `fields_json_cannot_carry_fail_the_call_naming_the_field`.
#[test]
fn fields_read_back_quickly_are_what_the_general_conversion_writes() {
    let cases = [
        r#"{b = "x", a = 1, c = true, d = false, e = 1.5, f = -0.0, g = 2^53, h = 1e-300}"#,
        r#"{q = 'say "hi"\n\t\\', u = "h\u{e9}llo \u{2713}", ctl = "\0\1\127"}"#,
        r#"{big = math.maxinteger, small = math.mininteger, zz = "", [""] = 0}"#,
        r#"{n = {1, 2, {x = 1}}, s = "y", e = {}}"#,
        r#"{[1] = "a", [2] = "b", c = 3}"#,
    ];
    for case in cases {
        let mut t = lua(&format!(
            "function process(r) r.fields = {case} return r end"
        ));
        let m = meta();
        let mut d = Draft {
            stream: &m,
            offset: 0,
            len: 2,
            part: Part::Whole,
            bytes: Cow::Borrowed(b"m"),
            fields: None,
        };
        assert!(matches!(t.apply(&mut d), Verdict::Keep));
        let got = d.fields.expect("fields set").into_owned();
        let plain = mlua::Lua::new();
        let table: mlua::Table = plain.load(format!("return {case}")).eval().unwrap();
        let want = json::from_lua(&table).unwrap();
        assert_eq!(
            String::from_utf8_lossy(&got),
            String::from_utf8_lossy(&want),
            "{case}"
        );
        assert!(got == want, "{case}: byte for byte");
    }
}

/// Regression: a key or string that is not UTF-8 was mended to U+FFFD, and of the keys `1` and
/// `"1"` one was dropped, both shipping as if the script had meant it with no error counted.
/// Each is now a failing call naming the field; the record ships as it came. Flat tables
/// (which the quick read takes) and nested ones alike.
#[test]
fn fields_json_cannot_carry_fail_the_call_naming_the_field() {
    for (set, want) in [
        (
            r#"r.fields["user\xe9"] = "latin1 key"; r.fields["user\xe8"] = "other""#,
            r#"t: fields has the key "user\xe8", which is not UTF-8"#,
        ),
        (
            r#"r.fields.name = "Jos\xe9""#,
            r#"t: fields.name is "Jos\xe9", which is not UTF-8 from byte 3"#,
        ),
        (
            r#"r.fields.a = {b = {"ok", "\xff"}}"#,
            r#"fields.a.b is "\xff", which is not UTF-8 from byte 0"#,
        ),
        (
            r#"r.fields.a = {["k\xc3"] = 1}"#,
            r#"fields.a has the key "k\xc3", which is not UTF-8"#,
        ),
        (
            r#"r.fields[1] = "int one"; r.fields["1"] = "string one""#,
            r#"t: fields has both the integer key 1 and the string key "1", which are one key in JSON"#,
        ),
        (
            r#"r.fields.n = {[-2] = 1, ["-2"] = 2}"#,
            r#"fields.n has both the integer key -2 and the string key "-2""#,
        ),
        (
            r#"r.fields.long = string.rep("a", 100) .. "\xff""#,
            r#"(first 64 of 101 bytes)"#,
        ),
    ] {
        let mut t = lua(&format!(
            "function process(r) r.msg = 'changed'; {set}; return r end"
        ));
        let (msg, fields) = apply(&mut t, "m", Some(r#"{"k":"v"}"#), 0).unwrap();
        assert_eq!(msg, "m", "{set}: the record ships as it came");
        let f = fields.unwrap();
        assert_eq!(f["k"], "v", "{set}");
        let e = f["transform_error"].as_str().unwrap();
        assert!(e.contains(want), "{set}: {e}");
        assert_eq!(f.as_object().unwrap().len(), 2, "{set}: nothing else: {f}");
        assert_eq!(t.fault(), Fault::Error, "{set}: the chain counts it");
    }
}

/// `msg` may be any bytes (README: "a Lua string: any bytes"): the record format ships bytes
/// that are not UTF-8 as `msg_b64`, so a script's such msg is kept exactly, not a failure.
#[test]
fn a_msg_that_is_not_utf8_is_kept_as_its_bytes() {
    let mut t = lua(r#"function process(r) r.msg = "Jos\xe9 " .. r.msg return r end"#);
    let m = meta();
    let mut d = Draft {
        stream: &m,
        offset: 0,
        len: 2,
        part: Part::Whole,
        bytes: Cow::Borrowed(b"m"),
        fields: None,
    };
    assert!(matches!(t.apply(&mut d), Verdict::Keep));
    assert_eq!(&*d.bytes, b"Jos\xe9 m");
    assert_eq!(d.fields, None);
    assert_eq!(t.fault(), Fault::None);
}

/// A run that fails at a record is run on from the one after it, the records numbered from 1
/// again: no record may be handed fields the failed crossing left for the record that had
/// that number then.
#[test]
fn records_run_again_after_a_failure_get_their_own_fields() {
    let mut t = lua(r#"function process(r)
          if r.msg == "bad" then error("no good") end
          return r end"#);
    // Fields on the even records: bad (0) and y (2); x and z have none.
    let got = apply_run(&mut t, &["bad", "x", "y", "z"]);
    assert!(error_of(&got[0].2).unwrap().contains("no good"));
    assert_eq!(got[1].2, None, "x");
    assert_eq!(got[2].2, Some(serde_json::json!({"i": 2})), "y");
    assert_eq!(got[3].2, None, "z has no fields, not y's");
}

/// Hostile errors raised inside a run's loop end at that record as a lone call's would: an
/// error object whose `__tostring` never returns is stopped by its limit, and the records
/// around it keep what the script made of them.
#[test]
fn an_error_object_that_loops_in_tostring_fails_only_its_record() {
    let mut t = lua(r#"function process(r)
          if r.msg == "bad" then
            error(setmetatable({}, {__tostring = function() while true do end end}))
          end
          r.msg = r.msg .. "!"
          return r end"#);
    let got = apply_run(&mut t, &["a", "bad", "c"]);
    let msgs: Vec<&str> = got.iter().map(|g| g.1.as_str()).collect();
    assert_eq!(msgs, ["a!", "bad", "c!"]);
    assert!(error_of(&got[1].2).is_some(), "{:?}", got[1].2);
    assert_eq!(error_of(&got[2].2), None);
}

/// The loop's own allocations (a record's table, its message) can meet the memory limit when
/// the script has filled its state: the record being built fails as at a broken limit, the
/// state is rebuilt, and no record is lost.
#[test]
fn memory_running_out_in_the_loop_fails_the_record_being_built() {
    let mut o = opts(
        r#"function process(r)
          if r.msg == "fill" then
            big = {}
            local i, x = 0, string.rep("x", 4000)
            -- Fills the state to its limit; pcall catches the allocation refused at the end.
            -- Concatenation, not a call of string.rep (a Lua wrapper): a call may be refused
            -- the growth of the Lua stack, which would leave the space of a doubling free.
            while pcall(function() i = i + 1 big[i] = x .. i end) do end
          end
          -- A long record allocates nothing here: only the loop's handing it over can fail.
          if #r.msg > 1000 then return r end
          r.msg = r.msg .. "!"
          return r end"#,
    );
    o.memory_limit = 4 << 20;
    let mut t = LuaTransform::new("t", &o).unwrap();
    let long = "y".repeat(64 * 1024);
    let got = apply_run(&mut t, &["a", "fill", &long, "c"]);
    let msgs: Vec<&str> = got.iter().map(|g| g.1.as_str()).collect();
    assert_eq!(msgs[..2], ["a!", "fill!"]);
    assert_eq!(
        msgs[2], long,
        "the record that did not fit ships as it came"
    );
    assert!(
        error_of(&got[2].2).unwrap().contains("memory limit"),
        "{:?}",
        got[2].2
    );
    assert_eq!(msgs[3], "c!", "the next runs in a fresh state");
    assert_eq!(error_of(&got[3].2), None);
}

/// What came back is read as the script would read it, `r.msg` and `r.fields`: a returned
/// table that takes what it lacks from the record through `__index` keeps the record's
/// fields, and an `__index` that raises fails that record alone.
#[test]
fn a_returned_table_is_read_through_its_metatable() {
    let mut t = lua(r#"function process(r)
          if r.msg == "bad" then
            return setmetatable({}, {__index = function() error("no index") end})
          end
          return setmetatable({msg = r.msg .. "+"}, {__index = r})
        end"#);
    let got = apply_run(&mut t, &["a", "bad", "c"]);
    let msgs: Vec<&str> = got.iter().map(|g| g.1.as_str()).collect();
    assert_eq!(msgs, ["a+", "bad", "c+"]);
    assert_eq!(
        got[0].2,
        Some(serde_json::json!({"i": 0})),
        "fields through __index"
    );
    assert!(error_of(&got[1].2).unwrap().contains("no index"));
    assert_eq!(got[2].2, Some(serde_json::json!({"i": 2})));
}
