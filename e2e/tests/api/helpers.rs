//! Starts the three services in-process against the real broker and database, each test
//! with its own topic prefix and database.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use accounts_command::{serve_api, spawn_deciders, DeciderHandle, ServeConfig};
use accounts_platform::{DatabaseConfig, KafkaConfig};
use accounts_projector::{spawn_projector, ProjectorControl};
use anyhow::Context;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use reqwest::{Response, StatusCode};
use serde_json::{json, Value};
use sqlx::{Connection, PgConnection, PgPool};
use tokio::task::JoinHandle;
use uuid::Uuid;

pub const PARTITIONS: i32 = 6;
pub const PASSWORD: &str = "Correct-Horse-9-battery";
/// 32 fixed bytes, base64: the tests' AES-256-GCM key.
const TEST_ENCRYPTION_KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

pub struct TestApp {
    pub command_url: String,
    pub query_url: String,
    pub http: reqwest::Client,
    pub kafka: KafkaConfig,
    pub pool: PgPool,
    pub deciders: Vec<DeciderHandle>,
    pub projector: Arc<ProjectorControl>,
    pub projector_task: JoinHandle<anyhow::Result<()>>,
    servers: Vec<JoinHandle<()>>,
}

impl Drop for TestApp {
    fn drop(&mut self) {
        for server in &self.servers {
            server.abort();
        }
        self.projector_task.abort();
        for decider in &self.deciders {
            decider.control.stop();
        }
    }
}

fn brokers() -> String {
    std::env::var("KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".to_owned())
}

fn admin_database_url() -> String {
    std::env::var("TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://accounts:accounts@127.0.0.1:5432/postgres".to_owned())
}

/// Creates an empty, migrated database and returns its URL.
pub async fn create_database() -> anyhow::Result<(String, PgPool)> {
    let admin_url = admin_database_url();
    let name = format!("accounts_test_{}", Uuid::new_v4().simple());
    let mut admin = PgConnection::connect(&admin_url)
        .await
        .context("connect to TEST_DATABASE_URL")?;
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut admin)
        .await?;
    let (base, _) = admin_url
        .rsplit_once('/')
        .context("TEST_DATABASE_URL has no database name")?;
    let url = format!("{base}/{name}");
    let pool = PgPool::connect(&url).await?;
    accounts_platform::db::migrate(&pool).await?;
    Ok((url, pool))
}

pub async fn spawn_app(decider_count: usize) -> TestApp {
    spawn_app_with(decider_count)
        .await
        .expect("failed to start the test stack")
}

async fn spawn_app_with(decider_count: usize) -> anyhow::Result<TestApp> {
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into());
    drop(
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_test_writer()
            .try_init(),
    );
    let kafka = KafkaConfig {
        brokers: brokers(),
        topic_prefix: format!("test-{}.", Uuid::new_v4().simple()),
        partitions: PARTITIONS,
    };
    accounts_platform::kafka::create_topics(&kafka).await?;
    let (database_url, pool) = create_database().await?;

    let deciders = spawn_deciders(&kafka, decider_count)?;
    let projector = Arc::new(ProjectorControl::default());
    let projector_task = spawn_projector(kafka.clone(), pool.clone(), projector.clone()).await?;

    let database = DatabaseConfig {
        url: database_url.clone().into(),
        max_connections: 10,
    };
    let command_config = ServeConfig {
        kafka: kafka.clone(),
        database: database.clone(),
        hashing: accounts_command::password::HashingConfig {
            memory_kib: 19 * 1024,
            iterations: 2,
            parallelism: 1,
            max_concurrent: 2,
        },
        rate_limits: accounts_command::ratelimit::RateLimitConfig {
            sign_in_per_ip: 100,
            sign_in_per_account: 5,
        },
        sessions: accounts_platform::SessionConfig { idle_minutes: 30 },
        encryption: accounts_command::secrets::EncryptionConfig {
            keys: format!("test={TEST_ENCRYPTION_KEY}").into(),
            active_key_id: "test".into(),
        },
        step_up_minutes: 10,
        mfa_lock_after: 3,
        mfa_lock_base_seconds: 1,
        addr: "127.0.0.1:0".parse()?,
        decider_workers: 0,
        session_ttl_hours: 24,
        reply_timeout_ms: 30_000,
        visibility_timeout_ms: 5_000,
    };
    let command_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let command_url = format!("http://{}", command_listener.local_addr()?);
    let command_server = serve_api(&command_config, command_listener).await?;

    let query_config = accounts_query::ServeConfig {
        kafka: kafka.clone(),
        database,
        addr: "127.0.0.1:0".parse()?,
        sessions: accounts_platform::SessionConfig { idle_minutes: 30 },
    };
    let query_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let query_url = format!("http://{}", query_listener.local_addr()?);
    let query_server = accounts_query::serve_api(&query_config, query_listener).await?;

    Ok(TestApp {
        command_url,
        query_url,
        http: reqwest::Client::new(),
        kafka,
        pool,
        deciders,
        projector,
        projector_task,
        servers: vec![command_server, query_server],
    })
}

/// A registered account with an open session.
pub struct User {
    pub account_id: Uuid,
    pub email: String,
    pub token: String,
}

impl TestApp {
    pub async fn register(&self, email: &str, name: &str) -> Response {
        self.http
            .post(format!("{}/v1/accounts", self.command_url))
            .json(&json!({"email": email, "password": PASSWORD, "name": name}))
            .send()
            .await
            .expect("register request failed")
    }

