//! `log-sensor enroll`: a key made here (it never leaves the host), a CSR, and the certificate the
//! collector signs for our `host_id`, stored with the collector's CA under `<state_dir>/tls/`.
//!
//! Trust for the enrolment call itself: the collector's server certificate is checked against
//! `--ca` (its `ca.pem`, copied over by the operator). Without it, only
//! `--insecure-first-contact` proceeds, trusting whoever answers (and the CA it returns) — the
//! password would go to that server, so the command says so loudly.
//!
//! With several collectors (a sink's `urls`, or `--server` given more than once) they are tried
//! in the host's order, as the sink tries them: the next one when a collector cannot be reached,
//! times out, fails (5xx) or is busy checking other passwords (429 `busy`); the first refusal
//! that would be the same everywhere (a wrong password, a rate limit, a host already enrolled)
//! ends the command at once, so a wrong password is not tried against every collector.

use crate::config::{TlsFiles, Url};
use crate::http::HttpConn;
use crate::identity::{self, KeyError};
use crate::tls::{self, ServerTrust, TlsError};
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Tries while the collector answers 429 `busy` (all its password checks taken, as when a fleet
/// enrols at once), and the bounds on each wait whatever `Retry-After` says: the fleet gets
/// through a few checks at a time, and a collector that stays busy is reported within a minute.
const BUSY_TRIES: u32 = 6;
const BUSY_WAIT_DEFAULT: Duration = Duration::from_secs(2);
const BUSY_WAIT_MAX: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum EnrollError {
    #[error("{0}")]
    Tls(#[from] TlsError),
    #[error("enrolment request to {server} failed: {message}")]
    Request { server: String, message: String },
    #[error("no collector took the enrolment: {}", .0.join("; "))]
    NoCollector(Vec<String>),
    #[error("the collector refused the enrolment ({status}): {reason}")]
    Refused { status: u16, reason: String },
    #[error("the collector refuses enrolments from this address or for user {user:?} for now: too many failed tries (429 rate_limited); check the password and try again in {} (Retry-After)", wait_text(*retry_after))]
    RateLimited {
        user: String,
        retry_after: Option<u64>,
    },
    #[error("the collector stayed busy checking other enrolments' passwords (429 busy) through {tries} tries over {waited_secs}s; try again later, or raise max_password_checks on the collector")]
    Busy { tries: u32, waited_secs: u64 },
    #[error("the collector's reply is not usable: {0}")]
    Reply(String),
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error("password: {0}")]
    Password(String),
}

fn wait_text(secs: Option<u64>) -> String {
    match secs {
        Some(s) => format!("{s}s"),
        None => "a few minutes".into(),
    }
}

/// The pause before asking again after a 429 `busy`: the collector's `Retry-After`, bounded,
/// plus up to half again so a fleet refused together does not come back together.
fn busy_wait(retry_after: Option<u64>) -> Duration {
    let base = retry_after
        .map(Duration::from_secs)
        .unwrap_or(BUSY_WAIT_DEFAULT)
        .clamp(Duration::from_millis(100), BUSY_WAIT_MAX);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|t| t.subsec_nanos())
        .unwrap_or(0);
    base + base.mul_f64((nanos % 1000) as f64 / 2000.0)
}

/// How the collector's server certificate is checked during enrolment.
#[derive(Debug, Clone)]
pub enum FirstContact {
    /// Against this CA file.
    Ca(PathBuf),
    /// Not at all (explicitly requested).
    Insecure,
}

pub struct EnrollOptions {
    /// The collectors, in the order they are tried (never empty).
    pub servers: Vec<Url>,
    pub user: String,
    pub password: String,
    pub host_id: String,
    pub trust: FirstContact,
    pub state_dir: PathBuf,
}

pub struct Enrolled {
    pub files: TlsFiles,
    pub serial: String,
    pub not_after: i64,
}

