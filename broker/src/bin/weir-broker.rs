//! `weir-broker`: the Weir broker daemon.
//!
//! With no arguments it listens on 127.0.0.1:7070 with its data in `./weir-data`. Flags and
//! `--config weir.toml` override the embedded defaults (flags win); `--print-config` shows the
//! effective configuration with every bound. SIGTERM or SIGINT shut it down gracefully: the
//! commit in progress finishes, clients get `GoingAway`, and the process exits 0. SIGHUP
//! re-reads the `[tls]` files (a bad one keeps the files in use and is logged); without
//! `[tls]` it is logged and ignored.
//!
//! `weir-broker hash-token` reads a token on stdin and prints the `token_sha256 = "..."` line
//! of a `[[keys]]` entry, so a config file need not hold the secret.
//!
//! It locks its data directory first: a second broker on the same directory fails at once,
//! naming the directory. A state store that cannot be read stops it with an error naming the store's path;
//! `--rebuild-state` then moves the store aside and rebuilds it from the topic manifests.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use tokio::net::TcpListener;
use tracing_subscriber::EnvFilter;
use weir_broker::config::{
    parse_listen_addr, Config, ConfigError, DEFAULT_ADMIN_PORT, DEFAULT_WIRE_PORT,
};

/// Command-line flags; each overrides the config file's value.
#[derive(Debug, Parser)]
#[command(
    name = "weir-broker",
    version,
    about = "The Weir message broker: bounded, persisted topics with credit-paced delivery"
)]
struct Args {
    /// TOML config file; fields it leaves out keep their defaults.
    #[arg(long, short = 'c', env = "WEIR_CONFIG")]
    config: Option<PathBuf>,
    /// Address to listen on: IP:PORT or HOST:PORT; the port defaults to 7070
    /// [default: 127.0.0.1:7070].
    #[arg(long, value_parser = |t: &str| parse_listen_addr(t, DEFAULT_WIRE_PORT))]
    listen: Option<SocketAddr>,
    /// Data directory [default: ./weir-data].
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Most open connections.
    #[arg(long)]
    max_connections: Option<u32>,
    /// Largest accepted frame, bytes.
    #[arg(long)]
    max_frame_bytes: Option<u32>,
    /// Create topics with default bounds on first publish or subscribe (true/false).
    #[arg(long)]
    auto_create_topics: Option<bool>,
    /// Address of the HTTP admin endpoint (metrics, health, topics): IP:PORT or HOST:PORT; the
    /// port defaults to 7071 [default: 127.0.0.1:7071].
    #[arg(long, value_parser = |t: &str| parse_listen_addr(t, DEFAULT_ADMIN_PORT))]
    admin_listen: Option<SocketAddr>,
    /// Do not serve the HTTP admin endpoint.
    #[arg(long)]
    no_admin: bool,
    /// Log line format: `text` (default) or `json` (one JSON object per line). The level
    /// filter is `RUST_LOG` (default `info`).
    #[arg(long, value_enum, default_value = "text")]
    log_format: LogFormat,
    /// PEM certificate (chain) both ports serve over TLS; plaintext is then refused. Overrides
    /// `[tls] cert_file`; needs `--tls-key`.
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key of `--tls-cert`.
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// PEM CA certificates client certificates must chain to (mutual TLS); needs `--tls-cert`.
    #[arg(long, requires = "tls_cert")]
    tls_client_ca: Option<PathBuf>,
    /// Print the effective configuration as TOML and exit.
    #[arg(long)]
    print_config: bool,
    /// Rebuild the state store from the topic directories' manifests: the store is moved
    /// aside to `<data-dir>/state.broken-<unix time>` (never deleted), then every topic is
    /// restored with its settings and messages; group cursors are reset (a group subscribing
    /// again starts where it asks). For a state store that is lost or unreadable.
    #[arg(long)]
    rebuild_state: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

/// Tools beside running the broker.
#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Read a token on stdin (one line; the newline is not part of it) and print the
    /// `token_sha256 = "..."` line of a `[[keys]]` entry for it: the broker compares digests,
    /// so the config need not hold the token itself. Prints nothing else and never echoes the
    /// token; an empty token is refused (exit 2).
    HashToken,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    /// Human-readable lines (coloured on a terminal).
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

impl Args {
    fn into_config(self) -> Result<(Config, bool, bool), ConfigError> {
        let mut config = match &self.config {
            Some(path) => Config::from_file(path)?,
            None => Config::default(),
        };
        if let Some(v) = self.listen {
            config.listen = v;
        }
        if let Some(v) = self.data_dir {
            config.data_dir = v;
        }
        if let Some(v) = self.max_connections {
            config.limits.max_connections = v;
        }
        if let Some(v) = self.max_frame_bytes {
            config.limits.max_frame_bytes = v;
        }
        if let Some(v) = self.auto_create_topics {
            config.limits.auto_create_topics = v;
        }
        if let Some(v) = self.admin_listen {
            config.admin.listen = v;
        }
        if self.no_admin {
            config.admin.enabled = false;
        }
        if let (Some(cert_file), Some(key_file)) = (self.tls_cert, self.tls_key) {
            config.tls = Some(weir_broker::tls::TlsConfig {
                cert_file,
                key_file,
                client_ca_file: self.tls_client_ca,
            });
        }
        config.validate()?;
        Ok((config, self.print_config, self.rebuild_state))
    }
}

fn main() -> ExitCode {
    let mut args = Args::parse();
    if let Some(Command::HashToken) = args.command.take() {
        return hash_token(std::io::stdin().lock());
    }
    let log_format = args.log_format;
    let (config, print, rebuild) = match args.into_config() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("weir-broker: {e}");
            return ExitCode::from(2);
        }
    };
    if print {
        // Shown as the broker would take it: the disk budget's default measured now.
        let mut config = config;
        config.resolve_storage_budget();
        print!("{}", config.to_toml());
        return ExitCode::SUCCESS;
    }
    init_logging(log_format);
    // Before the state store is read or moved aside: one broker per data directory.
    let _lock = match weir_broker::data_dir_lock::lock_data_dir(&config.data_dir) {
        Ok(lock) => lock,
        Err(e) => {
            eprintln!("weir-broker: {e}");
            return ExitCode::FAILURE;
        }
    };
    if rebuild {
        let state = config.data_dir.join("state");
        let fs = weir_broker::storage::fs::os();
        match weir_broker::storage::state::set_aside(fs.as_ref(), &state) {
            Ok(Some(to)) => tracing::warn!(
                state = %state.display(),
                moved_to = %to.display(),
                "--rebuild-state: the state store was moved aside; topics are rebuilt from their manifests and group cursors reset"
            ),
            Ok(None) => {
                tracing::warn!(state = %state.display(), "--rebuild-state: there was no state store; topics are rebuilt from their manifests")
            }
            Err(e) => {
                eprintln!(
                    "weir-broker: --rebuild-state: cannot move {} aside: {e}",
                    state.display()
                );
                return ExitCode::FAILURE;
            }
        }
    }
    raise_open_files_limit(&config);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("weir-broker: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "broker failed");
            eprintln!("weir-broker: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `weir-broker hash-token`: the config line holding the SHA-256 of the token read from
/// `input` (its first line, without the line ending).
fn hash_token(mut input: impl std::io::BufRead) -> ExitCode {
    let mut line = String::new();
    if let Err(e) = input.read_line(&mut line) {
        eprintln!("weir-broker hash-token: cannot read the token from stdin: {e}");
        return ExitCode::FAILURE;
    }
    let token = line.strip_suffix('\n').unwrap_or(&line);
    let token = token.strip_suffix('\r').unwrap_or(token);
    if token.is_empty() {
        eprintln!("weir-broker hash-token: the token is empty (give it on stdin, one line)");
        return ExitCode::from(2);
    }
    let masked = weir_broker::ApiKey::with_token("-", token, None).masked();
    match masked.token_sha256 {
        Some(hex) => {
            println!("token_sha256 = \"{hex}\"");
            ExitCode::SUCCESS
        }
        None => ExitCode::FAILURE,
    }
}

/// File descriptors the broker needs beyond its connections: log segments, the state store,
/// the admin endpoint's connections, listeners.
const FILES_BESIDE_CONNECTIONS: u64 = 1024;

/// Raises the soft limit on open files to the hard limit, and warns when even that cannot hold
/// `max_connections` (plus the admin endpoint's and the broker's own files): past it, `accept`
/// fails and a new client would get a reset instead of `Rejected{TooManyConnections}`.
fn raise_open_files_limit(config: &Config) {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return;
    }
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: as above.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            limit = raised;
        }
    }
    let needed = u64::from(config.limits.max_connections)
        + u64::from(config.admin.max_connections)
        + FILES_BESIDE_CONNECTIONS;
    if limit.rlim_cur < needed {
        tracing::warn!(
            open_files_limit = limit.rlim_cur,
            needed,
            max_connections = config.limits.max_connections,
            "the open-files limit is below what max_connections needs: raise it (ulimit -n, LimitNOFILE=) or lower limits.max_connections"
        );
    }
}

