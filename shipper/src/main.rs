//! The `log-sensor` command line. anyhow lives here only.

mod cli;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use cli::reach::{self, Agent};
use log_sensor::config::layers;
use log_sensor::config::Config;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

mod cert_args;
mod pack_cmd;

#[derive(Parser)]
#[command(
    name = "log-sensor",
    version,
    about = "Tails log files and ships every record, at least once"
)]
struct Cli {
    /// The agent's config file.
    #[arg(
        short = 'c',
        long = "config",
        env = log_sensor_common::agent_defaults::CONFIG_ENV,
        default_value = log_sensor_common::agent_defaults::CONFIG_PATH,
        global = true
    )]
    config: PathBuf,
    /// A client certificate (PEM) for the sink instead of the enrolled one (or sink.cert);
    /// needs --key. Kept across reloads.
    #[arg(
        long = "cert",
        global = true,
        requires = "client_key",
        value_name = "FILE"
    )]
    client_cert: Option<PathBuf>,
    /// The private key (PEM, mode 0600) of --cert.
    #[arg(
        long = "key",
        global = true,
        requires = "client_cert",
        value_name = "FILE"
    )]
    client_key: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run in the foreground (logs to stderr; the form for systemd). SIGTERM/SIGINT finish the
    /// batch in flight, commit, exit 0.
    Run,
    /// Start in the background (log in <state_dir>/agent.log, pid in <state_dir>/agent.pid).
    Start,
    /// Stop the running agent gracefully: finish the batch, commit, exit.
    Stop,
    /// Re-read the config file and packs (dropping temporary overrides).
    Reload,
    /// Sources, streams, lag, sink state and alerts of the running agent.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Validate the config, and that every sink would start (a collector sink's identity
    /// enrolled or given); exit 1 naming the key, file or sink at fault.
    Check,
    /// Print the config file as the agent reads it: a `.j2` template rendered for this host.
    Render,
    /// Read-only SQL against the store, printed as a table.
    Query {
        sql: String,
        /// One JSON object per row instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Obtain a client certificate from a collector (key made here, 0600) into <state_dir>/tls/.
    #[command(visible_alias = "get_cert")]
    Enroll {
        /// The collector, `https://host:port`; more than once for several, tried in this host's
        /// order as the sink tries them. Without it, the URLs of the config's collector sink.
        #[arg(long)]
        server: Vec<String>,
        /// The enrolment account on the collector.
        #[arg(long, required_unless_present = "password")]
        user: Option<String>,
        /// Refused: a password on the command line is readable by every user of the host while
        /// the command runs. Use --password-file.
        #[arg(value_name = "PASSWORD")]
        password: Option<String>,
        /// A file whose first line is the password; without it the password is asked on the
        /// terminal.
        #[arg(long)]
        password_file: Option<PathBuf>,
        /// The collector's CA certificate (its `ca.pem`), to check the server before sending the
        /// password.
        #[arg(long, required_unless_present_any = ["insecure_first_contact", "password"])]
        ca: Option<PathBuf>,
        /// Trust whatever server answers, and the CA it returns (trust on first use). The password
        /// goes to that server unchecked: use only on a network you trust.
        #[arg(long, conflicts_with = "ca")]
        insecure_first_contact: bool,
    },
    /// Set KEY (a dotted path such as defaults.max_record_bytes) in the running agent until its
    /// next reload or restart; with --persist, in the config file instead.
    Set {
        key: String,
        value: String,
        #[arg(long)]
        persist: bool,
    },
    /// Drop a temporary override of KEY (or hide the file's value until the next reload);
    /// with --persist, remove KEY from the config file.
    Del {
        key: String,
        #[arg(long)]
        persist: bool,
    },
    /// The effective value of KEY and where it comes from (default, file, pack, temporary).
    Get { key: String },
    /// Every key under KEY (all keys without one), with value and origin.
    List { key: Option<String> },
    /// osquery packs that also switch the agent's sources on.
    Pack {
        #[command(subcommand)]
        action: PackAction,
    },
}

