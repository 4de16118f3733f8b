//! The read side's writer: projects `accounts.events.v1` into PostgreSQL read models.
//!
//! Guarantees:
//! - It reads with read_committed, so events of aborted transactions never reach a table.
//! - Each batch's rows and the next offset of every partition in the batch are written in
//!   one PostgreSQL transaction, and on start the projector seeks to those stored offsets,
//!   not to offsets committed in Kafka. A crash therefore replays a batch, never skips one.
//! - Every write is idempotent and guarded by the aggregate's sequence number, so a
//!   replayed event, or an event older than a row, leaves the row as it is.
//! - The transaction sends `NOTIFY projection_progress` with the new offsets, which the
//!   command and query services use to respond once their reads include a write.

pub mod chain;
pub mod notifier;
pub mod project;
pub mod public;
pub mod rebuild;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use accounts_events::envelope::Decoded;
use accounts_events::RecordedEvent;
use accounts_platform::kafka::{client_config, fetch_watermarks};
use accounts_platform::progress::{ProgressNotice, CHANNEL, READ_MODELS};
use accounts_platform::KafkaConfig;
use anyhow::{anyhow, Context};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use sqlx::PgPool;
use tokio::task::JoinHandle;

/// Most events written in one PostgreSQL transaction.
const MAX_BATCH: usize = 1000;
/// How long a batch waits for more events once it has one.
const BATCH_WINDOW: Duration = Duration::from_millis(1);

/// Stops the projector, or makes it fail at a chosen point to test recovery.
#[derive(Debug, Default)]
pub struct ProjectorControl {
    crash_inside_next_batch: AtomicBool,
    batches_committed: AtomicU64,
    events_projected: AtomicU64,
}

impl ProjectorControl {
    /// Makes the projector stop dead halfway through writing its next batch, before the
    /// transaction commits.
    pub fn crash_inside_next_batch(&self) {
        self.crash_inside_next_batch.store(true, Ordering::SeqCst);
    }

    /// Returns how many batches were committed.
    pub fn batches_committed(&self) -> u64 {
        self.batches_committed.load(Ordering::SeqCst)
    }

    /// Returns how many events were committed to the read models.
    pub fn events_projected(&self) -> u64 {
        self.events_projected.load(Ordering::SeqCst)
    }
}

#[derive(Debug, thiserror::Error)]
#[error("projector crashed on request")]
pub struct Crashed;

/// Starts projecting on a task. The task ends with an error when the projector fails.
pub async fn spawn_projector(
    kafka: KafkaConfig,
    pool: PgPool,
    control: Arc<ProjectorControl>,
) -> anyhow::Result<JoinHandle<anyhow::Result<()>>> {
    let consumer =
        assign_from_stored_offsets(&kafka, &pool, READ_MODELS, Offset::Beginning).await?;
    Ok(tokio::spawn(async move {
        run(consumer, pool, kafka, control).await
    }))
}

/// Creates a consumer assigned to every partition of the event topic at the offsets stored
/// in PostgreSQL for `projection`, or at `unstored` for partitions without one.
pub(crate) async fn assign_from_stored_offsets(
    kafka: &KafkaConfig,
    pool: &PgPool,
    projection: &str,
    unstored: Offset,
) -> anyhow::Result<StreamConsumer> {
    let topic = kafka.topics().events;
    let consumer: StreamConsumer = client_config(kafka)
        .set(
            "group.id",
            format!("{}accounts-projector-{projection}", kafka.topic_prefix),
        )
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .set("fetch.wait.max.ms", "5")
        // A stored offset outside the log means the database belongs to another log; fail
        // instead of silently skipping to the end.
        .set("auto.offset.reset", "error")
        .create()
        .context("failed to create the event consumer")?;
    check_source(&consumer, pool, &topic, projection).await?;
    let stored: HashMap<i32, i64> = sqlx::query_as::<_, (i32, i64)>(
        "SELECT partition, next_offset FROM projection_offsets WHERE projection = $1 AND topic = $2",
    )
    .bind(projection)
    .bind(&topic)
    .fetch_all(pool)
    .await
    .context("failed to load stored projection offsets")?
    .into_iter()
    .collect();

    let stored = if stored.is_empty() && unstored == Offset::End {
        start_at_end(&consumer, pool, projection, &topic, kafka.partitions).await?
    } else {
        stored
    };
    let mut assignment = TopicPartitionList::new();
    for partition in 0..kafka.partitions {
        let offset = stored
            .get(&partition)
            .map_or(unstored, |next| Offset::Offset(*next));
        assignment.add_partition_offset(&topic, partition, offset)?;
    }
    consumer
        .assign(&assignment)
        .context("failed to assign the event partitions")?;
    tracing::info!(
        topic,
        projection,
        stored = stored.len(),
        "assigned from stored offsets"
    );
    Ok(consumer)
}

