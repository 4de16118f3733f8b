//! The HTTP side of the command pipeline: produce a command to the partition of its
//! aggregate, then wait for the decider's reply.
//!
//! Each process has a reply route: a random id and the reply-topic partition it hashes
//! to. The process reads only that partition, with read_committed, so it receives a reply only
//! once the transaction containing the command's events has committed.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use accounts_events::partition_for;
use accounts_platform::kafka::client_config;
use accounts_platform::KafkaConfig;
use anyhow::{anyhow, Context};
use futures::StreamExt;
use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::oneshot;
use uuid::Uuid;

use crate::wire::{CommandEnvelope, Outcome, Reply, ReplyRoute};

type Pending = Arc<Mutex<HashMap<Uuid, oneshot::Sender<Outcome>>>>;

/// The reason a command got no outcome.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// The command was sent, but no reply came in time. It may still be applied; a retry
    /// with the same `Idempotency-Key` returns its outcome.
    #[error("no reply within {0:?}")]
    Timeout(Duration),
    #[error(transparent)]
    Kafka(#[from] anyhow::Error),
}

/// Sends commands and waits for their replies.
#[derive(Clone)]
pub struct CommandBus {
    producer: FutureProducer,
    commands_topic: String,
    route: ReplyRoute,
    pending: Pending,
    reply_timeout: Duration,
}

impl CommandBus {
    /// Connects to Kafka and starts reading this process's reply partition from its end.
    pub async fn start(kafka: &KafkaConfig, reply_timeout: Duration) -> anyhow::Result<Self> {
        let topics = kafka.topics();
        let producer: FutureProducer = client_config(kafka)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "0")
            .create()
            .context("failed to create the command producer")?;

        let route_id = Uuid::new_v4().to_string();
        let route = ReplyRoute {
            partition: partition_for(&route_id, kafka.partitions),
            route: route_id,
        };
        let consumer: StreamConsumer = client_config(kafka)
            .set(
                "group.id",
                format!("{}accounts-replies", kafka.topic_prefix),
            )
            .set("enable.auto.commit", "false")
            .set("isolation.level", "read_committed")
            .set("fetch.wait.max.ms", "5")
            .create()
            .context("failed to create the reply consumer")?;
        let high = reply_partition_end(kafka, &topics.replies, route.partition).await?;
        let mut assignment = TopicPartitionList::new();
        assignment.add_partition_offset(&topics.replies, route.partition, Offset::Offset(high))?;
        consumer
            .assign(&assignment)
            .context("failed to assign the reply partition")?;

        let pending: Pending = Arc::default();
        tokio::spawn(read_replies(consumer, route.route.clone(), pending.clone()));
        Ok(Self {
            producer,
            commands_topic: topics.commands,
            route,
            pending,
            reply_timeout,
        })
    }

    /// Returns where deciders send this process's replies.
    pub fn route(&self) -> ReplyRoute {
        self.route.clone()
    }

    /// Produces `envelope` to `partition` of the command topic and waits for its outcome.
    #[tracing::instrument(skip_all, fields(command_id = %envelope.command_id, kind = envelope.command.kind()))]
    pub async fn send(
        &self,
        partition: i32,
        envelope: &CommandEnvelope,
    ) -> Result<Outcome, BusError> {
        let payload = serde_json::to_vec(envelope).context("failed to encode command")?;
        let started = std::time::Instant::now();
        let (sender, receiver) = oneshot::channel();
        self.lock_pending()?.insert(envelope.request_id, sender);

        let record = FutureRecord::to(&self.commands_topic)
            .partition(partition)
            .key(&envelope.aggregate_key)
            .payload(&payload);
        if let Err((error, _)) = self.producer.send(record, Duration::from_secs(10)).await {
            self.lock_pending()?.remove(&envelope.request_id);
            return Err(BusError::Kafka(
                anyhow!(error).context("failed to produce command"),
            ));
        }

        match tokio::time::timeout(self.reply_timeout, receiver).await {
            Ok(Ok(outcome)) => {
                metrics::histogram!("command_reply_seconds")
                    .record(started.elapsed().as_secs_f64());
                Ok(outcome)
            }
            Ok(Err(_)) => Err(BusError::Kafka(anyhow!("the reply reader stopped"))),
            Err(_) => {
                self.lock_pending()?.remove(&envelope.request_id);
                Err(BusError::Timeout(self.reply_timeout))
            }
        }
    }

    /// Sends a command without waiting for its outcome: returns once Kafka has stored it.
    /// The decider's reply arrives later and is dropped.
    pub async fn submit(&self, partition: i32, envelope: &CommandEnvelope) -> Result<(), BusError> {
        let payload = serde_json::to_vec(envelope).context("failed to encode command")?;
        let record = FutureRecord::to(&self.commands_topic)
            .partition(partition)
            .key(&envelope.aggregate_key)
            .payload(&payload);
        self.producer
            .send(record, Duration::from_secs(10))
            .await
            .map(|_| ())
            .map_err(|(error, _)| {
                BusError::Kafka(anyhow!(error).context("failed to produce command"))
            })
    }

    fn lock_pending(
        &self,
    ) -> anyhow::Result<std::sync::MutexGuard<'_, HashMap<Uuid, oneshot::Sender<Outcome>>>> {
        self.pending
            .lock()
            .map_err(|_| anyhow!("pending command map lock poisoned"))
    }
}

/// Returns the end offset of the reply partition, retrying for a minute while a broker
/// that has just started is still loading.
async fn reply_partition_end(
    kafka: &KafkaConfig,
    topic: &str,
    partition: i32,
) -> anyhow::Result<i64> {
    // Watermark requests block, so they run off the async runtime.
    let client: Arc<BaseConsumer> = Arc::new(
        client_config(kafka)
            .create()
            .context("failed to create the reply watermark client")?,
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let (request_client, request_topic) = (client.clone(), topic.to_owned());
        let fetched = tokio::task::spawn_blocking(move || {
            request_client.fetch_watermarks(&request_topic, partition, Duration::from_secs(5))
        })
        .await
        .context("reply watermark task failed")?;
        match fetched {
            Ok((_, high)) => return Ok(high),
            Err(error) if tokio::time::Instant::now() < deadline => {
                tracing::warn!(%error, topic, partition, "failed to read the end of the reply partition; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(error) => {
                return Err(anyhow!(error).context(format!(
                    "failed to read the end of reply partition {partition} of {topic}"
                )));
            }
        }
    }
}

async fn read_replies(consumer: StreamConsumer, route: String, pending: Pending) {
    let mut errors = 0_u64;
    let mut stream = consumer.stream();
    while let Some(message) = stream.next().await {
        let message = match message {
            Ok(message) => message,
            Err(error) => {
                errors += 1;
                if errors.is_power_of_two() {
                    tracing::warn!(%error, errors, "reply consumer error");
                }
                continue;
            }
        };
        if message.key() != Some(route.as_bytes()) {
            continue;
        }
        let reply: Reply = match serde_json::from_slice(message.payload().unwrap_or_default()) {
            Ok(reply) => reply,
            Err(error) => {
                tracing::error!(%error, offset = message.offset(), "skipped undecodable reply");
                continue;
            }
        };
        let waiting = pending
            .lock()
            .ok()
            .and_then(|mut pending| pending.remove(&reply.request_id));
        if let Some(sender) = waiting {
            // The request may have timed out and gone; nothing waits for the outcome then.
            drop(sender.send(reply.outcome));
        }
    }
}
