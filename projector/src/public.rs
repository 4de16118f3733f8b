//! The publisher of `profiles.public.v1`: one record with the latest public profile per
//! event that changes one, exactly once.
//!
//! It reads `accounts.events.v1` with read_committed and writes each batch's records and the
//! next event offsets in one Kafka transaction (`send_offsets_to_transaction`), so after a
//! crash it resumes exactly after the last committed batch and the aborted records stay
//! invisible. Its transactional id is fixed, so a restarted publisher fences the previous
//! one. Run one publisher per stack. It keeps the latest profile of every account in memory
//! and, on start, reloads it from the compacted topic itself.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use accounts_events::envelope::Decoded;
use accounts_events::{partition_for, PublicProfile, RecordedEvent};
use accounts_platform::kafka::{client_config, EndOfPartitionIsExpected};
use accounts_platform::KafkaConfig;
use anyhow::{anyhow, bail, Context};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};
use uuid::Uuid;

const KAFKA_TIMEOUT: Duration = Duration::from_secs(30);
/// Maximum events per transaction.
const MAX_BATCH: usize = 1000;
/// How long a batch waits for more events once it has one.
const BATCH_WINDOW: Duration = Duration::from_millis(2);

/// Stops the publisher.
#[derive(Debug, Default)]
pub struct PublisherControl {
    stop: AtomicBool,
}

impl PublisherControl {
    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// Returns the transactional id of the publisher.
pub fn transactional_id(topic_prefix: &str) -> String {
    format!("{topic_prefix}accounts-public-profiles")
}

/// Starts the publisher on its own thread. It restarts itself after failures until stopped.
pub fn spawn_publisher(
    kafka: KafkaConfig,
    control: Arc<PublisherControl>,
) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("public-profiles".to_owned())
        .spawn(move || {
            let mut failures = 0_u32;
            while !control.stop.load(Ordering::SeqCst) {
                match Publisher::start(&kafka).and_then(|mut publisher| publisher.run(&control)) {
                    Ok(()) => return,
                    Err(error) => {
                        failures = failures.saturating_add(1);
                        tracing::error!(
                            error = format!("{error:#}"),
                            failures,
                            "public profile publisher failed; restarting"
                        );
                        std::thread::sleep(Duration::from_millis(
                            200 * u64::from(failures.min(10)),
                        ));
                    }
                }
            }
        })
}

struct Publisher {
    consumer: BaseConsumer,
    producer: BaseProducer,
    events_topic: String,
    public_topic: String,
    partitions: i32,
    profiles: HashMap<Uuid, PublicProfile>,
    undecodable: u64,
}

impl Publisher {
    /// Fences any earlier publisher, reloads the profiles and assigns the event partitions
    /// at the committed offsets.
    fn start(kafka: &KafkaConfig) -> anyhow::Result<Self> {
        let topics = kafka.topics();
        let producer: BaseProducer = client_config(kafka)
            .set("transactional.id", transactional_id(&kafka.topic_prefix))
            .set("transaction.timeout.ms", "15000")
            .set("linger.ms", "1")
            .create()
            .context("failed to create the public profile producer")?;
        producer
            .init_transactions(KAFKA_TIMEOUT)
            .context("failed to initialise transactions")?;
        let profiles = load_profiles(kafka, &topics.public_profiles)?;

        let consumer: BaseConsumer = client_config(kafka)
            .set(
                "group.id",
                format!("{}accounts-public-profiles", kafka.topic_prefix),
            )
            .set("enable.auto.commit", "false")
            .set("isolation.level", "read_committed")
            .set("auto.offset.reset", "earliest")
            .set("fetch.wait.max.ms", "10")
            .create()
            .context("failed to create the event consumer")?;
        let mut partitions = TopicPartitionList::new();
        for partition in 0..kafka.partitions {
            partitions.add_partition(&topics.events, partition);
        }
        let committed = consumer
            .committed_offsets(partitions, KAFKA_TIMEOUT)
            .context("failed to read the committed event offsets")?;
        let mut assignment = TopicPartitionList::new();
        for partition in 0..kafka.partitions {
            let offset = committed
                .find_partition(&topics.events, partition)
                .map(|element| element.offset())
                .filter(|offset| matches!(offset, Offset::Offset(_)))
                .unwrap_or(Offset::Beginning);
            assignment.add_partition_offset(&topics.events, partition, offset)?;
        }
        consumer
            .assign(&assignment)
            .context("failed to assign the event partitions")?;
        tracing::info!(
            profiles = profiles.len(),
            "public profile publisher started"
        );
        Ok(Self {
            consumer,
            producer,
            events_topic: topics.events,
            public_topic: topics.public_profiles,
            partitions: kafka.partitions,
            profiles,
            undecodable: 0,
        })
    }

    fn run(&mut self, control: &PublisherControl) -> anyhow::Result<()> {
        while !control.stop.load(Ordering::SeqCst) {
            let batch = self.poll_batch()?;
            if !batch.is_empty() {
                self.publish(&batch)?;
            }
        }
        Ok(())
    }

