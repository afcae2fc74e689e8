//! inotify wake-ups, read straight from the kernel's queue. An event names a path that may have
//! changed; the tailer reads that stream or rescans. Events never decide what exists.
//!
//! The tailer reads the queue itself, at the start of its turn, into one buffer it keeps: an
//! event costs no allocation, no channel and no thread hop, and every event queued since the last
//! turn is taken in one pass (10,000 files each written once a second are a few reads of 64 KiB
//! per turn). A small thread only waits for the queue to become readable while the pipeline
//! sleeps and rings its bell, once per turn, not once per event. While the tailer does not read
//! (a stalled sink holds the pipeline), the kernel's queue is the only buffer: when it is full
//! the kernel says so (`IN_Q_OVERFLOW`) and the tailer rescans everything, so a stall costs one
//! scan, never unbounded memory.
//!
//! Fluent Bit's `in_tail/tail_fs_inotify.c` is the model: one inotify descriptor read in the
//! input's own loop, watches mapped back to folders by their descriptor.

use super::glob_base;
use crate::config::Source;
use crossbeam_channel::{Receiver, Sender};
use inotify::{EventMask, Inotify, WatchDescriptor, WatchMask};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// What one event asks of the tailer.
#[derive(Debug)]
pub enum Wake<'a> {
    /// Data may have been written to this path.
    Modified(&'a Path),
    /// Files may have appeared, moved or gone: rescan.
    Rescan,
    /// The kernel's queue overflowed and events were lost: every file must be looked at.
    Overflow,
}

/// One read takes this much of the queue (about 2,000 events of short names).
const READ_BUF: usize = 64 << 10;

/// Events on entries of a watched folder and on the folder itself. `IN_OPEN`, `IN_ACCESS` and
/// `IN_CLOSE_*` are left out: the agent's own opens and reads would wake it (notify asked for
/// them and its handler dropped them, one allocation each). Only folders are watched.
fn mask() -> WatchMask {
    WatchMask::MODIFY
        | WatchMask::ATTRIB
        | WatchMask::CREATE
        | WatchMask::DELETE
        | WatchMask::MOVED_FROM
        | WatchMask::MOVED_TO
        | WatchMask::DELETE_SELF
        | WatchMask::MOVE_SELF
        | WatchMask::ONLYDIR
}

/// A watched folder: the kernel gives one descriptor per folder, however many paths lead to it
/// (a folder and a symlink to it), so each descriptor keeps every path it was added under.
struct Folder {
    wd: WatchDescriptor,
    paths: Vec<PathBuf>,
}

pub struct Watch {
    inotify: Inotify,
    /// Watch descriptor (its number, as events carry it) → the folder it watches.
    folders: HashMap<i32, Folder>,
    /// Every path watched, and the descriptor it was added under.
    watched: BTreeMap<PathBuf, i32>,
    /// The buffer events are read into, kept between turns.
    buf: Box<[u8]>,
    /// Where a folder and an event's name are joined, kept so a lookup allocates nothing.
    joined: PathBuf,
    /// Rings the pipeline's bell while it sleeps; None until [`Watch::ring_with`].
    waker: Option<Waker>,
}

impl Watch {
    /// An inotify instance with no watches yet; [`Watch::update`] adds them.
    ///
    /// Every folder is watched on its own, as the scan lists them (once per identity), never
    /// recursively: a recursive watch walks the tree itself following symlinks, once per path,
    /// and symlinked folders multiply paths with depth.
    pub fn new() -> io::Result<Watch> {
        Ok(Watch {
            inotify: Inotify::init()?,
            folders: HashMap::new(),
            watched: BTreeMap::new(),
            buf: vec![0u8; READ_BUF].into_boxed_slice(),
            joined: PathBuf::new(),
            waker: None,
        })
    }

    /// Calls `ring` whenever events wait in the queue, at most once per [`Watch::drain`]: this
    /// is what ends the pipeline's idle sleep. Tests stepping the tailer by hand never need it.
    pub fn ring_with(&mut self, ring: impl Fn() + Send + 'static) -> io::Result<()> {
        if self.waker.is_none() {
            self.waker = Some(Waker::spawn(
                self.inotify.as_fd().try_clone_to_owned()?,
                ring,
            )?);
        }
        Ok(())
    }

