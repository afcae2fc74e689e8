//! `set --persist` and `pack enable`: a key written into the config file itself, keeping its
//! comments and layout, and only after the result validated as the file would.

use super::layers::{check_key, render, Layers};
use super::{Config, ConfigError, ConfigIssue};
use std::path::Path;
use toml::Value;

/// Writes `key = value` into the config file itself, keeping its comments and layout, after
/// checking that the result is a valid config. `None` removes the key.
pub fn persist(path: &Path, key: &str, value: Option<&Value>) -> Result<Config, ConfigError> {
    check_key(path, key)?;
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let templated = super::template::is_template(path);
    let parsed: Result<toml_edit::DocumentMut, _> = text.parse();
    let mut doc = match parsed {
        Ok(doc) => doc,
        Err(_) if templated => {
            return Err(not_literal(
                path,
                key,
                "its {% %} blocks make the template itself not TOML, so no key in it can be edited in place",
            ))
        }
        Err(e) => {
            return Err(ConfigError::Syntax {
                path: path.to_path_buf(),
                message: e.to_string(),
            })
        }
    };
    let parts: Vec<&str> = key.split('.').collect();
    if templated {
        literal_in_template(path, &doc, key, &parts)?;
    }
    let (last, parents) = parts.split_last().expect("checked non-empty");
    let mut table: &mut toml_edit::Table = doc.as_table_mut();
    for p in parents {
        let item = table.entry(p).or_insert_with(|| {
            let mut t = toml_edit::Table::new();
            t.set_implicit(true);
            toml_edit::Item::Table(t)
        });
        table = match item.as_table_mut() {
            Some(t) => t,
            None => {
                return Err(ConfigError::Invalid {
                    path: path.to_path_buf(),
                    issues: vec![ConfigIssue {
                        key: key.to_string(),
                        message: format!("{p} is not a table in the file"),
                    }],
                })
            }
        };
    }
    match value {
        Some(v) => {
            let item: toml_edit::DocumentMut = format!("v = {}", render(v))
                .parse()
                .expect("a rendered value parses");
            let new = item.get("v").cloned().expect("v is set");
            match (table.get_mut(last).and_then(|i| i.as_value_mut()), new) {
                // Only the value is replaced: `insert` would replace the key too, and the
                // comment lines above a key are the key's decor. The old value's decor is the
                // comment after it on its line.
                (Some(old), toml_edit::Item::Value(mut v)) => {
                    *v.decor_mut() = old.decor().clone();
                    *old = v;
                }
                (_, new) => {
                    table.insert(last, new);
                }
            }
        }
        None => {
            table.remove(last);
        }
    }
    let new_text = doc.to_string();
    // Validate exactly as a config file: write beside it, load it with its packs, then swap.
    let dir = path.parent().unwrap_or(Path::new("."));
    // A template is checked as one: rendered with the vars.toml beside it (same folder).
    let tmp = dir.join(format!(
        ".{}.{}.tmp{}",
        path.file_name()
            .map(|f| f.to_string_lossy())
            .unwrap_or_default(),
        std::process::id(),
        if templated {
            super::template::SUFFIX
        } else {
            ""
        }
    ));
    let write = |p: &Path| -> std::io::Result<()> {
        use std::io::Write;
        let mut f = std::fs::File::create(p)?;
        f.write_all(new_text.as_bytes())?;
        f.sync_all()?;
        if let Ok(md) = std::fs::metadata(path) {
            std::fs::set_permissions(p, md.permissions())?;
        }
        Ok(())
    };
    write(&tmp).map_err(|source| ConfigError::Read {
        path: tmp.clone(),
        source,
    })?;
    let checked = Layers::load(&tmp).and_then(|l| {
        let mut l = l;
        l.path = path.to_path_buf();
        l.resolve()
    });
    match checked {
        Ok(cfg) => {
            std::fs::rename(&tmp, path).map_err(|source| ConfigError::Read {
                path: path.to_path_buf(),
                source,
            })?;
            Ok(cfg)
        }
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(match e {
                ConfigError::Invalid { issues, .. } => ConfigError::Invalid {
                    path: path.to_path_buf(),
                    issues,
                },
                other => other,
            })
        }
    }
}

fn not_literal(path: &Path, key: &str, why: &str) -> ConfigError {
    ConfigError::Invalid {
        path: path.to_path_buf(),
        issues: vec![ConfigIssue {
            key: key.to_string(),
            message: format!(
                "not written: {} is a template and {why}; edit the template (or its {}) instead",
                path.display(),
                super::template::VARS_FILE
            ),
        }],
    }
}

