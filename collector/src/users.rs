//! Enrolment accounts: argon2id password hashes, and reading a password
//! from the terminal or a file.

use std::io::{BufRead, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;

#[derive(Debug, thiserror::Error)]
pub enum PasswordError {
    #[error("cannot read password file {path}: {source}")]
    File {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("password file {path} is empty")]
    EmptyFile { path: PathBuf },
    #[error("no terminal to prompt on; use --password-file")]
    NoTty { source: std::io::Error },
    #[error("reading the password from the terminal: {0}")]
    Tty(std::io::Error),
    #[error("the passwords did not match")]
    Mismatch,
    #[error("empty password")]
    Empty,
    #[error("hashing the password: {0}")]
    Hash(argon2::password_hash::Error),
}

/// Hashes with argon2id and its default cost (19 MiB, 2 passes).
pub fn hash_password(password: &str) -> Result<String, PasswordError> {
    let bytes: [u8; 16] = rand::random();
    let salt = SaltString::encode_b64(&bytes).map_err(PasswordError::Hash)?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(PasswordError::Hash)
}

/// Checks a password against a stored hash, or against a dummy hash when
/// the user does not exist, so the reply time does not tell the two apart.
pub fn verify_password(password: &str, stored: Option<&str>) -> bool {
    static DUMMY: OnceLock<String> = OnceLock::new();
    let dummy = DUMMY.get_or_init(|| hash_password("no such user").unwrap_or_default());
    let (hash, real) = match stored {
        Some(h) => (h, true),
        None => (dummy.as_str(), false),
    };
    let ok = PasswordHash::new(hash)
        .map(|h| {
            Argon2::default()
                .verify_password(password.as_bytes(), &h)
                .is_ok()
        })
        .unwrap_or(false);
    ok && real
}

/// The first line of `path`, without its line ending.
pub fn password_from_file(path: &Path) -> Result<String, PasswordError> {
    let file = std::fs::File::open(path).map_err(|source| PasswordError::File {
        path: path.to_owned(),
        source,
    })?;
    let mut line = String::new();
    std::io::BufReader::new(file)
        .read_line(&mut line)
        .map_err(|source| PasswordError::File {
            path: path.to_owned(),
            source,
        })?;
    let password = line.trim_end_matches(['\n', '\r']).to_owned();
    if password.is_empty() {
        return Err(PasswordError::EmptyFile {
            path: path.to_owned(),
        });
    }
    Ok(password)
}

/// Prompts twice on the controlling terminal with echo off.
pub fn password_from_tty(user: &str) -> Result<String, PasswordError> {
    let mut tty = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/tty")
        .map_err(|source| PasswordError::NoTty { source })?;
    let first = prompt(&mut tty, &format!("Password for {user}: "))?;
    let second = prompt(&mut tty, "Again: ")?;
    if first != second {
        return Err(PasswordError::Mismatch);
    }
    if first.is_empty() {
        return Err(PasswordError::Empty);
    }
    Ok(first)
}

fn prompt(tty: &mut std::fs::File, text: &str) -> Result<String, PasswordError> {
    use std::os::fd::AsRawFd;
    tty.write_all(text.as_bytes()).map_err(PasswordError::Tty)?;
    let fd = tty.as_raw_fd();
    // SAFETY: termios is plain data; tcgetattr fills it for a valid fd.
    let mut saved: libc::termios = unsafe { std::mem::zeroed() };
    if unsafe { libc::tcgetattr(fd, &mut saved) } != 0 {
        return Err(PasswordError::Tty(std::io::Error::last_os_error()));
    }
    let mut quiet = saved;
    quiet.c_lflag &= !libc::ECHO;
    quiet.c_lflag |= libc::ECHONL;
    // SAFETY: fd is open and `quiet` a copy of its own settings.
    unsafe { libc::tcsetattr(fd, libc::TCSANOW, &quiet) };
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    let result = loop {
        match tty.read(&mut byte) {
            Ok(0) => break Ok(()),
            Ok(_) if byte[0] == b'\n' => break Ok(()),
            Ok(_) => line.push(byte[0]),
            Err(e) => break Err(e),
        }
    };
    // SAFETY: restores the settings read above.
    unsafe { libc::tcsetattr(fd, libc::TCSANOW, &saved) };
    result.map_err(PasswordError::Tty)?;
    let text = String::from_utf8_lossy(&line);
    Ok(text.trim_end_matches('\r').to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_and_verify() {
        let h = hash_password("s3cret").unwrap();
        assert!(h.starts_with("$argon2id$"));
        assert!(verify_password("s3cret", Some(&h)));
        assert!(!verify_password("wrong", Some(&h)));
        assert!(!verify_password("no such user", None));
    }
}