#[derive(Subcommand)]
enum PackAction {
    /// Packs found in the pack folders, which are enabled, and whether each applies on this host
    /// with the sources it adds here.
    List,
    /// Enable a pack (by name or path): written to the config file, then reloaded. A pack that
    /// does not apply on this host is refused with the reason.
    Enable { name: String },
    /// Disable a pack: removed from the config file, then reloaded.
    Disable { name: String },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Run) {
        // `status | head` closes the pipe early: end quietly, as other tools do, rather than
        // panic in println!. Not for `run`, whose stdout sink must see EPIPE as an error.
        // SAFETY: setting a signal's disposition before any other thread exists.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    let colour = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt()
        // One event, one line, whatever a field holds (a file name with a newline in it).
        .with_writer(move || log_sensor_common::one_line::OneLine::new(std::io::stderr(), colour))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("LOG_SENSOR_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_target(false)
        .with_ansi(colour)
        .init();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!(
                "log-sensor: {}",
                log_sensor_common::error_text::error_text(e.as_ref())
            );
            ExitCode::from(reach::exit_code(&e))
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let path = cli.config.clone();
    let cert = cert_args::CertArgs::new(cli.client_cert.clone(), cli.client_key.clone())?;
    match cli.command {
        Command::Check => cli::check::check(&path, &cert),
        Command::Render => {
            print!("{}", layers::read_text(&path)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Run => {
            let layers = cert.load(&path)?;
            let stop = log_sensor::signals::stop_on_signals();
            log_sensor::agent::run(layers, stop)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Enroll {
            server,
            user,
            password: Some(_),
            ..
        } => {
            let _ = (server, user);
            bail!("{}", cert_args::PASSWORD_ARGUMENT_REFUSED)
        }
        Command::Enroll {
            server,
            user,
            password: None,
            password_file,
            ca,
            insecure_first_contact,
        } => {
            use log_sensor::enroll::{self, FirstContact};
            let Some(user) = user else {
                bail!("enroll needs --user");
            };
            let cfg = Config::load(&cli.config)?;
            let servers = enroll::servers(&server, &cfg).map_err(|e| anyhow::anyhow!(e))?;
            let server = servers
                .iter()
                .map(|u| u.to_string())
                .collect::<Vec<_>>()
                .join(", ");
            let trust = match ca {
                Some(ca) => FirstContact::Ca(ca),
                None if !insecure_first_contact => {
                    anyhow::bail!("pass --ca with the collector's ca.pem (or, knowingly, --insecure-first-contact)")
                }
                None => {
                    eprintln!(
                        "log-sensor: WARNING: --insecure-first-contact: the server at {server} is NOT \
                         authenticated; the password is sent to whoever answers, and the CA it \
                         returns is trusted from now on. Pass --ca with the collector's ca.pem instead."
                    );
                    FirstContact::Insecure
                }
            };
            let password = enroll::read_password(password_file.as_deref())?;
            let done = enroll::enroll(
                &enroll::EnrollOptions {
                    servers,
                    user,
                    password,
                    host_id: cfg.host_id.clone(),
                    trust,
                    state_dir: cfg.state_dir.clone(),
                },
                &|msg| eprintln!("log-sensor: {msg}"),
            )
            .context("enrol")?;
            println!(
                "enrolled host {:?}: certificate serial {} valid until {}\n  key:         {} (0600)\n  certificate: {}\n  CA:          {}",
                cfg.host_id,
                done.serial,
                log_sensor::record::rfc3339_ms(done.not_after.saturating_mul(1000)),
                done.files.key.display(),
                done.files.cert.display(),
                done.files.ca.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Query { sql, json } => {
            let store = match Config::load(&path) {
                Ok(cfg) => cfg.store_path(),
                Err(e) => {
                    match Config::state_dir_lenient(&path) {
                        Some(dir) => {
                            eprintln!("log-sensor: warning: {e}\nlog-sensor: querying the store in {} anyway", dir.display());
                            log_sensor_common::state_dir::store(&dir)
                        }
                        None => return Err(e.into()),
                    }
                }
            };
            let mut out = std::io::stdout().lock();
            log_sensor::query::run(&store, &sql, json, &mut out).context("query")?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Start => start(&path, &cert),
        Command::Stop => stop(&path),
        Command::Reload => {
            // Refused here, before the agent is asked: it would refuse too and keep its config.
            let cfg = Config::load(&path).context(
                "the config file is not valid, nothing reloaded (a running agent keeps its config)",
            )?;
            Agent::of(cfg).ask("reload", None, None)?;
            println!("reloaded");
            Ok(ExitCode::SUCCESS)
        }
        Command::Status { json } => cli::status::status(&path, json),
        Command::Set {
            key,
            value,
            persist,
        } => change(&path, &key, Some(&value), persist),
        Command::Del { key, persist } => change(&path, &key, None, persist),
        Command::Get { key } => show(&path, &cert, &key, true),
        Command::List { key } => show(&path, &cert, key.as_deref().unwrap_or(""), false),
        Command::Pack { action } => pack(&path, action),
    }
}

fn start(path: &Path, cert: &cert_args::CertArgs) -> anyhow::Result<ExitCode> {
    let agent = Agent::locate(path)?;
    if let Some(pid) = agent.running()? {
        agent.warn_if_invalid();
        println!("already running (pid {pid})");
        return Ok(ExitCode::SUCCESS);
    }
    // The flags are checked as the agent will check them, so a bad --cert fails here, not in
    // the background.
    let cfg = cert.load(path)?.resolve()?;
    let agent = Agent::of(cfg.clone());
    log_sensor::agent::create_state_dir(&cfg.state_dir)
        .with_context(|| format!("cannot create {}", cfg.state_dir.display()))?;
    let log_path = cfg.state_dir.join(log_sensor_common::state_dir::LOG);
    let log = open_agent_log(&log_path)?;
    let mut cmd = std::process::Command::new(std::env::current_exe().context("own executable")?);
    cmd.arg("-c")
        .arg(&cfg.path)
        .args(cert.args())
        .arg("run")
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    // SAFETY: setsid is async-signal-safe; it detaches the agent from our terminal and session.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
            libc::setsid();
            Ok(())
        });
    }
    let mut child = cmd.spawn().context("cannot start the agent")?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(pid) = agent.running()? {
            println!("started (pid {pid}); log in {}", log_path.display());
            return Ok(ExitCode::SUCCESS);
        }
        if let Some(st) = child.try_wait()? {
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(10).collect();
            bail!(
                "the agent exited ({st}) while starting; last lines of {}:\n{}",
                log_path.display(),
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        if Instant::now() > deadline {
            bail!(
                "the agent did not answer on its control socket within 30 s; see {}",
                log_path.display()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `<state_dir>/agent.log`, 0600. With the default stdout sink every record shipped lands in it,
/// so it must be as private as the most private log read (auth.log's secrets included). One left
/// group or other readable (by a version that created it 0644) is made 0600 again: nothing in
/// the config asks for it to be shared, and a file sink with a `mode` is the way to share.
fn open_agent_log(path: &Path) -> anyhow::Result<std::fs::File> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    let mode = log
        .metadata()
        .with_context(|| format!("cannot stat {}", path.display()))?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        log.set_permissions(std::fs::Permissions::from_mode(mode & 0o700))
            .with_context(|| {
                format!(
                    "{} is mode {:04o}, readable by others, and cannot be made 0600",
                    path.display(),
                    mode & 0o7777
                )
            })?;
        eprintln!(
            "{} was mode {:04o}; made {:04o}: it holds the records shipped to stdout",
            path.display(),
            mode & 0o7777,
            mode & 0o700
        );
    }
    Ok(log)
}

fn stop(path: &Path) -> anyhow::Result<ExitCode> {
    let agent = Agent::locate(path)?;
    agent.warn_if_invalid();
    let Some(pid) = agent.running()? else {
        return stop_elsewhere(path);
    };
    agent.ask("stop", None, None)?;
    let deadline = Instant::now() + Duration::from_secs(60);
    // The socket goes away when the agent has committed and exited; until then any answer but
    // "not running" (an error while it shuts down included) means it is still there.
    while !matches!(agent.running(), Ok(None)) || pid_alive(pid) {
        if Instant::now() > deadline {
            bail!("pid {pid} is still running after 60 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    println!("stopped (pid {pid})");
    Ok(ExitCode::SUCCESS)
}

/// No agent answers in the file's state dir; one may still run with this file, on the state
/// dir the file named when it started (`state_dir` was edited since): that one is stopped by
/// its pid, as SIGTERM stops any agent (finish the batch, commit, exit).
fn stop_elsewhere(path: &Path) -> anyhow::Result<ExitCode> {
    let pids = log_sensor::agent::peers::others_with_config(path);
    if pids.is_empty() {
        println!("not running");
        return Ok(ExitCode::SUCCESS);
    }
    for &pid in &pids {
        eprintln!(
            "log-sensor: pid {pid} runs with {} on another state dir (state_dir was changed since it started); stopping it",
            path.display()
        );
        // SAFETY: a signal to a process found running our binary with our config.
        if unsafe { libc::kill(pid as i32, libc::SIGTERM) } != 0 {
            bail!("cannot stop pid {pid}: {}", std::io::Error::last_os_error());
        }
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while pids.iter().any(|&p| pid_alive(p)) {
        if Instant::now() > deadline {
            bail!("still running after 60 s: {pids:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    for pid in pids {
        println!("stopped (pid {pid})");
    }
    Ok(ExitCode::SUCCESS)
}

fn pid_alive(pid: u32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    unsafe { libc::kill(pid as i32, 0) == 0 }
}

fn change(path: &Path, key: &str, value: Option<&str>, persist: bool) -> anyhow::Result<ExitCode> {
    if persist {
        let parsed = value.map(layers::parse_value);
        let cfg = layers::persist(path, key, parsed.as_ref())?;
        match Agent::of(cfg).ask("reload", None, None) {
            Ok(_) => println!(
                "{} written to {}; the running agent reloaded",
                key,
                path.display()
            ),
            Err(e) if reach::is_not_running(&e) => {
                println!("{} written to {} (no agent running)", key, path.display())
            }
            Err(e) => {
                return Err(e.context("written to the file, but the running agent did not reload"))
            }
        }
        return Ok(ExitCode::SUCCESS);
    }
    let agent = Agent::locate(path)?;
    agent.warn_if_invalid();
    let cmd = if value.is_some() { "set" } else { "del" };
    let resp = match agent.ask(cmd, Some(key), value) {
        Err(e) if reach::is_not_running(&e) => {
            bail!("no agent is running to take a temporary change; --persist writes the config file instead")
        }
        other => other?,
    };
    for e in resp.entries.unwrap_or_default() {
        println!("{} = {}  ({})", e.key, e.value, e.origin);
    }
    if value.is_none() {
        println!("{key}: temporary change dropped");
    }
    Ok(ExitCode::SUCCESS)
}

fn show(
    path: &Path,
    cert: &cert_args::CertArgs,
    key: &str,
    exact: bool,
) -> anyhow::Result<ExitCode> {
    let agent = Agent::locate(path)?;
    let cmd = if exact { "get" } else { "list" };
    let entries: Vec<(String, String, String)> = match agent.ask(cmd, Some(key), None) {
        Ok(resp) => {
            agent.warn_if_invalid();
            resp.entries
                .unwrap_or_default()
                .into_iter()
                .map(|e| (e.key, e.value, e.origin))
                .collect()
        }
        Err(e) if reach::is_not_running(&e) => {
            // No agent: the file is all there is, and an invalid one is the error.
            let layers = cert.load(path)?;
            layers.resolve()?;
            eprintln!("(no agent running: values from {})", path.display());
            layers
                .entries(key)
                .into_iter()
                .filter(|e| !exact || e.key == key)
                .map(|e| (e.key, e.value, e.origin.as_str().to_string()))
                .collect()
        }
        Err(e) => return Err(e),
    };
    if entries.is_empty() {
        bail!("no key {key:?} (list shows what there is)");
    }
    let width = entries.iter().map(|e| e.0.len()).max().unwrap_or(0);
    for (k, v, o) in entries {
        println!("{k:<width$} = {v}  ({o})");
    }
    Ok(ExitCode::SUCCESS)
}

fn pack(path: &Path, action: PackAction) -> anyhow::Result<ExitCode> {
    let action = match action {
        PackAction::List => pack_cmd::Action::List,
        PackAction::Enable { name } => pack_cmd::Action::Enable(name),
        PackAction::Disable { name } => pack_cmd::Action::Disable(name),
    };
    pack_cmd::run(path, action, write_packs)
}

fn write_packs(path: &Path, list: &[String], done: &str) -> anyhow::Result<ExitCode> {
    let value = toml::Value::Array(list.iter().cloned().map(toml::Value::String).collect());
    let cfg = layers::persist(path, "packs", Some(&value))?;
    match Agent::of(cfg).ask("reload", None, None) {
        Ok(_) => println!("{done}; the running agent reloaded"),
        Err(e) if reach::is_not_running(&e) => println!("{done} (no agent running)"),
        Err(e) => {
            return Err(e.context(format!(
                "{done} in the file, but the running agent did not reload"
            )))
        }
    }
    Ok(ExitCode::SUCCESS)
}
