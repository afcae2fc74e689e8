//! A small tmpfs of its own for a test, so a full disk is the kernel's real ENOSPC (a partial
//! write, then refusals), and space can come back. Unmounted when dropped, so a failing test
//! cleans up too. Mounting needs root, as CI has: without it the test fails saying so, it never
//! passes untested.
#![allow(dead_code)]

use std::ffi::CString;
use std::io::Write;
use std::path::{Path, PathBuf};

pub struct Tmpfs {
    /// The mount point; a temporary folder, removed after the unmount.
    dir: tempfile::TempDir,
}

fn c_path(p: &Path) -> CString {
    CString::new(p.as_os_str().as_encoded_bytes()).expect("a path without NUL")
}

fn mount(target: &Path, flags: libc::c_ulong, bytes: u64) -> std::io::Result<()> {
    let fstype = CString::new("tmpfs").unwrap();
    let data = CString::new(format!("size={bytes},mode=0755")).unwrap();
    let target = c_path(target);
    // SAFETY: NUL-terminated strings that outlive the call.
    let rc = unsafe {
        libc::mount(
            fstype.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            flags,
            data.as_ptr().cast(),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

impl Tmpfs {
    /// A tmpfs of `bytes` (rounded up to pages) on a new temporary folder.
    pub fn new(bytes: u64) -> Tmpfs {
        let dir = tempfile::tempdir().expect("a mount point");
        mount(dir.path(), 0, bytes).unwrap_or_else(|e| {
            panic!(
                "cannot mount a {bytes}-byte tmpfs on {} ({e}); this test needs root, as CI has",
                dir.path().display()
            )
        });
        Tmpfs { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Grows (or shrinks, down to what is used) the filesystem in place: space comes back
    /// without anything on it changing.
    pub fn resize(&self, bytes: u64) {
        mount(self.path(), libc::MS_REMOUNT, bytes)
            .unwrap_or_else(|e| panic!("cannot resize the tmpfs to {bytes} bytes: {e}"));
    }

    /// Takes every free byte with a ballast file, so the next write that needs a new page gets
    /// ENOSPC; removing the returned file gives the space back.
    pub fn fill(&self) -> PathBuf {
        let ballast = self.path().join("ballast");
        let mut f = std::fs::File::create(&ballast).expect("create the ballast");
        let chunk = vec![0xB5u8; 4096];
        loop {
            match f.write(&chunk) {
                Ok(n) if n > 0 => continue,
                Ok(_) => break,
                Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
                Err(e) => panic!("filling the tmpfs: {e}"),
            }
        }
        ballast
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // Detached: a process of the test that still holds a file on it cannot keep it mounted.
        let target = c_path(self.path());
        // SAFETY: a NUL-terminated path.
        unsafe {
            libc::umount2(target.as_ptr(), libc::MNT_DETACH);
        }
    }
}
