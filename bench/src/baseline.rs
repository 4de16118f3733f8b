//! The limits of this machine, measured in the same run as the load: what Kafka and
//! PostgreSQL do for the same work without the services in between, and how fast argon2
//! hashes with the service's parameters.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use accounts_command::password::{HashingConfig, PasswordHasherPool};
use anyhow::{anyhow, Context};
use rand::{Rng, SeedableRng};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::ClientConfig;
use secrecy::SecretString;
use sqlx::PgPool;
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

/// The bytes of a profile update's event record on `accounts.events.v1`, with its
/// CloudEvents attributes and hash-chain link.
pub const EVENT_BYTES: usize = 900;
/// The bytes of a command's reply record on `accounts.replies.v1`.
pub const REPLY_BYTES: usize = 220;
/// The decider's largest batch, and how long it waits for more commands after the first.
const DECIDER_BATCH: usize = 500;
const DECIDER_WINDOW: Duration = Duration::from_millis(2);
/// The projector's largest batch, and its window.
const PROJECTOR_BATCH: usize = 1000;
const PROJECTOR_WINDOW: Duration = Duration::from_millis(1);
const KAFKA_TIMEOUT: Duration = Duration::from_secs(30);

/// The operations a closed loop completed, and in what time.
pub struct Rate {
    pub operations: u64,
    pub elapsed: Duration,
    /// Transactions committed, for the baselines that batch.
    pub transactions: u64,
}

impl Rate {
    pub fn per_second(&self) -> f64 {
        self.operations as f64 / self.elapsed.as_secs_f64().max(f64::EPSILON)
    }
}

type Waiter = oneshot::Sender<()>;

/// Runs `clients` closed-loop clients for `length`. Each operation is queued for one of
/// the committers, picked at random. A committer takes what is queued (up to its batch
/// size, waiting a short window after the first) and releases each after one commit, as
/// the deciders and the projector do.
async fn group_commit_loop(
    clients: usize,
    length: Duration,
    queues: Vec<mpsc::Sender<Waiter>>,
) -> anyhow::Result<Rate> {
    let deadline = Instant::now() + length;
    let started = Instant::now();
    let done = Arc::new(AtomicU64::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..clients.max(1) {
        let queues = queues.clone();
        let done = done.clone();
        tasks.spawn(async move {
            let mut rng = rand::rngs::StdRng::from_entropy();
            while Instant::now() < deadline {
                let (sender, receiver) = oneshot::channel();
                queues[rng.gen_range(0..queues.len())]
                    .send(sender)
                    .await
                    .map_err(|_| anyhow!("the committer stopped"))?;
                receiver
                    .await
                    .map_err(|_| anyhow!("the committer stopped"))?;
                done.fetch_add(1, Ordering::Relaxed);
            }
            anyhow::Ok(())
        });
    }
    drop(queues);
    while let Some(result) = tasks.join_next().await {
        result.context("a baseline client panicked")??;
    }
    Ok(Rate {
        operations: done.load(Ordering::Relaxed),
        elapsed: started.elapsed(),
        transactions: 0,
    })
}

/// Measures transactional produce straight through rdkafka, as the deciders do it: one
/// transactional producer per partition, each committing its own batches while the others
/// do. Per operation it writes one record of a profile update event's size to the
/// operation's partition and one of a reply's size to partition 0, where one command
/// service's replies go.
pub async fn kafka_produce(
    brokers: &str,
    topic: &str,
    partitions: i32,
    clients: usize,
    length: Duration,
) -> anyhow::Result<Rate> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .context("failed to create the Kafka admin client")?;
    admin
        .create_topics(
            [&NewTopic::new(
                topic,
                partitions,
                TopicReplication::Fixed(1),
            )],
            &AdminOptions::new(),
        )
        .await
        .context("failed to create the baseline topic")?;

    let mut queues = Vec::new();
    let mut committers = Vec::new();
    for partition in 0..partitions.max(1) {
        let producer: BaseProducer = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("transactional.id", format!("{topic}-{partition}"))
            .set("transaction.timeout.ms", "15000")
            .set("linger.ms", "1")
            .create()
            .context("failed to create a baseline producer")?;
        let initialised = tokio::task::spawn_blocking(move || {
            producer.init_transactions(KAFKA_TIMEOUT).map(|()| producer)
        });
        let producer = initialised
            .await?
            .context("failed to initialise transactions")?;
        let (queue, receiver) = mpsc::channel::<Waiter>(clients.max(1) * 2);
        queues.push(queue);
        let target = topic.to_owned();
        committers.push(std::thread::spawn(move || {
            commit_records(&producer, &target, partition, receiver)
        }));
    }
    let rate = group_commit_loop(clients, length, queues).await;
    let joined = tokio::task::spawn_blocking(move || {
        committers
            .into_iter()
            .map(|committer| {
                committer
                    .join()
                    .map_err(|_| anyhow!("a baseline committer panicked"))?
            })
            .sum::<anyhow::Result<u64>>()
    })
    .await?;
    let _ = admin.delete_topics(&[topic], &AdminOptions::new()).await;
    let transactions = joined?;
    rate.map(|rate| Rate {
        transactions,
        ..rate
    })
}

