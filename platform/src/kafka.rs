//! Kafka client settings and topic creation.

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::producer::{BaseProducer, Partitioner, Producer, ProducerContext};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::ClientContext;

use crate::config::KafkaConfig;

/// Returns a client configuration with the brokers set.
pub fn client_config(config: &KafkaConfig) -> ClientConfig {
    let mut client = ClientConfig::new();
    client.set("bootstrap.servers", &config.brokers);
    client
}

/// Creates the topics that are missing, with the configurations below. Existing topics
/// are left as they are.
///
/// | topic | partitions | configuration |
/// |---|---|---|
/// | commands | P | `retention.ms` 7 days |
/// | events | P | `retention.ms=-1`, `cleanup.policy=delete` |
/// | replies | P | `retention.ms` 1 hour |
/// | public profiles | P | `cleanup.policy=compact` |
pub async fn create_topics(config: &KafkaConfig) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> = client_config(config)
        .create()
        .context("failed to create Kafka admin client")?;
    let topics = config.topics();
    let seven_days = (7 * 24 * 3600 * 1000_i64).to_string();
    let one_hour = (3600 * 1000_i64).to_string();
    let partitions = config.partitions;
    let replication = || TopicReplication::Fixed(1);
    let specs = [
        NewTopic::new(&topics.commands, partitions, replication())
            .set("retention.ms", &seven_days)
            .set("cleanup.policy", "delete"),
        NewTopic::new(&topics.events, partitions, replication())
            .set("retention.ms", "-1")
            .set("retention.bytes", "-1")
            .set("cleanup.policy", "delete"),
        NewTopic::new(&topics.replies, partitions, replication())
            .set("retention.ms", &one_hour)
            .set("cleanup.policy", "delete"),
        NewTopic::new(&topics.public_profiles, partitions, replication())
            .set("cleanup.policy", "compact"),
    ];
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let results = admin
        .create_topics(&specs, &options)
        .await
        .context("failed to create Kafka topics")?;
    for result in results {
        match result {
            Ok(topic) => tracing::info!(topic, "created topic"),
            Err((topic, RDKafkaErrorCode::TopicAlreadyExists)) => {
                tracing::debug!(topic, "topic already exists");
            }
            Err((topic, code)) => bail!("failed to create topic {topic}: {code}"),
        }
    }
    Ok(())
}

/// Checks that the command and event topics exist with the configured partition count.
/// Every producer computes partitions from that count, so a mismatch would put an
/// aggregate's commands and events in different partitions.
pub async fn verify_partitions(config: &KafkaConfig) -> anyhow::Result<()> {
    let config = config.clone();
    tokio::task::spawn_blocking(move || {
        let client: rdkafka::consumer::BaseConsumer = client_config(&config)
            .create()
            .context("failed to create Kafka metadata client")?;
        let topics = config.topics();
        for topic in [&topics.commands, &topics.events] {
            let metadata = client
                .fetch_metadata(Some(topic), Duration::from_secs(30))
                .with_context(|| format!("failed to read metadata of topic {topic}"))?;
            let found = metadata
                .topics()
                .iter()
                .find(|entry| entry.name() == topic.as_str())
                .filter(|entry| entry.error().is_none())
                .map(|entry| entry.partitions().len());
            match found {
                None | Some(0) => bail!("topic {topic} does not exist; create it with `accounts-command create-topics`"),
                Some(count) if i32::try_from(count).ok() != Some(config.partitions) => bail!(
                    "topic {topic} has {count} partitions but KAFKA_PARTITIONS is {}; set KAFKA_PARTITIONS to {count}",
                    config.partitions
                ),
                Some(_) => {}
            }
        }
        Ok(())
    })
    .await
    .context("partition check task failed")?
}