/// Enrols; `notice` is told of each wait while the collector is busy (the CLI prints it).
pub fn enroll(opts: &EnrollOptions, notice: &dyn Fn(&str)) -> Result<Enrolled, EnrollError> {
    let files = TlsFiles::enrolled(&opts.state_dir);
    let trust = match &opts.trust {
        FirstContact::Ca(ca) => ServerTrust::Ca(ca),
        FirstContact::Insecure => ServerTrust::InsecureFirstContact,
    };
    let config = tls::make_config(trust, None)?;
    let key_pem = identity::new_key()?;
    let csr = identity::csr_for(&key_pem)?;
    let body = serde_json::to_string(&log_sensor_common::enroll::EnrollRequest {
        username: opts.user.clone(),
        password: opts.password.clone(),
        host_id: opts.host_id.clone(),
        csr,
    })
    .expect("strings serialise");
    let mut waited = Duration::ZERO;
    let mut tries = 0;
    let (resp, server) = 'rounds: loop {
        // One round tries each collector once; a round with one busy collector and none that
        // took the enrolment waits before the next, as a single busy collector always did.
        let mut away = Vec::new();
        let mut busy = None;
        for server in &opts.servers {
            tries += 1;
            // A fresh connection each try: the collector may close one it answered 429.
            let resp = HttpConn::connect(server, config.clone()).and_then(|mut conn| {
                conn.request(
                    "POST",
                    log_sensor_common::enroll::ENROLL_PATH,
                    &[("Content-Type", "application/json")],
                    body.as_bytes(),
                )
            });
            let resp = match resp {
                Ok(r) => r,
                Err(e) => {
                    away.push(EnrollError::Request {
                        server: server.to_string(),
                        message: e.to_string(),
                    });
                    continue;
                }
            };
            // Only `busy` is worth waiting out: it says nothing about our password. A
            // `rate_limited` refusal counts failures, and trying again would only extend it.
            match (resp.status, resp.code().as_deref()) {
                (200, _) => break 'rounds (resp, server.clone()),
                (429, Some("busy")) => busy = Some(resp.retry_after),
                (429, Some("rate_limited")) => {
                    return Err(EnrollError::RateLimited {
                        user: opts.user.clone(),
                        retry_after: resp.retry_after,
                    })
                }
                (s, _) if s >= 500 => away.push(EnrollError::Request {
                    server: server.to_string(),
                    message: format!("the collector replied {s}: {}", resp.reason()),
                }),
                _ => {
                    return Err(EnrollError::Refused {
                        status: resp.status,
                        reason: resp.reason(),
                    })
                }
            }
        }
        match busy {
            Some(retry_after) if tries < BUSY_TRIES * opts.servers.len() as u32 => {
                let wait = busy_wait(retry_after);
                notice(&format!(
                    "{} busy checking other enrolments' passwords (429 busy); trying again in {:.1}s (round {} of {BUSY_TRIES})",
                    match opts.servers.as_slice() {
                        [one] => format!("the collector at {one} is"),
                        _ => "every collector that answered is".into(),
                    },
                    wait.as_secs_f64(),
                    tries / opts.servers.len() as u32 + 1
                ));
                std::thread::sleep(wait);
                waited += wait;
            }
            Some(_) => {
                return Err(EnrollError::Busy {
                    tries,
                    waited_secs: waited.as_secs(),
                })
            }
            None if away.len() == 1 => return Err(away.remove(0)),
            None => {
                return Err(EnrollError::NoCollector(
                    away.iter().map(|e| e.to_string()).collect(),
                ))
            }
        }
    };
    drop(body);
    let reply: log_sensor_common::enroll::CertReply =
        serde_json::from_slice(&resp.body).map_err(|e| EnrollError::Reply(e.to_string()))?;
    let (cert, ca, serial) = (reply.cert, reply.ca, reply.serial);
    // The CA first, then the key, then the certificate: a running agent re-reads them when they
    // change, and the certificate last means it never pairs the new certificate with the old key.
    tls::write_atomic(&files.ca, ca.as_bytes(), 0o644)?;
    if let Some(dir) = files.key.parent() {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
    }
    tls::write_atomic(&files.key, key_pem.as_bytes(), 0o600)?;
    tls::write_atomic(&files.cert, cert.as_bytes(), 0o644)?;
    // Proves the stored set works: the returned CA verifies the server we just talked to (for a
    // first contact without --ca this is the one check there is), and the key matches.
    let checked = tls::make_config(ServerTrust::Ca(&files.ca), Some((&files.cert, &files.key)))?;
    let request_err = |message: String| EnrollError::Request {
        server: server.to_string(),
        message,
    };
    let mut check = HttpConn::connect(&server, checked).map_err(|e| {
        EnrollError::Reply(format!(
            "the server's certificate does not verify against the CA it returned: {e}"
        ))
    })?;
    let health = check
        .request("GET", "/healthz", &[], b"")
        .map_err(|e| request_err(e.to_string()))?;
    if health.status != 200 {
        return Err(EnrollError::Reply(format!(
            "/healthz with the new certificate replied {}",
            health.status
        )));
    }
    let (_, not_after) = tls::validity(&files.cert)?;
    Ok(Enrolled {
        files,
        serial,
        not_after,
    })
}