    pub async fn sign_in(&self, email: &str, password: &str) -> Response {
        self.http
            .post(format!("{}/v1/sessions", self.command_url))
            .json(&json!({"email": email, "password": password}))
            .send()
            .await
            .expect("sign-in request failed")
    }

    /// Registers a fresh account and signs it in.
    pub async fn new_user(&self) -> User {
        let email = format!("user-{}@example.com", Uuid::new_v4().simple());
        let registered = self.register(&email, "Test User").await;
        assert_eq!(registered.status(), StatusCode::CREATED);
        let account_id: Uuid = registered.json::<Value>().await.unwrap()["account_id"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        let session = self.sign_in(&email, PASSWORD).await;
        assert_eq!(session.status(), StatusCode::CREATED);
        let token = session.json::<Value>().await.unwrap()["token"]
            .as_str()
            .unwrap()
            .to_owned();
        User {
            account_id,
            email,
            token,
        }
    }

    pub fn patch_profile(&self, user: &User, body: &Value) -> reqwest::RequestBuilder {
        self.http
            .patch(format!("{}/v1/profile", self.command_url))
            .bearer_auth(&user.token)
            .json(body)
    }

    pub async fn profile(&self, user: &User) -> Response {
        self.http
            .get(format!("{}/v1/profile", self.query_url))
            .bearer_auth(&user.token)
            .send()
            .await
            .expect("profile request failed")
    }

    /// Reads every committed event of the event topic.
    pub fn committed_events(&self) -> Vec<Event> {
        read_topic(&self.kafka, &self.kafka.topics().events, "read_committed")
    }

    /// Reads every event record, including those of aborted transactions.
    pub fn all_event_records(&self) -> Vec<Event> {
        read_topic(&self.kafka, &self.kafka.topics().events, "read_uncommitted")
    }

    /// Returns the sum of the event partitions' high watermarks.
    pub fn event_log_end(&self) -> i64 {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &self.kafka.brokers)
            .create()
            .unwrap();
        (0..self.kafka.partitions)
            .map(|partition| {
                consumer
                    .fetch_watermarks(
                        &self.kafka.topics().events,
                        partition,
                        Duration::from_secs(10),
                    )
                    .unwrap()
                    .1
            })
            .sum()
    }

    /// Waits until the stored projection offsets pass the last committed event of every
    /// partition. (The high watermark lies past the final transaction marker, which a
    /// read_committed reader never receives, so it is not the target.)
    pub async fn wait_until_projected(&self, pool: &PgPool) {
        let mut targets: HashMap<i32, i64> = HashMap::new();
        for event in self.committed_events() {
            let next = targets.entry(event.partition).or_default();
            *next = (*next).max(event.offset + 1);
        }
        let topic = self.kafka.topics().events;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let stored: HashMap<i32, i64> = sqlx::query_as::<_, (i32, i64)>(
                "SELECT partition, next_offset FROM projection_offsets WHERE topic = $1",
            )
            .bind(&topic)
            .fetch_all(pool)
            .await
            .unwrap()
            .into_iter()
            .collect();
            if targets
                .iter()
                .all(|(partition, target)| stored.get(partition).is_some_and(|next| next >= target))
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "projection did not catch up within 60 s: {stored:?} < {targets:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// An event record as read back from Kafka.
#[derive(Debug, Clone)]
pub struct Event {
    pub partition: i32,
    pub offset: i64,
    pub value: Value,
}

impl Event {
    pub fn subject(&self) -> &str {
        self.value["subject"].as_str().unwrap_or_default()
    }

    pub fn event_type(&self) -> &str {
        self.value["type"].as_str().unwrap_or_default()
    }

    pub fn sequence(&self) -> u64 {
        self.value["aggregatesequence"].as_u64().unwrap_or_default()
    }
}

fn read_topic(kafka: &KafkaConfig, topic: &str, isolation: &str) -> Vec<Event> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &kafka.brokers)
        .set("group.id", format!("{}test-reader", kafka.topic_prefix))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .set("isolation.level", isolation)
        .create()
        .unwrap();
    let mut assignment = TopicPartitionList::new();
    for partition in 0..kafka.partitions {
        assignment
            .add_partition_offset(topic, partition, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&assignment).unwrap();
    let mut finished = std::collections::HashSet::new();
    let mut events = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while finished.len() < kafka.partitions as usize {
        assert!(
            Instant::now() < deadline,
            "reading {topic} took more than 30 s"
        );
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(message)) => events.push(Event {
                partition: message.partition(),
                offset: message.offset(),
                value: serde_json::from_slice(message.payload().unwrap_or_default()).unwrap(),
            }),
            Some(Err(KafkaError::PartitionEOF(partition))) => {
                finished.insert(partition);
            }
            Some(Err(error)) => panic!("failed to read {topic}: {error}"),
            None => {}
        }
    }
    events
}

/// Reads every record of `topic`, those of aborted transactions included.
pub fn read_all_records(kafka: &KafkaConfig, topic: &str) -> Vec<Event> {
    read_topic(kafka, topic, "read_uncommitted")
}

/// Returns the sequence numbers of `subject`'s events, in log order.
pub fn sequences_of(events: &[Event], subject: &str) -> Vec<u64> {
    events
        .iter()
        .filter(|event| event.subject() == subject)
        .map(Event::sequence)
        .collect()
}
