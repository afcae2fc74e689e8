//! osquery packs that also switch the agent's sources on, and where they apply.
//!
//! A pack is osquery's JSON with a `log_sensor` section osquery ignores. Whether it applies on
//! a host is decided as osquery decides for its queries (osquery/config/packs.cpp
//! `Pack::checkPlatform`): the pack's `platform`, a comma-separated list of `linux`, `darwin`,
//! `windows`, `freebsd`, `posix`, `any`/`all`, or a distribution (`ubuntu`, `centos`, …). Each
//! source may narrow that with its own `platform` and a `when` condition over the template
//! variables (`host.distro_id in ['debian', 'ubuntu']`), and its string values may use them
//! (`{{ vars.nginx_logs | default('/var/log/nginx') }}/access.log`): one pack file then covers
//! Debian's `/var/log/syslog` and RHEL's `/var/log/messages`, and osquery reads it unchanged.

use super::template::{self, Context, Facts};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use toml::{Table, Value};

/// Keys of a pack's source that say where it applies and under which name; they are not source
/// settings. `name` lets two entries (`syslog_debian`, `syslog_rhel`) be one source (`syslog`)
/// on the hosts where each applies, so the pack's queries name one source everywhere.
const PLACEMENT_KEYS: [&str; 3] = ["platform", "when", "name"];

/// One pack file, read but not yet placed on a host.
#[derive(Debug, Clone)]
pub struct Pack {
    pub name: String,
    pub path: PathBuf,
    /// The pack's own `platform` (osquery's), if it names one.
    pub platform: Option<String>,
    /// The `log_sensor.sources` entries as written, in name order.
    pub sources: BTreeMap<String, Table>,
}

/// A pack as it is on one host.
#[derive(Debug, Clone)]
pub struct Placed {
    /// Why the pack does not apply here; `None` when it does.
    pub refused: Option<String>,
    /// The sources it adds here, their templates rendered and placement keys removed.
    pub sources: Table,
    /// Sources left out here, each with the reason.
    pub skipped: Vec<(String, String)>,
}

/// Found as the osquery extension finds them (`log_sensor_common::packs`).
pub use log_sensor_common::packs::{available_packs, find_pack, pack_name};

