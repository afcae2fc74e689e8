//! Config files whose name ends in `.j2`: Jinja2 templates rendered with minijinja before the
//! TOML is parsed, so one file serves every host of a fleet (as Ansible, Salt and Puppet's EPP
//! templates do for Filebeat's or Vector's configs).
//!
//! A template sees three variables:
//! - `host`: facts about this machine ([`Facts`]): `hostname`, `fqdn`, `os` (osquery's names:
//!   `linux`, `darwin`, `windows`, `freebsd`), `distro_id`, `distro_version` and `distro_like`
//!   (from `/etc/os-release`), `arch`, `machine_id`;
//! - `env`: the process environment (`env.NAME`);
//! - `vars`: the operator's own values, from `vars.toml` beside the template when it exists.
//!
//! An undefined name is an error (a typo must not render as an empty path); `| default(...)`
//! supplies a value for one that may be missing. The `toml` filter writes a value in TOML syntax
//! (`paths = {{ vars.app_logs | toml }}`), so a value holding a quote cannot break the file.
//!
//! The same engine renders the string values of a pack's sources and evaluates their `when`
//! conditions (see [`crate::packs`]).

use minijinja::value::{Enumerator, Object, ObjectRepr, Value, ValueKind};
use minijinja::{AutoEscape, Environment, UndefinedBehavior};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

/// The suffix that makes a config file a template.
pub const SUFFIX: &str = ".j2";
/// The operator's variables, looked for beside the template.
pub const VARS_FILE: &str = "vars.toml";

#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("variables file {path} is not valid TOML: {message}")]
    Vars { path: PathBuf, message: String },
    /// A syntax error, an undefined variable or a failing filter, with where it is.
    #[error("template {}{}: {message}", path.display(), line.map(|l| format!(" line {l}")).unwrap_or_default())]
    Render {
        path: PathBuf,
        line: Option<usize>,
        message: String,
    },
}

pub fn is_template(path: &Path) -> bool {
    path.to_string_lossy().ends_with(SUFFIX)
}

/// What a template may know about the machine it renders on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Facts {
    pub hostname: String,
    /// `None`: asked of the resolver only when a template uses `host.fqdn` (a resolver that
    /// hangs must not stall every render and reload of configs that never ask).
    pub fqdn: Option<String>,
    /// osquery's platform names: `linux`, `darwin`, `windows`, `freebsd`.
    pub os: String,
    /// `ID` of `/etc/os-release` (`debian`, `ubuntu`, `rhel`, `rocky`); empty where there is none.
    pub distro_id: String,
    /// `VERSION_ID` of `/etc/os-release` (`12`, `9.4`).
    pub distro_version: String,
    /// `ID_LIKE` of `/etc/os-release` (`rhel centos fedora` on Rocky), so "the RHEL family" is one
    /// test rather than a list of every rebuild.
    pub distro_like: Vec<String>,
    /// The CPU architecture as Rust names it (`x86_64`, `aarch64`).
    pub arch: String,
    /// `/etc/machine-id`; empty where there is none.
    pub machine_id: String,
}

impl Facts {
    /// The facts of the machine this runs on.
    pub fn of_this_host() -> Facts {
        let hostname = crate::expand::hostname();
        let release = std::fs::read_to_string("/etc/os-release")
            .or_else(|_| std::fs::read_to_string("/usr/lib/os-release"))
            .unwrap_or_default();
        let release = parse_os_release(&release);
        let get = |k: &str| release.get(k).cloned().unwrap_or_default();
        let machine_id = ["/etc/machine-id", "/var/lib/dbus/machine-id"]
            .iter()
            .find_map(|p| std::fs::read_to_string(p).ok())
            .map(|s| s.trim().to_string())
            .unwrap_or_default();
        Facts {
            fqdn: None,
            hostname,
            os: osquery_os(std::env::consts::OS).to_string(),
            distro_id: get("ID"),
            distro_version: get("VERSION_ID"),
            distro_like: get("ID_LIKE")
                .split_whitespace()
                .map(str::to_string)
                .collect(),
            arch: std::env::consts::ARCH.to_string(),
            machine_id,
        }
    }

    /// The facts as the template's `host` variable.
    pub fn to_value(&self) -> Value {
        Value::from_object(HostObject {
            facts: self.clone(),
            fqdn: OnceLock::new(),
        })
    }
}