/// The collectors `enroll` tries, in order: `--server` as given (each checked as `sink.url` is),
/// in this host's order as the sink would try them; without any, the URLs of the config's
/// collector sink that uses the enrolled identity files (the one whose certificate this makes).
pub fn servers(given: &[String], cfg: &crate::config::Config) -> Result<Vec<Url>, String> {
    if !given.is_empty() {
        let urls = given
            .iter()
            .map(|s| Url::parse(s).map_err(|e| format!("--server: {e}")))
            .collect::<Result<Vec<_>, _>>()?;
        let home = crate::config::home_index(&cfg.host_id, urls.len());
        let n = urls.len();
        return Ok((0..n).map(|i| urls[(home + i) % n].clone()).collect());
    }
    let enrolled = TlsFiles::enrolled(&cfg.state_dir);
    cfg.sinks
        .iter()
        .find_map(|s| match &s.sink {
            crate::config::SinkConfig::Collector(o) if o.files.cert == enrolled.cert => {
                Some(o.in_order())
            }
            _ => None,
        })
        .ok_or_else(|| {
            "enroll needs --server: the config has no collector sink using the enrolled certificate"
                .to_string()
        })
}

/// The password from the first line of `file`, or asked on the terminal with echo off.
pub fn read_password(file: Option<&Path>) -> Result<String, EnrollError> {
    let line = match file {
        Some(f) => {
            let text = std::fs::read_to_string(f)
                .map_err(|e| EnrollError::Password(format!("cannot read {}: {e}", f.display())))?;
            text.lines().next().unwrap_or("").to_string()
        }
        None => prompt_no_echo("Password: ")?,
    };
    if line.is_empty() {
        return Err(EnrollError::Password("empty".into()));
    }
    Ok(line)
}

fn prompt_no_echo(prompt: &str) -> Result<String, EnrollError> {
    use std::io::Write;
    use std::os::unix::io::AsRawFd;
    let tty = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/tty")
        .map_err(|e| {
            EnrollError::Password(format!("no terminal to ask on ({e}); use --password-file"))
        })?;
    let fd = tty.as_raw_fd();
    // SAFETY: termios calls on a descriptor we own, with a zeroed struct they fill in.
    let saved = unsafe {
        let mut t: libc::termios = std::mem::zeroed();
        if libc::tcgetattr(fd, &mut t) != 0 {
            return Err(EnrollError::Password(
                "cannot read terminal settings".into(),
            ));
        }
        let saved = t;
        t.c_lflag &= !libc::ECHO;
        libc::tcsetattr(fd, libc::TCSANOW, &t);
        saved
    };
    let mut out = &tty;
    let _ = out.write_all(prompt.as_bytes());
    let mut line = String::new();
    let read = std::io::BufReader::new(&tty).read_line(&mut line);
    // SAFETY: restores the settings read above on the same descriptor.
    unsafe {
        libc::tcsetattr(fd, libc::TCSANOW, &saved);
    }
    let _ = out.write_all(b"\n");
    read.map_err(|e| EnrollError::Password(e.to_string()))?;
    Ok(line.trim_end_matches(['\n', '\r']).to_string())
}
