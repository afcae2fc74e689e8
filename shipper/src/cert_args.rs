//! `--cert FILE --key FILE`: a client certificate for the sink other than the enrolled one, and
//! the refusal of a password given as an argument (`get_cert PASSWORD`).

use anyhow::{bail, Context};
use log_sensor::config::layers::Layers;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use toml::{Table, Value};

/// Why `get_cert PASSWORD` is refused rather than used.
pub const PASSWORD_ARGUMENT_REFUSED: &str = "a password given as an argument is readable by \
every user of this host in /proc/<pid>/cmdline (and `ps`) for as long as the command runs, and \
stays in the shell's history; nothing a program does after it starts can take it back. Write it \
to a file only you can read (chmod 0600) and pass --password-file FILE, or leave both out to be \
asked on the terminal";

/// The certificate and key given on the command line, as absolute paths (relative to where the
/// command was run, as any other command-line path).
pub struct CertArgs {
    pair: Option<(PathBuf, PathBuf)>,
}

impl CertArgs {
    pub fn new(cert: Option<PathBuf>, key: Option<PathBuf>) -> anyhow::Result<CertArgs> {
        let pair = match (cert, key) {
            (Some(c), Some(k)) => {
                let cwd = std::env::current_dir().context("current folder")?;
                let key = cwd.join(k);
                check_key_mode(&key)?;
                Some((cwd.join(c), key))
            }
            (None, None) => None,
            _ => bail!("--cert and --key go together"),
        };
        Ok(CertArgs { pair })
    }

    /// The config's layers with `sink.cert` and `sink.key` set from the command line.
    pub fn load(&self, path: &Path) -> anyhow::Result<Layers> {
        let Some((cert, key)) = &self.pair else {
            return Ok(Layers::load(path)?);
        };
        let mut sink = Table::new();
        sink.insert("cert".into(), Value::String(cert.display().to_string()));
        sink.insert("key".into(), Value::String(key.display().to_string()));
        let mut over = Table::new();
        over.insert("sink".into(), Value::Table(sink));
        let layers = Layers::load_with(path, over)?;
        let kind = layers
            .merged()
            .get("sink")
            .and_then(|s| s.get("type"))
            .and_then(Value::as_str)
            .unwrap_or("stdout")
            .to_string();
        if kind != "collector" && kind != "syslog" {
            bail!(
                "--cert: the sink of {} is {kind:?}, which uses no client certificate (only the \
                 collector and syslog sinks do)",
                path.display()
            );
        }
        Ok(layers)
    }

    /// The flags again, for the agent `start` runs in the background.
    pub fn args(&self) -> Vec<OsString> {
        match &self.pair {
            Some((c, k)) => vec![
                "--cert".into(),
                c.clone().into_os_string(),
                "--key".into(),
                k.clone().into_os_string(),
            ],
            None => Vec::new(),
        }
    }
}

/// A private key others can read is refused, as ssh refuses one: it is already not secret.
fn check_key_mode(key: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(key)
        .with_context(|| format!("--key {}", key.display()))?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        bail!(
            "--key {} is readable or writable by others (mode {:04o}); a private key must be \
             0600: chmod 0600 {}",
            key.display(),
            mode & 0o7777,
            key.display()
        );
    }
    Ok(())
}
