//! The write side of the account settings backend: the HTTP command API and the decider
//! workers that own the partitions of the command and event topics.

pub mod bus;
pub mod decider;
pub mod domain;
pub mod email;
pub mod http;
pub mod links;
pub mod mfa;
pub mod password;
pub mod picture;
pub mod processor;
pub mod ratelimit;
pub mod reset;
pub mod roles;
pub mod security;
pub mod wire;
pub mod workspaces;

pub use accounts_platform::secrets;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use accounts_platform::http::{health_routes, HealthApi, Readiness};
use accounts_platform::{DatabaseConfig, KafkaConfig, ProjectionProgress};
use anyhow::Context;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use utoipa::OpenApi;

use crate::bus::CommandBus;
use crate::http::{AppState, CommandApi};
use crate::password::{HashingConfig, PasswordHasherPool};
use crate::processor::{spawn_worker, ProcessorConfig, WorkerControl};

/// Settings of `accounts-command serve`.
#[derive(Clone, Debug, clap::Args)]
pub struct ServeConfig {
    #[command(flatten)]
    pub kafka: KafkaConfig,
    #[command(flatten)]
    pub database: DatabaseConfig,
    #[command(flatten)]
    pub hashing: HashingConfig,
    #[command(flatten)]
    pub rate_limits: ratelimit::RateLimitConfig,
    #[command(flatten)]
    pub sessions: accounts_platform::SessionConfig,
    #[command(flatten)]
    pub encryption: secrets::EncryptionConfig,
    /// Minutes a password or second-factor check counts for sensitive changes, such as
    /// turning on two-factor authentication.
    #[arg(long, env = "STEP_UP_MINUTES", default_value_t = 10)]
    pub step_up_minutes: i64,
    /// Wrong second-factor codes in a row after which the factor locks.
    #[arg(long, env = "MFA_LOCK_AFTER", default_value_t = 5)]
    pub mfa_lock_after: u32,
    /// Seconds of the first second-factor lock; each further wrong code doubles it, up to an hour.
    #[arg(long, env = "MFA_LOCK_BASE_SECONDS", default_value_t = 30)]
    pub mfa_lock_base_seconds: u64,
    /// Hours a link mailed to verify an address stays valid.
    #[arg(long, env = "EMAIL_LINK_TTL_HOURS", default_value_t = 24)]
    pub email_link_ttl_hours: i64,
    /// Minutes a password-reset link stays valid.
    #[arg(long, env = "PASSWORD_RESET_TTL_MINUTES", default_value_t = 60)]
    pub reset_link_ttl_minutes: i64,
    /// Address the HTTP API listens on.
    #[arg(long, env = "COMMAND_ADDR", default_value = "127.0.0.1:8080")]
    pub addr: SocketAddr,
    /// Decider workers run by this process; 0 runs only the HTTP API.
    #[arg(long, env = "DECIDER_WORKERS", default_value_t = 1)]
    pub decider_workers: usize,
    /// Lifetime of a session in hours.
    #[arg(long, env = "SESSION_TTL_HOURS", default_value_t = 24)]
    pub session_ttl_hours: i64,
    /// How long a request waits for the decider's reply, in milliseconds.
    #[arg(long, env = "COMMAND_REPLY_TIMEOUT_MS", default_value_t = 10_000)]
    pub reply_timeout_ms: u64,
    /// How long a response waits for the read models to show its events, in milliseconds;
    /// past it the response is 202 with the position.
    #[arg(long, env = "VISIBILITY_TIMEOUT_MS", default_value_t = 5_000)]
    pub visibility_timeout_ms: u64,
}

/// A running decider worker.
pub struct DeciderHandle {
    pub control: Arc<WorkerControl>,
    pub thread: std::thread::JoinHandle<()>,
}

/// Starts `count` decider workers, each on its own thread.
pub fn spawn_deciders(kafka: &KafkaConfig, count: usize) -> anyhow::Result<Vec<DeciderHandle>> {
    let config = ProcessorConfig {
        kafka: kafka.clone(),
        source: "/accounts-command".to_owned(),
    };
    (0..count)
        .map(|_| {
            let control = Arc::new(WorkerControl::default());
            let thread = spawn_worker(config.clone(), control.clone())
                .context("failed to start decider thread")?;
            Ok(DeciderHandle { control, thread })
        })
        .collect()
}

/// Serves the HTTP API on `listener` until the returned task is aborted.
pub async fn serve_api(
    config: &ServeConfig,
    listener: TcpListener,
) -> anyhow::Result<JoinHandle<()>> {
    let pool = accounts_platform::db::connect(&config.database).await?;
    let topics = config.kafka.topics();
    let state = AppState {
        bus: CommandBus::start(
            &config.kafka,
            Duration::from_millis(config.reply_timeout_ms),
        )
        .await?,
        progress: ProjectionProgress::start(pool.clone(), topics.events).await?,
        hasher: PasswordHasherPool::new(&config.hashing)?,
        sign_in_limits: ratelimit::AttemptLimits::sign_in(&config.rate_limits),
        reset_limits: ratelimit::AttemptLimits::password_reset(&config.rate_limits),
        email_link_ttl: chrono::Duration::hours(config.email_link_ttl_hours),
        reset_link_ttl: chrono::Duration::minutes(config.reset_link_ttl_minutes),
        secrets: secrets::SecretBox::from_config(&config.encryption)?,
        step_up_window: chrono::Duration::minutes(config.step_up_minutes),
        mfa_lock_after: config.mfa_lock_after.max(1),
        mfa_lock_base_seconds: config.mfa_lock_base_seconds.max(1),
        auth: accounts_platform::SessionAuth::new(pool.clone(), &config.sessions),
        pool: pool.clone(),
        partitions: config.kafka.partitions,
        session_ttl: chrono::Duration::hours(config.session_ttl_hours),
        visibility_timeout: Duration::from_millis(config.visibility_timeout_ms),
    };
    let mut openapi = CommandApi::openapi();
    openapi.merge(security::SecurityApi::openapi());
    openapi.merge(mfa::MfaApi::openapi());
    openapi.merge(email::EmailApi::openapi());
    openapi.merge(reset::ResetApi::openapi());
    openapi.merge(workspaces::WorkspaceApi::openapi());
    openapi.merge(picture::PictureApi::openapi());
    openapi.merge(HealthApi::openapi());
    let app = accounts_platform::http::finish_api(
        http::routes(state.clone())
            .merge(security::routes(state.clone()))
            .merge(mfa::routes(state.clone()))
            .merge(email::routes(state.clone()))
            .merge(reset::routes(state.clone()))
            .merge(workspaces::routes(state.clone()))
            .merge(picture::routes(state))
            .merge(health_routes(Readiness::new(pool, &config.kafka)?, openapi)),
    );
    let address = listener.local_addr()?;
    tracing::info!(%address, "command API listening");
    Ok(tokio::spawn(async move {
        let service = app.into_make_service_with_connect_info::<SocketAddr>();
        if let Err(error) = axum::serve(listener, service).await {
            tracing::error!(%error, "command API stopped");
        }
    }))
}