impl Pack {
    pub fn read(path: &Path) -> Result<Pack, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read pack {}: {e}", path.display()))?;
        let json: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| format!("pack {} is not JSON: {e}", path.display()))?;
        let platform = match json.get("platform") {
            None => None,
            Some(serde_json::Value::String(s)) => Some(s.clone()),
            Some(_) => {
                return Err(format!(
                    "pack {}: platform must be a string",
                    path.display()
                ))
            }
        };
        let mut sources = BTreeMap::new();
        if let Some(s) = json.get("log_sensor").and_then(|l| l.get("sources")) {
            let Some(Value::Table(t)) = json_to_toml(s) else {
                return Err(format!(
                    "pack {}: log_sensor.sources must be an object of sources",
                    path.display()
                ));
            };
            for (name, v) in t {
                let Value::Table(st) = v else {
                    return Err(format!(
                        "pack {}: log_sensor.sources.{name} must be an object",
                        path.display()
                    ));
                };
                sources.insert(name, st);
            }
        }
        Ok(Pack {
            name: pack_name(path),
            path: path.to_path_buf(),
            platform,
            sources,
        })
    }

    /// What the pack does on the host `ctx` describes. A template error in a source is an error
    /// naming the pack, the source and the key; it never yields half a source.
    pub fn place(&self, ctx: &Context) -> Result<Placed, String> {
        let mut placed = Placed {
            refused: None,
            sources: Table::new(),
            skipped: Vec::new(),
        };
        if let Some(p) = &self.platform {
            if !platform_matches(p, &ctx.host) {
                placed.refused = Some(format!(
                    "its platform is {p:?} and this host is {}",
                    describe(&ctx.host)
                ));
                return Ok(placed);
            }
        }
        for (name, table) in &self.sources {
            let at = |key: &str| format!("pack {} source {name} {key}", self.path.display());
            if let Some(reason) = self.excluded(name, table, ctx)? {
                placed.skipped.push((name.clone(), reason));
                continue;
            }
            let as_name = match table.get("name") {
                None => name.clone(),
                Some(Value::String(n)) if !n.is_empty() => n.clone(),
                Some(_) => return Err(format!("{}: must be a source name", at("name"))),
            };
            if placed.sources.contains_key(&as_name) {
                return Err(format!(
                    "pack {}: two entries apply as source {as_name} on this host ({}); narrow their platform or when",
                    self.path.display(),
                    describe(&ctx.host)
                ));
            }
            let mut out = Table::new();
            for (k, v) in table {
                if PLACEMENT_KEYS.contains(&k.as_str()) {
                    continue;
                }
                let v = render_value(&self.path, v, ctx).map_err(|e| format!("{}: {e}", at(k)))?;
                out.insert(k.clone(), v);
            }
            placed.sources.insert(as_name, Value::Table(out));
        }
        if !self.sources.is_empty() && placed.sources.is_empty() {
            placed.refused = Some(format!(
                "none of its sources applies on this host ({}): {}",
                describe(&ctx.host),
                placed
                    .skipped
                    .iter()
                    .map(|(s, why)| format!("{s}: {why}"))
                    .collect::<Vec<_>>()
                    .join("; ")
            ));
        }
        Ok(placed)
    }

    /// Why a source is left out on this host, if it is.
    fn excluded(&self, name: &str, table: &Table, ctx: &Context) -> Result<Option<String>, String> {
        let at = |key: &str| format!("pack {} source {name} {key}", self.path.display());
        match table.get("platform") {
            None => {}
            Some(Value::String(p)) => {
                if !platform_matches(p, &ctx.host) {
                    return Ok(Some(format!("platform {p:?}")));
                }
            }
            Some(_) => return Err(format!("{}: must be a string", at("platform"))),
        }
        match table.get("when") {
            None => Ok(None),
            Some(Value::String(cond)) => match template::condition(&self.path, cond, ctx) {
                Ok(true) => Ok(None),
                Ok(false) => Ok(Some(format!("when {cond:?} is false"))),
                Err(e) => Err(format!("{}: {e}", at("when"))),
            },
            Some(_) => Err(format!("{}: must be a string (a condition)", at("when"))),
        }
    }
}

/// osquery's platform test: any of the comma-separated names matches this host.
pub fn platform_matches(platform: &str, host: &Facts) -> bool {
    platform
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .any(|p| match p {
            "any" | "all" => true,
            "posix" => host.os != "windows",
            "linux" | "darwin" | "windows" | "freebsd" => host.os == p,
            // osquery also accepts "macos" for darwin.
            "macos" => host.os == "darwin",
            distro => host.distro_id == distro || host.distro_like.iter().any(|l| l == distro),
        })
}

fn describe(host: &Facts) -> String {
    if host.distro_id.is_empty() {
        host.os.clone()
    } else {
        format!("{} ({} {})", host.os, host.distro_id, host.distro_version).replace(" )", ")")
    }
}

/// A value with every string that holds template markup rendered.
fn render_value(pack: &Path, v: &Value, ctx: &Context) -> Result<Value, String> {
    Ok(match v {
        Value::String(s) if s.contains("{{") || s.contains("{%") => {
            Value::String(template::render(pack, s, ctx).map_err(|e| e.to_string())?)
        }
        Value::Array(a) => Value::Array(
            a.iter()
                .map(|x| render_value(pack, x, ctx))
                .collect::<Result<_, _>>()?,
        ),
        Value::Table(t) => Value::Table(
            t.iter()
                .map(|(k, x)| Ok((k.clone(), render_value(pack, x, ctx)?)))
                .collect::<Result<_, String>>()?,
        ),
        other => other.clone(),
    })
}

