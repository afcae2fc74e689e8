//! Lua transforms end to end: the real agent binary, real script files, a real file sink.
//! Hostile scripts (endless loop, memory bomb, the pathological pattern, os.execute, require,
//! one error in ten thousand) never stop shipping and never lose a record; a kill -9 with a
//! dropping script loses no kept line and brings back no dropped one; a script that does not
//! load is a config error, and a reload with one keeps the running script.

mod support;

use std::collections::{HashMap, HashSet};
use support::*;

/// A config with one file source per `(name, script file, extra keys)`, each source tailing
/// `logs/NAME.log` through transform `NAME` (script in `scripts/NAME.lua`).
fn env_with(scripts: &[(&str, &str, &str)]) -> AgentEnv {
    let mut cfg = String::from(
        r#"host_id = "test-host"
state_dir = "state"
[batch]
max_wait = "100ms"
[discovery]
rescan_interval = "500ms"
[sink]
type = "file"
path = "state/out.ndjson"
"#,
    );
    for (name, _, extra) in scripts {
        cfg.push_str(&format!(
            "[sources.{name}]\npaths = [\"logs/{name}.log\"]\ntransforms = [\"{name}\"]\n\
             [transforms.{name}]\ntype = \"lua\"\npath = \"scripts/{name}.lua\"\n{extra}\n"
        ));
    }
    let env = AgentEnv::with_config(&cfg);
    std::fs::create_dir_all(env.p("scripts")).unwrap();
    for (name, code, _) in scripts {
        std::fs::write(env.p(&format!("scripts/{name}.lua")), code).unwrap();
    }
    env
}

/// Records of `source`, by message.
fn by_msg(env: &AgentEnv, source: &str) -> HashMap<String, serde_json::Value> {
    env.records()
        .into_iter()
        .filter(|r| r["source"] == source)
        .map(|r| (r["msg"].as_str().unwrap_or("").to_string(), r))
        .collect()
}

fn wait_count(env: &AgentEnv, agent: &Proc, source: &str, n: usize) {
    wait_for(
        &format!(
            "{n} records of {source}; agent stderr:\n{}",
            tail(&agent.stderr_text())
        ),
        PATIENCE,
        || by_msg(env, source).len() >= n,
    );
}

#[test]
fn a_script_drops_rewrites_and_enriches_keeping_offsets() {
    let script = r#"
seen = 0
function process(rec)
  if rec.msg:find("DEBUG", 1, true) then return nil end
  seen = seen + 1
  rec.msg = rec.msg:gsub("token=%w+", "token=***")
  rec.fields.level = rec.msg:match("^(%u+)")
  rec.fields.seen = seen
  rec.fields.where = rec.source .. "@" .. rec.host
  rec.offset = 0 -- ignored: offsets stay the input's
  return rec
end"#;
    let env = env_with(&[("app", script, "")]);
    let mut lines = Vec::new();
    for i in 0..300 {
        lines.push(match i % 3 {
            0 => format!("DEBUG noise {i}"),
            _ => format!("INFO user {i} token=s3cr3t{i} done"),
        });
    }
    append_lines(&env.p("logs/app.log"), &lines);
    let mut agent = env.start();
    wait_count(&env, &agent, "app", 200);
    let got = by_msg(&env, "app");
    let mut offset = 0u64;
    let mut seen = 0;
    for l in &lines {
        let start = offset;
        offset += l.len() as u64 + 1;
        if l.starts_with("DEBUG") {
            assert!(!got.keys().any(|m| m == l), "dropped line shipped: {l}");
            continue;
        }
        seen += 1;
        let want = l.replace(
            &l[l.find("token=").unwrap()..l.find(" done").unwrap()],
            "token=***",
        );
        let r = got.get(&want).unwrap_or_else(|| panic!("missing {want}"));
        assert_eq!(r["offset"], start, "{want}: offsets stay the input's");
        assert_eq!(r["fields"]["level"], "INFO");
        assert_eq!(r["fields"]["seen"], seen, "globals persist between calls");
        assert_eq!(r["fields"]["where"], "app@test-host");
        assert!(r["fields"].get("transform_error").is_none(), "{r}");
    }
    assert_eq!(got.len(), 200);
    agent.signal(libc::SIGTERM);
    agent.wait_exit(PATIENCE);
}