/// Logs to stdout at the `RUST_LOG` level (default `info`), as text or JSON lines.
fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt().with_env_filter(filter);
    match format {
        LogFormat::Text => logs
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
            .init(),
        LogFormat::Json => logs.json().flatten_event(true).init(),
    }
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let listener = TcpListener::bind(config.listen).await.map_err(|e| {
        anyhow::anyhow!(
            "cannot listen on {}: {e} (another weir-broker? choose another with --listen)",
            config.listen
        )
    })?;
    tracing::info!(addr = %listener.local_addr()?, data_dir = %config.data_dir.display(), "weir-broker starting");
    if let Some(anonymous) = &config.anonymous {
        tracing::info!(
            keys = config.keys.len(),
            allow_from = ?anonymous.allow_from,
            "anonymous clients (no token) accepted from [anonymous] allow_from"
        );
    } else if config.keys.is_empty() {
        tracing::warn!("no API keys are configured: anonymous clients are accepted from loopback addresses only");
    } else {
        tracing::info!(
            keys = config.keys.len(),
            "API keys configured: clients must present one"
        );
    }
    for key in config.keys.iter().filter(|k| k.token.is_some()) {
        tracing::warn!(key = %key.name, "this key's token is in the config in clear: replace `token` with `token_sha256` (the output of `weir-broker hash-token`)");
    }
    let tls = match &config.tls {
        Some(files) => {
            let tls = Arc::new(weir_broker::tls::TlsServer::load(files)?);
            tracing::info!(
                cert_file = %files.cert_file.display(),
                mutual = files.client_ca_file.is_some(),
                "TLS on both ports: plaintext is refused"
            );
            Some(tls)
        }
        None => None,
    };
    // Registered before the listener announces itself: a SIGHUP from then on is handled.
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::hangup()) {
        Ok(hup) => {
            tokio::spawn(reload_on_sighup(tls.clone(), hup));
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for SIGHUP; TLS files will not be reloaded")
        }
    }
    weir_broker::server::run_with_tls(listener, config, tls, shutdown_signal()).await?;
    Ok(())
}

/// Re-reads the TLS files on each SIGHUP; a bad file keeps the ones in use, and says why.
/// Without `[tls]` a SIGHUP only logs that there is nothing to reload (it never stops the
/// broker).
async fn reload_on_sighup(
    tls: Option<Arc<weir_broker::tls::TlsServer>>,
    mut hup: tokio::signal::unix::Signal,
) {
    while hup.recv().await.is_some() {
        let Some(tls) = &tls else {
            tracing::info!("SIGHUP: no [tls] configured, nothing to reload");
            continue;
        };
        match tls.reload() {
            Ok(()) => tracing::info!(
                cert_file = %tls.files().cert_file.display(),
                "SIGHUP: TLS certificate and key reloaded; new connections use them"
            ),
            Err(e) => tracing::error!(
                error = %e,
                "SIGHUP: TLS reload failed; keeping the certificate and key in use"
            ),
        }
    }
}

/// Completes on SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for SIGTERM; only Ctrl-C will stop the broker");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
    }
}
