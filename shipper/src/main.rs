//! The `log-sensor` command line. anyhow lives here only.

use anyhow::Context;
use clap::{Parser, Subcommand};
use log_sensor::config::Config;
use std::path::PathBuf;
use std::process::ExitCode;

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
        env = "LOG_SENSOR_CONFIG",
        default_value = "/etc/log-sensor/log-sensor.toml",
        global = true
    )]
    config: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run in the foreground (logs to stderr); SIGTERM/SIGINT finish the batch, commit, exit 0.
    Run,
    /// Validate the config; exit 1 naming the key or file at fault.
    Check,
    /// Read-only SQL against the store, printed as a table.
    Query {
        sql: String,
        /// One JSON object per row instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Obtain a client certificate from a collector (key made here, 0600) into <state_dir>/tls/.
    Enroll {
        /// The collector, `https://host:port`.
        #[arg(long)]
        server: String,
        /// The enrolment account on the collector.
        #[arg(long)]
        user: String,
        /// A file whose first line is the password; without it the password is asked on the
        /// terminal.
        #[arg(long)]
        password_file: Option<PathBuf>,
        /// The collector's CA certificate (its `ca.pem`), to check the server before sending the
        /// password.
        #[arg(long, required_unless_present = "insecure_first_contact")]
        ca: Option<PathBuf>,
        /// Trust whatever server answers, and the CA it returns (trust on first use). The password
        /// goes to that server unchecked: use only on a network you trust.
        #[arg(long, conflicts_with = "ca")]
        insecure_first_contact: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("LOG_SENSOR_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("log-sensor: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Check => {
            let cfg = Config::load(&cli.config)?;
            println!(
                "{}: ok ({} source(s), state dir {}, sink {:?})",
                cli.config.display(),
                cfg.sources.len(),
                cfg.state_dir.display(),
                sink_kind(&cfg)
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Run => {
            let cfg = Config::load(&cli.config)?;
            let stop = log_sensor::signals::stop_on_signals();
            log_sensor::agent::run(cfg, stop)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Enroll {
            server,
            user,
            password_file,
            ca,
            insecure_first_contact,
        } => {
            use log_sensor::enroll::{self, FirstContact};
            let cfg = Config::load(&cli.config)?;
            let server = log_sensor::sink::collector::Url::parse(&server)
                .map_err(|e| anyhow::anyhow!("--server: {e}"))?;
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
            let done = enroll::enroll(&enroll::EnrollOptions {
                server,
                user,
                password,
                host_id: cfg.host_id.clone(),
                trust,
                state_dir: cfg.state_dir.clone(),
            })
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
            let cfg = Config::load(&cli.config)?;
            let mut out = std::io::stdout().lock();
            log_sensor::query::run(&cfg.store_path(), &sql, json, &mut out).context("query")?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn sink_kind(cfg: &Config) -> &'static str {
    match cfg.sink {
        log_sensor::config::SinkConfig::File { .. } => "file",
        log_sensor::config::SinkConfig::Stdout => "stdout",
        log_sensor::config::SinkConfig::Collector(_) => "collector",
        log_sensor::config::SinkConfig::Syslog(_) => "syslog",
    }
}
