//! Load generator and benchmarks of the account settings services.

mod generate;

use accounts_platform::KafkaConfig;
use anyhow::Context;
use clap::{Parser, Subcommand};

/// Measures the account settings services beside baselines taken in the same run.
#[derive(Parser)]
#[command(name = "accounts-bench", version)]
struct Cli {
    #[command(subcommand)]
    command: CliCommand,
}

#[derive(Subcommand)]
enum CliCommand {
    /// Write a synthetic event log of registrations and profile updates to Kafka.
    GenerateLog {
        #[command(flatten)]
        kafka: KafkaConfig,
        #[arg(long, default_value_t = 50_000)]
        accounts: u64,
        /// Events per account, the registration included.
        #[arg(long, default_value_t = 20)]
        events_per_account: u64,
        /// Accounts whose events interleave in the log.
        #[arg(long, default_value_t = 1_000)]
        group: u64,
    },
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        CliCommand::GenerateLog {
            kafka,
            accounts,
            events_per_account,
            group,
        } => {
            let runtime = tokio::runtime::Runtime::new()?;
            runtime
                .block_on(accounts_platform::kafka::create_topics(&kafka))
                .context("failed to create the topics")?;
            let shape = generate::LogShape {
                accounts,
                events_per_account,
                group,
                partitions: kafka.partitions,
            };
            let elapsed = generate::write_log(&kafka.brokers, &kafka.topic_prefix, &shape)?;
            println!(
                "wrote {} events to {} in {:.1} s ({:.0} events/s)",
                shape.events(),
                kafka.topics().events,
                elapsed.as_secs_f64(),
                shape.events() as f64 / elapsed.as_secs_f64().max(f64::EPSILON)
            );
            Ok(())
        }
    }
}