/// Commits the operations queued for one partition, one transaction per batch, and returns
/// the number of transactions.
fn commit_records(
    producer: &BaseProducer,
    topic: &str,
    partition: i32,
    mut receiver: mpsc::Receiver<Waiter>,
) -> anyhow::Result<u64> {
    let mut transactions = 0;
    let event = vec![b'e'; EVENT_BYTES];
    let reply = vec![b'r'; REPLY_BYTES];
    while let Some(first) = receiver.blocking_recv() {
        let batch = take_batch(&mut receiver, first, DECIDER_BATCH, DECIDER_WINDOW);
        producer.begin_transaction()?;
        for _ in &batch {
            let key = Uuid::new_v4().to_string();
            for (payload, to) in [(&event, partition), (&reply, 0)] {
                let mut record = BaseRecord::to(topic)
                    .key(&key)
                    .partition(to)
                    .payload(payload);
                while let Err((_, returned)) = producer.send(record) {
                    // The local queue is full: serve deliveries, then retry.
                    record = returned;
                    producer.poll(Duration::from_millis(1));
                }
            }
        }
        // As the decider does, because the commit's own flush waits in steps of 100 ms.
        accounts_platform::kafka::deliver_queued(producer, KAFKA_TIMEOUT)?;
        producer.commit_transaction(KAFKA_TIMEOUT)?;
        transactions += 1;
        for waiter in batch {
            let _ = waiter.send(());
        }
    }
    Ok(transactions)
}

/// Takes `first` and what else is queued, up to `limit`, waiting up to `window` for more.
fn take_batch<T>(
    queue: &mut mpsc::Receiver<T>,
    first: T,
    limit: usize,
    window: Duration,
) -> Vec<T> {
    let mut batch = vec![first];
    let deadline = Instant::now() + window;
    while batch.len() < limit {
        match queue.try_recv() {
            Ok(item) => batch.push(item),
            Err(mpsc::error::TryRecvError::Empty) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_micros(100));
            }
            Err(_) => break,
        }
    }
    batch
}

/// Fills the `accounts` table of the baseline database with `count` accounts and returns
/// their ids.
pub async fn seed_accounts(pool: &PgPool, count: usize) -> anyhow::Result<Vec<Uuid>> {
    let ids: Vec<Uuid> = (0..count).map(|_| Uuid::now_v7()).collect();
    sqlx::query(
        "INSERT INTO accounts (account_id, email, email_normalized, name, version, created_at, updated_at) \
         SELECT id, 'baseline-' || id || '@example.com', 'baseline-' || id || '@example.com', 'Baseline', 1, now(), now() \
         FROM UNNEST($1::uuid[]) AS id",
    )
    .bind(&ids)
    .execute(pool)
    .await
    .context("failed to seed the baseline accounts")?;
    Ok(ids)
}