/// Stores the current end of every partition as the progress of `projection`, so that a
/// restart resumes from there rather than from wherever the log ends by then.
async fn start_at_end(
    consumer: &StreamConsumer,
    pool: &PgPool,
    projection: &str,
    topic: &str,
    partitions: i32,
) -> anyhow::Result<HashMap<i32, i64>> {
    let mut ends = HashMap::new();
    for partition in 0..partitions {
        let (_, high) = fetch_watermarks(consumer, topic, partition, Duration::from_secs(30))
            .await
            .context("failed to read the end of the event log")?;
        ends.insert(partition, high);
    }
    let mut transaction = pool.begin().await?;
    for (partition, next_offset) in &ends {
        sqlx::query(
            "INSERT INTO projection_offsets (projection, topic, partition, next_offset, updated_at) \
             VALUES ($1, $2, $3, $4, now()) ON CONFLICT (projection, topic, partition) DO NOTHING",
        )
        .bind(projection)
        .bind(topic)
        .bind(partition)
        .bind(next_offset)
        .execute(&mut *transaction)
        .await
        .context("failed to store the starting point")?;
    }
    transaction.commit().await?;
    tracing::info!(
        projection,
        "no stored progress; starting at the end of the event log"
    );
    Ok(ends)
}

/// Records the Kafka cluster the read models are projected from, and fails when the
/// database already contains read models of another cluster's log.
async fn check_source(
    consumer: &StreamConsumer,
    pool: &PgPool,
    topic: &str,
    projection: &str,
) -> anyhow::Result<()> {
    let cluster_id = consumer
        .client()
        .fetch_cluster_id(std::time::Duration::from_secs(30))
        .context("failed to read the Kafka cluster id")?;
    let stored: Option<(String,)> = sqlx::query_as(
        "SELECT cluster_id FROM projection_sources WHERE projection = $1 AND topic = $2",
    )
    .bind(projection)
    .bind(topic)
    .fetch_optional(pool)
    .await
    .context("failed to load the projection source")?;
    match stored {
        Some((stored,)) if stored != cluster_id => anyhow::bail!(
            "the read models in this database were projected from Kafka cluster {stored}, but the brokers \
             are cluster {cluster_id}; point DATABASE_URL at an empty database or drop this one"
        ),
        Some(_) => Ok(()),
        None => {
            let (offsets,): (i64,) = sqlx::query_as("SELECT count(*) FROM projection_offsets WHERE projection = $1 AND topic = $2")
                .bind(projection)
                .bind(topic)
                .fetch_one(pool)
                .await
                .context("failed to count stored projection offsets")?;
            if offsets > 0 {
                anyhow::bail!(
                    "the read models in this database come from a Kafka log whose cluster was not recorded; \
                     point DATABASE_URL at an empty database or drop this one"
                );
            }
            sqlx::query("INSERT INTO projection_sources (projection, topic, cluster_id) VALUES ($1, $2, $3)")
                .bind(projection)
                .bind(topic)
                .bind(&cluster_id)
                .execute(pool)
                .await
                .context("failed to store the projection source")?;
            Ok(())
        }
    }
}