/// `host` in a template: the facts, with `fqdn` resolved on first use.
#[derive(Debug)]
struct HostObject {
    facts: Facts,
    fqdn: OnceLock<String>,
}

impl HostObject {
    const KEYS: &'static [&'static str] = &[
        "hostname",
        "fqdn",
        "os",
        "distro_id",
        "distro_version",
        "distro_like",
        "arch",
        "machine_id",
    ];
}

impl Object for HostObject {
    fn repr(self: &Arc<Self>) -> ObjectRepr {
        ObjectRepr::Map
    }

    fn get_value(self: &Arc<Self>, key: &Value) -> Option<Value> {
        let f = &self.facts;
        Some(match key.as_str()? {
            "hostname" => Value::from(f.hostname.as_str()),
            "fqdn" => Value::from(
                self.fqdn
                    .get_or_init(|| {
                        f.fqdn
                            .clone()
                            .or_else(|| fqdn(&f.hostname))
                            .unwrap_or_else(|| f.hostname.clone())
                    })
                    .as_str(),
            ),
            "os" => Value::from(f.os.as_str()),
            "distro_id" => Value::from(f.distro_id.as_str()),
            "distro_version" => Value::from(f.distro_version.as_str()),
            "distro_like" => Value::from(
                f.distro_like
                    .iter()
                    .map(|s| Value::from(s.as_str()))
                    .collect::<Vec<_>>(),
            ),
            "arch" => Value::from(f.arch.as_str()),
            "machine_id" => Value::from(f.machine_id.as_str()),
            _ => return None,
        })
    }

    fn enumerate(self: &Arc<Self>) -> Enumerator {
        Enumerator::Str(Self::KEYS)
    }
}

/// Rust's `std::env::consts::OS` in osquery's words (osquery says `darwin` where Rust says `macos`).
fn osquery_os(rust_os: &str) -> &str {
    match rust_os {
        "macos" => "darwin",
        other => other,
    }
}

/// `KEY=value` and `KEY="value"` lines of os-release(5).
fn parse_os_release(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| {
            let l = l.trim();
            if l.starts_with('#') {
                return None;
            }
            let (k, v) = l.split_once('=')?;
            let v = v.trim();
            let v = v
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .or_else(|| v.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')))
                .unwrap_or(v);
            Some((k.trim().to_string(), v.replace("\\\"", "\"")))
        })
        .collect()
}

/// The canonical name the resolver gives our host name, as `hostname -f` prints it.
fn fqdn(hostname: &str) -> Option<String> {
    let name = std::ffi::CString::new(hostname).ok()?;
    // SAFETY: hints is zeroed then filled; getaddrinfo's result list is freed below and
    // ai_canonname is copied out before that.
    unsafe {
        let mut hints: libc::addrinfo = std::mem::zeroed();
        hints.ai_flags = libc::AI_CANONNAME;
        hints.ai_family = libc::AF_UNSPEC;
        let mut res: *mut libc::addrinfo = std::ptr::null_mut();
        if libc::getaddrinfo(name.as_ptr(), std::ptr::null(), &hints, &mut res) != 0
            || res.is_null()
        {
            return None;
        }
        let canon = (*res).ai_canonname;
        let out = (!canon.is_null()).then(|| {
            std::ffi::CStr::from_ptr(canon)
                .to_string_lossy()
                .into_owned()
        });
        libc::freeaddrinfo(res);
        out.filter(|s| !s.is_empty())
    }
}

/// Everything a template sees.
#[derive(Debug, Clone)]
pub struct Context {
    pub host: Facts,
    pub env: BTreeMap<String, String>,
    pub vars: toml::Table,
}

impl Context {
    /// This host's facts and environment, and the `vars.toml` beside `template` (none is fine).
    pub fn for_template(template: &Path) -> Result<Context, TemplateError> {
        Ok(Context {
            host: Facts::of_this_host(),
            // vars() would panic on a variable that is not UTF-8; such a value is shown lossily.
            env: std::env::vars_os()
                .map(|(k, v)| {
                    (
                        k.to_string_lossy().into_owned(),
                        v.to_string_lossy().into_owned(),
                    )
                })
                .collect(),
            vars: read_vars(&vars_path(template))?,
        })
    }

