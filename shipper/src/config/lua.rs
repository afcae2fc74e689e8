//! `[transforms.NAME]` tables of `type = "lua"`: where the script is, which function runs it and
//! the limits it runs under.
//!
//! A script that does not load is a config error like a bad key: it is loaded here exactly as
//! the transform will run it ([`sandbox`]), so `check` reports a syntax error with its file and
//! line, or a missing `process`, and a reload with such a script keeps the running config.

pub mod sandbox;

use super::reader::TableReader;
use super::ConfigIssue;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// The function called for every record unless `function = "…"` names another.
pub const DEFAULT_FUNCTION: &str = "process";
/// Memory a script's state may hold, its globals included (`memory_limit`).
pub const DEFAULT_MEMORY_LIMIT: usize = 64 << 20;
/// Lua VM instructions one call may run (`instruction_limit`): ample for per-record logic,
/// a few milliseconds of an endless loop.
pub const DEFAULT_INSTRUCTION_LIMIT: u64 = 1_000_000;
/// Wall time one call may take (`time_limit`), C functions included.
pub const DEFAULT_TIME_LIMIT: Duration = Duration::from_secs(1);

/// The keys of a Lua transform that have defaults, with them as a config file would write them
/// (`get` and `list` show them with origin `default`).
pub fn defaults() -> Vec<(&'static str, toml::Value)> {
    use super::units::{duration_value, size_value};
    vec![
        ("function", toml::Value::String(DEFAULT_FUNCTION.into())),
        ("memory_limit", size_value(DEFAULT_MEMORY_LIMIT as u64)),
        ("instruction_limit", size_value(DEFAULT_INSTRUCTION_LIMIT)),
        ("time_limit", duration_value(DEFAULT_TIME_LIMIT)),
    ]
}

/// The script files the Lua transforms of a config table read (`transforms.NAME.path` where
/// `type = "lua"`), resolved as [`read`] resolves them: an edited script is a reload, as an
/// edited config is. Taken from the table, not from a resolved config, so that a script whose
/// load failed is watched too and fixing it is seen.
pub fn script_files(table: &toml::Table, config_dir: &Path) -> Vec<std::path::PathBuf> {
    let Some(transforms) = table.get("transforms").and_then(toml::Value::as_table) else {
        return Vec::new();
    };
    transforms
        .values()
        .filter_map(toml::Value::as_table)
        .filter(|t| t.get("type").and_then(toml::Value::as_str) == Some("lua"))
        .filter_map(|t| t.get("path").and_then(toml::Value::as_str))
        .map(|p| config_dir.join(p))
        .collect()
}

/// A Lua transform's script and limits, as read from the config.
#[derive(Debug, Clone)]
pub struct LuaOptions {
    /// The script's text, read once when the config is: a reload reads it again.
    pub code: Arc<str>,
    /// Where the code came from, for errors: the script's absolute path, or
    /// `transforms.NAME.source` for inline code.
    pub origin: String,
    /// The global function called with each record (`process` unless set).
    pub function: String,
    /// Bytes the script's Lua state may allocate; an allocation past it fails the call.
    pub memory_limit: usize,
    /// Lua VM instructions one call may run (counted in steps of
    /// [`sandbox::HOOK_EVERY`]).
    pub instruction_limit: u64,
    /// Wall time one call may take. Lua code is stopped by the instruction hook; the C
    /// functions that could run long without it (the pattern functions) refuse work whose worst
    /// case would not fit in this bound (see [`sandbox`]).
    pub time_limit: Duration,
}