#[test]
fn hostile_scripts_never_stop_shipping_and_lose_nothing() {
    let hostile = |body: &str| {
        format!(
            "function process(rec)\n  if rec.msg:find('bad', 1, true) then\n    {body}\n  end\n  \
             rec.fields.ok = true\n  return rec\nend\n"
        )
    };
    let lp = hostile("while true do end");
    let bomb = hostile("local t = {} for i = 1, 1e12 do t[i] = string.rep('x', 4096) .. i end");
    let pattern = hostile("string.rep('a', 2e5):find('.-.-b')");
    let exec = hostile("os.execute('touch /tmp/log-sensor-lua-pwned')");
    let req = hostile("local io = require('io') io.open('/tmp/log-sensor-lua-pwned', 'w')");
    let rare = hostile("error('one in ten thousand')");
    let env = env_with(&[
        ("endless", &lp, ""),
        (
            "bomb",
            &bomb,
            "memory_limit = \"16MiB\"\ninstruction_limit = 100000000",
        ),
        ("pattern", &pattern, ""),
        ("exec", &exec, ""),
        ("req", &req, ""),
        ("rare", &rare, ""),
    ]);
    let _ = std::fs::remove_file("/tmp/log-sensor-lua-pwned");
    let small = ["endless", "bomb", "pattern", "exec", "req"];
    for name in small {
        let lines: Vec<String> = (0..50)
            .map(|i| {
                if i % 10 == 3 {
                    format!("bad {name} {i}")
                } else {
                    format!("good {name} {i}")
                }
            })
            .collect();
        append_lines(&env.p(&format!("logs/{name}.log")), &lines);
    }
    let rare_lines: Vec<String> = (0..10_000)
        .map(|i| {
            if i == 6_789 {
                format!("bad rare {i}")
            } else {
                format!("good rare {i}")
            }
        })
        .collect();
    append_lines(&env.p("logs/rare.log"), &rare_lines);
    let mut agent = env.start();
    for name in small {
        wait_count(&env, &agent, name, 50);
    }
    wait_count(&env, &agent, "rare", 10_000);
    // Still shipping after every failure: a later line of each source arrives, transformed.
    for name in small.iter().chain(&["rare"]) {
        append_lines(
            &env.p(&format!("logs/{name}.log")),
            &[format!("good {name} after")],
        );
    }
    for name in small.iter().chain(&["rare"]) {
        let after = format!("good {name} after");
        wait_for(
            &format!("{after}\n{}", tail(&agent.stderr_text())),
            PATIENCE,
            || by_msg(&env, name).contains_key(&after),
        );
    }
    for name in small.iter().chain(&["rare"]) {
        let got = by_msg(&env, name);
        for (msg, r) in &got {
            if msg.starts_with("bad") {
                let e = r["fields"]["transform_error"]
                    .as_str()
                    .unwrap_or_else(|| panic!("{r}"));
                assert!(e.starts_with(&format!("{name}: ")), "{e}");
                assert!(
                    r["fields"].get("ok").is_none(),
                    "a failed record ships unchanged: {r}"
                );
            } else {
                assert_eq!(r["fields"]["ok"], true, "{r}");
                assert!(r["fields"].get("transform_error").is_none(), "{r}");
            }
        }
    }
    let err = |name: &str| {
        let got = by_msg(&env, name);
        let bad = got.iter().find(|(m, _)| m.starts_with("bad")).unwrap().1;
        bad["fields"]["transform_error"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert!(
        err("endless").contains("instruction limit"),
        "{}",
        err("endless")
    );
    assert!(err("bomb").contains("memory limit"), "{}", err("bomb"));
    assert!(err("pattern").contains("string.find"), "{}", err("pattern"));
    assert!(err("exec").contains("os"), "{}", err("exec"));
    assert!(err("req").contains("require"), "{}", err("req"));
    assert!(
        err("rare").contains("one in ten thousand"),
        "{}",
        err("rare")
    );
    assert!(!std::path::Path::new("/tmp/log-sensor-lua-pwned").exists());
    // One alert per failing streak: each bad line of these sources is its own streak.
    let alerts = env.query("SELECT source, detail FROM alerts WHERE kind = 'transform_error'");
    let per: HashMap<String, usize> = alerts.iter().fold(HashMap::new(), |mut m, a| {
        *m.entry(a["source"].as_str().unwrap().to_string())
            .or_default() += 1;
        m
    });
    assert_eq!(per.get("rare"), Some(&1), "{alerts:?}");
    assert_eq!(per.get("exec"), Some(&5), "{alerts:?}");
    agent.signal(libc::SIGTERM);
    agent.wait_exit(PATIENCE);
}

#[test]
fn kill_9_with_a_dropping_script_loses_no_kept_line_and_revives_no_dropped_one() {
    let script = "function process(rec)\n  if rec.msg:sub(1, 4) == 'drop' then return nil end\n  \
                  return rec\nend\n";
    let env = env_with(&[("app", script, "")]);
    let lines: Vec<String> = (0..30_000)
        .map(|i| {
            if i % 3 == 0 {
                format!("drop {i:06} {}", "x".repeat(60))
            } else {
                format!("keep {i:06} {}", "y".repeat(60))
            }
        })
        .collect();
    append_lines(&env.p("logs/app.log"), &lines[..15_000]);
    let agent = env.start();
    wait_count(&env, &agent, "app", 1000);
    agent.signal(libc::SIGKILL);
    drop(agent);
    // More while it is down, then a restart from what was committed.
    append_lines(&env.p("logs/app.log"), &lines[15_000..]);
    let mut agent = env.start();
    let kept: Vec<String> = lines
        .iter()
        .filter(|l| l.starts_with("keep"))
        .cloned()
        .collect();
    env.wait_msgs(&agent, &kept);
    let got: HashSet<String> = env.msgs().into_iter().collect();
    assert!(
        !got.iter().any(|m| m.starts_with("drop")),
        "a dropped line came back"
    );
    for k in &kept {
        assert!(got.contains(k), "lost {k}");
    }
    agent.signal(libc::SIGTERM);
    agent.wait_exit(PATIENCE);
}

#[test]
fn a_script_that_does_not_load_is_a_config_error_and_a_reload_keeps_the_running_one() {
    let good = "function process(rec) rec.fields.v = 1 return rec end\n";
    let env = env_with(&[("app", good, "")]);
    let script = env.p("scripts/app.lua");
    std::fs::write(&script, "function process(rec)\n  return rec\nend end\n").unwrap();
    let out = env.cmd().arg("check").output().unwrap();
    let err =
        String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("transforms.app.path"), "{err}");
    assert!(
        err.contains(&format!("{}:3:", script.display())),
        "names file and line: {err}"
    );
    std::fs::write(&script, "function handle(rec) return rec end\n").unwrap();
    let out = env.cmd().arg("check").output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(
        !out.status.success() && err.contains("no function `process`"),
        "{err}"
    );

    std::fs::write(&script, good).unwrap();
    let mut agent = env.start();
    append_lines(&env.p("logs/app.log"), &["one".to_string()]);
    env.wait_msgs(&agent, &["one".to_string()]);
    // A broken script: the reload is refused and the running script goes on.
    std::fs::write(&script, "function process(rec) return rec\n").unwrap();
    let out = env.cmd().arg("reload").output().unwrap();
    assert!(
        !out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    append_lines(&env.p("logs/app.log"), &["two".to_string()]);
    env.wait_msgs(&agent, &["two".to_string()]);
    assert_eq!(by_msg(&env, "app")["two"]["fields"]["v"], 1);
    // A fixed one is taken at the next reload.
    std::fs::write(
        &script,
        "function process(rec) rec.fields.v = 2 return rec end\n",
    )
    .unwrap();
    let out = env.cmd().arg("reload").output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    append_lines(&env.p("logs/app.log"), &["three".to_string()]);
    env.wait_msgs(&agent, &["three".to_string()]);
    assert_eq!(by_msg(&env, "app")["three"]["fields"]["v"], 2);
    agent.signal(libc::SIGTERM);
    agent.wait_exit(PATIENCE);
}

/// The agent watches its scripts as it watches its config: saving an edited script is enough,
/// with no `reload` and no change to the config file.
#[test]
fn an_edited_script_file_alone_is_taken_without_a_reload() {
    let env = env_with(&[(
        "app",
        "function process(rec) rec.fields.v = 1 return rec end\n",
        "",
    )]);
    let script = env.p("scripts/app.lua");
    let mut agent = env.start();
    append_lines(&env.p("logs/app.log"), &["one".to_string()]);
    env.wait_msgs(&agent, &["one".to_string()]);
    assert_eq!(by_msg(&env, "app")["one"]["fields"]["v"], 1);
    std::fs::write(
        &script,
        "function process(rec) rec.fields.v = 2 return rec end\n",
    )
    .unwrap();
    let mut n = 0;
    wait_for("a record through the edited script", PATIENCE, || {
        n += 1;
        let line = format!("probe {n}");
        append_lines(&env.p("logs/app.log"), &[line.clone()]);
        env.wait_msgs(&agent, &[line.clone()]);
        by_msg(&env, "app")[&line]["fields"]["v"] == 2
    });
    agent.signal(libc::SIGTERM);
    agent.wait_exit(PATIENCE);
}