    fn to_value(&self) -> Value {
        let mut m: BTreeMap<&str, Value> = BTreeMap::new();
        m.insert("host", self.host.to_value());
        m.insert(
            "env",
            Value::from(
                self.env
                    .iter()
                    .map(|(k, v)| (k.clone(), Value::from(v.as_str())))
                    .collect::<BTreeMap<_, _>>(),
            ),
        );
        m.insert(
            "vars",
            toml_to_value(&toml::Value::Table(self.vars.clone())),
        );
        Value::from(m)
    }
}

/// Where a template's variables are: `vars.toml` in its folder.
pub fn vars_path(template: &Path) -> PathBuf {
    template.parent().unwrap_or(Path::new(".")).join(VARS_FILE)
}

fn read_vars(path: &Path) -> Result<toml::Table, TemplateError> {
    match std::fs::read_to_string(path) {
        Ok(text) => text
            .parse()
            .map_err(|e: toml::de::Error| TemplateError::Vars {
                path: path.to_path_buf(),
                message: e.to_string(),
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(toml::Table::new()),
        Err(source) => Err(TemplateError::Read {
            path: path.to_path_buf(),
            source,
        }),
    }
}

fn environment() -> Environment<'static> {
    let mut env = Environment::new();
    // A typo in a variable must fail the render, not become an empty path.
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    env.set_auto_escape_callback(|_| AutoEscape::None);
    env.add_filter("toml", |v: Value| -> Result<String, minijinja::Error> {
        value_to_toml(&v)
            .map(|t| crate::toml_inline::render(&t))
            .ok_or_else(|| {
                minijinja::Error::new(
                    minijinja::ErrorKind::InvalidOperation,
                    format!("{v} has no TOML form"),
                )
            })
    });
    env
}

fn render_error(path: &Path, e: &minijinja::Error) -> TemplateError {
    TemplateError::Render {
        path: path.to_path_buf(),
        line: e.line(),
        message: match e.detail() {
            Some(d) => format!("{}: {d}", e.kind()),
            None => e.kind().to_string(),
        },
    }
}

/// Renders template text; errors name `path` (the template's file) and the line.
pub fn render(path: &Path, source: &str, ctx: &Context) -> Result<String, TemplateError> {
    let env = environment();
    let name = path.display().to_string();
    env.render_named_str(&name, source, ctx.to_value())
        .map_err(|e| render_error(path, &e))
}

/// Evaluates a condition such as `host.distro_id in ["debian", "ubuntu"]` to true or false.
pub fn condition(path: &Path, expr: &str, ctx: &Context) -> Result<bool, TemplateError> {
    let env = environment();
    let compiled = env
        .compile_expression(expr)
        .map_err(|e| render_error(path, &e))?;
    let v = compiled
        .eval(ctx.to_value())
        .map_err(|e| render_error(path, &e))?;
    Ok(v.is_true())
}

/// Reads and renders a template file.
pub fn render_file(path: &Path) -> Result<String, TemplateError> {
    let source = std::fs::read_to_string(path).map_err(|source| TemplateError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    render(path, &source, &Context::for_template(path)?)
}

fn toml_to_value(v: &toml::Value) -> Value {
    match v {
        toml::Value::String(s) => Value::from(s.as_str()),
        toml::Value::Integer(i) => Value::from(*i),
        toml::Value::Float(f) => Value::from(*f),
        toml::Value::Boolean(b) => Value::from(*b),
        toml::Value::Datetime(d) => Value::from(d.to_string()),
        toml::Value::Array(a) => Value::from(a.iter().map(toml_to_value).collect::<Vec<_>>()),
        toml::Value::Table(t) => Value::from(
            t.iter()
                .map(|(k, v)| (k.clone(), toml_to_value(v)))
                .collect::<BTreeMap<_, _>>(),
        ),
    }
}

fn value_to_toml(v: &Value) -> Option<toml::Value> {
    Some(match v.kind() {
        ValueKind::Bool => toml::Value::Boolean(v.is_true()),
        ValueKind::Number => match i64::try_from(v.clone()) {
            Ok(i) => toml::Value::Integer(i),
            Err(_) => toml::Value::Float(f64::try_from(v.clone()).ok()?),
        },
        ValueKind::String => toml::Value::String(v.as_str()?.to_string()),
        ValueKind::Seq | ValueKind::Iterable => toml::Value::Array(
            v.try_iter()
                .ok()?
                .map(|i| value_to_toml(&i))
                .collect::<Option<_>>()?,
        ),
        ValueKind::Map => {
            let mut t = toml::Table::new();
            for k in v.try_iter().ok()? {
                let item = v.get_item(&k).ok()?;
                t.insert(k.as_str()?.to_string(), value_to_toml(&item)?);
            }
            toml::Value::Table(t)
        }
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    pub fn debian() -> Facts {
        Facts {
            hostname: "web-01".into(),
            fqdn: Some("web-01.example.net".into()),
            os: "linux".into(),
            distro_id: "debian".into(),
            distro_version: "12".into(),
            distro_like: vec![],
            arch: "x86_64".into(),
            machine_id: "0123456789abcdef0123456789abcdef".into(),
        }
    }

    fn ctx(vars: &str) -> Context {
        Context {
            host: debian(),
            env: [("LS_SITE".to_string(), "paris".to_string())].into(),
            vars: vars.parse().unwrap(),
        }
    }

    #[test]
    fn renders_host_env_and_vars() {
        let out = render(
            Path::new("/etc/ls/agent.toml.j2"),
            "host_id = \"{{ host.fqdn }}\"\n# {{ env.LS_SITE }} {{ host.distro_id }} {{ host.distro_version }}\n\
             {% if host.distro_id in ['debian', 'ubuntu'] %}paths = {{ vars.logs | toml }}{% endif %}\n\
             x = \"{{ vars.missing | default('/var/log/nginx') }}\"\n",
            &ctx("logs = [\"/var/log/a \\\"quoted\\\".log\"]"),
        )
        .unwrap();
        assert_eq!(
            out.trim_end(),
            "host_id = \"web-01.example.net\"\n# paris debian 12\n\
             paths = [\"/var/log/a \\\"quoted\\\".log\"]\nx = \"/var/log/nginx\""
        );
        let t: toml::Table = out.parse().unwrap();
        assert_eq!(t["paths"][0].as_str(), Some("/var/log/a \"quoted\".log"));
    }

    #[test]
    fn an_undefined_variable_or_bad_syntax_names_the_file_and_line() {
        let p = Path::new("/etc/ls/agent.toml.j2");
        let e = render(p, "a = 1\nb = \"{{ vars.nope }}\"\n", &ctx("")).unwrap_err();
        let TemplateError::Render { line, .. } = &e else {
            panic!("{e}")
        };
        assert_eq!(*line, Some(2), "{e}");
        assert!(
            e.to_string()
                .starts_with("template /etc/ls/agent.toml.j2 line 2: "),
            "{e}"
        );
        let e = render(p, "a = 1\n\n{% if %}\n", &ctx("")).unwrap_err();
        assert!(e.to_string().contains("line 3"), "{e}");
        let e = render(p, "{{ env.LS_SURELY_UNSET }}", &ctx("")).unwrap_err();
        assert!(e.to_string().contains("undefined"), "{e}");
    }

    #[test]
    fn conditions_and_os_release() {
        let p = Path::new("pack.json");
        assert!(condition(
            p,
            "host.os == 'linux' and host.distro_version | int >= 11",
            &ctx("")
        )
        .unwrap());
        assert!(!condition(p, "'rhel' in host.distro_like", &ctx("")).unwrap());
        let r =
            parse_os_release("# c\nID=rocky\nID_LIKE=\"rhel centos fedora\"\nVERSION_ID='9.4'\n");
        assert_eq!(r["ID"], "rocky");
        assert_eq!(r["ID_LIKE"], "rhel centos fedora");
        assert_eq!(r["VERSION_ID"], "9.4");
        assert_eq!(osquery_os("macos"), "darwin");
        let here = Facts::of_this_host();
        assert_eq!(here.hostname, crate::expand::hostname());
        let here = Context {
            host: here,
            env: BTreeMap::new(),
            vars: toml::Table::new(),
        };
        let fqdn = render(p, "{{ host.fqdn }}", &here).unwrap();
        assert!(fqdn.starts_with(&crate::expand::hostname()), "{fqdn}");
        let keys = render(p, "{{ host | list | join(',') }}", &here).unwrap();
        assert_eq!(keys, HostObject::KEYS.join(","));
    }
}
