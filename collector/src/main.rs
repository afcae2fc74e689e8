//! The `log-sensor-collector` command line; anyhow lives only here.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};

use log_sensor_collector::config::{Config, Layout, StorageConfig};
use log_sensor_collector::db::Db;
use log_sensor_collector::storage::jetstream::JetStream;
use log_sensor_collector::storage::{self, Store};
use log_sensor_collector::{pki, revoke, server, users};
use log_sensor_common::clock::now_secs;
use log_sensor_common::fsutil;

#[derive(Parser)]
#[command(
    name = "log-sensor-collector",
    version,
    about = "Receives log-sensor batches over mutual TLS"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Args)]
struct DirArg {
    /// The collector's state directory (CA, config, database, data).
    #[arg(long)]
    dir: PathBuf,
}

#[derive(Subcommand)]
enum Command {
    /// Create the CA, the server certificate, the config and the database.
    Init {
        #[command(flatten)]
        dir: DirArg,
        /// DNS name or IP address agents use to reach the collector (repeatable).
        #[arg(long = "name", required = true)]
        names: Vec<String>,
        /// Listen address written to the config.
        #[arg(long)]
        listen: Option<SocketAddr>,
    },
    /// Manage enrolment accounts.
    User {
        #[command(subcommand)]
        command: UserCommand,
    },
    /// Serve HTTPS: enrol, renew, ingest, /metrics, /healthz.
    Serve {
        #[command(flatten)]
        dir: DirArg,
        /// Overrides `listen` from the config; port 0 picks a free port.
        #[arg(long)]
        listen: Option<SocketAddr>,
    },
    /// Revoke a certificate by serial, or every certificate of a host.
    Revoke {
        #[command(flatten)]
        dir: DirArg,
        /// A serial (hex, as `certs list` shows) or a host id.
        target: String,
    },
    /// Inspect issued certificates.
    Certs {
        #[command(subcommand)]
        command: CertsCommand,
    },
    /// Write the records stored in the JetStream cluster to stdout or a
    /// file, at least once, through a durable consumer (until SIGTERM).
    Export {
        #[command(flatten)]
        dir: DirArg,
        /// Append to this file (created 0600) instead of stdout; each write
        /// is synced before it is acknowledged.
        #[arg(long)]
        to: Option<PathBuf>,
        /// The durable consumer's name: a restart goes on where it left off.
        #[arg(long, default_value = "export")]
        consumer: String,
    },
}

#[derive(Subcommand)]
enum UserCommand {
    /// Add a user; the password is prompted for on the terminal.
    Add {
        #[command(flatten)]
        dir: DirArg,
        name: String,
        /// Read the password from the first line of this file instead.
        #[arg(long)]
        password_file: Option<PathBuf>,
    },
    /// Delete a user (certificates already issued stay valid; revoke them).
    Del {
        #[command(flatten)]
        dir: DirArg,
        name: String,
    },
}

#[derive(Subcommand)]
enum CertsCommand {
    /// List issued, expired and revoked certificates.
    List {
        #[command(flatten)]
        dir: DirArg,
    },
}

fn main() {
    if let Err(e) = run() {
        // The whole cause chain on one line, without the backtrace anyhow's
        // Debug form adds when RUST_BACKTRACE is set.
        let text = log_sensor_common::error_text::error_text(e.as_ref());
        eprintln!("log-sensor-collector: {text}");
        std::process::exit(1);
    }
}

fn run() -> Result<()> {
    let colour = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt()
        // One event, one line, whatever a field holds (a file name with a newline in it).
        .with_writer(move || log_sensor_common::one_line::OneLine::new(std::io::stderr(), colour))
        // Colour codes only on a terminal: under systemd stderr is the journal, where they
        // would be stored as escape bytes in every line (the agent and the extension do the same).
        .with_ansi(colour)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    match Cli::parse().command {
        Command::Init { dir, names, listen } => init(&Layout::new(dir.dir), &names, listen),
        Command::User { command } => match command {
            UserCommand::Add {
                dir,
                name,
                password_file,
            } => user_add(&Layout::new(dir.dir), &name, password_file),
            UserCommand::Del { dir, name } => {
                open_store(&Layout::new(dir.dir))?.delete_user(&name)?;
                println!("deleted user {name}");
                Ok(())
            }
        },
        Command::Serve { dir, listen } => serve(Layout::new(dir.dir), listen),
        Command::Revoke { dir, target } => {
            let store = open_store(&Layout::new(dir.dir))?;
            for row in revoke::revoke(store.as_ref(), &target)? {
                println!("revoked {} (host {})", row.serial, row.host_id);
            }
            Ok(())
        }
        Command::Certs {
            command: CertsCommand::List { dir },
        } => certs_list(&Layout::new(dir.dir)),
        Command::Export { dir, to, consumer } => export(&Layout::new(dir.dir), to, &consumer),
    }
}

fn init(layout: &Layout, names: &[String], listen: Option<SocketAddr>) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    if !layout.dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&layout.dir)
            .with_context(|| format!("creating {}", layout.dir.display()))?;
    }
    if layout.db().exists() || layout.config().exists() {
        bail!(
            "{} already holds a collector; refusing to replace it",
            layout.dir.display()
        );
    }
    pki::init(
        &layout.ca_cert(),
        &layout.ca_key(),
        &layout.server_cert(),
        &layout.server_key(),
        names,
    )?;
    let mut config = Config::default();
    if let Some(listen) = listen {
        config.listen = listen;
    }
    config.create(&layout.config())?;
    Db::create(&layout.db())?;
    // Records may be sensitive: only the collector's user reads them.
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(layout.data_dir())
        .with_context(|| format!("creating {}", layout.data_dir().display()))?;
    fsutil::sync_dir(&layout.dir).with_context(|| format!("syncing {}", layout.dir.display()))?;
    println!("CA certificate:     {}", layout.ca_cert().display());
    println!("CA key (0600):      {}", layout.ca_key().display());
    println!(
        "server certificate: {} (names: {})",
        layout.server_cert().display(),
        names.join(", ")
    );
    println!("config:             {}", layout.config().display());
    println!("database:           {}", layout.db().display());
    Ok(())
}

