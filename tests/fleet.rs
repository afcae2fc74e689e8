//! End-to-end tests of what a fleet rollout uses: a `.j2` config rendered per host (with
//! vars.toml, facts and the environment), `render`, reloads that re-render, packs that apply or
//! not on this host, and the seed's `get_cert` spelling.

#[path = "support/mod.rs"]
mod support;

use std::process::{Command, Output};
use support::*;

fn ls(env: &AgentEnv, config: &str, args: &[&str]) -> Output {
    Command::new(bin("log-sensor"))
        .arg("-c")
        .arg(env.p(config))
        .args(args)
        .env("LOG_SENSOR_LOG", "warn")
        .env("LS_FLEET_SITE", "paris")
        .output()
        .unwrap()
}

fn out(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

const TEMPLATE: &str = r#"# one file for every host
host_id = "{{ host.hostname }}-{{ env.LS_FLEET_SITE }}"
state_dir = "state"
{% for name, dir in vars.apps | items %}
[sources.{{ name }}]
paths = [{{ (dir ~ "/*.log") | toml }}]
{% endfor %}
[batch]
max_wait = "100ms"
[discovery]
rescan_interval = "300ms"
[sink]
type = "file"
path = "state/out.ndjson"
"#;

fn fleet_env() -> AgentEnv {
    let env = AgentEnv::with_config("");
    std::fs::remove_file(env.p("agent.toml")).unwrap();
    std::fs::create_dir_all(env.p("logs/a")).unwrap();
    std::fs::create_dir_all(env.p("logs/b")).unwrap();
    std::fs::write(env.p("agent.toml.j2"), TEMPLATE).unwrap();
    std::fs::write(
        env.p("vars.toml"),
        format!(
            "[apps]\napp_a = {:?}\n",
            env.p("logs/a").display().to_string()
        ),
    )
    .unwrap();
    env
}

fn agent(env: &AgentEnv) -> Proc {
    let mut c = Command::new(bin("log-sensor"));
    c.arg("-c")
        .arg(env.p("agent.toml.j2"))
        .arg("run")
        .env("LOG_SENSOR_LOG", "debug")
        .env("LS_FLEET_SITE", "paris");
    Proc::spawn("log-sensor", &mut c, &env.p("agent.err"))
}

fn shipped(env: &AgentEnv, msg: &str) -> usize {
    env.msgs().iter().filter(|m| *m == msg).count()
}

#[test]
fn a_template_renders_per_host_and_a_broken_one_never_runs() {
    let env = fleet_env();
    let o = ls(&env, "agent.toml.j2", &["render"]);
    let rendered = out(&o);
    let host = String::from_utf8_lossy(&Command::new("hostname").output().unwrap().stdout)
        .trim()
        .to_string();
    assert!(o.status.success(), "{rendered}");
    assert!(
        rendered.contains(&format!("host_id = \"{host}-paris\"")),
        "{rendered}"
    );
    assert!(rendered.contains("[sources.app_a]"), "{rendered}");
    let o = ls(&env, "agent.toml.j2", &["check"]);
    assert!(
        o.status.success() && out(&o).contains("1 source(s)"),
        "{}",
        out(&o)
    );
    let o = ls(&env, "agent.toml.j2", &["get", "host_id"]);
    assert!(
        out(&o).contains(&format!("{host}-paris")) && out(&o).contains("(file)"),
        "{}",
        out(&o)
    );

    // A typo on line 4 of the template: check names the file and line, and the agent does not
    // start on half a config.
    std::fs::write(
        env.p("agent.toml.j2"),
        TEMPLATE.replace("vars.apps | items", "vars.appz | items"),
    )
    .unwrap();
    let o = ls(&env, "agent.toml.j2", &["check"]);
    let msg = out(&o);
    assert!(!o.status.success(), "{msg}");
    assert!(
        msg.contains(&format!(
            "template {} line 4",
            env.p("agent.toml.j2").display()
        )) && msg.contains("undefined"),
        "{msg}"
    );
    let mut a = agent(&env);
    assert!(
        a.wait_exit(PATIENCE).is_some_and(|c| c != 0),
        "a broken template must not run"
    );
    assert!(a.stderr_text().contains("line 4"), "{}", a.stderr_text());
    assert!(!env.p("state/store.db").exists(), "nothing started");
}

#[test]
fn reload_re_renders_and_a_failed_render_keeps_the_running_config() {
    let env = fleet_env();
    append_lines(&env.p("logs/a/x.log"), &["a-one".to_string()]);
    let a = agent(&env);
    wait_for("a-one shipped", PATIENCE, || shipped(&env, "a-one") == 1);

    // A new app in vars.toml: a reload renders it into a new source.
    std::fs::write(
        env.p("vars.toml"),
        format!(
            "[apps]\napp_a = {:?}\napp_b = {:?}\n",
            env.p("logs/a").display().to_string(),
            env.p("logs/b").display().to_string()
        ),
    )
    .unwrap();
    let o = ls(&env, "agent.toml.j2", &["reload"]);
    assert!(o.status.success(), "{}", out(&o));
    append_lines(&env.p("logs/b/y.log"), &["b-one".to_string()]);
    wait_for("b-one shipped after the re-render", PATIENCE, || {
        shipped(&env, "b-one") == 1
    });

    // vars.toml broken: the reload is refused with the file named, the running config stays.
    std::fs::write(env.p("vars.toml"), "[apps\n").unwrap();
    let o = ls(&env, "agent.toml.j2", &["reload"]);
    assert!(
        !o.status.success() && out(&o).contains("vars.toml"),
        "{}",
        out(&o)
    );
    append_lines(&env.p("logs/b/y.log"), &["b-two".to_string()]);
    wait_for(
        "b-two still shipped on the running config",
        PATIENCE,
        || shipped(&env, "b-two") == 1,
    );
    // The agent watches vars.toml too: its own reload raises the alert naming it. Read straight
    // from the store, as `query` itself needs a config that renders.
    let db = rusqlite::Connection::open(env.p("state/store.db")).unwrap();
    wait_for("a config_error alert naming vars.toml", PATIENCE, || {
        db.prepare("SELECT detail FROM alerts WHERE kind = 'config_error'")
            .unwrap()
            .query_map([], |r| r.get::<_, String>(0))
            .unwrap()
            .any(|d| d.unwrap().contains("vars.toml"))
    });
    assert_eq!(shipped(&env, "a-one"), 1);
    drop(a);
}

#[test]
fn pack_list_and_enable_follow_what_applies_on_this_host() {
    let env = AgentEnv::new(r#"paths = ["logs/*.log"]"#);
    let mut text = std::fs::read_to_string(env.p("agent.toml")).unwrap();
    let packs = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../packs");
    text = format!("pack_dirs = [{:?}]\n{text}", packs.display().to_string());
    std::fs::write(env.p("agent.toml"), text).unwrap();
    let os = std::fs::read_to_string("/etc/os-release").unwrap_or_default();
    let debian_like = os.lines().any(|l| {
        l == "ID=debian" || l == "ID=ubuntu" || (l.starts_with("ID_LIKE=") && l.contains("debian"))
    });

    let o = ls(&env, "agent.toml", &["pack", "list"]);
    let list = out(&o);
    assert!(o.status.success(), "{list}");
    let line = |name: &str| {
        list.lines()
            .find(|l| l.contains(&format!(" {name} ")))
            .unwrap_or_else(|| panic!("no {name} in {list}"))
            .to_string()
    };
    assert!(
        line("macos_system").contains("does not apply here: its platform is \"darwin\""),
        "{list}"
    );
    if debian_like {
        let l = line("linux_syslog");
        assert!(
            l.contains("applies here") && l.contains("syslog (/var/log/syslog"),
            "{l}"
        );
        assert!(!l.contains("/var/log/messages"), "{l}");
    }
    assert!(
        line("nginx").contains("nginx_access (/var/log/nginx/access.log"),
        "{list}"
    );

    let o = ls(&env, "agent.toml", &["pack", "enable", "macos_system"]);
    assert!(!o.status.success(), "{}", out(&o));
    assert!(
        out(&o).contains("does not apply on this host") && out(&o).contains("darwin"),
        "{}",
        out(&o)
    );
    assert!(!std::fs::read_to_string(env.p("agent.toml"))
        .unwrap()
        .contains("macos_system"));
    let o = ls(&env, "agent.toml", &["pack", "enable", "nginx"]);
    assert!(o.status.success(), "{}", out(&o));
    let o = ls(&env, "agent.toml", &["get", "sources.nginx_access.paths"]);
    assert!(
        out(&o).contains("/var/log/nginx/access.log") && out(&o).contains("(pack)"),
        "{}",
        out(&o)
    );

    // vars.toml beside the config moves a pack's paths.
    std::fs::write(env.p("vars.toml"), "nginx_logs = \"/srv/web/logs\"\n").unwrap();
    let o = ls(&env, "agent.toml", &["get", "sources.nginx_access.paths"]);
    assert!(out(&o).contains("/srv/web/logs/access.log"), "{}", out(&o));
}

#[test]
fn get_cert_is_enroll_and_refuses_a_password_on_the_command_line() {
    let env = AgentEnv::new(r#"paths = ["logs/*.log"]"#);
    let o = ls(&env, "agent.toml", &["get_cert", "hunter2"]);
    let msg = out(&o);
    assert!(!o.status.success(), "{msg}");
    assert!(
        msg.contains("/proc/<pid>/cmdline") && msg.contains("--password-file"),
        "{msg}"
    );
    assert!(
        !msg.contains("hunter2"),
        "the refusal does not echo it: {msg}"
    );
    assert!(!env.p("state/tls").exists());
    // Without the argument it is enroll under another name.
    let o = ls(&env, "agent.toml", &["get_cert", "--help"]);
    assert!(
        out(&o).contains("--password-file") && out(&o).contains("--server"),
        "{}",
        out(&o)
    );
    let o = ls(
        &env,
        "agent.toml",
        &["get_cert", "--server", "https://127.0.0.1:1", "--user", "u"],
    );
    assert!(out(&o).contains("--ca"), "{}", out(&o));
}

/// The README's command table is the man page: every command and global option `--help` lists
/// is in it, and so is every command's alias.
#[test]
fn the_readme_documents_every_command_help_lists() {
    let readme = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md"),
    )
    .unwrap();
    let start = readme
        .find("## Command line")
        .expect("a Command line section");
    let table = &readme[start..start + readme[start..].find("\n### ").unwrap()];
    let help = Command::new(bin("log-sensor"))
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout).into_owned();
    let commands: Vec<&str> = help
        .split("Commands:")
        .nth(1)
        .unwrap()
        .split("Options:")
        .next()
        .unwrap()
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| *c != "help")
        .collect();
    assert!(commands.len() >= 14, "{commands:?}");
    for c in commands {
        assert!(
            table.contains(&format!("`log-sensor -c CONFIG {c}"))
                || table.contains(&format!("/ `{c}"))
                || table.contains(&format!("`… {c}")),
            "`{c}` is in --help but not in the README's command table"
        );
    }
    for alias in help.lines().filter_map(|l| l.split("[alias: ").nth(1)) {
        let alias = alias.trim_end_matches(']');
        assert!(
            table.contains(&format!("`{alias}`")),
            "alias {alias} undocumented"
        );
    }
    for opt in ["--cert FILE", "--key FILE", "-c CONFIG"] {
        assert!(table.contains(opt), "{opt} undocumented");
        assert!(
            help.contains(opt.split(' ').next().unwrap()),
            "{opt} not in --help"
        );
    }
}
