//! Scans on a thread of their own, so that walking 100,000 files (or a slow network folder)
//! never holds back reading: the tailer asks for a scan and picks the result up when it is
//! ready, reading on meanwhile.

use super::{scan_full, Found, ScanProblem};
use crate::config::Config;
use crossbeam_channel::{Receiver, Sender, TryRecvError};
use std::path::PathBuf;
use std::sync::Arc;

/// What one scan found, under the config it was made with: a reload in between makes it stale
/// (source indexes may have moved).
pub struct Scanned {
    pub cfg: Arc<Config>,
    pub found: Vec<Found>,
    pub problems: Vec<ScanProblem>,
    pub dirs: Vec<PathBuf>,
}

pub struct Scanner {
    requests: Sender<Arc<Config>>,
    results: Receiver<Scanned>,
    in_flight: bool,
}

impl Scanner {
    /// Starts the scanning thread; it ends when the scanner is dropped.
    pub fn spawn() -> std::io::Result<Scanner> {
        let (requests, rx) = crossbeam_channel::bounded::<Arc<Config>>(1);
        let (tx, results) = crossbeam_channel::bounded::<Scanned>(1);
        std::thread::Builder::new()
            .name("scan".into())
            .spawn(move || {
                for cfg in rx {
                    let s = scan_full(&cfg.sources);
                    if tx
                        .send(Scanned {
                            cfg,
                            found: s.found,
                            problems: s.problems,
                            dirs: s.dirs,
                        })
                        .is_err()
                    {
                        return;
                    }
                }
            })?;
        Ok(Scanner {
            requests,
            results,
            in_flight: false,
        })
    }

    /// Asks for a scan unless one is running; returns whether one was asked for.
    pub fn request(&mut self, cfg: &Arc<Config>) -> bool {
        if self.in_flight {
            return false;
        }
        self.in_flight = self.requests.try_send(cfg.clone()).is_ok();
        self.in_flight
    }

    pub fn in_flight(&self) -> bool {
        self.in_flight
    }

    /// The finished scan, if there is one.
    pub fn take(&mut self) -> Option<Scanned> {
        match self.results.try_recv() {
            Ok(s) => {
                self.in_flight = false;
                Some(s)
            }
            Err(TryRecvError::Empty) => None,
            Err(TryRecvError::Disconnected) => {
                self.in_flight = false;
                None
            }
        }
    }
}