/// Reads `[transforms.NAME]` of `type = "lua"` (`type` itself is the caller's; it is accepted
/// here so it is not an unknown key). `path` is relative to `config_dir`, the config file's
/// folder. Every problem comes back at once, each with its dotted key; a script that does not
/// load is one of them, its message naming the file (or inline key) and line.
pub fn read(
    name: &str,
    table: &toml::Table,
    config_dir: &Path,
) -> Result<LuaOptions, Vec<ConfigIssue>> {
    let prefix = format!("transforms.{name}");
    let mut issues = Vec::new();
    let mut r = TableReader::new(&prefix, table);
    let _ = r.string("type", &mut issues);
    let inline = r.string("source", &mut issues);
    let path = r.string("path", &mut issues);
    let function = r
        .string("function", &mut issues)
        .unwrap_or_else(|| DEFAULT_FUNCTION.to_string());
    let memory_limit = r
        .size("memory_limit", &mut issues)
        .map_or(DEFAULT_MEMORY_LIMIT, |v| v as usize);
    let instruction_limit = r
        .size("instruction_limit", &mut issues)
        .unwrap_or(DEFAULT_INSTRUCTION_LIMIT);
    let time_limit = r
        .duration("time_limit", &mut issues)
        .unwrap_or(DEFAULT_TIME_LIMIT);
    r.finish(&mut issues);

    let issue = |key: &str, message: String| ConfigIssue {
        key: format!("{prefix}.{key}"),
        message,
    };
    // Below 1 MiB the libraries alone do not fit; a limit is a guard, not a diet.
    if memory_limit < 1 << 20 {
        issues.push(issue("memory_limit", "must be at least 1MiB".into()));
    }
    if instruction_limit < sandbox::HOOK_EVERY as u64 {
        let m = format!("must be at least {}", sandbox::HOOK_EVERY);
        issues.push(issue("instruction_limit", m));
    }
    if time_limit < Duration::from_millis(1) || time_limit > Duration::from_secs(60) {
        issues.push(issue("time_limit", "must be between 1ms and 60s".into()));
    }
    if function.is_empty() {
        issues.push(issue("function", "must not be empty".into()));
    }
    let (code, origin, key) = match (inline, path) {
        (Some(code), None) => (code, format!("{prefix}.source"), "source"),
        (None, Some(p)) => {
            let file = config_dir.join(&p);
            match std::fs::read_to_string(&file) {
                Ok(code) => (code, file.display().to_string(), "path"),
                Err(e) => {
                    let m = format!("cannot read Lua script {}: {e}", file.display());
                    issues.push(issue("path", m));
                    return Err(issues);
                }
            }
        }
        (Some(_), Some(_)) => {
            let m = "set either source (inline code) or path (a script file), not both";
            issues.push(issue("path", m.into()));
            return Err(issues);
        }
        (None, None) => {
            let m = "a Lua transform needs source (inline code) or path (a script file)";
            issues.push(issue("source", m.into()));
            return Err(issues);
        }
    };
    if !issues.is_empty() {
        return Err(issues);
    }
    let opts = LuaOptions {
        code: code.into(),
        origin,
        function,
        memory_limit,
        instruction_limit,
        time_limit,
    };
    // Loaded as it will run: syntax, top-level errors and a missing function are found now.
    if let Err(e) = sandbox::Sandbox::load(&opts) {
        issues.push(issue(key, e.to_string()));
        return Err(issues);
    }
    Ok(opts)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(s: &str) -> toml::Table {
        s.parse().unwrap()
    }

    #[test]
    fn inline_source_with_defaults() {
        let t = table("type = 'lua'\nsource = 'function process(r) return r end'");
        let o = read("t", &t, Path::new("/nonexistent")).unwrap();
        assert_eq!(o.function, "process");
        assert_eq!(o.origin, "transforms.t.source");
        assert_eq!(o.memory_limit, DEFAULT_MEMORY_LIMIT);
        assert_eq!(o.time_limit, DEFAULT_TIME_LIMIT);
    }

    #[test]
    fn a_syntax_error_names_the_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let script = "function process(r)\n  return r\nend end\n";
        std::fs::write(dir.path().join("bad.lua"), script).unwrap();
        let t = table("type = 'lua'\npath = 'bad.lua'");
        let issues = read("b", &t, dir.path()).unwrap_err();
        assert_eq!(issues.len(), 1, "{issues:?}");
        assert_eq!(issues[0].key, "transforms.b.path");
        let file = dir.path().join("bad.lua").display().to_string();
        assert!(
            issues[0].message.contains(&format!("{file}:3:")),
            "{}",
            issues[0].message
        );
    }

    #[test]
    fn a_script_without_the_function_is_refused() {
        let t = table("source = 'function handle(r) return r end'");
        let issues = read("x", &t, Path::new("/")).unwrap_err();
        assert!(
            issues[0].message.contains("process"),
            "{}",
            issues[0].message
        );
        let t = table("source = 'function handle(r) return r end'\nfunction = 'handle'");
        assert!(read("x", &t, Path::new("/")).is_ok());
    }

    #[test]
    fn every_bad_key_at_once() {
        let t =
            table("source = 'x'\npath = 'y.lua'\nmemory_limit = 10\ntime_limit = '2m'\ncolour = 1");
        let issues = read("z", &t, Path::new("/")).unwrap_err();
        let keys: Vec<&str> = issues.iter().map(|i| i.key.as_str()).collect();
        assert!(keys.contains(&"transforms.z.colour"), "{keys:?}");
        assert!(keys.contains(&"transforms.z.memory_limit"), "{keys:?}");
        assert!(keys.contains(&"transforms.z.time_limit"), "{keys:?}");
        assert!(keys.contains(&"transforms.z.path"), "{keys:?}");
    }

    #[test]
    fn a_missing_file_is_named() {
        let t = table("path = 'scripts/none.lua'");
        let issues = read("m", &t, Path::new("/etc/x")).unwrap_err();
        assert!(
            issues[0].message.contains("/etc/x/scripts/none.lua"),
            "{}",
            issues[0].message
        );
    }
}