/// Returns the low and high watermarks of `partition` of `topic`. For up to `timeout` it
/// retries while the broker reports no leader for the partition or does not know it yet, as
/// it does for a moment after the topic is created. Each read blocks the calling thread,
/// but the waits between reads do not.
pub async fn fetch_watermarks<C, K>(
    consumer: &K,
    topic: &str,
    partition: i32,
    timeout: Duration,
) -> anyhow::Result<(i64, i64)>
where
    C: ConsumerContext,
    K: Consumer<C>,
{
    let deadline = Instant::now() + timeout;
    let mut retries = 0_u32;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match consumer.fetch_watermarks(topic, partition, left) {
            Ok(watermarks) => {
                if retries > 0 {
                    tracing::info!(topic, partition, retries, "partition has a leader now");
                }
                return Ok(watermarks);
            }
            Err(error) if is_leader_missing(&error) && Instant::now() < deadline => {
                if retries == 0 {
                    tracing::info!(%error, topic, partition, "partition has no leader yet; retrying");
                }
                retries += 1;
                tokio::time::sleep(Duration::from_millis(200).min(left)).await;
            }
            Err(error) => {
                return Err(anyhow::Error::new(error).context(format!(
                    "failed to read the watermarks of partition {partition} of {topic}"
                )))
            }
        }
    }
}

/// Tells whether `error` reports a partition without a leader or an unknown partition,
/// which passes once the broker has elected a leader.
fn is_leader_missing(error: &KafkaError) -> bool {
    matches!(
        error.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::NotLeaderForPartition
                | RDKafkaErrorCode::LeaderNotAvailable
                | RDKafkaErrorCode::UnknownTopicOrPartition
        )
    )
}

/// A consumer context that does not report reaching the end of a partition as an error,
/// for readers that read a partition exactly up to its end.
pub struct EndOfPartitionIsExpected;

impl ClientContext for EndOfPartitionIsExpected {
    fn error(&self, error: KafkaError, reason: &str) {
        let end_of_partition = matches!(error, KafkaError::PartitionEOF(_))
            || error.rdkafka_error_code() == Some(RDKafkaErrorCode::PartitionEOF);
        if !end_of_partition {
            tracing::error!(%error, reason, "consumer error");
        }
    }
}

impl ConsumerContext for EndOfPartitionIsExpected {}

/// Waits until every record queued on `producer` is delivered, serving its delivery
/// reports, and fails after `timeout`.
///
/// `BaseProducer::poll` in rust-rdkafka 0.39 returns only at its deadline and rounds the
/// remaining time down to whole milliseconds, so short polls spin on the CPU and
/// `BaseProducer::flush`, which commits call, sleeps in steps of 100 ms. This serves the
/// reports without blocking and sleeps a quarter of a millisecond between checks.
pub fn deliver_queued<C, P>(producer: &BaseProducer<C, P>, timeout: Duration) -> anyhow::Result<()>
where
    C: ProducerContext<P>,
    P: Partitioner,
{
    let deadline = Instant::now() + timeout;
    loop {
        producer.poll(Duration::ZERO);
        if producer.in_flight_count() == 0 {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("records were not delivered within {timeout:?}");
        }
        std::thread::sleep(DELIVERY_CHECK_INTERVAL);
    }
}

const DELIVERY_CHECK_INTERVAL: Duration = Duration::from_micros(250);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leader_elections_are_retried_other_errors_are_not() {
        for code in [
            RDKafkaErrorCode::NotLeaderForPartition,
            RDKafkaErrorCode::LeaderNotAvailable,
            RDKafkaErrorCode::UnknownTopicOrPartition,
        ] {
            assert!(
                is_leader_missing(&KafkaError::MetadataFetch(code)),
                "{code:?}"
            );
        }
        for code in [
            RDKafkaErrorCode::BrokerTransportFailure,
            RDKafkaErrorCode::TopicAuthorizationFailed,
        ] {
            assert!(
                !is_leader_missing(&KafkaError::MetadataFetch(code)),
                "{code:?}"
            );
        }
    }
}
