//! `log-sensor-extension`: started by osqueryd (`--extension PATH` or autoload) with
//! `[--verbose] --socket S --timeout T --interval I` (osquery
//! `osquery/core/process/posix/process.cpp`, `launchExtension`).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use log_sensor_extension::extension::{self, Options};
use log_sensor_extension::logger::outbox::DEFAULT_MAX_ROWS;
use log_sensor_extension::shutdown::{Reason, Shutdown};

#[derive(Parser, Debug)]
#[command(
    name = "log-sensor-extension",
    version,
    about = "log-sensor's osquery extension"
)]
struct Args {
    /// osquery's extension manager socket.
    #[arg(long, default_value = "/var/osquery/osquery.em")]
    socket: PathBuf,
    /// Seconds to wait for the socket to appear.
    #[arg(long, default_value_t = 3.0)]
    timeout: f64,
    /// Seconds between checks that osquery is still there.
    #[arg(long, default_value_t = 3.0)]
    interval: f64,
    /// More logging on stderr.
    #[arg(long)]
    verbose: bool,
    /// The log-sensor agent config (else $LOG_SENSOR_CONFIG, else /etc/log-sensor/log-sensor.toml).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Pending records the outbox keeps before dropping the oldest.
    #[arg(long, default_value_t = DEFAULT_MAX_ROWS)]
    outbox_max_rows: u64,
    /// Print the tables' columns as Markdown and exit.
    #[arg(long)]
    spec: bool,
}

fn main() {
    let args = Args::parse();
    if args.spec {
        print!("{}", log_sensor_extension::table::spec_markdown());
        return;
    }
    let default_level = if args.verbose { "debug" } else { "info" };
    let colour = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt()
        // One event, one line, whatever a field holds (a file name with a newline in it).
        .with_writer(move || log_sensor_common::one_line::OneLine::new(std::io::stderr(), colour))
        .with_ansi(colour)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level)),
        )
        .init();

    let shutdown = Arc::new(Shutdown::default());
    if let Err(e) = watch_signals(shutdown.clone()) {
        eprintln!("log-sensor-extension: cannot install signal handling: {e}");
        std::process::exit(1);
    }
    let seconds =
        |s: f64, min: f64| Duration::from_secs_f64(if s.is_finite() { s.max(min) } else { min });
    let opts = Options {
        socket: args.socket,
        timeout: seconds(args.timeout, 0.0),
        interval: seconds(args.interval, 0.2),
        config: extension::config_path(args.config.as_deref()),
        outbox_max_rows: args.outbox_max_rows,
    };
    match extension::run(opts, shutdown) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!(
                "log-sensor-extension: {}",
                log_sensor_common::error_text::error_text(e.as_ref())
            );
            std::process::exit(1);
        }
    }
}

/// Blocks SIGTERM, SIGINT and SIGHUP in every thread and turns them into a shutdown from one
/// thread that waits for them, so no handler runs in an arbitrary thread.
fn watch_signals(shutdown: Arc<Shutdown>) -> std::io::Result<()> {
    // SAFETY: sigset_t is plain data initialised by sigemptyset; the mask is set before any
    // other thread exists, so every thread inherits it.
    let set = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
            libc::sigaddset(&mut set, s);
        }
        if libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        set
    };
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || loop {
            let mut sig: libc::c_int = 0;
            // SAFETY: `set` outlives the call; `sig` is a valid out pointer.
            if unsafe { libc::sigwait(&set, &mut sig) } == 0 {
                tracing::info!("signal {sig} received");
                shutdown.trigger(Reason::Signal(sig));
            }
        })?;
    Ok(())
}
