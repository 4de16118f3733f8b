//! Configuration shared by every service, read from flags or the environment.

use secrecy::SecretString;

use accounts_events::{Topics, DEFAULT_PARTITIONS};

/// Kafka connection and topic layout.
#[derive(Clone, Debug, clap::Args)]
pub struct KafkaConfig {
    /// Kafka bootstrap servers, comma separated.
    #[arg(long, env = "KAFKA_BROKERS", default_value = "127.0.0.1:9092")]
    pub brokers: String,

    /// Prefix put in front of every topic name, so that several stacks can share a broker.
    #[arg(long, env = "TOPIC_PREFIX", default_value = "")]
    pub topic_prefix: String,

    /// Partitions of the command and event topics. Fixed when the topics are created.
    #[arg(long, env = "KAFKA_PARTITIONS", default_value_t = DEFAULT_PARTITIONS)]
    pub partitions: i32,
}

impl KafkaConfig {
    /// Returns the topic names with the configured prefix.
    pub fn topics(&self) -> Topics {
        Topics::with_prefix(&self.topic_prefix)
    }
}

/// PostgreSQL connection.
#[derive(Clone, Debug, clap::Args)]
pub struct DatabaseConfig {
    /// PostgreSQL connection URL.
    #[arg(
        long = "database-url",
        env = "DATABASE_URL",
        default_value = "postgres://accounts:accounts@127.0.0.1:5432/accounts",
        hide_env_values = true
    )]
    pub url: SecretString,

    /// Maximum connections in the pool.
    #[arg(
        long = "database-max-connections",
        env = "DATABASE_MAX_CONNECTIONS",
        default_value_t = 16
    )]
    pub max_connections: u32,
}
