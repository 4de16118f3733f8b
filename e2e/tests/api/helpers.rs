//! Starts the three services in-process against the real broker and database, each test
//! with its own topic prefix and database.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
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
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer as _};
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
    notifier_task: JoinHandle<anyhow::Result<()>>,
    publisher: Arc<accounts_projector::public::PublisherControl>,
}

impl Drop for TestApp {
    fn drop(&mut self) {
        for server in &self.servers {
            server.abort();
        }
        self.projector_task.abort();
        self.notifier_task.abort();
        self.publisher.stop();
        for decider in &self.deciders {
            decider.control.stop();
        }
    }
}

fn brokers() -> String {
    std::env::var("KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".to_owned())
}

pub fn admin_database_url() -> String {
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

/// Returns the file that every test of this process logs to at debug level, so that a
/// test can check what the services wrote to their logs.
pub fn log_file() -> PathBuf {
    let directory = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/e2e-logs");
    directory.join(format!("api-{}.log", std::process::id()))
}

static TRACING: OnceLock<()> = OnceLock::new();

/// Logs to the test writer at RUST_LOG's level (warn by default), and everything from
/// debug level on to `log_file()`.
fn init_tracing() {
    TRACING.get_or_init(|| {
        let path = log_file();
        let Some(file) = path
            .parent()
            .and_then(|directory| std::fs::create_dir_all(directory).ok())
            .and_then(|()| std::fs::File::create(&path).ok())
        else {
            panic!("cannot create the log file {}", path.display());
        };
        let console = tracing_subscriber::fmt::layer()
            .with_test_writer()
            .with_filter(
                EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn")),
            );
        let to_file = tracing_subscriber::fmt::layer()
            .with_ansi(false)
            .with_writer(Mutex::new(file))
            .with_filter(EnvFilter::new(
                "debug,rdkafka=info,sqlx=info,hyper=info,hyper_util=info,h2=info,tower=info,tower_http=debug,reqwest=info,lettre=info",
            ));
        drop(
            tracing_subscriber::registry()
                .with(console)
                .with(to_file)
                .try_init(),
        );
    });
}

/// Returns the Maildir that the local SMTP server (deploy/local/smtp) writes to.
pub fn mail_dir() -> PathBuf {
    std::env::var_os("MAIL_DIR").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/local/state/mail"),
        PathBuf::from,
    )
}

/// Returns the mails delivered to `recipient`, oldest first, with quoted-printable soft
/// line breaks and `=3D` undone.
pub fn mails_to(recipient: &str) -> Vec<String> {
    let header = format!("X-RcptTo: {recipient}");
    let mut mails: Vec<(std::time::SystemTime, String)> = Vec::new();
    for folder in ["new", "cur"] {
        let Ok(entries) = std::fs::read_dir(mail_dir().join(folder)) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(text) = std::fs::read_to_string(entry.path()) else {
                continue;
            };
            if text.lines().any(|line| line.eq_ignore_ascii_case(&header)) {
                let modified = entry
                    .metadata()
                    .and_then(|metadata| metadata.modified())
                    .unwrap_or(std::time::UNIX_EPOCH);
                let decoded = text
                    .replace("=\r\n", "")
                    .replace("=\n", "")
                    .replace("=3D", "=");
                mails.push((modified, decoded));
            }
        }
    }
    mails.sort_by_key(|(modified, _)| *modified);
    mails.into_iter().map(|(_, text)| text).collect()
}

/// Waits up to 20 s until `recipient` has at least `count` mails, and returns them all.
pub async fn wait_for_mails(recipient: &str, count: usize) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mails = mails_to(recipient);
        if mails.len() >= count {
            return mails;
        }
        assert!(
            Instant::now() < deadline,
            "{recipient} got {} mails, not {count}, within 20 s (is deploy/local/smtp running?)",
            mails.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Returns the token of the first link in `mail` whose path is `path`, such as
/// `reset-password`.
pub fn link_token(mail: &str, path: &str) -> String {
    let marker = format!("/{path}?token=");
    let start = mail
        .find(&marker)
        .unwrap_or_else(|| panic!("no {path} link in the mail:\n{mail}"))
        + marker.len();
    mail[start..]
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
        .collect()
}

async fn spawn_app_with(decider_count: usize) -> anyhow::Result<TestApp> {
    init_tracing();
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
    let publisher = Arc::new(accounts_projector::public::PublisherControl::default());
    accounts_projector::public::spawn_publisher(kafka.clone(), publisher.clone())?;
    let encryption = accounts_command::secrets::EncryptionConfig {
        keys: format!("test={TEST_ENCRYPTION_KEY}").into(),
        active_key_id: "test".into(),
    };
    let mail = accounts_projector::notifier::MailConfig {
        smtp_host: "127.0.0.1".to_owned(),
        smtp_port: 2525,
        from: "Account settings <no-reply@accounts.test>".to_owned(),
        link_base_url: "http://dashboard.test".to_owned(),
    };
    let notifier_task = accounts_projector::notifier::spawn_notifier(
        kafka.clone(),
        pool.clone(),
        mail,
        accounts_command::secrets::SecretBox::from_config(&encryption)?,
    )
    .await?;

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
            reset_per_ip: 100,
            reset_per_account: 5,
        },
        sessions: accounts_platform::SessionConfig { idle_minutes: 30 },
        encryption,
        step_up_minutes: 10,
        mfa_lock_after: 3,
        mfa_lock_base_seconds: 1,
        addr: "127.0.0.1:0".parse()?,
        decider_workers: 0,
        session_ttl_hours: 24,
        reply_timeout_ms: 30_000,
        visibility_timeout_ms: 5_000,
        email_link_ttl_hours: 24,
        reset_link_ttl_minutes: 60,
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
        notifier_task,
        publisher,
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

    /// Sends a JSON POST to the command service, with a bearer token when given.
    pub async fn post(&self, path: &str, token: Option<&str>, body: &Value) -> Response {
        let mut request = self
            .http
            .post(format!("{}{path}", self.command_url))
            .json(body);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send().await.expect("POST request failed")
    }

    /// Returns the profile as JSON, failing the test unless it is 200.
    pub async fn profile_json(&self, user: &User) -> Value {
        let response = self.profile(user).await;
        assert_eq!(response.status(), StatusCode::OK);
        response.json().await.expect("profile is not JSON")
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

    /// Reads the profile once the read models include `position`, a command's log position.
    pub async fn profile_after(&self, user: &User, position: &str) -> Response {
        self.http
            .get(format!("{}/v1/profile", self.query_url))
            .bearer_auth(&user.token)
            .header("X-Min-Position", position)
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
                "SELECT partition, next_offset FROM projection_offsets WHERE projection = 'read_models' AND topic = $1",
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
    /// The record value as stored.
    pub raw: Vec<u8>,
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
                raw: message.payload().unwrap_or_default().to_vec(),
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

/// Reads every committed record of `topic`.
pub fn read_committed_records(kafka: &KafkaConfig, topic: &str) -> Vec<Event> {
    read_topic(kafka, topic, "read_committed")
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
