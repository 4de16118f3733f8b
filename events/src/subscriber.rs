//! A reader of `profiles.public.v1` that keeps a local copy of every public profile, as a
//! workspace service would (feature `kafka`).

use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use crate::public::{PublicProfile, PublicProfiles, RecordError};

/// Follows the topic from its first record with read_committed.
pub struct ProfileSubscriber {
    consumer: BaseConsumer,
    profiles: PublicProfiles,
    invalid_records: u64,
}

impl ProfileSubscriber {
    /// Connects to `brokers` and assigns every partition of `topic` from the start. A new
    /// subscriber rebuilds its copy from the compacted topic; a long-running one would store
    /// its copy and the offsets together and resume from them.
    pub fn new(brokers: &str, topic: &str) -> Result<Self, KafkaError> {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("group.id", "profile-subscriber")
            .set("enable.auto.commit", "false")
            .set("isolation.level", "read_committed")
            .create()?;
        let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(30))?;
        let partitions = metadata
            .topics()
            .iter()
            .find(|found| found.name() == topic)
            .map_or(0, |found| found.partitions().len());
        if partitions == 0 {
            return Err(KafkaError::MetadataFetch(
                rdkafka::types::RDKafkaErrorCode::UnknownTopicOrPartition,
            ));
        }
        let mut assignment = TopicPartitionList::new();
        for partition in 0..i32::try_from(partitions).unwrap_or(i32::MAX) {
            assignment.add_partition_offset(topic, partition, Offset::Beginning)?;
        }
        consumer.assign(&assignment)?;
        Ok(Self {
            consumer,
            profiles: PublicProfiles::default(),
            invalid_records: 0,
        })
    }

    /// Applies the records that arrive within `timeout` and returns the profiles that
    /// changed.
    pub fn poll(&mut self, timeout: Duration) -> Result<Vec<PublicProfile>, KafkaError> {
        let mut changed = Vec::new();
        let mut wait = timeout;
        while let Some(message) = self.consumer.poll(wait) {
            let message = message?;
            let key = message.key().unwrap_or_default();
            match self.profiles.apply(key, message.payload()) {
                Ok(true) => {
                    if let Some(profile) = std::str::from_utf8(key)
                        .ok()
                        .and_then(|key| key.parse().ok())
                        .and_then(|id| self.profiles.get(&id))
                    {
                        changed.push(profile.clone());
                    }
                }
                Ok(false) => {}
                Err(RecordError::InvalidKey(_) | RecordError::InvalidValue(_)) => {
                    self.invalid_records += 1;
                }
            }
            // Drain what is already fetched without waiting again.
            wait = Duration::ZERO;
        }
        Ok(changed)
    }

    /// Returns the local copy.
    pub fn profiles(&self) -> &PublicProfiles {
        &self.profiles
    }

    /// Returns how many records could not be read as profiles.
    pub fn invalid_records(&self) -> u64 {
        self.invalid_records
    }
}