    /// Takes every event queued now, in order, and hands each to `wake`. For `Modified`, `wake`
    /// answers whether the path is one it follows; a folder reached by several paths tries each,
    /// and a name nobody follows (a file just created, or written for the first time) becomes a
    /// `Rescan`.
    pub fn drain(&mut self, mut wake: impl FnMut(Wake<'_>) -> bool) {
        loop {
            let events = match self.inotify.read_events(&mut self.buf) {
                Ok(events) => events,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // Not expected from inotify; the scan is what never misses a file.
                    tracing::warn!(error = %e, "cannot read inotify events; rescanning");
                    wake(Wake::Rescan);
                    break;
                }
            };
            for ev in events {
                let mask = ev.mask;
                if mask.contains(EventMask::Q_OVERFLOW) {
                    wake(Wake::Overflow);
                    continue;
                }
                let wd = ev.wd.get_watch_descriptor_id();
                if mask.contains(EventMask::MOVE_SELF) {
                    // The watch follows the folder to its new name, and events would still be
                    // read as from the old one; a folder made at the old path (`mv logs
                    // logs.1; mkdir logs`) would go unwatched. So the watch goes, and the scan
                    // this asks for watches whatever folders the paths lead to now.
                    if let Some(f) = self.folders.remove(&wd) {
                        for p in &f.paths {
                            self.watched.remove(p);
                        }
                        let _ = self.inotify.watches().remove(f.wd);
                    }
                    wake(Wake::Rescan);
                    continue;
                }
                if mask.contains(EventMask::IGNORED) {
                    // The kernel dropped the watch (the folder went, or its file system). One we
                    // removed ourselves is no longer in `folders`: nothing changed.
                    if let Some(f) = self.folders.remove(&wd) {
                        for p in f.paths {
                            self.watched.remove(&p);
                        }
                        wake(Wake::Rescan);
                    }
                    continue;
                }
                let data_only = mask.contains(EventMask::MODIFY)
                    && !mask.intersects(!(EventMask::MODIFY | EventMask::ISDIR));
                let known = match (data_only, ev.name, self.folders.get(&wd)) {
                    (true, Some(name), Some(folder)) => folder.paths.iter().any(|dir| {
                        self.joined.as_mut_os_string().clear();
                        self.joined.push(dir);
                        self.joined.push(name);
                        wake(Wake::Modified(&self.joined))
                    }),
                    _ => false,
                };
                if !known {
                    wake(Wake::Rescan);
                }
            }
        }
        if let Some(w) = &self.waker {
            w.arm();
        }
    }

    /// Watches what the sources need now: each glob's base folder (or, while it does not exist,
    /// its nearest existing ancestor, to see it created), the folders the scan walked below it,
    /// and the folders of symlink targets.
    pub fn update(&mut self, sources: &[Source], extra_dirs: impl IntoIterator<Item = PathBuf>) {
        let mut want: BTreeSet<PathBuf> = BTreeSet::new();
        for s in sources {
            for p in &s.paths {
                let (base, _) = glob_base(p);
                if base.is_dir() {
                    want.insert(base);
                } else if let Some(anc) = base.ancestors().find(|a| a.is_dir()) {
                    want.insert(anc.to_path_buf());
                }
            }
        }
        for d in extra_dirs {
            if d.is_dir() {
                want.insert(d);
            }
        }
        let stale: Vec<PathBuf> = self
            .watched
            .keys()
            .filter(|p| !want.contains(*p) || !p.is_dir())
            .cloned()
            .collect();
        for p in stale {
            self.unwatch(&p);
        }
        for p in want {
            if self.watched.contains_key(&p) {
                continue;
            }
            match self.inotify.watches().add(&p, mask()) {
                Ok(wd) => {
                    let id = wd.get_watch_descriptor_id();
                    self.watched.insert(p.clone(), id);
                    self.folders
                        .entry(id)
                        .or_insert_with(|| Folder {
                            wd,
                            paths: Vec::new(),
                        })
                        .paths
                        .push(p);
                }
                Err(e) => {
                    tracing::debug!(path = %p.display(), error = %e, "cannot watch; the periodic rescan covers it")
                }
            }
        }
    }

    /// Stops watching `path`; the folder's watch goes when no other path leads to it.
    fn unwatch(&mut self, path: &Path) {
        let Some(id) = self.watched.remove(path) else {
            return;
        };
        let Some(f) = self.folders.get_mut(&id) else {
            return;
        };
        f.paths.retain(|p| p != path);
        if f.paths.is_empty() {
            let f = self.folders.remove(&id).expect("looked up above");
            // Fails only when the kernel dropped it already (its IN_IGNORED is queued).
            let _ = self.inotify.watches().remove(f.wd);
        }
    }

