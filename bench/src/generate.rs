//! A synthetic event log written straight to `accounts.events.v1`, for measuring the
//! projector rebuild and the decider takeover. Each account gets one `AccountRegistered`
//! and then `ProfileUpdated` events, each with its sequence number and hash-chain link, on
//! the account's partition. Accounts are written in groups whose events interleave, as
//! when many people edit their profiles at the same time.

use std::time::{Duration, Instant};

use accounts_events::envelope::record_hash;
use accounts_events::{
    partition_for, AccountRegistered, Actor, ActorKind, DomainEvent, EventMeta, ProfileUpdated,
    RecordedEvent, Topics,
};
use anyhow::Context;
use chrono::Utc;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::ClientConfig;
use uuid::Uuid;

/// The shape of a generated log.
#[derive(Clone, Debug)]
pub struct LogShape {
    pub accounts: u64,
    /// Events per account, the registration included.
    pub events_per_account: u64,
    /// Accounts whose events interleave in the log.
    pub group: u64,
    pub partitions: i32,
}

impl LogShape {
    pub fn events(&self) -> u64 {
        self.accounts * self.events_per_account
    }
}

struct Account {
    id: Uuid,
    subject: String,
    partition: i32,
    index: u64,
    previous: Option<String>,
}

const INDUSTRIES: [&str; 4] = ["ai_agents", "software", "healthcare", "education"];

/// Writes the log to the events topic of `prefix` and returns the time it took.
pub fn write_log(brokers: &str, prefix: &str, shape: &LogShape) -> anyhow::Result<Duration> {
    let topic = Topics::with_prefix(prefix).events;
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("enable.idempotence", "true")
        .set("linger.ms", "20")
        .set("batch.size", "1000000")
        .set("compression.type", "lz4")
        .set("queue.buffering.max.messages", "1000000")
        .create()
        .context("failed to create the log producer")?;
    let started = Instant::now();
    let mut first = 0;
    while first < shape.accounts {
        let last = (first + shape.group.max(1)).min(shape.accounts);
        let mut accounts: Vec<Account> = (first..last)
            .map(|index| {
                let id = Uuid::now_v7();
                let subject = id.to_string();
                Account {
                    partition: partition_for(&subject, shape.partitions),
                    id,
                    subject,
                    index,
                    previous: None,
                }
            })
            .collect();
        for sequence in 1..=shape.events_per_account {
            for account in &mut accounts {
                let payload = event(account, sequence).encode()?;
                account.previous = Some(record_hash(&payload));
                send(
                    &producer,
                    BaseRecord::to(&topic)
                        .partition(account.partition)
                        .key(&account.subject)
                        .payload(&payload),
                )?;
            }
        }
        first = last;
    }
    producer
        .flush(Duration::from_secs(120))
        .context("failed to flush the generated log")?;
    Ok(started.elapsed())
}

fn send(
    producer: &ThreadedProducer<DefaultProducerContext>,
    mut record: BaseRecord<'_, String, Vec<u8>>,
) -> anyhow::Result<()> {
    loop {
        match producer.send(record) {
            Ok(()) => return Ok(()),
            Err((
                rdkafka::error::KafkaError::MessageProduction(
                    rdkafka::types::RDKafkaErrorCode::QueueFull,
                ),
                returned,
            )) => {
                // The local queue is full: wait for deliveries.
                record = returned;
                std::thread::sleep(Duration::from_millis(5));
            }
            Err((error, _)) => return Err(error).context("failed to queue a generated event"),
        }
    }
}

fn event(account: &Account, sequence: u64) -> RecordedEvent {
    let index = account.index;
    let event = if sequence == 1 {
        DomainEvent::AccountRegistered(AccountRegistered {
            account_id: account.id,
            email: format!("bench-{index}@example.com"),
            email_normalized: format!("bench-{index}@example.com"),
            name: format!("Bench {index}"),
            password_hash: "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA".to_owned(),
        })
    } else {
        DomainEvent::ProfileUpdated(ProfileUpdated {
            name: format!("Bench {index} ({sequence})"),
            company_name: Some(format!("Company {}", sequence % 7)),
            industry: Some(INDUSTRIES[(sequence % 4) as usize].to_owned()),
            business_phone: None,
            changed: vec!["name".to_owned()],
        })
    };
    RecordedEvent {
        meta: EventMeta {
            event_id: Uuid::now_v7(),
            source: "/accounts-bench".to_owned(),
            time: Utc::now(),
            subject: account.subject.clone(),
            aggregate_type: "account".to_owned(),
            sequence,
            command_id: Uuid::now_v7(),
            correlation_id: Uuid::now_v7(),
            causation_id: Uuid::now_v7(),
            actor: Actor {
                kind: ActorKind::Service,
                id: Some("accounts-bench".to_owned()),
                ip: None,
                user_agent: None,
            },
            request_digest: None,
            previous_hash: account.previous.clone(),
        },
        event,
    }
}
