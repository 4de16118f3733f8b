use std::net::SocketAddr;
use std::sync::Arc;

use accounts_platform::http::{health_routes, HealthApi, Readiness};
use accounts_platform::secrets::{EncryptionConfig, SecretBox};
use accounts_platform::{DatabaseConfig, KafkaConfig};
use accounts_projector::notifier::{spawn_notifier, MailConfig};
use accounts_projector::public::{spawn_publisher, PublisherControl};
use accounts_projector::{spawn_projector, ProjectorControl};
use anyhow::Context;
use clap::{Parser, Subcommand};
use utoipa::OpenApi;

/// Account settings: projects the event log into PostgreSQL read models and mails links
/// and notices.
#[derive(Parser)]
#[command(name = "accounts-projector", version)]
struct Cli {
    #[command(subcommand)]
    command: CliCommand,
}

#[derive(Subcommand)]
enum CliCommand {
    /// Project events, publish public profiles, mail links and notices, and serve health
    /// and metrics.
    Serve(Box<ServeArgs>),
    /// Apply the database migrations that are missing.
    Migrate {
        #[command(flatten)]
        database: DatabaseConfig,
    },
    /// Rebuild a projection from offset 0 into fresh tables and swap them in, while the
    /// live tables keep serving.
    Rebuild {
        #[command(flatten)]
        kafka: KafkaConfig,
        #[command(flatten)]
        database: DatabaseConfig,
        /// The projection to rebuild.
        #[arg(long, default_value = "read_models")]
        projection: String,
    },
    /// Walk the hash chains of the event log and report the first broken link.
    VerifyChain {
        #[command(flatten)]
        kafka: KafkaConfig,
        /// Check only this account's events.
        #[arg(long)]
        account: Option<uuid::Uuid>,
    },
}

#[derive(clap::Args)]
struct ServeArgs {
    #[command(flatten)]
    kafka: KafkaConfig,
    #[command(flatten)]
    database: DatabaseConfig,
    #[command(flatten)]
    mail: MailConfig,
    #[command(flatten)]
    encryption: EncryptionConfig,
    /// Address of the health and metrics endpoints.
    #[arg(long, env = "PROJECTOR_ADDR", default_value = "127.0.0.1:8082")]
    addr: SocketAddr,
}

#[derive(OpenApi)]
#[openapi(info(
    title = "accounts-projector",
    description = "Account settings: read-model projector. Only operations endpoints."
))]
struct ProjectorApi;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    accounts_platform::telemetry::init_tracing();
    match Cli::parse().command {
        CliCommand::Migrate { database } => {
            let pool = accounts_platform::db::connect(&database).await?;
            accounts_platform::db::migrate(&pool).await
        }
        CliCommand::Rebuild {
            kafka,
            database,
            projection,
        } => {
            let pool = accounts_platform::db::connect(&database).await?;
            let report = accounts_projector::rebuild::rebuild(
                &kafka,
                &pool,
                &projection,
                accounts_projector::rebuild::ProgressOutput::Auto,
            )
            .await?;
            println!(
                "rebuilt {projection}: {} events in {:.1} s ({:.0} events/s), {} more caught up during the swap",
                report.events,
                report.elapsed.as_secs_f64(),
                report.events_per_second(),
                report.caught_up
            );
            Ok(())
        }
        CliCommand::VerifyChain { kafka, account } => {
            let report = tokio::task::spawn_blocking(move || {
                accounts_projector::chain::verify_chain(&kafka, account)
            })
            .await
            .context("the verification task failed")??;
            match report.broken {
                None => {
                    println!(
                        "intact: {} events of {} aggregates checked",
                        report.events, report.aggregates
                    );
                    Ok(())
                }
                Some(broken) => {
                    println!("broken link at {broken}");
                    std::process::exit(1);
                }
            }
        }
        CliCommand::Serve(args) => {
            let ServeArgs {
                kafka,
                database,
                mail,
                encryption,
                addr,
            } = *args;
            let secrets = SecretBox::from_config(&encryption)?;
            accounts_platform::kafka::verify_partitions(&kafka).await?;
            let pool = accounts_platform::db::connect(&database).await?;
            let mut openapi = ProjectorApi::openapi();
            openapi.merge(HealthApi::openapi());
            let app = health_routes(Readiness::new(pool.clone(), &kafka)?, openapi);
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("failed to listen on {addr}"))?;
            tracing::info!(address = %addr, "projector health endpoints listening");
            let server = tokio::spawn(async move { axum::serve(listener, app).await });

            let notifier = spawn_notifier(kafka.clone(), pool.clone(), mail, secrets).await?;
            let publisher_control = Arc::new(PublisherControl::default());
            let publisher = spawn_publisher(kafka.clone(), publisher_control.clone())
                .context("failed to start the public profile publisher")?;
            let projector =
                spawn_projector(kafka, pool, Arc::new(ProjectorControl::default())).await?;
            tokio::select! {
                result = projector => {
                    server.abort();
                    result.context("projector task failed")?.context("projector stopped")
                }
                result = notifier => {
                    server.abort();
                    result.context("notifier task failed")?.context("notifier stopped")
                }
                () = accounts_platform::telemetry::shutdown_signal() => {
                    tracing::info!("shutting down");
                    server.abort();
                    publisher_control.stop();
                    if publisher.join().is_err() {
                        tracing::error!("the public profile publisher panicked");
                    }
                    Ok(())
                }
            }
        }
    }
}
