//! `log-sensor pack list | enable | disable`: the packs in the pack folders, whether each applies
//! on this host and what it would add here.

use anyhow::bail;
use log_sensor::config::layers::{self, Layers};
use log_sensor::config::packs::{Pack, Placed};
use log_sensor::config::template::Context;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

pub enum Action {
    List,
    Enable(String),
    Disable(String),
}

/// What a pack does on this host, or why it cannot be read.
fn place(path: &Path, ctx: &Context) -> Result<Placed, String> {
    Pack::read(path)?.place(ctx)
}

fn dirs_text(dirs: &[PathBuf]) -> String {
    dirs.iter()
        .map(|d| d.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

fn sources_text(placed: &Placed) -> String {
    if placed.sources.is_empty() {
        return "-".into();
    }
    placed
        .sources
        .iter()
        .map(|(name, s)| {
            let paths = s
                .get("paths")
                .and_then(|p| p.as_array())
                .map(|a| {
                    a.iter()
                        .filter_map(|v| v.as_str())
                        .collect::<Vec<_>>()
                        .join(" ")
                })
                .unwrap_or_default();
            format!("{name} ({paths})")
        })
        .collect::<Vec<_>>()
        .join(", ")
}

pub fn run(
    path: &Path,
    action: Action,
    write_packs: impl Fn(&Path, &[String], &str) -> anyhow::Result<ExitCode>,
) -> anyhow::Result<ExitCode> {
    let layers = Layers::load(path)?;
    let cfg = layers.resolve()?;
    let enabled = cfg.packs.clone();
    let base = cfg.path.parent().map(Path::to_path_buf).unwrap_or_default();
    let ctx = Context::for_template(&cfg.path)?;
    match action {
        Action::List => {
            let available = layers::available_packs(&cfg.pack_dirs);
            if available.is_empty() {
                println!("no packs in {}", dirs_text(&cfg.pack_dirs));
            }
            for (name, p) in available {
                let on = enabled.iter().any(|e| {
                    e == &name
                        || layers::find_pack(e, &cfg.pack_dirs, &base).as_deref()
                            == Some(p.as_path())
                });
                let here = match place(&p, &ctx) {
                    Ok(placed) => match &placed.refused {
                        None => format!("applies here; sources: {}", sources_text(&placed)),
                        Some(why) => format!("does not apply here: {why}"),
                    },
                    Err(e) => format!("unreadable: {e}"),
                };
                println!(
                    "{} {:<20} {}  {here}",
                    if on { "[on] " } else { "[off]" },
                    name,
                    p.display(),
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Action::Enable(name) => {
            let Some(found) = layers::find_pack(&name, &cfg.pack_dirs, &base) else {
                bail!("pack {name:?} not found in {}", dirs_text(&cfg.pack_dirs));
            };
            let placed = place(&found, &ctx).map_err(anyhow::Error::msg)?;
            if let Some(why) = placed.refused {
                bail!(
                    "pack {name} does not apply on this host: {why}; not enabled (a config \
                     shared with other hosts may still list it: it adds nothing here)"
                );
            }
            if enabled.contains(&name) {
                println!("pack {name} already enabled");
                return Ok(ExitCode::SUCCESS);
            }
            let mut list = enabled;
            list.push(name.clone());
            write_packs(path, &list, &format!("pack {name} enabled"))
        }
        Action::Disable(name) => {
            if !enabled.contains(&name) {
                println!("pack {name} is not enabled");
                return Ok(ExitCode::SUCCESS);
            }
            let list: Vec<String> = enabled.into_iter().filter(|p| p != &name).collect();
            write_packs(path, &list, &format!("pack {name} disabled"))
        }
    }
}
