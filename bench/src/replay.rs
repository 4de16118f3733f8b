//! Reading a whole generated log back: the projector's rebuild into fresh read models, and
//! a decider's takeover of each partition.

use std::time::{Duration, Instant};

use accounts_command::processor::replay_partition;
use accounts_platform::KafkaConfig;
use accounts_projector::rebuild::{rebuild, ProgressOutput};
use anyhow::Context;
use sqlx::PgPool;

/// The size and duration of a read-model rebuild.
pub struct Rebuilt {
    pub events: u64,
    pub elapsed: Duration,
}

/// Rebuilds the read models of the log under `kafka`'s prefix into `pool`'s database.
pub async fn rebuild_read_models(kafka: &KafkaConfig, pool: &PgPool) -> anyhow::Result<Rebuilt> {
    let report = rebuild(kafka, pool, "read_models", ProgressOutput::Quiet)
        .await
        .context("the rebuild failed")?;
    Ok(Rebuilt {
        events: report.events + report.caught_up,
        elapsed: report.elapsed,
    })
}

/// The size and duration of decider takeovers, one partition after another.
pub struct TakenOver {
    pub events: u64,
    pub accounts: usize,
    pub elapsed: Duration,
    /// The maximum time of a single partition.
    pub slowest: Duration,
}

/// Rebuilds each partition's decider state in turn, as a worker does when it takes the
/// partition over.
///
/// NOTE: a real takeover first fences the previous owner with `init_transactions`, which
/// this leaves out, so the figures cover only the state rebuild.
pub async fn take_over_partitions(kafka: &KafkaConfig) -> anyhow::Result<TakenOver> {
    let kafka = kafka.clone();
    tokio::task::spawn_blocking(move || {
        let mut takeover = TakenOver {
            events: 0,
            accounts: 0,
            elapsed: Duration::ZERO,
            slowest: Duration::ZERO,
        };
        for partition in 0..kafka.partitions {
            let started = Instant::now();
            let replayed = replay_partition(&kafka, partition)
                .with_context(|| format!("replaying partition {partition} failed"))?;
            let elapsed = started.elapsed();
            takeover.events += replayed.events;
            takeover.accounts += replayed.accounts;
            takeover.elapsed += elapsed;
            takeover.slowest = takeover.slowest.max(elapsed);
        }
        anyhow::Ok(takeover)
    })
    .await
    .context("the takeover thread panicked")?
}