/// Runs the projector's statement for a run of profile updates (one multi-row UPDATE
/// keeping each account's newest change) and its offset upserts straight through sqlx, on
/// one connection, in one transaction per batch.
///
/// NOTE: the projector also inserts each event's audit row in the same transaction. This
/// baseline leaves that insert out, so it is an upper bound of the projector's rate.
pub async fn postgres_upserts(
    pool: &PgPool,
    accounts: &[Uuid],
    partitions_of_log: i32,
    clients: usize,
    length: Duration,
) -> anyhow::Result<Rate> {
    let (queue, mut receiver) = mpsc::channel::<Waiter>(clients.max(1) * 2);
    let accounts = accounts.to_vec();
    let mut connection = pool.acquire().await?.detach();
    let committer = tokio::spawn(async move {
        let mut transactions = 0_u64;
        let mut version = 1_i64;
        let mut rng = rand::rngs::StdRng::from_entropy();
        while let Some(first) = receiver.recv().await {
            let mut batch = vec![first];
            let deadline = tokio::time::Instant::now() + PROJECTOR_WINDOW;
            while batch.len() < PROJECTOR_BATCH {
                match tokio::time::timeout_at(deadline, receiver.recv()).await {
                    Ok(Some(waiter)) => batch.push(waiter),
                    _ => break,
                }
            }
            let mut transaction = sqlx::Connection::begin(&mut connection).await?;
            let mut partitions = std::collections::BTreeSet::new();
            // One change per account, the newest, as the projector keeps for a run.
            let mut changes: std::collections::HashMap<Uuid, i64> = Default::default();
            for _ in &batch {
                version += 1;
                let account = accounts[rng.gen_range(0..accounts.len().max(1))];
                changes.insert(account, version);
                partitions.insert(rng.gen_range(0..partitions_of_log.max(1)));
            }
            let (ids, versions): (Vec<Uuid>, Vec<i64>) = changes.into_iter().unzip();
            let names: Vec<String> = versions
                .iter()
                .map(|version| format!("Baseline {version}"))
                .collect();
            let companies = vec![Some("Company"); ids.len()];
            let industries = vec![Some("software"); ids.len()];
            let phones = vec![None::<String>; ids.len()];
            let times = vec![chrono::Utc::now(); ids.len()];
            sqlx::query(accounts_projector::project::UPDATE_PROFILES)
                .bind(&ids)
                .bind(&names)
                .bind(&companies)
                .bind(&industries)
                .bind(&phones)
                .bind(&versions)
                .bind(&times)
                .execute(&mut *transaction)
                .await?;
            for partition in partitions {
                sqlx::query(
                    "INSERT INTO projection_offsets (projection, topic, partition, next_offset, updated_at) \
                     VALUES ('baseline', 'baseline', $1, $2, now()) ON CONFLICT (projection, topic, partition) \
                     DO UPDATE SET next_offset = GREATEST(projection_offsets.next_offset, EXCLUDED.next_offset), updated_at = now()",
                )
                .bind(partition)
                .bind(version)
                .execute(&mut *transaction)
                .await?;
            }
            transaction.commit().await?;
            transactions += 1;
            for waiter in batch {
                let _ = waiter.send(());
            }
        }
        anyhow::Ok(transactions)
    });
    let rate = group_commit_loop(clients, length, vec![queue]).await;
    let transactions = committer
        .await
        .context("the baseline committer panicked")??;
    rate.map(|rate| Rate {
        transactions,
        ..rate
    })
}

/// Runs the query service's profile read straight against PostgreSQL, from `clients`
/// closed-loop clients sharing a pool as large as the query service's.
pub async fn postgres_point_reads(
    pool: &PgPool,
    accounts: &[Uuid],
    clients: usize,
    length: Duration,
) -> anyhow::Result<Rate> {
    let deadline = Instant::now() + length;
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..clients.max(1) {
        let pool = pool.clone();
        let accounts = accounts.to_vec();
        tasks.spawn(async move {
            let mut rng = rand::rngs::StdRng::from_entropy();
            let mut reads = 0_u64;
            while Instant::now() < deadline {
                let account = accounts[rng.gen_range(0..accounts.len().max(1))];
                let row: Option<ProfileRow> = sqlx::query_as(
                    "SELECT account_id, email, email_verified, pending_email, name, company_name, industry, business_phone, picture_sha256, version, updated_at \
                     FROM accounts WHERE account_id = $1",
                )
                .bind(account)
                .fetch_optional(&pool)
                .await?;
                if row.is_none() {
                    return Err(anyhow!("baseline account {account} is missing"));
                }
                reads += 1;
            }
            anyhow::Ok(reads)
        });
    }
    let mut operations = 0;
    while let Some(reads) = tasks.join_next().await {
        operations += reads.context("a baseline reader panicked")??;
    }
    Ok(Rate {
        operations,
        elapsed: started.elapsed(),
        transactions: 0,
    })
}

type ProfileRow = (
    Uuid,
    String,
    bool,
    Option<String>,
    String,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
    i64,
    chrono::DateTime<chrono::Utc>,
);

/// Measures argon2id password hashes per second with the command service's default
/// parameters and one hashing thread per core.
pub async fn argon2_hashes(length: Duration) -> anyhow::Result<Rate> {
    let threads = std::thread::available_parallelism().map_or(2, usize::from);
    let config = HashingConfig {
        memory_kib: 19 * 1024,
        iterations: 2,
        parallelism: 1,
        max_concurrent: threads,
    };
    let hasher = PasswordHasherPool::new(&config)?;
    let deadline = Instant::now() + length;
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..threads {
        let hasher = hasher.clone();
        tasks.spawn(async move {
            let mut hashes = 0_u64;
            while Instant::now() < deadline {
                hasher
                    .hash(SecretString::from("baseline password of some length"))
                    .await?;
                hashes += 1;
            }
            anyhow::Ok(hashes)
        });
    }
    let mut operations = 0;
    while let Some(hashes) = tasks.join_next().await {
        operations += hashes.context("a hashing task panicked")??;
    }
    Ok(Rate {
        operations,
        elapsed: started.elapsed(),
        transactions: 0,
    })
}
