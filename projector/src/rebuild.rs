//! Rebuilding the read models from offset 0 without downtime.
//!
//! 1. Empty copies of the read-model tables are created in a new schema `rebuild_<time>`.
//! 2. The whole event log is projected into them through a connection whose `search_path`
//!    is that schema, with the [`project::apply_batch`] that the live projector runs. The
//!    audit history is loaded with `COPY` ([`project::copy_audit`]) and the batches commit
//!    without waiting for the WAL flush. The live tables keep serving and the live
//!    projector keeps writing meanwhile.
//! 3. One transaction locks the live tables and projects the events that the live projector
//!    wrote after the rebuild's position. It then moves the live tables to a schema
//!    `replaced_<time>`, dropped afterwards, and the rebuilt ones to `public`. Queries wait
//!    for that transaction instead of failing.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::time::{Duration, Instant};

use accounts_events::RecordedEvent;
use accounts_platform::kafka::{client_config, fetch_watermarks, EndOfPartitionIsExpected};
use accounts_platform::progress::READ_MODELS;
use accounts_platform::KafkaConfig;
use anyhow::{anyhow, bail, Context};
use indicatif::{ProgressBar, ProgressStyle};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use sqlx::postgres::PgPoolOptions;
use sqlx::{PgPool, Postgres, Transaction};

use crate::project;

/// The tables the projector writes, rebuilt and swapped together.
pub const TABLES: &[&str] = &[
    "accounts",
    "credentials",
    "sessions",
    "workspaces",
    "workspace_members",
    "agents",
    "audit_events",
    "projection_offsets",
];

/// Maximum events written in one transaction of the rebuild.
const BATCH: usize = 5000;
/// Connections that write the rebuilt tables at once.
const WRITERS: usize = 4;
const KAFKA_TIMEOUT: Duration = Duration::from_secs(30);

/// The progress output of a rebuild.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProgressOutput {
    /// A progress bar on a terminal, plain lines every few seconds otherwise.
    Auto,
    /// Nothing; for tests.
    Quiet,
}

/// The outcome of a rebuild.
#[derive(Clone, Debug)]
pub struct RebuildReport {
    /// Events projected into the new tables before the swap.
    pub events: u64,
    /// Events projected inside the swap transaction.
    pub caught_up: u64,
    pub elapsed: Duration,
}

impl RebuildReport {
    pub fn events_per_second(&self) -> f64 {
        self.events as f64 / self.elapsed.as_secs_f64().max(f64::EPSILON)
    }
}

/// Rebuilds `projection` from the start of the event log and swaps it in.
pub async fn rebuild(
    kafka: &KafkaConfig,
    pool: &PgPool,
    projection: &str,
    output: ProgressOutput,
) -> anyhow::Result<RebuildReport> {
    if projection != READ_MODELS {
        bail!("unknown projection {projection:?}; the projection is {READ_MODELS:?}");
    }
    let started = Instant::now();
    let stamp = chrono::Utc::now().format("%Y%m%d%H%M%S%3f");
    let schema = format!("rebuild_{stamp}");
    let replaced = format!("replaced_{stamp}");
    create_tables(pool, &schema).await?;

    let result = project_all(kafka, pool, &schema, output, started).await;
    let events = match result {
        Ok(events) => events,
        Err(error) => {
            drop_schema(pool, &schema).await;
            return Err(error);
        }
    };
    let caught_up = match swap(kafka, pool, &schema, &replaced).await {
        Ok(caught_up) => caught_up,
        Err(error) => {
            drop_schema(pool, &schema).await;
            return Err(error);
        }
    };
    drop_schema(pool, &replaced).await;
    drop_schema(pool, &schema).await;
    Ok(RebuildReport {
        events,
        caught_up,
        elapsed: started.elapsed(),
    })
}

async fn create_tables(pool: &PgPool, schema: &str) -> anyhow::Result<()> {
    let mut transaction = pool.begin().await?;
    sqlx::query(&format!("CREATE SCHEMA \"{schema}\""))
        .execute(&mut *transaction)
        .await
        .with_context(|| format!("failed to create schema {schema}"))?;
    for table in TABLES {
        sqlx::query(&format!(
            "CREATE TABLE \"{schema}\".{table} (LIKE public.{table} INCLUDING ALL)"
        ))
        .execute(&mut *transaction)
        .await
        .with_context(|| format!("failed to create {schema}.{table}"))?;
    }
    transaction.commit().await?;
    Ok(())
}

