//! Over-length alerts: counting streaks of `head`/`tail` records per
//! stream, and writing an alert to `alerts.log` when one reaches the
//! threshold (the database row and the metric are written by the caller).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::db::AlertRow;
use log_sensor_common::record::Part;

/// A stream's current run of over-length parts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Streak {
    /// Consecutive `head`/`tail` records seen, reset by a `whole` one.
    pub count: u64,
    /// Set once this run has raised its alert, so it raises only one.
    pub alerted: bool,
}

impl Streak {
    /// Feeds one stored record; true when this record makes the streak
    /// reach `threshold` for the first time.
    pub fn observe(&mut self, part: Part, threshold: u64) -> bool {
        match part {
            Part::Whole => {
                *self = Streak::default();
                false
            }
            Part::Head | Part::Tail => {
                self.count += 1;
                if self.count >= threshold && !self.alerted {
                    self.alerted = true;
                    true
                } else {
                    false
                }
            }
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("cannot write alert log {path}: {source}")]
pub struct AlertLogError {
    path: PathBuf,
    source: std::io::Error,
}

/// `DIR/alerts.log`: one JSON object per alert, so untrusted host, stream
/// and path strings are escaped rather than able to forge lines.
#[derive(Debug)]
pub struct AlertLog {
    path: PathBuf,
    /// Opened for append once; the lock keeps lines whole.
    file: Mutex<File>,
}

impl AlertLog {
    pub fn open(path: &Path) -> Result<AlertLog, AlertLogError> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|source| AlertLogError {
                path: path.to_owned(),
                source,
            })?;
        Ok(AlertLog {
            path: path.to_owned(),
            file: Mutex::new(file),
        })
    }

    pub fn write(&self, alert: &AlertRow) -> Result<(), AlertLogError> {
        let line = serde_json::json!({
            "at": alert.at,
            "kind": alert.kind,
            "host": alert.host_id,
            "stream": alert.stream,
            "path": alert.path,
            "offset": alert.at_offset,
            "count": alert.count,
        });
        let mut text = line.to_string();
        text.push('\n');
        let mut file = self.file.lock().unwrap_or_else(|p| p.into_inner());
        file.write_all(text.as_bytes())
            .and_then(|_| file.sync_data())
            .map_err(|source| AlertLogError {
                path: self.path.clone(),
                source,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(parts: &str, threshold: u64) -> Vec<usize> {
        let mut s = Streak::default();
        parts
            .chars()
            .enumerate()
            .filter_map(|(i, c)| {
                let part = match c {
                    'w' => Part::Whole,
                    'h' => Part::Head,
                    _ => Part::Tail,
                };
                s.observe(part, threshold).then_some(i)
            })
            .collect()
    }

    #[test]
    fn one_alert_per_streak() {
        assert_eq!(run("hththththt", 4), vec![3]);
        assert_eq!(run("hthwhthtw", 4), vec![7]);
        assert_eq!(run("hthtwhththt", 4), vec![3, 8]);
        assert_eq!(run("hthwhthw", 5), Vec::<usize>::new());
        assert_eq!(run("h", 1), vec![0]);
    }
}
