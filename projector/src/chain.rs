//! Verification of the hash chains in `accounts.events.v1`.
//!
//! Every event carries `previoushash`, the SHA-256 of the record value of its aggregate's
//! previous event (absent on the first). Walking a partition in order and hashing each
//! record shows the first event whose link does not match: an altered, inserted or removed
//! record breaks the chain of its aggregate from there on.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use accounts_events::envelope::record_hash;
use accounts_events::{partition_for, AggregateId};
use accounts_platform::kafka::{client_config, EndOfPartitionIsExpected};
use accounts_platform::KafkaConfig;
use anyhow::{anyhow, bail, Context};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use serde::Deserialize;
use uuid::Uuid;

/// The first event whose link to its predecessor does not match.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BrokenLink {
    pub partition: i32,
    pub offset: i64,
    pub event_id: Option<Uuid>,
    pub subject: String,
    /// The hash of the aggregate's previous record, absent before its first event.
    pub expected: Option<String>,
    /// The `previoushash` the event carries.
    pub found: Option<String>,
}

impl std::fmt::Display for BrokenLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let event_id = self
            .event_id
            .map_or_else(|| "without an id".to_owned(), |id| id.to_string());
        write!(
            f,
            "partition {} offset {}: event {event_id} of {} carries previoushash {}, but the previous event of {} hashes to {}",
            self.partition,
            self.offset,
            self.subject,
            self.found.as_deref().unwrap_or("(none)"),
            self.subject,
            self.expected.as_deref().unwrap_or("(none: it is the first event)"),
        )
    }
}

/// The result of a verification.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ChainReport {
    pub events: u64,
    pub aggregates: usize,
    /// The first broken link in partition order, if any.
    pub broken: Option<BrokenLink>,
}

#[derive(Deserialize)]
struct Links {
    id: Option<Uuid>,
    subject: String,
    previoushash: Option<String>,
}

/// Verifies the chains of every aggregate in the event topic, or only of `account`'s
/// events. Reads committed records from the start up to the end of each partition.
pub fn verify_chain(kafka: &KafkaConfig, account: Option<Uuid>) -> anyhow::Result<ChainReport> {
    let topic = kafka.topics().events;
    let only = account.map(|id| AggregateId::Account(id).key());
    let partitions: Vec<i32> = match &only {
        Some(key) => vec![partition_for(key, kafka.partitions)],
        None => (0..kafka.partitions).collect(),
    };
    let mut report = ChainReport::default();
    for partition in partitions {
        let broken = verify_partition(kafka, &topic, partition, only.as_deref(), &mut report)?;
        if broken.is_some() {
            report.broken = broken;
            break;
        }
    }
    Ok(report)
}

fn verify_partition(
    kafka: &KafkaConfig,
    topic: &str,
    partition: i32,
    only: Option<&str>,
    report: &mut ChainReport,
) -> anyhow::Result<Option<BrokenLink>> {
    let reader: BaseConsumer<EndOfPartitionIsExpected> = client_config(kafka)
        .set(
            "group.id",
            format!("{}accounts-chain-verifier", kafka.topic_prefix),
        )
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .set("enable.partition.eof", "true")
        .create_with_context(EndOfPartitionIsExpected)
        .context("failed to create the event reader")?;
    let mut assignment = TopicPartitionList::new();
    assignment.add_partition_offset(topic, partition, Offset::Beginning)?;
    reader
        .assign(&assignment)
        .context("failed to assign the event partition")?;

    let mut last: HashMap<String, String> = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(3600);
    loop {
        if Instant::now() > deadline {
            bail!("verifying partition {partition} took longer than an hour");
        }
        let message = match reader.poll(Duration::from_millis(500)) {
            None => continue,
            Some(Err(KafkaError::PartitionEOF(_))) => break,
            Some(Err(error)) => return Err(anyhow!(error).context("failed to read events")),
            Some(Ok(message)) => message,
        };
        let payload = message.payload().unwrap_or_default();
        let links: Links = match serde_json::from_slice(payload) {
            Ok(links) => links,
            Err(_) => {
                return Ok(Some(BrokenLink {
                    partition,
                    offset: message.offset(),
                    event_id: None,
                    subject: String::from_utf8_lossy(message.key().unwrap_or_default())
                        .into_owned(),
                    expected: None,
                    found: None,
                }))
            }
        };
        if only.is_some_and(|only| only != links.subject) {
            continue;
        }
        report.events += 1;
        let expected = last.get(&links.subject).cloned();
        if links.previoushash != expected {
            report.aggregates += last.len();
            return Ok(Some(BrokenLink {
                partition,
                offset: message.offset(),
                event_id: links.id,
                subject: links.subject,
                expected,
                found: links.previoushash,
            }));
        }
        last.insert(links.subject, record_hash(payload));
    }
    report.aggregates += last.len();
    Ok(None)
}
