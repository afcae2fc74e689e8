//! Random transform outcomes (keep, drop, a failing Lua call) through a real [`Intake`], as an
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
        instruction_limit: DEFAULT_INSTRUCTION_LIMIT,
        time_limit: DEFAULT_TIME_LIMIT,
    };
    LuaTransform::new("t", &opts)
        .unwrap()
        .with_host("h1")
        .unwrap()
}

fn meta() -> StreamMeta {
    StreamMeta {
        id: "00ab".into(),
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
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Random keep/drop/error outcomes, through a real Intake as an input drives it: the
    /// checkpoint that commits is the input's, unchanged by any outcome, and the batch holds
    /// exactly the kept and failed records, at their own offsets.
    #[test]
    fn outcomes_never_change_which_offsets_commit(
        outcomes in proptest::collection::vec(
            prop_oneof![Just(Outcome::Keep), Just(Outcome::Drop), Just(Outcome::Error)], 1..60),
    ) {
        let script = r#"function process(r)
            if r.msg:sub(1, 1) == "d" then return nil end
            if r.msg:sub(1, 1) == "e" then error("asked to") end
            r.fields.seen = true return r end"#;
        let mut transforms = Transforms::none();
        transforms.add("app", Box::new(lua(script)));
        let mut batch = Batch::new("h1".into(), 0);
        let limits = Limits { max_records: 1000, max_bytes: 1 << 20 };
        let mut out = Intake::new(&mut batch, &mut transforms, limits);
        let cp = Checkpoint { stream: "00ab".into(), ..Checkpoint::default() };
        let slot = out.open_stream(meta(), Ack::Store(cp));
        let mut offset = 0u64;
        let mut expect = Vec::new();
        for (i, o) in outcomes.iter().enumerate() {
            let msg = match o {
                Outcome::Keep => format!("k{i}"),
                Outcome::Drop => format!("d{i}"),
                Outcome::Error => format!("e{i}"),
            };
            let rec = Rec { offset, len: msg.len() as u64 + 1, part: Part::Whole, bytes: msg.as_bytes() };
            out.push(slot, &rec, 0, None);
            // As the tailer does: the stream is consumed past the record, kept or not.
            offset += rec.len;
            out.ack_mut(slot).checkpoint_mut().unwrap().committed_offset = offset;
            if !matches!(o, Outcome::Drop) {
                expect.push((rec.offset, msg, matches!(o, Outcome::Error)));
            }
        }
        let cps = batch.checkpoints();
        prop_assert_eq!(cps.len(), 1);
        prop_assert_eq!(cps[0].committed_offset, offset);
        prop_assert_eq!(cps[0].records, expect.len() as u64);
        let got: Vec<_> = batch.records().map(|r| {
            let f: serde_json::Value = serde_json::from_slice(r.fields.unwrap()).unwrap();
            (r.offset, String::from_utf8(r.bytes.to_vec()).unwrap(), f.get("transform_error").is_some())
        }).collect();
        prop_assert_eq!(got, expect);
    }
}