fn json_to_toml(v: &serde_json::Value) -> Option<Value> {
    Some(match v {
        serde_json::Value::Null => return None,
        serde_json::Value::Bool(b) => Value::Boolean(*b),
        serde_json::Value::Number(n) => match n.as_i64() {
            Some(i) => Value::Integer(i),
            None => Value::Float(n.as_f64()?),
        },
        serde_json::Value::String(s) => Value::String(s.clone()),
        serde_json::Value::Array(a) => Value::Array(a.iter().filter_map(json_to_toml).collect()),
        serde_json::Value::Object(o) => Value::Table(
            o.iter()
                .filter_map(|(k, v)| Some((k.clone(), json_to_toml(v)?)))
                .collect(),
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(os: &str, id: &str, version: &str, like: &[&str]) -> Facts {
        Facts {
            hostname: "h".into(),
            fqdn: Some("h.example".into()),
            os: os.into(),
            distro_id: id.into(),
            distro_version: version.into(),
            distro_like: like.iter().map(|s| s.to_string()).collect(),
            arch: "x86_64".into(),
            machine_id: String::new(),
        }
    }

    pub fn debian() -> Facts {
        facts("linux", "debian", "12", &[])
    }
    pub fn ubuntu() -> Facts {
        facts("linux", "ubuntu", "24.04", &["debian"])
    }
    pub fn rocky() -> Facts {
        facts("linux", "rocky", "9.4", &["rhel", "centos", "fedora"])
    }
    pub fn macos() -> Facts {
        facts("darwin", "", "", &[])
    }

    fn ctx(host: Facts, vars: &str) -> Context {
        Context {
            host,
            env: BTreeMap::new(),
            vars: vars.parse().unwrap(),
        }
    }

    #[test]
    fn platforms_as_osquery_reads_them() {
        assert!(platform_matches("linux", &debian()));
        assert!(platform_matches("posix", &macos()));
        assert!(platform_matches("darwin,linux", &macos()));
        assert!(!platform_matches("linux", &macos()));
        assert!(platform_matches("ubuntu", &ubuntu()));
        assert!(platform_matches("debian", &ubuntu()), "ID_LIKE counts");
        assert!(platform_matches("centos", &rocky()));
        assert!(!platform_matches("centos", &debian()));
        assert!(platform_matches("any", &macos()));
    }

    fn shipped(name: &str) -> Pack {
        let p = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../packs")
            .join(format!("{name}.json"));
        Pack::read(&p).unwrap_or_else(|e| panic!("{e}"))
    }

    fn paths(placed: &Placed, source: &str) -> Vec<String> {
        placed.sources[source]["paths"]
            .as_array()
            .unwrap_or_else(|| panic!("{source} has no paths: {:?}", placed.sources))
            .iter()
            .map(|v| v.as_str().unwrap().to_string())
            .collect()
    }

    /// Every shipped pack, on each kind of host, gives sources the agent accepts.
    #[test]
    fn every_shipped_pack_places_valid_sources_on_every_kind_of_host() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../packs");
        let packs = available_packs(&[dir]);
        assert!(packs.len() >= 5, "{packs:?}");
        for (name, path) in packs {
            let pack = Pack::read(&path).unwrap();
            for host in [debian(), ubuntu(), rocky(), macos()] {
                let placed = pack.place(&ctx(host.clone(), "")).unwrap();
                for (s, v) in &placed.sources {
                    let t = v.as_table().unwrap();
                    for key in PLACEMENT_KEYS {
                        assert!(!t.contains_key(key), "{name}.{s}: {key} left in");
                    }
                    let text = v.to_string();
                    assert!(
                        !text.contains("{{") && !text.contains("{%"),
                        "{name}.{s}: {text}"
                    );
                }
                let mut cfg = Table::new();
                cfg.insert("sources".into(), Value::Table(placed.sources.clone()));
                crate::config::Config::from_table(Path::new("/etc/ls/agent.toml"), &cfg)
                    .unwrap_or_else(|e| panic!("{name} on {host:?}: {e}"));
            }
        }
    }

    #[test]
    fn the_system_logs_pack_follows_each_layout() {
        let pack = shipped("linux_syslog");
        let deb = pack.place(&ctx(debian(), "")).unwrap();
        assert!(deb.refused.is_none());
        assert!(paths(&deb, "syslog").contains(&"/var/log/syslog".to_string()));
        assert!(!paths(&deb, "syslog").iter().any(|p| p.contains("messages")));
        assert!(paths(&deb, "auth").contains(&"/var/log/auth.log".to_string()));
        let rhel = pack.place(&ctx(rocky(), "")).unwrap();
        assert!(paths(&rhel, "syslog").contains(&"/var/log/messages".to_string()));
        assert!(!paths(&rhel, "syslog").iter().any(|p| p.contains("/syslog")));
        assert!(paths(&rhel, "auth").contains(&"/var/log/secure".to_string()));
        let mac = pack.place(&ctx(macos(), "")).unwrap();
        assert!(
            mac.refused.as_deref().unwrap().contains("darwin"),
            "{:?}",
            mac.refused
        );
        assert!(mac.sources.is_empty());

        let mac = shipped("macos_system").place(&ctx(macos(), "")).unwrap();
        assert!(paths(&mac, "system").contains(&"/var/log/system.log".to_string()));
        assert!(paths(&mac, "install").contains(&"/var/log/install.log".to_string()));
        let not_here = shipped("macos_system").place(&ctx(debian(), "")).unwrap();
        assert!(not_here.refused.is_some());
    }

    #[test]
    fn nginx_and_java_follow_the_layout_and_the_operators_vars() {
        let nginx = shipped("nginx");
        let deb = nginx.place(&ctx(debian(), "")).unwrap();
        assert!(paths(&deb, "nginx_access").contains(&"/var/log/nginx/access.log".to_string()));
        let custom = nginx
            .place(&ctx(rocky(), "nginx_logs = \"/srv/nginx/logs\""))
            .unwrap();
        assert!(paths(&custom, "nginx_error").contains(&"/srv/nginx/logs/error.log".to_string()));
        // Homebrew's prefix differs between Apple silicon and Intel Macs.
        let mut arm = macos();
        arm.arch = "aarch64".into();
        let mac = nginx.place(&ctx(arm, "")).unwrap();
        assert!(paths(&mac, "nginx_access")
            .contains(&"/opt/homebrew/var/log/nginx/access.log".to_string()));
        let intel = nginx.place(&ctx(macos(), "")).unwrap();
        assert!(paths(&intel, "nginx_error")
            .contains(&"/usr/local/var/log/nginx/error.log".to_string()));
        let java = shipped("java_app");
        let deb = java.place(&ctx(debian(), "")).unwrap();
        assert!(paths(&deb, "java_app").contains(&"/var/log/app/*.log".to_string()));
        let custom = java
            .place(&ctx(debian(), "java_app_logs = \"/opt/shop/logs\""))
            .unwrap();
        assert!(paths(&custom, "java_app").contains(&"/opt/shop/logs/*.log".to_string()));
    }

    #[test]
    fn a_bad_condition_or_template_names_the_pack_source_and_key() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("web.json");
        std::fs::write(
            &p,
            r#"{"queries": {}, "log_sensor": {"sources": {
                 "a": {"paths": ["{{ vars.nope }}/x.log"]},
                 "b": {"paths": ["/b"], "when": "host.os =="}}}}"#,
        )
        .unwrap();
        let e = Pack::read(&p)
            .unwrap()
            .place(&ctx(debian(), ""))
            .unwrap_err();
        assert!(
            e.contains("web.json source a paths") && e.contains("undefined"),
            "{e}"
        );
        std::fs::write(
            &p,
            r#"{"log_sensor": {"sources": {"b": {"paths": ["/b"], "when": "host.os =="}}}}"#,
        )
        .unwrap();
        let e = Pack::read(&p)
            .unwrap()
            .place(&ctx(debian(), ""))
            .unwrap_err();
        assert!(e.contains("source b when"), "{e}");
    }
}