async fn drop_schema(pool: &PgPool, schema: &str) {
    if let Err(error) = sqlx::query(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"))
        .execute(pool)
        .await
    {
        tracing::warn!(%error, schema, "failed to drop schema");
    }
}

/// Returns a consumer of the event topic assigned at `offsets`, reporting the end of each
/// partition.
fn consumer_at(
    kafka: &KafkaConfig,
    offsets: &HashMap<i32, Offset>,
) -> anyhow::Result<StreamConsumer<EndOfPartitionIsExpected>> {
    let topic = kafka.topics().events;
    let consumer: StreamConsumer<EndOfPartitionIsExpected> = client_config(kafka)
        .set(
            "group.id",
            format!("{}accounts-rebuild", kafka.topic_prefix),
        )
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .set("enable.partition.eof", "true")
        .set("fetch.wait.max.ms", "10")
        .create_with_context(EndOfPartitionIsExpected)
        .context("failed to create the rebuild consumer")?;
    let mut assignment = TopicPartitionList::new();
    for (partition, offset) in offsets {
        assignment.add_partition_offset(&topic, *partition, *offset)?;
    }
    consumer
        .assign(&assignment)
        .context("failed to assign the event partitions")?;
    Ok(consumer)
}

/// Projects the whole log into the tables of `schema`. Returns the number of events.
///
/// Partitions are spread over [`WRITERS`] connections, each writing its partitions in log
/// order. An aggregate never spans partitions, so the writers do not depend on each other.
async fn project_all(
    kafka: &KafkaConfig,
    pool: &PgPool,
    schema: &str,
    output: ProgressOutput,
    started: Instant,
) -> anyhow::Result<u64> {
    let topic = kafka.topics().events;
    let offsets: HashMap<i32, Offset> = (0..kafka.partitions)
        .map(|partition| (partition, Offset::Beginning))
        .collect();
    let consumer = consumer_at(kafka, &offsets)?;
    let mut total = 0_u64;
    for partition in 0..kafka.partitions {
        let (low, high) = fetch_watermarks(&consumer, &topic, partition, KAFKA_TIMEOUT)
            .await
            .context("failed to read the size of the event log")?;
        total += u64::try_from(high - low).unwrap_or(0);
    }
    let progress = Progress::new(output, total);

    let options = (*pool.connect_options())
        .clone()
        .options([("search_path", schema)]);
    let mut senders = Vec::with_capacity(WRITERS);
    let mut writers = Vec::with_capacity(WRITERS);
    for _ in 0..WRITERS {
        let target = PgPoolOptions::new()
            .max_connections(1)
            .connect_with(options.clone())
            .await
            .context("failed to connect for the rebuild")?;
        let (sender, mut receiver) = tokio::sync::mpsc::channel::<Records>(2);
        let topic = topic.clone();
        writers.push(tokio::spawn(async move {
            let mut unknown = 0;
            while let Some(records) = receiver.recv().await {
                // Decoding here rather than in the reading loop spreads it over the
                // runtime's worker threads.
                let batch: Batch = records
                    .iter()
                    .map(|(partition, offset, payload)| {
                        crate::decode(*partition, *offset, payload.as_deref(), &mut unknown)
                    })
                    .collect();
                drop(records);
                let mut transaction = target.begin().await?;
                // The swap transaction is the commit point of a rebuild, and a crashed
                // rebuild starts over, so these commits need not wait for the WAL flush.
                sqlx::query("SET LOCAL synchronous_commit = off")
                    .execute(&mut *transaction)
                    .await?;
                write(&mut transaction, &topic, &batch).await?;
                transaction.commit().await?;
            }
            target.close().await;
            anyhow::Ok(())
        }));
        senders.push(sender);
    }

    let writer_of = |partition: i32| usize::try_from(partition).unwrap_or(0) % WRITERS;
    let mut pending: Vec<Records> = (0..WRITERS).map(|_| Vec::with_capacity(BATCH)).collect();
    let mut ended: HashMap<i32, bool> = (0..kafka.partitions).map(|p| (p, false)).collect();
    let mut projected = 0_u64;
    let mut failure = None;
    while failure.is_none() && ended.values().any(|ended| !ended) {
        let message = match tokio::time::timeout(Duration::from_secs(5), consumer.recv()).await {
            Err(_) => continue,
            Ok(Err(KafkaError::PartitionEOF(partition))) => {
                ended.insert(partition, true);
                continue;
            }
            Ok(Err(error)) => {
                failure = Some(anyhow!(error).context("failed to read events"));
                continue;
            }
            Ok(Ok(message)) => message,
        };
        let partition = message.partition();
        ended.insert(partition, false);
        let writer = writer_of(partition);
        pending[writer].push((
            partition,
            message.offset(),
            message.payload().map(<[u8]>::to_vec),
        ));
        if pending[writer].len() >= BATCH {
            let batch = std::mem::replace(&mut pending[writer], Vec::with_capacity(BATCH));
            projected += batch.len() as u64;
            progress.advance(batch.len() as u64, started);
            if senders[writer].send(batch).await.is_err() {
                failure = Some(anyhow!("a rebuild writer stopped"));
            }
        }
    }
    for (writer, batch) in pending.into_iter().enumerate() {
        if !batch.is_empty() && failure.is_none() {
            projected += batch.len() as u64;
            if senders[writer].send(batch).await.is_err() {
                failure = Some(anyhow!("a rebuild writer stopped"));
            }
        }
    }
    drop(senders);
    for writer in writers {
        writer.await.context("a rebuild writer panicked")??;
    }
    if let Some(failure) = failure {
        return Err(failure);
    }
    progress.finish(projected, started);
    Ok(projected)
}

type Batch = Vec<(i32, i64, Option<RecordedEvent>)>;
/// Records as read from Kafka, not decoded yet: partition, offset and payload.
type Records = Vec<(i32, i64, Option<Vec<u8>>)>;

/// Applies a batch and stores the offsets after it, in the tables of the transaction's
/// `search_path`.
async fn write(
    transaction: &mut Transaction<'_, Postgres>,
    topic: &str,
    batch: &[(i32, i64, Option<RecordedEvent>)],
) -> anyhow::Result<()> {
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
    project::apply_batch(transaction, &events).await?;
    project::copy_audit(transaction, &events)
        .await
        .context("failed to record the batch for audit")?;
    for (partition, next_offset) in next_offsets {
        sqlx::query(
            "INSERT INTO projection_offsets (projection, topic, partition, next_offset, updated_at) \
             VALUES ($1, $2, $3, $4, now()) ON CONFLICT (projection, topic, partition) DO UPDATE \
             SET next_offset = GREATEST(projection_offsets.next_offset, EXCLUDED.next_offset), updated_at = now()",
        )
        .bind(READ_MODELS)
        .bind(topic)
        .bind(partition)
        .bind(next_offset)
        .execute(&mut **transaction)
        .await
        .context("failed to store rebuild offsets")?;
    }
    Ok(())
}

/// Catches the new tables up with the live ones and swaps them, in one transaction.
/// Returns the number of events projected inside it.
async fn swap(
    kafka: &KafkaConfig,
    pool: &PgPool,
    schema: &str,
    replaced: &str,
) -> anyhow::Result<u64> {
    let topic = kafka.topics().events;
    let mut transaction = pool.begin().await?;
    let live_tables: Vec<String> = TABLES
        .iter()
        .map(|table| format!("public.{table}"))
        .collect();
    sqlx::query(&format!(
        "LOCK TABLE {} IN ACCESS EXCLUSIVE MODE",
        live_tables.join(", ")
    ))
    .execute(&mut *transaction)
    .await
    .context("failed to lock the live tables")?;
    sqlx::query(&format!("SET LOCAL search_path TO \"{schema}\""))
        .execute(&mut *transaction)
        .await?;

    let offsets_of = |qualified: String| {
        format!(
            "SELECT partition, next_offset FROM {qualified} WHERE projection = $1 AND topic = $2"
        )
    };
    let live: HashMap<i32, i64> =
        sqlx::query_as::<_, (i32, i64)>(&offsets_of("public.projection_offsets".to_owned()))
            .bind(READ_MODELS)
            .bind(&topic)
            .fetch_all(&mut *transaction)
            .await?
            .into_iter()
            .collect();
    let rebuilt: HashMap<i32, i64> =
        sqlx::query_as::<_, (i32, i64)>(&offsets_of(format!("\"{schema}\".projection_offsets")))
            .bind(READ_MODELS)
            .bind(&topic)
            .fetch_all(&mut *transaction)
            .await?
            .into_iter()
            .collect();
    let behind: HashMap<i32, (i64, i64)> = live
        .iter()
        .filter_map(|(partition, live_next)| {
            let rebuilt_next = rebuilt.get(partition).copied().unwrap_or(0);
            (rebuilt_next < *live_next).then_some((*partition, (rebuilt_next, *live_next)))
        })
        .collect();

    let mut caught_up = 0_u64;
    if !behind.is_empty() {
        let starts = behind
            .iter()
            .map(|(partition, (from, _))| (*partition, Offset::Offset(*from)))
            .collect();
        let consumer = consumer_at(kafka, &starts)?;
        let mut open: HashMap<i32, i64> = behind
            .iter()
            .map(|(partition, (_, until))| (*partition, *until))
            .collect();
        let mut batch = Vec::new();
        while !open.is_empty() {
            let message = tokio::time::timeout(KAFKA_TIMEOUT, consumer.recv())
                .await
                .map_err(|_| anyhow!("catching up with the live projector timed out"))?;
            match message {
                Ok(message) => {
                    let (partition, offset) = (message.partition(), message.offset());
                    let Some(until) = open.get(&partition).copied() else {
                        continue;
                    };
                    if offset < until {
                        batch.push(crate::decode(partition, offset, message.payload(), &mut 0));
                    }
                    if offset + 1 >= until {
                        open.remove(&partition);
                    }
                }
                // The live projector's offset may lie past the last event, on a
                // transaction marker that a read_committed reader never receives.
                Err(KafkaError::PartitionEOF(partition)) => {
                    open.remove(&partition);
                }
                Err(error) => return Err(anyhow!(error).context("failed to read events")),
            }
        }
        caught_up = batch.len() as u64;
        write(&mut transaction, &topic, &batch).await?;
    }

    // Other projections, such as the notifier, keep their progress.
    sqlx::query(&format!(
        "INSERT INTO \"{schema}\".projection_offsets \
         SELECT * FROM public.projection_offsets WHERE projection <> $1 \
         ON CONFLICT (projection, topic, partition) DO NOTHING"
    ))
    .bind(READ_MODELS)
    .execute(&mut *transaction)
    .await
    .context("failed to keep the progress of other projections")?;
    sqlx::query(&format!("CREATE SCHEMA \"{replaced}\""))
        .execute(&mut *transaction)
        .await?;
    for table in TABLES {
        sqlx::query(&format!(
            "ALTER TABLE public.{table} SET SCHEMA \"{replaced}\""
        ))
        .execute(&mut *transaction)
        .await
        .with_context(|| format!("failed to move out public.{table}"))?;
        sqlx::query(&format!(
            "ALTER TABLE \"{schema}\".{table} SET SCHEMA public"
        ))
        .execute(&mut *transaction)
        .await
        .with_context(|| format!("failed to move in {schema}.{table}"))?;
    }
    transaction
        .commit()
        .await
        .context("failed to commit the swap")?;
    Ok(caught_up)
}

/// Progress of the first phase: a bar on a terminal, plain lines otherwise.
struct Progress {
    bar: Option<ProgressBar>,
    plain: bool,
    total: u64,
    done: std::cell::Cell<u64>,
    last_line: std::cell::Cell<Instant>,
}

impl Progress {
    fn new(output: ProgressOutput, total: u64) -> Self {
        let terminal = std::io::stderr().is_terminal();
        let bar = (output == ProgressOutput::Auto && terminal).then(|| {
            let bar = ProgressBar::new(total);
            if let Ok(style) = ProgressStyle::with_template(
                "{bar:40} {human_pos}/{human_len} events, {per_sec}, {eta} left",
            ) {
                bar.set_style(style);
            }
            bar
        });
        Self {
            bar,
            plain: output == ProgressOutput::Auto && !terminal,
            total,
            done: std::cell::Cell::new(0),
            last_line: std::cell::Cell::new(Instant::now()),
        }
    }

    fn advance(&self, events: u64, started: Instant) {
        self.done.set(self.done.get() + events);
        if let Some(bar) = &self.bar {
            bar.inc(events);
        }
        if self.plain && self.last_line.get().elapsed() >= Duration::from_secs(5) {
            self.last_line.set(Instant::now());
            let done = self.done.get();
            let rate = done as f64 / started.elapsed().as_secs_f64().max(f64::EPSILON);
            let left = self.total.saturating_sub(done) as f64 / rate.max(1.0);
            eprintln!(
                "rebuild: {done} of about {} events, {rate:.0} events/s, about {left:.0} s left",
                self.total
            );
        }
    }

    fn finish(&self, events: u64, started: Instant) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
        if self.plain || self.bar.is_some() {
            let rate = events as f64 / started.elapsed().as_secs_f64().max(f64::EPSILON);
            eprintln!("rebuild: projected {events} events at {rate:.0} events/s; swapping tables");
        }
    }
}
