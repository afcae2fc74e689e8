//! inotify wake-ups (through the notify crate). An event names a path that may have changed;
//! the tailer reads that stream or rescans. Events never decide what exists.

use super::glob_base;
use crate::config::Source;
use crossbeam_channel::{Sender, TrySendError};
use notify::{EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

#[derive(Debug)]
pub enum Wake {
    /// Data may have been written to this path.
    Modified(PathBuf),
    /// Files may have appeared, moved or gone: rescan.
    Rescan,
}

pub struct Watch {
    watcher: RecommendedWatcher,
    watched: BTreeMap<PathBuf, RecursiveMode>,
}

impl Watch {
    /// Wake-ups go to `tx`; when it is full, `overflow` asks for a rescan instead, so a stalled
    /// tailer never lets events pile up in memory. `ring` wakes the idle pipeline after each.
    ///
    /// Every folder is watched on its own, as the scan lists them (once per identity), never
    /// with notify's recursive mode: that walks the tree itself following symlinks, once per
    /// path, and symlinked folders multiply paths with depth (2^16 paths to one folder held
    /// the tail thread for seconds at each scan).
    pub fn new(
        tx: Sender<Wake>,
        overflow: Arc<AtomicBool>,
        ring: impl Fn() + Send + 'static,
    ) -> notify::Result<Watch> {
        let handler = move |res: notify::Result<notify::Event>| {
            let wakes: Vec<Wake> = match res {
                Ok(ev) => match ev.kind {
                    EventKind::Modify(notify::event::ModifyKind::Data(_))
                    | EventKind::Modify(notify::event::ModifyKind::Any) => {
                        ev.paths.into_iter().map(Wake::Modified).collect()
                    }
                    EventKind::Access(_) => Vec::new(),
                    _ => vec![Wake::Rescan],
                },
                Err(_) => vec![Wake::Rescan],
            };
            let any = !wakes.is_empty();
            for w in wakes {
                match tx.try_send(w) {
                    Ok(()) => {}
                    Err(TrySendError::Full(_)) => overflow.store(true, Ordering::Relaxed),
                    Err(TrySendError::Disconnected(_)) => return,
                }
            }
            if any {
                ring();
            }
        };
        let watcher = RecommendedWatcher::new(
            handler,
            notify::Config::default().with_follow_symlinks(false),
        )?;
        Ok(Watch {
            watcher,
            watched: BTreeMap::new(),
        })
    }

    /// Watches what the sources need now: each glob's base folder (or, while it does not exist,
    /// its nearest existing ancestor, to see it created), the folders the scan walked below it,
    /// and the folders of symlink targets.
    pub fn update(&mut self, sources: &[Source], extra_dirs: impl IntoIterator<Item = PathBuf>) {
        let mut want: BTreeMap<PathBuf, RecursiveMode> = BTreeMap::new();
        for s in sources {
            for p in &s.paths {
                let (base, _) = glob_base(p);
                if base.is_dir() {
                    upgrade(&mut want, base, RecursiveMode::NonRecursive);
                } else if let Some(anc) = base.ancestors().find(|a| a.is_dir()) {
                    upgrade(&mut want, anc.to_path_buf(), RecursiveMode::NonRecursive);
                }
            }
        }
        for d in extra_dirs {
            if d.is_dir() {
                upgrade(&mut want, d, RecursiveMode::NonRecursive);
            }
        }
        let stale: Vec<PathBuf> = self
            .watched
            .iter()
            .filter(|(p, m)| want.get(*p) != Some(*m) || !p.is_dir())
            .map(|(p, _)| p.clone())
            .collect();
        for p in stale {
            let _ = self.watcher.unwatch(&p);
            self.watched.remove(&p);
        }
        for (p, m) in want {
            if self.watched.contains_key(&p) {
                continue;
            }
            match self.watcher.watch(&p, m) {
                Ok(()) => {
                    self.watched.insert(p, m);
                }
                Err(e) => {
                    tracing::debug!(path = %p.display(), error = %e, "cannot watch; the periodic rescan covers it")
                }
            }
        }
    }

    pub fn watched(&self) -> impl Iterator<Item = &Path> {
        self.watched.keys().map(PathBuf::as_path)
    }
}

fn upgrade(want: &mut BTreeMap<PathBuf, RecursiveMode>, p: PathBuf, m: RecursiveMode) {
    let e = want.entry(p).or_insert(m);
    if m == RecursiveMode::Recursive {
        *e = RecursiveMode::Recursive;
    }
}
