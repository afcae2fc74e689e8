//! Walks a TOML table key by key, collecting every error with the dotted key it belongs to, and
//! reporting keys nobody asked for as unknown.

use super::{expand::expand, units};
use std::collections::BTreeSet;
use std::time::Duration;
use toml::Value;

/// One problem in a config file, with the dotted key it is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigIssue {
    pub key: String,
    pub message: String,
}

impl std::fmt::Display for ConfigIssue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

pub struct TableReader<'a> {
    prefix: String,
    table: &'a toml::Table,
    seen: BTreeSet<&'a str>,
}

impl<'a> TableReader<'a> {
    pub fn new(prefix: &str, table: &'a toml::Table) -> Self {
        TableReader {
            prefix: prefix.to_string(),
            table,
            seen: BTreeSet::new(),
        }
    }

    pub fn key(&self, name: &str) -> String {
        if self.prefix.is_empty() {
            name.to_string()
        } else {
            format!("{}.{}", self.prefix, name)
        }
    }

    fn raw(&mut self, name: &str) -> Option<&'a Value> {
        let (k, v) = self.table.get_key_value(name)?;
        self.seen.insert(k.as_str());
        Some(v)
    }

    fn fail(&self, issues: &mut Vec<ConfigIssue>, name: &str, message: String) {
        issues.push(ConfigIssue {
            key: self.key(name),
            message,
        });
    }

    pub fn string(&mut self, name: &str, issues: &mut Vec<ConfigIssue>) -> Option<String> {
        match self.raw(name)? {
            Value::String(s) => match expand(s) {
                Ok(v) => Some(v),
                Err(e) => {
                    self.fail(issues, name, e);
                    None
                }
            },
            other => {
                self.fail(
                    issues,
                    name,
                    format!("expected a string, found {}", other.type_str()),
                );
                None
            }
        }
    }

    pub fn boolean(&mut self, name: &str, issues: &mut Vec<ConfigIssue>) -> Option<bool> {
        match self.raw(name)? {
            Value::Boolean(b) => Some(*b),
            other => {
                self.fail(
                    issues,
                    name,
                    format!("expected true or false, found {}", other.type_str()),
                );
                None
            }
        }
    }

    pub fn size(&mut self, name: &str, issues: &mut Vec<ConfigIssue>) -> Option<u64> {
        let parsed = match self.raw(name)? {
            Value::Integer(i) if *i >= 0 => Ok(*i as u64),
            Value::Integer(i) => Err(format!("{i} is negative")),
            Value::String(s) => units::parse_size(s),
            other => Err(format!("expected a size, found {}", other.type_str())),
        };
        parsed.map_err(|e| self.fail(issues, name, e)).ok()
    }

    pub fn duration(&mut self, name: &str, issues: &mut Vec<ConfigIssue>) -> Option<Duration> {
        let parsed = match self.raw(name)? {
            Value::Integer(i) if *i >= 0 => Ok(Duration::from_secs(*i as u64)),
            Value::Float(f) if *f >= 0.0 && f.is_finite() => Ok(Duration::from_secs_f64(*f)),
            Value::String(s) => units::parse_duration(s),
            other => Err(format!(
                "expected a duration such as \"5s\", found {}",
                other.type_str()
            )),
        };
        parsed.map_err(|e| self.fail(issues, name, e)).ok()
    }

    /// File permission bits, written as a string of octal digits ("0640"). An integer is
    /// refused: TOML forgets how it was written, and `mode = 640` (decimal) or `mode = 400`
    /// (0o620) would be read as bits nobody meant.
    pub fn mode(&mut self, name: &str, issues: &mut Vec<ConfigIssue>) -> Option<u32> {
        let parsed = match self.raw(name)? {
            Value::String(s) => {
                let digits = s.strip_prefix("0o").unwrap_or(s);
                match u32::from_str_radix(digits, 8) {
                    Ok(m) if m <= 0o777 && !digits.is_empty() => Ok(m),
                    _ => Err(format!(
                        "{s:?} is not a file mode: expected octal digits up to \"0777\", such as \"0640\""
                    )),
                }
            }
            other => Err(format!(
                "expected a file mode as a string of octal digits such as \"0640\", found {}",
                other.type_str()
            )),
        };
        parsed.map_err(|e| self.fail(issues, name, e)).ok()
    }

    /// A list of strings; a single string is accepted as a list of one.
    pub fn strings(&mut self, name: &str, issues: &mut Vec<ConfigIssue>) -> Option<Vec<String>> {
        let items: Vec<&Value> = match self.raw(name)? {
            Value::Array(a) => a.iter().collect(),
            v @ Value::String(_) => vec![v],
            other => {
                self.fail(
                    issues,
                    name,
                    format!("expected a list of strings, found {}", other.type_str()),
                );
                return None;
            }
        };
        let mut out = Vec::with_capacity(items.len());
        for (i, item) in items.into_iter().enumerate() {
            match item {
                Value::String(s) => match expand(s) {
                    Ok(v) => out.push(v),
                    Err(e) => self.fail(issues, &format!("{name}[{i}]"), e),
                },
                other => self.fail(
                    issues,
                    &format!("{name}[{i}]"),
                    format!("expected a string, found {}", other.type_str()),
                ),
            }
        }
        Some(out)
    }

    pub fn table(&mut self, name: &str, issues: &mut Vec<ConfigIssue>) -> Option<&'a toml::Table> {
        match self.raw(name)? {
            Value::Table(t) => Some(t),
            other => {
                self.fail(
                    issues,
                    name,
                    format!("expected a table, found {}", other.type_str()),
                );
                None
            }
        }
    }

    /// Reports every key of this table that was never read.
    pub fn finish(self, issues: &mut Vec<ConfigIssue>) {
        for k in self.table.keys() {
            if !self.seen.contains(k.as_str()) {
                issues.push(ConfigIssue {
                    key: self.key(k),
                    message: "unknown key".to_string(),
                });
            }
        }
    }
}

/// One top-level key of a config text that may not parse: written once, for the agent's CLI
/// and the osquery extension alike.
pub use log_sensor_common::toml_head::{top_level, TopLevel};