    pub fn watched(&self) -> impl Iterator<Item = &Path> {
        self.watched.keys().map(PathBuf::as_path)
    }
}

/// The thread that rings the pipeline's bell when events wait and the tailer is not reading: it
/// polls a duplicate of the inotify descriptor, rings, then waits until the tailer has read the
/// queue again before it polls once more, so a burst of events is one ring, and a pipeline held
/// up costs no spinning.
struct Waker {
    /// Whether the thread polls (or is about to): the tailer re-arms it only when it does not.
    armed: Arc<AtomicBool>,
    /// One token re-arms the thread.
    arm: Option<Sender<()>>,
    /// Written once to stop the thread out of its poll.
    stop: OwnedFd,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Waker {
    fn spawn(queue: OwnedFd, ring: impl Fn() + Send + 'static) -> io::Result<Waker> {
        // SAFETY: eventfd takes no pointers; a valid descriptor is owned from here on.
        let stop = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if stop < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `stop` was just created and nothing else owns it.
        let stop = unsafe { OwnedFd::from_raw_fd(stop) };
        let stop_fd = stop.as_fd().try_clone_to_owned()?;
        let armed = Arc::new(AtomicBool::new(true));
        let (arm, rearmed) = crossbeam_channel::bounded::<()>(1);
        let thread_armed = armed.clone();
        let thread = std::thread::Builder::new()
            .name("inotify".into())
            .spawn(move || wait_and_ring(queue, stop_fd, thread_armed, rearmed, ring))?;
        Ok(Waker {
            armed,
            arm: Some(arm),
            stop,
            thread: Some(thread),
        })
    }

    fn arm(&self) {
        if !self.armed.swap(true, Ordering::AcqRel) {
            if let Some(tx) = &self.arm {
                let _ = tx.try_send(());
            }
        }
    }
}

fn wait_and_ring(
    queue: OwnedFd,
    stop: OwnedFd,
    armed: Arc<AtomicBool>,
    rearmed: Receiver<()>,
    ring: impl Fn(),
) {
    loop {
        let mut fds = [
            libc::pollfd {
                fd: queue.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: stop.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: poll reads and writes the two pollfd we own, for the length given.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
        if n < 0 {
            if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                continue;
            }
            tracing::warn!(error = %io::Error::last_os_error(), "inotify wake-ups stop; the tailer polls");
            return;
        }
        if fds[1].revents != 0 {
            return;
        }
        if fds[0].revents == 0 {
            continue;
        }
        armed.store(false, Ordering::Release);
        ring();
        // Until the tailer has read the queue, it stays readable: wait for that.
        if rearmed.recv().is_err() {
            return;
        }
    }
}

impl Drop for Waker {
    fn drop(&mut self) {
        let one: u64 = 1;
        // SAFETY: writes the 8 bytes of `one` to the eventfd we own.
        unsafe { libc::write(self.stop.as_raw_fd(), (&one as *const u64).cast(), 8) };
        self.arm.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn drain_all(w: &mut Watch, known: &Path) -> (Vec<PathBuf>, usize, usize) {
        let (mut modified, mut rescans, mut overflows) = (Vec::new(), 0, 0);
        w.drain(|ev| match ev {
            Wake::Modified(p) => {
                modified.push(p.to_path_buf());
                p == known
            }
            Wake::Rescan => {
                rescans += 1;
                false
            }
            Wake::Overflow => {
                overflows += 1;
                false
            }
        });
        (modified, rescans, overflows)
    }

    #[test]
    fn writes_name_the_file_and_other_changes_ask_for_a_scan() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir(d.join("logs")).unwrap();
        let a = d.join("logs/a.log");
        std::fs::write(&a, b"x\n").unwrap();
        let cfg = crate::config::Config::parse(
            &d.join("c.toml"),
            "[sources.s]\npaths = [\"logs/*.log\"]\n[sink]\ntype = \"stdout\"\n",
        )
        .unwrap();
        let mut w = Watch::new().unwrap();
        w.update(&cfg.sources, []);
        assert_eq!(w.watched().collect::<Vec<_>>(), vec![d.join("logs")]);
        let mut f = std::fs::OpenOptions::new().append(true).open(&a).unwrap();
        f.write_all(b"y\n").unwrap();
        let (m, rescans, overflows) = drain_all(&mut w, &a);
        assert_eq!((m, rescans, overflows), (vec![a.clone()], 0, 0));
        // A write to a file nobody follows, and a new file: both ask for a scan.
        std::fs::write(d.join("logs/b.log"), b"z\n").unwrap();
        let (_, rescans, _) = drain_all(&mut w, &a);
        assert!(rescans >= 1);
        // The folder removed: its watch is gone and looked for again at the next update. (An
        // open file in it would keep the folder, and its watch, until closed.)
        drop(f);
        std::fs::remove_dir_all(d.join("logs")).unwrap();
        let (_, rescans, _) = drain_all(&mut w, &a);
        assert!(rescans >= 1);
        assert_eq!(w.watched().count(), 0);
        w.update(&cfg.sources, []);
        assert_eq!(w.watched().collect::<Vec<_>>(), vec![d.to_path_buf()]);
    }

    /// A watched folder renamed and a new one made at its path: the new one is watched after the
    /// next update, and writes in it name it, not the renamed one.
    #[test]
    fn a_folder_moved_away_and_made_again_is_watched_anew() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let logs = d.join("logs");
        std::fs::create_dir(&logs).unwrap();
        let mut w = Watch::new().unwrap();
        w.update(&[], [logs.clone()]);
        std::fs::rename(&logs, d.join("logs.1")).unwrap();
        std::fs::create_dir(&logs).unwrap();
        let (_, rescans, _) = drain_all(&mut w, Path::new("/nowhere"));
        assert!(rescans >= 1, "the move asks for a scan");
        w.update(&[], [logs.clone(), d.join("logs.1")]);
        let a = logs.join("a.log");
        let mut f = std::fs::File::create(&a).unwrap();
        drain_all(&mut w, Path::new("/nowhere"));
        f.write_all(b"x\n").unwrap();
        std::fs::write(d.join("logs.1/b.log"), b"y\n").unwrap();
        let (m, _, _) = drain_all(&mut w, &a);
        assert!(m.contains(&a), "{m:?}");
        assert!(m.contains(&d.join("logs.1/b.log")), "{m:?}");
    }

    /// More events than the kernel queues while nobody reads: the overflow is reported, so the
    /// tailer rescans instead of missing the writes whose events were dropped.
    #[test]
    fn a_full_queue_is_reported_as_overflow() {
        let max: usize = std::fs::read_to_string("/proc/sys/fs/inotify/max_queued_events")
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().to_path_buf();
        let mut w = Watch::new().unwrap();
        w.update(&[], [d.clone()]);
        let mut files: Vec<std::fs::File> = (0..2)
            .map(|i| std::fs::File::create(d.join(format!("{i}.log"))).unwrap())
            .collect();
        // Alternating files: the kernel merges an event only into an identical last one.
        for i in 0..max + 16 {
            files[i % 2].write_all(b"x\n").unwrap();
        }
        let (m, _, overflows) = drain_all(&mut w, Path::new("/nowhere"));
        assert_eq!(overflows, 1);
        assert!(
            m.len() >= max - 16,
            "{} events before the overflow",
            m.len()
        );
    }

    /// The bell rings once events wait, and again only after the queue was read.
    #[test]
    fn rings_once_per_drain() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().to_path_buf();
        let mut w = Watch::new().unwrap();
        w.update(&[], [d.clone()]);
        let (tx, rx) = crossbeam_channel::unbounded::<()>();
        w.ring_with(move || {
            let _ = tx.send(());
        })
        .unwrap();
        let wait = std::time::Duration::from_secs(10);
        let mut f = std::fs::File::create(d.join("a.log")).unwrap();
        rx.recv_timeout(wait).expect("rung for the first event");
        for _ in 0..100 {
            f.write_all(b"x\n").unwrap();
        }
        drain_all(&mut w, Path::new("/nowhere"));
        f.write_all(b"y\n").unwrap();
        rx.recv_timeout(wait).expect("rung again after the drain");
        drop(w);
        // Dropping the watch stops the thread: its sender (in `ring`) is gone.
        while rx.recv_timeout(wait).is_ok() {}
        assert!(matches!(
            rx.try_recv(),
            Err(crossbeam_channel::TryRecvError::Disconnected)
        ));
    }
}
