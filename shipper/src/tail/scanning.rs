//! When scans run and what their results do: on the scan thread once the tailer is started
//! (so a scan of 100,000 files never holds back reading), in line when a test steps it; files
//! truncated in place let go, files found again renamed, new ones queued to be identified
//! (`identify`), and old streams pruned.

use super::*;
use crate::config::{SinkConfig, DEFAULT_SINK};

impl Tailer {
    pub(super) fn scan(&mut self, out: &mut Intake<'_>) {
        self.scan_started();
        let s = discover::scan_full(&self.cfg.sources);
        self.scan_dirs = s.dirs;
        self.apply_scan(s.found, s.problems, out);
        self.admit(None);
    }

    pub(super) fn scan_started(&mut self) {
        self.stats.scans.fetch_add(1, Ordering::Relaxed);
        self.scan_requested = false;
        // A scan started now looks at every file: it covers the events inotify lost.
        self.overflow = false;
        self.prune();
        self.last_scan = Some(Instant::now());
    }

    /// Acts on what a scan found; files to open are queued for a slot ([`Tailer::admit`]).
    pub(super) fn apply_scan(
        &mut self,
        found: Vec<Found>,
        problems: Vec<discover::ScanProblem>,
        out: &mut Intake<'_>,
    ) {
        for p in problems {
            if self.alerted_paths.insert(p.path.clone()) {
                let src = self.cfg.sources[p.source].name.clone();
                self.alert(
                    "permission_denied",
                    Some(&src),
                    None,
                    Some(&p.path),
                    format!("cannot list folder: {}", p.error),
                );
            }
        }
        // Files truncated in place are let go first, so that a copy of them found in this same
        // scan can continue their stream (copytruncate with the copy among the globs). Only a
        // scan that found a file to identify can hold such a copy; without one, the read every
        // open file gets after a scan finds a truncation itself (`resume`), and the two preads
        // per open file per scan are spared (10,000 files: 2,000 preads a second).
        if found.iter().any(|f| self.to_identify(f)) {
            for f in &found {
                let key = (f.device, f.inode);
                let truncated = self
                    .open
                    .get(&key)
                    .map(|t| !t.compressed && (shrunk(t, f.size) || rewritten(t)))
                    .unwrap_or(false);
                if truncated {
                    let t = self.open.remove(&key).expect("checked above");
                    self.truncated(*t, out);
                }
            }
        }
        let present: HashSet<FileKey> = found.iter().map(|f| (f.device, f.inode)).collect();
        // Before the files the globs match are identified: a left-behind stream found draining
        // makes a same-head newcomer (its archive in the making) wait for it.
        self.reclaim_left_behind(&present);
        let mut symlink_dirs: Vec<PathBuf> = Vec::new();
        let own = self.own_outputs();
        for f in found {
            let key = (f.device, f.inode);
            if let Some((_, sink)) = own.iter().find(|(k, _)| *k == key) {
                if !self.open.contains_key(&key) {
                    self.not_own_output(&f, sink);
                    continue;
                }
            }
            if f.symlink {
                if let Some(dir) = std::fs::canonicalize(&f.path)
                    .ok()
                    .and_then(|p| p.parent().map(Path::to_path_buf))
                {
                    symlink_dirs.push(dir);
                }
            }
            if self.open.contains_key(&key) {
                self.seen_again(key, &f);
                continue;
            }
            if let Some(size) = self.gzip_pending.get_mut(&key) {
                if *size != f.size {
                    // Still growing: gzip is still writing it. Its writes wake scans anyway;
                    // the one after its last write is what sees it stable.
                    *size = f.size;
                    self.scan_requested = true;
                    continue;
                }
            }
            if self.parked_found(&f) {
                continue;
            }
            if self.finished.get(&key) == Some(&(f.size, f.mtime_ns))
                || self.refused.get(&key) == Some(&(f.size, f.mtime_ns))
            {
                continue;
            }
            self.finished.remove(&key);
            self.refused.remove(&key);
            self.queue_adoption(f);
        }
        self.parked_missing(&present);
        let now = Instant::now();
        for t in self.open.values_mut() {
            if !present.contains(&t.key) && t.released_at.is_none() {
                t.released_at = Some(now);
            }
            t.dirty = true;
            self.dirty.insert(t.key);
        }
        self.deferred.retain(|k, _| present.contains(k));
        self.finished.retain(|k, _| present.contains(k));
        self.refused.retain(|k, _| present.contains(k));
        self.gzip_pending.retain(|k, _| present.contains(k));
        self.stats
            .open_files
            .store(self.open.len() as u64, Ordering::Relaxed);
        if let Some(w) = &mut self.watch {
            let walked = std::mem::take(&mut self.scan_dirs);
            w.update(&self.cfg.sources, symlink_dirs.into_iter().chain(walked));
        }
    }