    fn poll_batch(&mut self) -> anyhow::Result<Vec<(i32, i64, Option<RecordedEvent>)>> {
        let mut batch = Vec::new();
        let mut deadline: Option<Instant> = None;
        while batch.len() < MAX_BATCH {
            let wait = match deadline {
                Some(deadline) => deadline.saturating_duration_since(Instant::now()),
                None => Duration::from_millis(100),
            };
            match self.consumer.poll(wait) {
                Some(Ok(message)) => {
                    let recorded = match RecordedEvent::decode(
                        message.payload().unwrap_or_default(),
                    ) {
                        Ok(Decoded::Event(recorded)) => Some(*recorded),
                        Ok(Decoded::Unknown { .. }) => None,
                        Err(error) => {
                            self.undecodable += 1;
                            if self.undecodable.is_power_of_two() {
                                tracing::error!(%error, offset = message.offset(), total = self.undecodable, "skipped undecodable event");
                            }
                            None
                        }
                    };
                    batch.push((message.partition(), message.offset(), recorded));
                    deadline.get_or_insert_with(|| Instant::now() + BATCH_WINDOW);
                }
                Some(Err(error)) => return Err(anyhow!(error).context("failed to read events")),
                None => return Ok(batch),
            }
            if deadline.is_some_and(|deadline| Instant::now() >= deadline) {
                break;
            }
        }
        Ok(batch)
    }

    /// Writes the records of a batch and the offsets after it in one transaction.
    fn publish(&mut self, batch: &[(i32, i64, Option<RecordedEvent>)]) -> anyhow::Result<()> {
        self.producer
            .begin_transaction()
            .context("failed to begin transaction")?;
        let result = self.write(batch);
        match result {
            Ok(changed) => {
                self.profiles.extend(changed);
                Ok(())
            }
            Err(error) => {
                if let Err(abort) = self.producer.abort_transaction(KAFKA_TIMEOUT) {
                    tracing::warn!(error = %abort, "failed to abort transaction");
                }
                Err(error)
            }
        }
    }

    fn write(
        &self,
        batch: &[(i32, i64, Option<RecordedEvent>)],
    ) -> anyhow::Result<HashMap<Uuid, PublicProfile>> {
        let mut changed: HashMap<Uuid, PublicProfile> = HashMap::new();
        let mut next_offsets: HashMap<i32, i64> = HashMap::new();
        for (partition, offset, recorded) in batch {
            next_offsets.insert(*partition, offset + 1);
            let Some(recorded) = recorded else { continue };
            let Ok(account_id) = Uuid::parse_str(&recorded.meta.subject) else {
                continue;
            };
            let previous = changed
                .get(&account_id)
                .or_else(|| self.profiles.get(&account_id));
            if previous.is_some_and(|previous| previous.version >= recorded.meta.sequence) {
                continue;
            }
            let Some(profile) = PublicProfile::after(previous, recorded) else {
                continue;
            };
            let key = account_id.to_string();
            let payload = serde_json::to_vec(&profile).context("failed to encode profile")?;
            let record = BaseRecord::to(&self.public_topic)
                .partition(partition_for(&key, self.partitions))
                .key(&key)
                .payload(&payload);
            self.producer
                .send(record)
                .map_err(|(error, _)| anyhow!(error).context("failed to queue profile"))?;
            changed.insert(account_id, profile);
        }
        let mut offsets = TopicPartitionList::new();
        for (partition, next) in &next_offsets {
            offsets.add_partition_offset(&self.events_topic, *partition, Offset::Offset(*next))?;
        }
        let metadata = self
            .consumer
            .group_metadata()
            .ok_or_else(|| anyhow!("the event consumer has no group metadata"))?;
        self.producer
            .send_offsets_to_transaction(&offsets, &metadata, KAFKA_TIMEOUT)
            .context("failed to add event offsets to the transaction")?;
        // The commit flushes too, but in steps of 100 ms.
        accounts_platform::kafka::deliver_queued(&self.producer, KAFKA_TIMEOUT)
            .context("failed to deliver public profiles")?;
        self.producer
            .commit_transaction(KAFKA_TIMEOUT)
            .context("failed to commit transaction")?;
        metrics::counter!("public_profiles_published_total").increment(changed.len() as u64);
        Ok(changed)
    }
}

/// Reads the compacted topic from the start with read_committed and returns the latest
/// profile per account.
fn load_profiles(kafka: &KafkaConfig, topic: &str) -> anyhow::Result<HashMap<Uuid, PublicProfile>> {
    let reader: BaseConsumer<EndOfPartitionIsExpected> = client_config(kafka)
        .set(
            "group.id",
            format!("{}accounts-public-profiles-load", kafka.topic_prefix),
        )
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .set("enable.partition.eof", "true")
        .create_with_context(EndOfPartitionIsExpected)
        .context("failed to create the profile reader")?;
    let mut assignment = TopicPartitionList::new();
    for partition in 0..kafka.partitions {
        assignment.add_partition_offset(topic, partition, Offset::Beginning)?;
    }
    reader
        .assign(&assignment)
        .context("failed to assign the profile topic")?;
    let mut profiles = accounts_events::PublicProfiles::default();
    let mut finished = std::collections::HashSet::new();
    let deadline = Instant::now() + Duration::from_secs(600);
    while finished.len() < usize::try_from(kafka.partitions).unwrap_or(0) {
        if Instant::now() > deadline {
            bail!("loading {topic} took longer than 10 minutes");
        }
        match reader.poll(Duration::from_millis(500)) {
            None => {}
            Some(Err(KafkaError::PartitionEOF(partition))) => {
                finished.insert(partition);
            }
            Some(Err(error)) => return Err(anyhow!(error).context("failed to read profiles")),
            Some(Ok(message)) => {
                if let Err(error) =
                    profiles.apply(message.key().unwrap_or_default(), message.payload())
                {
                    tracing::error!(%error, offset = message.offset(), "skipped invalid profile record");
                }
            }
        }
    }
    Ok(profiles
        .iter()
        .map(|profile| (profile.account_id, profile.clone()))
        .collect())
}
