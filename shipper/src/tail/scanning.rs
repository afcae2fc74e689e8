//! When scans run and how their results reach the tailer: on the scan thread once the tailer
//! runs (so a scan of 100,000 files never holds back reading), in line when a test steps it.

use super::*;

impl Tailer {
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