    /// The files the agent's file sinks write now, by identity, each with its key. The config
    /// refuses a glob that matches a sink's path as written; one reaching it another way (a
    /// symlinked folder, a bind mount, a hard link) only shows here.
    fn own_outputs(&self) -> Vec<(FileKey, String)> {
        self.cfg
            .sinks
            .iter()
            .filter_map(|s| match &s.sink {
                SinkConfig::File { path, .. } => {
                    let md = std::fs::metadata(path).ok()?;
                    let key = match s.name.as_str() {
                        DEFAULT_SINK => "sink".to_string(),
                        name => format!("sinks.{name}"),
                    };
                    Some(((md.dev(), md.ino()), format!("{key} ({})", path.display())))
                }
                _ => None,
            })
            .collect()
    }

    /// `f` is a file sink's own output: never read (each pass would ship the last wrapped in
    /// one more layer of JSON, without end); alerted once per path.
    fn not_own_output(&mut self, f: &Found, sink: &str) {
        if self.alerted_paths.insert(f.path.clone()) {
            let src = self.cfg.sources[f.source].name.clone();
            self.alert(
                "config_error",
                Some(&src),
                None,
                Some(&f.path),
                format!(
                    "not read: it is the output of {sink}, reached by sources.{src}.paths; reading it would ship the agent's own output again and again"
                ),
            );
        }
    }

    /// Whether a scan's `f` is a file no stream follows yet, to be identified (not open, not
    /// parked, not an archive finished or a file refused as it is now).
    fn to_identify(&self, f: &Found) -> bool {
        let key = (f.device, f.inode);
        let version = Some(&(f.size, f.mtime_ns));
        !self.open.contains_key(&key)
            && !self.slots.is_parked(key)
            && self.finished.get(&key) != version
            && self.refused.get(&key) != version
    }

    /// Once an hour, forget streams let go long ago, in the store and here.
    pub(super) fn prune(&mut self) {
        if self.last_prune.elapsed() < Duration::from_secs(3600) {
            return;
        }
        self.last_prune = Instant::now();
        let kept = {
            let st = self.store.lock().expect("store lock");
            match st
                .prune_streams(FORGET_AFTER_SECS)
                .and_then(|_| st.load_streams())
            {
                Ok(rows) => rows
                    .into_iter()
                    .map(|r| r.stream)
                    .collect::<HashSet<String>>(),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot prune old streams");
                    return;
                }
            }
        };
        let open: HashSet<String> = self.open.values().map(|t| t.id.clone()).collect();
        self.registry
            .retain(|id| kept.contains(id) || open.contains(id));
    }

    /// An open file found again, maybe under a new name (rename rotation within the globs).
    pub(super) fn seen_again(&mut self, key: FileKey, f: &Found) {
        let Some(t) = self.open.get_mut(&key) else {
            return;
        };
        t.released_at = None;
        if t.path != f.path {
            if self.by_path.get(t.path.as_os_str()) == Some(&key) {
                self.by_path.remove(t.path.as_os_str());
            }
            self.by_path.insert(f.path.clone().into_os_string(), key);
            t.path = f.path.clone();
            t.meta.path = f.path.display().to_string().into();
            let id = t.id.clone();
            let path = t.meta.path.to_string();
            if let Some(k) = self.registry.get_mut(&id) {
                k.row.path = path;
                let row = k.row.clone();
                self.persist(&row);
            }
        }
    }

    pub(super) fn scan_or_request(&mut self, out: &mut Intake<'_>) {
        let cfg = self.cfg.clone();
        match self.scanner.as_mut() {
            Some(s) => {
                if s.request(&cfg) {
                    self.scan_started();
                }
            }
            None => self.scan(out),
        }
    }

    /// Applies a finished background scan, unless a reload made it stale.
    pub(super) fn scanned(&mut self, out: &mut Intake<'_>) {
        let Some(done) = self.scanner.as_mut().and_then(|s| s.take()) else {
            return;
        };
        if Arc::ptr_eq(&done.cfg, &self.cfg) {
            self.scan_dirs = done.dirs;
            self.apply_scan(done.found, done.problems, out);
        } else {
            self.last_scan = None;
        }
    }

    /// Files wait for a slot and nothing holds them back: the next round opens more.
    pub(super) fn slots_to_fill(&self) -> bool {
        self.slots.waiting_len() > 0 && self.open.len() < self.slots.max_open
    }
}

/// The file under `t` is now shorter than what was read from it. `seen` is the size the scan
/// saw, and the scan walks on its own thread while this one reads on: a file growing meanwhile
/// is read past the size the scan saw before the result is applied. Only the stream's own
/// descriptor says whether the file really shrank.
fn shrunk(t: &Tracked, seen: u64) -> bool {
    let pos = t.framer.position();
    seen < pos && t.file().metadata().is_ok_and(|m| m.len() < pos)
}
