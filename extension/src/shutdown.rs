//! One shutdown signal shared by the socket server, the manager watcher, the heartbeat ticker
//! and the signal thread; the first reason given wins and decides the exit code.

use std::sync::{Condvar, Mutex};
use std::time::Duration;

/// Why the extension is stopping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reason {
    /// osquery called `Extension.shutdown`.
    ShutdownCall,
    /// SIGTERM, SIGINT or SIGHUP.
    Signal(i32),
    /// The core's socket stopped answering: osqueryd has exited.
    ManagerGone(String),
    /// The core answers but no longer lists us (it restarted); osquery will launch us again.
    Deregistered,
}

impl Reason {
    /// Exit code: 0 for every orderly stop, as the C++ SDK's watcher uses `exitFatal(0)` when
    /// the core has gone away (osquery `osquery/extensions/extensions.cpp`), 1 when the core
    /// dropped our registration (the SDK's `exitFatal()` with its default failure code).
    pub fn exit_code(&self) -> i32 {
        match self {
            Reason::Deregistered => 1,
            _ => 0,
        }
    }
}

/// The shared shutdown flag.
#[derive(Default)]
pub struct Shutdown {
    /// The reason, once triggered.
    reason: Mutex<Option<Reason>>,
    /// Wakes everyone sleeping in `wait_timeout`.
    wake: Condvar,
}

impl Shutdown {
    pub fn trigger(&self, reason: Reason) {
        let mut r = self.reason.lock().unwrap_or_else(|e| e.into_inner());
        if r.is_none() {
            *r = Some(reason);
        }
        self.wake.notify_all();
    }

    pub fn reason(&self) -> Option<Reason> {
        self.reason
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn is_triggered(&self) -> bool {
        self.reason().is_some()
    }

    /// Sleeps up to `d`; returns true when shutdown was triggered.
    pub fn wait_timeout(&self, d: Duration) -> bool {
        let guard = self.reason.lock().unwrap_or_else(|e| e.into_inner());
        if guard.is_some() {
            return true;
        }
        let (guard, _) = self
            .wake
            .wait_timeout_while(guard, d, |r| r.is_none())
            .unwrap_or_else(|e| e.into_inner());
        guard.is_some()
    }
}