fn user_add(layout: &Layout, name: &str, password_file: Option<PathBuf>) -> Result<()> {
    if name.is_empty() {
        bail!("empty user name");
    }
    let store = open_store(layout)?;
    let password = match password_file {
        Some(path) => users::password_from_file(&path)?,
        None => users::password_from_tty(name)?,
    };
    let hash = users::hash_password(&password)?;
    store.add_user(name, &hash, now_secs())?;
    println!("added user {name}");
    Ok(())
}

/// Each agent connection and each open stream file takes a descriptor;
/// the usual soft limit of 1024 is far below what a fleet needs, so take
/// whatever the hard limit allows.
fn raise_fd_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain getrlimit/setrlimit on a local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                tracing::warn!("could not raise the open-file limit");
            }
        }
    }
}

fn serve(layout: Layout, listen: Option<SocketAddr>) -> Result<()> {
    raise_fd_limit();
    let config = Config::load(&layout.config())?;
    // Two servers on one folder would both append to its stream files and index: each checks
    // duplicates against its own view, so records were stored twice, and a batch one of them
    // acknowledged could be left out of the files. `revoke`, `user` and `certs` need no lock:
    // they go through the database, which serializes them.
    let _lock = fsutil::lock_dir(&layout.dir, "serve.lock").map_err(|e| match e {
        fsutil::LockError::Held { pid } => anyhow::anyhow!(
            "{} is in use by another log-sensor-collector serve (pid {pid}); one per --dir",
            layout.dir.display()
        ),
        fsutil::LockError::Io { path, source } => {
            anyhow::anyhow!("cannot lock {}: {source}", path.display())
        }
    })?;
    let addr = listen.unwrap_or(config.listen);
    let server = server::Server::open(&layout, config)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding {addr}"))?;
        let bound = listener.local_addr().context("reading the bound address")?;
        fsutil::write_atomic(&layout.serve_addr(), format!("{bound}\n").as_bytes(), 0o644)
            .with_context(|| format!("writing {}", layout.serve_addr().display()))?;
        println!("listening on {bound}");
        tracing::info!(%bound, "collector listening");
        log_sensor_collector::serve(listener, server, shutdown_signal()).await;
        tracing::info!("collector stopped");
        Ok(())
    })
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

fn export(layout: &Layout, to: Option<PathBuf>, consumer: &str) -> Result<()> {
    use std::io::Write;
    use std::sync::atomic::{AtomicBool, Ordering};
    let config = Config::load(&layout.config())?;
    let StorageConfig::Jetstream(js) = &config.storage else {
        bail!(
            "export reads a JetStream cluster ([storage] type = \"jetstream\"); the embedded \
             store's records are the files under {}",
            layout.data_dir().display()
        );
    };
    if consumer.is_empty()
        || !consumer
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        bail!("--consumer {consumer:?}: use A-Z, a-z, 0-9, - and _ only");
    }
    let cluster = JetStream::connect(js, u64::from(config.overlong_alert_after))?;
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("signal runtime");
            rt.block_on(shutdown_signal());
            stop.store(true, Ordering::SeqCst);
        });
    }
    let mut write: Box<dyn FnMut(&[u8]) -> std::io::Result<()>> = match to {
        Some(path) => {
            use std::os::unix::fs::OpenOptionsExt;
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o600)
                .open(&path)
                .with_context(|| format!("opening {}", path.display()))?;
            Box::new(move |body| {
                (&file).write_all(body)?;
                file.sync_data()
            })
        }
        None => Box::new(|body| {
            let mut out = std::io::stdout().lock();
            out.write_all(body)?;
            out.flush()
        }),
    };
    let n = cluster.export(consumer, &mut *write, &stop)?;
    tracing::info!(messages = n, "export stopped");
    Ok(())
}

/// The store `collector.toml` chooses: the embedded one under `--dir`, or
/// the JetStream cluster every collector shares.
fn open_store(layout: &Layout) -> Result<Arc<dyn Store>> {
    let config = Config::load(&layout.config())?;
    Ok(storage::open(layout, &config)?)
}

fn certs_list(layout: &Layout) -> Result<()> {
    let store = open_store(layout)?;
    let now = now_secs();
    let fmt = |t: i64| {
        time::OffsetDateTime::from_unix_timestamp(t)
            .ok()
            .and_then(|d| {
                d.format(&time::format_description::well_known::Rfc3339)
                    .ok()
            })
            .unwrap_or_else(|| t.to_string())
    };
    println!(
        "{:<32}  {:<24}  {:<12}  {:<20}  {:<20}  STATUS",
        "SERIAL", "HOST", "USER", "ISSUED", "NOT AFTER"
    );
    for c in store.list_certs()? {
        let status = match c.revoked_at {
            Some(at) => format!("revoked {}", fmt(at)),
            None if c.not_after <= now => "expired".to_owned(),
            None => "valid".to_owned(),
        };
        println!(
            "{:<32}  {:<24}  {:<12}  {:<20}  {:<20}  {}",
            c.serial,
            c.host_id,
            c.username,
            fmt(c.issued_at),
            fmt(c.not_after),
            status
        );
    }
    Ok(())
}