async fn run(
    consumer: StreamConsumer,
    pool: PgPool,
    kafka: KafkaConfig,
    control: Arc<ProjectorControl>,
) -> anyhow::Result<()> {
    let topic = kafka.topics().events;
    let mut unknown = 0_u64;
    loop {
        let mut batch: Vec<(i32, i64, Option<RecordedEvent>)> = Vec::new();
        let first = consumer
            .recv()
            .await
            .context("failed to read the event topic")?;
        batch.push(decode(
            first.partition(),
            first.offset(),
            first.payload(),
            &mut unknown,
        ));
        drop(first);
        while batch.len() < MAX_BATCH {
            match tokio::time::timeout(BATCH_WINDOW, consumer.recv()).await {
                Ok(Ok(message)) => batch.push(decode(
                    message.partition(),
                    message.offset(),
                    message.payload(),
                    &mut unknown,
                )),
                Ok(Err(error)) => {
                    return Err(anyhow!(error).context("failed to read the event topic"))
                }
                Err(_) => break,
            }
        }
        write_batch(&pool, &topic, &batch, &control).await?;
    }
}

/// Decodes a record; unknown or undecodable events become `None` and are skipped, but
/// their offsets still advance.
pub(crate) fn decode(
    partition: i32,
    offset: i64,
    payload: Option<&[u8]>,
    unknown: &mut u64,
) -> (i32, i64, Option<RecordedEvent>) {
    let event = match RecordedEvent::decode(payload.unwrap_or_default()) {
        Ok(Decoded::Event(event)) => Some(*event),
        Ok(Decoded::Unknown { event_type, .. }) => {
            *unknown += 1;
            metrics::counter!("projector_unknown_events_total").increment(1);
            if unknown.is_power_of_two() {
                tracing::info!(
                    event_type,
                    total = *unknown,
                    "skipped events of unknown type"
                );
            }
            None
        }
        Err(error) => {
            metrics::counter!("projector_undecodable_events_total").increment(1);
            tracing::error!(%error, partition, offset, "skipped undecodable event");
            None
        }
    };
    (partition, offset, event)
}

/// Writes a batch's rows and next offsets in one transaction.
#[tracing::instrument(skip_all, fields(events = batch.len()))]
async fn write_batch(
    pool: &PgPool,
    topic: &str,
    batch: &[(i32, i64, Option<RecordedEvent>)],
    control: &ProjectorControl,
) -> anyhow::Result<()> {
    let mut transaction = pool
        .begin()
        .await
        .context("failed to begin projection transaction")?;
    let mut next_offsets: HashMap<i32, i64> = HashMap::new();
    for (partition, offset, _) in batch {
        next_offsets.insert(*partition, offset + 1);
    }
    let events: Vec<project::Positioned<'_>> = batch
        .iter()
        .filter_map(|(partition, offset, event)| {
            event.as_ref().map(|event| (event, *partition, *offset))
        })
        .collect();
    if control
        .crash_inside_next_batch
        .swap(false, Ordering::SeqCst)
    {
        project::apply_batch(&mut transaction, &events[..events.len() / 2]).await?;
        // Dropping the transaction rolls it back, as a dead process's would be.
        return Err(anyhow!(Crashed));
    }
    project::apply_batch(&mut transaction, &events).await?;
    project::record_audit(&mut transaction, &events)
        .await
        .context("failed to record the batch for audit")?;
    for (partition, next_offset) in &next_offsets {
        sqlx::query(
            "INSERT INTO projection_offsets (projection, topic, partition, next_offset, updated_at) \
             VALUES ($1, $2, $3, $4, now()) \
             ON CONFLICT (projection, topic, partition) DO UPDATE \
             SET next_offset = GREATEST(projection_offsets.next_offset, EXCLUDED.next_offset), updated_at = now()",
        )
        .bind(READ_MODELS)
        .bind(topic)
        .bind(partition)
        .bind(next_offset)
        .execute(&mut *transaction)
        .await
        .context("failed to store projection offsets")?;
        let notice = serde_json::to_string(&ProgressNotice {
            topic: topic.to_owned(),
            partition: *partition,
            next_offset: *next_offset,
        })?;
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(CHANNEL)
            .bind(notice)
            .execute(&mut *transaction)
            .await
            .context("failed to notify projection progress")?;
    }
    transaction
        .commit()
        .await
        .context("failed to commit projection batch")?;
    control.batches_committed.fetch_add(1, Ordering::SeqCst);
    control
        .events_projected
        .fetch_add(batch.len() as u64, Ordering::SeqCst);
    metrics::counter!("projector_events_total").increment(batch.len() as u64);
    Ok(())
}
