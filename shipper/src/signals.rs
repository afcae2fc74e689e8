//! SIGTERM and SIGINT ask the agent to stop: finish the batch in flight, commit, exit 0.
//!
//! The signals are blocked in every thread and taken synchronously by one thread in
//! `sigwait`, so nothing polls and no handler runs in a random thread.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Blocks SIGTERM and SIGINT (call before starting other threads, which inherit the mask) and
/// returns a flag that becomes true on the first of them.
pub fn stop_on_signals() -> Arc<AtomicBool> {
    // SAFETY: sigset manipulation on a local set, then masking signals for this thread.
    let set = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    };
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let mut sig: libc::c_int = 0;
            // SAFETY: waits on a valid set for one of its signals.
            let rc = unsafe { libc::sigwait(&set, &mut sig) };
            if rc == 0 {
                tracing::info!(
                    signal = sig,
                    "stop requested; finishing the batch in flight"
                );
                flag.store(true, Ordering::SeqCst);
            }
        })
        .expect("spawn signal thread");
    stop
}
