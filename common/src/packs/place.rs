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

use crate::template::{self, Context, Facts};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use toml::{Table, Value};

/// Keys of a pack's source that say where it applies and under which name; they are not source
/// settings. `name` lets two entries (`syslog_debian`, `syslog_rhel`) be one source (`syslog`)
/// on the hosts where each applies, so the pack's queries name one source everywhere.
pub const PLACEMENT_KEYS: [&str; 3] = ["platform", "when", "name"];

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

use super::pack_name;

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
