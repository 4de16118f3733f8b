use accounts_command::roles::{change_role, Role, RoleChange};
use accounts_command::{serve_api, spawn_deciders, ServeConfig};
use accounts_platform::KafkaConfig;
use anyhow::Context;
use clap::{Parser, Subcommand};

/// Account settings: the command API and decider workers.
#[derive(Parser)]
#[command(name = "accounts-command", version)]
struct Cli {
    #[command(subcommand)]
    command: CliCommand,
}

#[derive(Subcommand)]
enum CliCommand {
    /// Serve the HTTP command API and run decider workers.
    Serve(Box<ServeConfig>),
    /// Create the Kafka topics that are missing.
    CreateTopics(KafkaConfig),
    /// Give an account a role, recorded as an event. Needs a running `serve`.
    GrantRole(RoleArgs),
    /// Take a role away from an account, recorded as an event. Needs a running `serve`.
    RevokeRole(RoleArgs),
}

#[derive(clap::Args)]
struct RoleArgs {
    #[command(flatten)]
    kafka: KafkaConfig,
    /// The account id.
    #[arg(long)]
    account: uuid::Uuid,
    #[arg(long, value_enum)]
    role: Role,
}

/// Prints what changed, with the position to send as `X-Min-Position` to read after it.
fn report(summary: &str, change: &RoleChange) {
    match &change.position {
        Some(position) => println!(
            "{summary} (account version {}, log position {position})",
            change.version
        ),
        None => println!("{summary} (account version {})", change.version),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    accounts_platform::telemetry::init_tracing();
    match Cli::parse().command {
        CliCommand::CreateTopics(kafka) => accounts_platform::kafka::create_topics(&kafka).await,
        CliCommand::GrantRole(args) => {
            let change = change_role(&args.kafka, args.account, args.role, true).await?;
            report(
                &format!("granted {} to {}", args.role.as_str(), args.account),
                &change,
            );
            Ok(())
        }
        CliCommand::RevokeRole(args) => {
            let change = change_role(&args.kafka, args.account, args.role, false).await?;
            report(
                &format!("revoked {} from {}", args.role.as_str(), args.account),
                &change,
            );
            Ok(())
        }
        CliCommand::Serve(config) => {
            accounts_platform::kafka::verify_partitions(&config.kafka).await?;
            let deciders = spawn_deciders(&config.kafka, config.decider_workers)?;
            let listener = tokio::net::TcpListener::bind(config.addr)
                .await
                .with_context(|| format!("failed to listen on {}", config.addr))?;
            let server = serve_api(&config, listener).await?;
            accounts_platform::telemetry::shutdown_signal().await;
            tracing::info!("shutting down");
            server.abort();
            for decider in &deciders {
                decider.control.stop();
            }
            for decider in deciders {
                if decider.thread.join().is_err() {
                    tracing::error!("a decider thread panicked");
                }
            }
            Ok(())
        }
    }
}
