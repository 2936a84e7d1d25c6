//! The `cairn` binary: `server` runs one node, `dev` a local cluster, `bench` a load
//! test against a running cluster, and the remaining subcommands are a small client.

use std::path::PathBuf;

use anyhow::Context as _;
use cairn_server::dev::DevArgs;
use cairn_server::{Node, Settings};
use clap::{Parser, Subcommand};

mod cli;

use cli::{backup as backup_cli, bench, certs as certs_cli, client, token as token_cli};

#[derive(Parser)]
#[command(
    name = "cairn",
    version,
    about = "A sharded, replicated key-value store"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run one node of a cluster.
    Server {
        /// TOML file of settings (keys are the flag names with `_`).
        #[arg(long, env = "CAIRN_CONFIG")]
        config: Option<PathBuf>,
        #[command(flatten)]
        settings: Box<Settings>,
    },
    /// Run a local three-node cluster in this process.
    Dev(DevArgs),
    /// Measure write and read throughput against a running cluster.
    Bench(bench::BenchArgs),
    /// Take, list and verify consistent backups.
    #[command(subcommand)]
    Backup(backup_cli::BackupCommand),
    /// Make the certificates of a cluster that uses TLS.
    #[command(subcommand)]
    Certs(certs_cli::CertsCommand),
    /// Make the root token; create, list and revoke clients' tokens.
    #[command(subcommand)]
    Token(token_cli::TokenCommand),
    /// Build a new cluster node's data directory from a backup chain (offline).
    Restore(backup_cli::RestoreArgs),
    #[command(flatten)]
    Client(client::ClientCommand),
}

/// A node is never half-alive: a panic on any thread (a replica's, the transport's, a
/// request handler's) is logged and then ends the whole process, so that a supervisor
/// restarts it with its data, instead of it serving HTTP with dead replicas behind.
fn stop_whole_on_panic() {
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        report(info);
        let thread = std::thread::current();
        let thread = thread.name().unwrap_or("unnamed");
        tracing::error!(thread, panic = %info, "a thread panicked; stopping the process");
        eprintln!("cairn: thread `{thread}` panicked; stopping the whole process (fail-stop)");
        std::process::abort();
    }));
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,raft=warn")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    // Test builds arm their crash points from FAILPOINTS; other builds have none, and
    // say so rather than run as if armed.
    if std::env::var_os("FAILPOINTS").is_some() && !cairn_store::CRASH_POINTS_BUILT {
        anyhow::bail!(
            "FAILPOINTS is set but this build has no crash points; \
             build it with `cargo build -p cairn-server --features failpoints` (test builds have them)"
        );
    }
    let _crash_points = cairn_store::arm_crash_points();
    stop_whole_on_panic();
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(async move {
        match cli.command {
            Command::Server { config, settings } => {
                let settings = match config {
                    Some(path) => settings.or(Settings::from_file(&path)?),
                    None => *settings,
                };
                let node = Node::start(settings.resolve()?).await?;
                let stop = shutdown_signal();
                tokio::pin!(stop);
                let mut hangups = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
                    .context("listening for SIGHUP")?;
                loop {
                    tokio::select! {
                        _ = &mut stop => break,
                        _ = hangups.recv() => match node.reload_tls() {
                            Ok(true) => tracing::info!("SIGHUP: TLS certificates reloaded"),
                            Ok(false) => tracing::info!("SIGHUP: TLS is off; nothing to reload"),
                            Err(e) => tracing::error!(error = %e, "SIGHUP: TLS certificates not reloaded; the old ones stay in use"),
                        },
                    }
                }
                node.shutdown().await;
                Ok(())
            }
            Command::Dev(args) => Ok(cairn_server::dev::run(args, shutdown_signal()).await?),
            Command::Bench(args) => bench::run(args).await,
            Command::Backup(command) => backup_cli::run_backup(command).await,
            Command::Restore(args) => backup_cli::run_restore(args).await,
            Command::Token(command) => token_cli::run(command).await,
            Command::Certs(command) => certs_cli::run(command),
            Command::Client(command) => client::run(command).await,
        }
    })
}

/// Resolves on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
    tracing::info!("shutdown requested");
}
