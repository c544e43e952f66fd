//! The `edgesync` command line: `serve`, `pub`, `sub`, `work`, `cert`, `plugin`, `store`,
//! `peers`, `check-config`.
//! (The load generator is its own binary, `edgesync-bench`, in `bench/`.)
//!
//! Flags override environment variables (`EDGESYNC_*`), which override the
//! config file, which overrides the built-in defaults.

mod cert;
mod client;
mod peers;
pub mod plugin;
mod store;
mod work;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use crate::config::{Config, ListenAddr, LogFormat, Overrides};

/// edgesync: a WASM-extensible edge sync gateway.
#[derive(Debug, Parser)]
#[command(name = "edgesync", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway (no config needed: embedded store, dev TLS certificate, loopback listeners).
    Serve(ServeArgs),
    /// Publish a message (waits for the durable ack; exits non-zero without it).
    Pub(client::PubArgs),
    /// Subscribe and print messages, one per line.
    Sub(client::SubArgs),
    /// Join a queue group and run a command per message (payload on stdin; exit 0 acks).
    Work(work::WorkArgs),
    /// Make a CA, server and client certificates (for wss, QUIC and client mTLS).
    #[command(subcommand)]
    Cert(cert::CertCommand),
    /// Make, build, check and reload WebAssembly plugins.
    #[command(subcommand)]
    Plugin(plugin::PluginCommand),
    /// Check a stopped gateway's store for damage, or repair it.
    #[command(subcommand)]
    Store(store::StoreCommand),
    /// List a running gateway's replication links (admin API `GET /v1/peers`).
    Peers(peers::PeersArgs),
    /// Check a config file and print the effective configuration.
    CheckConfig {
        /// The TOML file.
        file: PathBuf,
    },
}

/// `edgesync serve` flags.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// TOML config file.
    #[arg(long, env = "EDGESYNC_CONFIG")]
    pub config: Option<PathBuf>,
    /// Data directory (store, dev certificates).
    #[arg(long, env = "EDGESYNC_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Node id for a new data directory.
    #[arg(long, env = "EDGESYNC_NODE_ID")]
    pub node_id: Option<String>,
    /// Plain WebSocket listener (host:port or "off").
    #[arg(long, env = "EDGESYNC_WS", value_parser = ListenAddr::parse)]
    pub ws: Option<ListenAddr>,
    /// WebSocket-over-TLS listener (host:port or "off").
    #[arg(long, env = "EDGESYNC_WSS", value_parser = ListenAddr::parse)]
    pub wss: Option<ListenAddr>,
    /// QUIC listener (UDP host:port or "off").
    #[arg(long, env = "EDGESYNC_QUIC", value_parser = ListenAddr::parse)]
    pub quic: Option<ListenAddr>,
    /// Admin HTTP listener (host:port or "off").
    #[arg(long, env = "EDGESYNC_ADMIN", value_parser = ListenAddr::parse)]
    pub admin: Option<ListenAddr>,
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => serve(args),
        Command::Pub(args) => client::run_pub(args),
        Command::Sub(args) => client::run_sub(args),
        Command::Work(args) => work::run(args),
        Command::Cert(c) => cert::run(c),
        Command::Plugin(c) => plugin::run(c),
        Command::Store(c) => store::run(c),
        Command::Peers(args) => peers::run(args),
        Command::CheckConfig { file } => match Config::from_file(&file)
            .map_err(|e| e.to_string())
            .and_then(|c| c.build().map_err(|e| e.to_string()))
        {
            Ok(s) => {
                print!("{}", s.redacted_toml());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(2)
            }
        },
    }
}

fn serve(args: ServeArgs) -> ExitCode {
    let mut config = match &args.config {
        Some(path) => match Config::from_file(path) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(2);
            }
        },
        None => Config::default(),
    };
    config.apply(&Overrides {
        data_dir: args.data_dir,
        node_id: args.node_id,
        ws: args.ws,
        wss: args.wss,
        quic: args.quic,
        admin: args.admin,
    });
    let settings = match config.build() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    init_logging(settings.config.log.format, &settings.config.log.level);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("edgesync")
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(async {
        let shutdown = CancellationToken::new();
        let signal_token = shutdown.clone();
        tokio::spawn(async move {
            wait_for_signal().await;
            tracing::info!("shutdown signal received; draining");
            signal_token.cancel();
        });
        match crate::server::run(settings, shutdown).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!(error = %e, "gateway failed");
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        }
    })
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        let _ = tokio::signal::ctrl_c().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

/// Install the tracing subscriber on stderr.
///
/// `text`: human-readable, coloured only when stderr is a terminal (so files and
/// journald get no escape codes). `json`: one object per line with the event's
/// fields at the top level, for log shippers. `level` is a filter with levels per
/// module (`info,edgesync::store=debug`); `RUST_LOG` overrides it.
///
/// Levels: ERROR only when an operator must act or data was lost (failed fsync,
/// corrupt record, cannot start); WARN for degraded but self-healing states;
/// INFO for lifecycle; DEBUG per connection.
pub fn init_logging(format: LogFormat, level: &str) {
    use std::io::IsTerminal as _;
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(format!("{level},fjall=warn,lsm_tree=warn")));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
        LogFormat::Text => builder
            .with_ansi(std::io::stderr().is_terminal())
            .try_init(),
    };
}
