//! Writes a synthetic event log straight to `accounts.events.v1`, for measuring rebuilds:
//! per account one `AccountRegistered` and then `ProfileUpdated` events, each with its
//! sequence number and hash-chain link, on the account's partition.
//!
//! ```sh
//! TOPIC_PREFIX=bench. target/release/accounts-command create-topics
//! cargo run --release -p accounts-projector --example generate_log -- \
//!     --prefix bench. --accounts 50000 --events-per-account 20
//! ```

use std::time::{Duration, Instant};

use accounts_events::envelope::record_hash;
use accounts_events::{
    partition_for, AccountRegistered, Actor, ActorKind, DomainEvent, EventMeta, ProfileUpdated,
    RecordedEvent, Topics,
};
use chrono::Utc;
use clap::Parser;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::ClientConfig;
use uuid::Uuid;

/// Writes a synthetic event log.
#[derive(Parser)]
struct Args {
    #[arg(long, default_value = "127.0.0.1:9092")]
    brokers: String,
    /// Topic prefix; use one no running stack uses.
    #[arg(long)]
    prefix: String,
    #[arg(long, default_value_t = 12)]
    partitions: i32,
    #[arg(long, default_value_t = 50_000)]
    accounts: u64,
    /// Events per account, the registration included.
    #[arg(long, default_value_t = 20)]
    events_per_account: u64,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let topic = Topics::with_prefix(&args.prefix).events;
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", &args.brokers)
        .set("enable.idempotence", "true")
        .set("linger.ms", "20")
        .set("batch.size", "1000000")
        .set("compression.type", "lz4")
        .set("queue.buffering.max.messages", "1000000")
        .create()?;
    let started = Instant::now();
    let industries = ["ai_agents", "software", "healthcare", "education"];
    let mut written = 0_u64;
    for index in 0..args.accounts {
        let account_id = Uuid::now_v7();
        let subject = account_id.to_string();
        let partition = partition_for(&subject, args.partitions);
        let mut previous: Option<String> = None;
        for sequence in 1..=args.events_per_account {
            let event = if sequence == 1 {
                DomainEvent::AccountRegistered(AccountRegistered {
                    account_id,
                    email: format!("bench-{index}@example.com"),
                    email_normalized: format!("bench-{index}@example.com"),
                    name: format!("Bench {index}"),
                    password_hash: "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA".to_owned(),
                })
            } else {
                DomainEvent::ProfileUpdated(ProfileUpdated {
                    name: format!("Bench {index} ({sequence})"),
                    company_name: Some(format!("Company {}", sequence % 7)),
                    industry: Some(industries[(sequence % 4) as usize].to_owned()),
                    business_phone: None,
                    changed: vec!["name".to_owned()],
                })
            };
            let recorded = RecordedEvent {
                meta: EventMeta {
                    event_id: Uuid::now_v7(),
                    source: "/generate-log".to_owned(),
                    time: Utc::now(),
                    subject: subject.clone(),
                    aggregate_type: "account".to_owned(),
                    sequence,
                    command_id: Uuid::now_v7(),
                    correlation_id: Uuid::now_v7(),
                    causation_id: Uuid::now_v7(),
                    actor: Actor {
                        kind: ActorKind::Service,
                        id: Some("generate-log".to_owned()),
                        ip: None,
                        user_agent: None,
                    },
                    request_digest: None,
                    previous_hash: previous.take(),
                },
                event,
            };
            let payload = recorded.encode()?;
            previous = Some(record_hash(&payload));
            let mut record = BaseRecord::to(&topic)
                .partition(partition)
                .key(&subject)
                .payload(&payload);
            loop {
                match producer.send(record) {
                    Ok(()) => break,
                    Err((_, returned)) => {
                        // The local queue is full: wait for deliveries.
                        record = returned;
                        std::thread::sleep(Duration::from_millis(5));
                    }
                }
            }
            written += 1;
        }
    }
    producer.flush(Duration::from_secs(120))?;
    let elapsed = started.elapsed().as_secs_f64();
    println!(
        "wrote {written} events to {topic} in {elapsed:.1} s ({:.0} events/s)",
        written as f64 / elapsed
    );
    Ok(())
}
