use accounts_query::{serve_api, ServeConfig};
use anyhow::Context;
use clap::{Parser, Subcommand};

/// Account settings: the read API.
#[derive(Parser)]
#[command(name = "accounts-query", version)]
struct Cli {
    #[command(subcommand)]
    command: CliCommand,
}

#[derive(Subcommand)]
enum CliCommand {
    /// Serve the HTTP query API.
    Serve(Box<ServeConfig>),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    accounts_platform::telemetry::init_tracing();
    let CliCommand::Serve(config) = Cli::parse().command;
    let listener = tokio::net::TcpListener::bind(config.addr)
        .await
        .with_context(|| format!("failed to listen on {}", config.addr))?;
    let server = serve_api(&config, listener).await?;
    accounts_platform::telemetry::shutdown_signal().await;
    tracing::info!("shutting down");
    server.abort();
    Ok(())
}
