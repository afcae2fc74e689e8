//! osquery packs that switch the agent's sources on. Here: where a pack named in the config's
//! `packs` is found (a bare name in the pack folders, a path with a `/` or ending in `.json`
//! relative to the config's folder); in [`place`]: what a pack does on one host. The agent
//! places the packs it finds; the extension reads the same files for their queries and shows
//! the same placed sources when no agent answers.

mod place;
pub use place::{platform_matches, Pack, Placed, PLACEMENT_KEYS};

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// A pack's name: its file name without `.json`.
pub fn pack_name(path: &Path) -> String {
    path.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// A pack by name (`health` → `<dir>/health.json`, the first folder that has it) or by path
/// (relative to `base`, the config's folder); `None` when no such file exists.
pub fn find_pack(name: &str, dirs: &[PathBuf], base: &Path) -> Option<PathBuf> {
    if name.contains('/') || name.ends_with(".json") {
        let p = base.join(name);
        return p.is_file().then_some(p);
    }
    dirs.iter()
        .map(|d| d.join(format!("{name}.json")))
        .find(|p| p.is_file())
}

/// Every pack in the folders, by name; where two folders hold the same name, the first wins, as
/// in [`find_pack`].
pub fn available_packs(dirs: &[PathBuf]) -> Vec<(String, PathBuf)> {
    let mut out = BTreeMap::new();
    for d in dirs {
        let Ok(rd) = std::fs::read_dir(d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            if p.extension().map(|x| x == "json").unwrap_or(false) {
                out.entry(pack_name(&p)).or_insert(p);
            }
        }
    }
    out.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_search_the_folders_in_order_and_paths_the_base() {
        let t = tempfile::tempdir().unwrap();
        let (a, b) = (t.path().join("a"), t.path().join("b"));
        std::fs::create_dir_all(&a).unwrap();
        std::fs::create_dir_all(&b).unwrap();
        std::fs::write(b.join("web.json"), "{}").unwrap();
        std::fs::write(a.join("web.json"), "{}").unwrap();
        std::fs::write(b.join("only_b.json"), "{}").unwrap();
        std::fs::write(t.path().join("mine.json"), "{}").unwrap();
        let dirs = [a.clone(), b.clone()];
        assert_eq!(find_pack("web", &dirs, t.path()), Some(a.join("web.json")));
        assert_eq!(
            find_pack("only_b", &dirs, t.path()),
            Some(b.join("only_b.json"))
        );
        assert_eq!(
            find_pack("mine.json", &dirs, t.path()),
            Some(t.path().join("mine.json"))
        );
        assert_eq!(find_pack("missing", &dirs, t.path()), None);
        assert_eq!(find_pack("./missing.json", &dirs, t.path()), None);
        let names: Vec<String> = available_packs(&dirs).into_iter().map(|(n, _)| n).collect();
        assert_eq!(names, ["only_b", "web"]);
        assert_eq!(available_packs(&dirs)[1].1, a.join("web.json"));
    }
}
