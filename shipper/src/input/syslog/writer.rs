//! A listener's writer thread: appends what its connections framed to the spool and makes it
//! durable in groups (everything that arrived during one fsync shares the next), then tells
//! the pipeline.

use super::listen::Event;
use super::spool::Spool;
use crate::input::Bell;
use crate::status::ListenerCounters;
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc as tmpsc;

/// The writer: appends each queued group to the spool, fsyncs once per drain of the queue
/// (group commit: everything that arrived during the previous fsync shares the next one).
pub(super) fn spawn_writer(
    url: String,
    spool: Arc<Mutex<Spool>>,
    mut rx: tmpsc::Receiver<Vec<u8>>,
    stats: Arc<ListenerCounters>,
    events: mpsc::Sender<Event>,
    bell: Bell,
) -> std::thread::JoinHandle<()> {
    let state = spool
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .state()
        .clone();
    std::thread::Builder::new()
        .name("syslog-spool".into())
        .spawn(move || {
            let mut group = Vec::with_capacity(1 << 20);
            let mut alerted = false;
            while let Some(first) = rx.blocking_recv() {
                group.clear();
                group.extend_from_slice(&first);
                while group.len() < 4 << 20 {
                    match rx.try_recv() {
                        Ok(more) => group.extend_from_slice(&more),
                        Err(_) => break,
                    }
                }
                // A failed write (a full disk) is retried: these messages were received and
                // nothing else holds them. Meanwhile the queue fills and the sockets wait.
                loop {
                    let res = {
                        let mut s = spool.lock().unwrap_or_else(|p| p.into_inner());
                        s.append(&group).and_then(|_| s.sync())
                    };
                    match res {
                        Ok(()) => {
                            alerted = false;
                            state.report_to(&stats);
                            bell.ring();
                            break;
                        }
                        Err(e) => {
                            stats.spool_errors.fetch_add(1, Ordering::Relaxed);
                            if !alerted {
                                alerted = true;
                                let _ = events.send(Event::SpoolWrite {
                                    listener: url.clone(),
                                    error: e.to_string(),
                                });
                            }
                            std::thread::sleep(Duration::from_secs(1));
                        }
                    }
                }
            }
        })
        .expect("spawning a thread")
}
