//! Random transform outcomes (keep, drop, a failing Lua call, a broken limit) through a real
//! [`Intake`], as an
//! input drives it: the checkpoint that commits is the input's, whatever the transforms decide.
//! Here rather than with the Lua transform: `batch` imports `transform`, never the reverse.

use super::{Ack, Batch, Intake, Limits};
use crate::config::lua::{
    LuaOptions, DEFAULT_INSTRUCTION_LIMIT, DEFAULT_MEMORY_LIMIT, DEFAULT_TIME_LIMIT,
};
use crate::frame::{Part, Rec};
use crate::record::StreamMeta;
use crate::store::Checkpoint;
use crate::transform::lua::LuaTransform;
use crate::transform::Transforms;
use proptest::prelude::*;

fn lua(code: &str) -> LuaTransform {
    let opts = LuaOptions {
        code: code.into(),
        origin: "t.lua".into(),
        function: "process".into(),
        memory_limit: DEFAULT_MEMORY_LIMIT,
        // Low, so the endless loops the test asks for end soon.
        instruction_limit: DEFAULT_INSTRUCTION_LIMIT / 100,
        time_limit: DEFAULT_TIME_LIMIT,
    };
    LuaTransform::new("t", &opts)
        .unwrap()
        .with_host("h1")
        .unwrap()
}

fn meta(id: &str) -> StreamMeta {
    StreamMeta {
        id: id.into(),
        source: "app".into(),
        fingerprint: Some(1),
        path: "/var/log/app.log".into(),
    }
}

/// What each record is told to make the script do.
#[derive(Debug, Clone, Copy)]
enum Outcome {
    Keep,
    Drop,
    Error,
    /// An endless loop: a broken limit, the state rebuilt.
    Limit,
}

fn outcome() -> impl Strategy<Value = Outcome> {
    prop_oneof![
        4 => Just(Outcome::Keep),
        2 => Just(Outcome::Drop),
        2 => Just(Outcome::Error),
        1 => Just(Outcome::Limit),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    /// Random keep/drop/error/limit outcomes, through a real Intake as inputs drive it: chunks
    /// of records of two streams, long enough for several runs per chunk and cut at random
    /// between the streams. Each stream's checkpoint that commits is its input's, unchanged by
    /// any outcome, and the batch holds exactly the kept and failed records, in the order they
    /// came, at their own offsets.
    #[test]
    fn outcomes_never_change_which_offsets_commit(
        chunks in proptest::collection::vec(
            (any::<bool>(), proptest::collection::vec(outcome(), 1..300)), 1..5),
    ) {
        let script = r#"function process(r)
            local c = r.msg:sub(1, 1)
            if c == "d" then return nil end
            if c == "e" then error("asked to") end
            if c == "l" then while true do end end
            r.fields.seen = true return r end"#;
        let mut transforms = Transforms::none();
        transforms.add("app", Box::new(lua(script)));
        let mut batch = Batch::new("h1".into(), 0);
        let limits = Limits { max_records: 100_000, max_bytes: 1 << 24 };
        let mut out = Intake::new(&mut batch, &mut transforms, limits);
        let streams = ["00ab", "00cd"];
        let slots: Vec<_> = streams.iter().map(|id| {
            let cp = Checkpoint { stream: id.to_string(), ..Checkpoint::default() };
            out.open_stream(meta(id), Ack::Store(cp))
        }).collect();
        let mut offsets = [0u64; 2];
        let mut expect = Vec::new();
        let mut n = 0;
        for (second, outcomes) in &chunks {
            let s = usize::from(*second);
            for o in outcomes {
                let msg = match o {
                    Outcome::Keep => format!("k{n}"),
                    Outcome::Drop => format!("d{n}"),
                    Outcome::Error => format!("e{n}"),
                    Outcome::Limit => format!("l{n}"),
                };
                n += 1;
                let rec = Rec {
                    offset: offsets[s], len: msg.len() as u64 + 1, part: Part::Whole,
                    bytes: msg.as_bytes(),
                };
                out.push(slots[s], &rec, 0, None);
                // As the tailer does: the stream is consumed past the record, kept or not.
                offsets[s] += rec.len;
                out.ack_mut(slots[s]).checkpoint_mut().unwrap().committed_offset = offsets[s];
                if !matches!(o, Outcome::Drop) {
                    let failed = matches!(o, Outcome::Error | Outcome::Limit);
                    expect.push((streams[s].to_string(), rec.offset, msg, failed));
                }
            }
        }
        // The end of the turn: what is staged goes through the chain into the batch.
        drop(out);
        let cps = batch.checkpoints();
        prop_assert_eq!(cps.len(), 2);
        for (s, cp) in cps.iter().enumerate() {
            prop_assert_eq!(cp.committed_offset, offsets[s]);
            let kept = expect.iter().filter(|e| e.0 == streams[s]).count();
            prop_assert_eq!(cp.records, kept as u64);
        }
        let got: Vec<_> = batch.records().map(|r| {
            let f: serde_json::Value = serde_json::from_slice(r.fields.unwrap()).unwrap();
            let failed = f.get("transform_error").is_some();
            prop_assert_eq!(f.get("seen").is_some(), !failed);
            Ok((r.stream.id.to_string(), r.offset, String::from_utf8(r.bytes.to_vec()).unwrap(),
                failed))
        }).collect::<Result<_, TestCaseError>>()?;
        prop_assert_eq!(got, expect);
    }
}
