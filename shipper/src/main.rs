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
    }
}