/// `set --persist` may edit a template only where the template holds the key's value as plain
/// TOML: the template must parse as TOML as it stands (no `{% %}` blocks, which could repeat or
/// hide the key), the key must be written in it, and its value must hold no `{{ }}`, `{% %}` or
/// `{# #}` (a value the template computes on each host cannot be replaced by one value).
fn literal_in_template(
    path: &Path,
    doc: &toml_edit::DocumentMut,
    key: &str,
    parts: &[&str],
) -> Result<(), ConfigError> {
    let mut item = doc.as_item();
    for p in parts {
        item = match item.get(p) {
            Some(i) => i,
            None => {
                return Err(not_literal(
                    path,
                    key,
                    "the key is not written in it as a literal (adding keys to a template is left to its author)",
                ))
            }
        };
    }
    let text = item.to_string();
    if ["{{", "{%", "{#"].iter().any(|m| text.contains(m)) {
        return Err(not_literal(
            path,
            key,
            &format!("the value ({}) is computed by the template", text.trim()),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::layers::parse_value;

    #[test]
    fn persist_keeps_comments_and_layout() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("agent.toml");
        let text = "# the agent\nstate_dir = \"state\" # where offsets live\n\n[defaults]\nmax_record_bytes = 1000 # small\n\n# app logs\n[sources.app]\npaths = [\"a/*.log\"]\n";
        std::fs::write(&p, text).unwrap();
        persist(&p, "defaults.max_record_bytes", Some(&parse_value("2048"))).unwrap();
        persist(&p, "sources.app.exclude", Some(&parse_value("[\"*.tmp\"]"))).unwrap();
        let out = std::fs::read_to_string(&p).unwrap();
        assert!(out.contains("# the agent\n"), "{out}");
        assert!(
            out.contains("state_dir = \"state\" # where offsets live"),
            "{out}"
        );
        assert!(out.contains("max_record_bytes = 2048 # small"), "{out}");
        assert!(out.contains("# app logs\n[sources.app]"), "{out}");
        assert!(out.contains("exclude = [\"*.tmp\"]"), "{out}");
        let bad = persist(
            &p,
            "defaults.max_record_bytes",
            Some(&parse_value("\"huge\"")),
        )
        .unwrap_err();
        assert!(
            bad.to_string().contains("defaults.max_record_bytes"),
            "{bad}"
        );
        assert_eq!(
            std::fs::read_to_string(&p).unwrap(),
            out,
            "a refused change leaves the file alone"
        );
        persist(&p, "defaults.max_record_bytes", None).unwrap();
        assert!(!std::fs::read_to_string(&p)
            .unwrap()
            .contains("max_record_bytes"));
    }

    /// Regression: rewriting a key replaced it with a fresh key, and the comment lines above a
    /// key belong to the key, so they were lost.
    #[test]
    fn persist_keeps_the_comment_lines_above_the_key_it_rewrites() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        let text = "[defaults]\n# why: big java traces\nmax_record_bytes = 65536 # keep\n\n\
                    [sources.app]\n# the app's logs\n# (both hosts)\n  paths = [\"a/*.log\"]\n";
        std::fs::write(&p, text).unwrap();
        persist(
            &p,
            "defaults.max_record_bytes",
            Some(&parse_value("131072")),
        )
        .unwrap();
        persist(&p, "sources.app.paths", Some(&parse_value("[\"b/*.log\"]"))).unwrap();
        let want = "[defaults]\n# why: big java traces\nmax_record_bytes = 131072 # keep\n\n\
                    [sources.app]\n# the app's logs\n# (both hosts)\n  paths = [\"b/*.log\"]\n";
        assert_eq!(std::fs::read_to_string(&p).unwrap(), want);
    }

    #[test]
    fn persist_edits_a_template_only_where_a_key_is_a_literal() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("agent.toml.j2");
        std::fs::write(dir.path().join("vars.toml"), "app = \"/srv/app\"\n").unwrap();
        let text = "host_id = \"{{ host.hostname }}\"\n[defaults]\nmax_record_bytes = 1000\n[sources.app]\npaths = [\"{{ vars.app }}/*.log\"]\n";
        std::fs::write(&p, text).unwrap();
        let cfg = persist(&p, "defaults.max_record_bytes", Some(&parse_value("2048"))).unwrap();
        assert_eq!(cfg.sources[0].paths, vec!["/srv/app/*.log".to_string()]);
        let out = std::fs::read_to_string(&p).unwrap();
        assert!(out.contains("max_record_bytes = 2048"), "{out}");
        assert!(
            out.contains("{{ vars.app }}"),
            "the template stays a template: {out}"
        );
        for (key, why) in [
            ("sources.app.paths", "computed by the template"),
            ("host_id", "computed by the template"),
            ("defaults.max_file_bytes", "not written in it as a literal"),
        ] {
            let e = persist(&p, key, Some(&parse_value("[\"/x\"]"))).unwrap_err();
            assert!(
                e.to_string().contains(why) && e.to_string().contains(key),
                "{key}: {e}"
            );
        }
        assert_eq!(
            std::fs::read_to_string(&p).unwrap(),
            out,
            "refusals leave it alone"
        );
        std::fs::write(
            &p,
            "{% if true %}\n[defaults]\nmax_record_bytes = 1000\n{% endif %}\n",
        )
        .unwrap();
        let e = persist(&p, "defaults.max_record_bytes", Some(&parse_value("5"))).unwrap_err();
        assert!(e.to_string().contains("blocks"), "{e}");
        assert!(std::fs::read_dir(dir.path()).unwrap().all(|e| !e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .contains(".tmp")));
    }
}
