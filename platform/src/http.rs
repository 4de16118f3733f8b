//! Endpoints every service has: `/healthz`, `/readyz`, `/metrics` and `/openapi.json`.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use rdkafka::consumer::{BaseConsumer, Consumer};
use sqlx::PgPool;
use utoipa::OpenApi;

use crate::config::KafkaConfig;
use crate::kafka::client_config;
use crate::telemetry::metrics_handle;

/// What `/readyz` checks: PostgreSQL answers a query and the Kafka cluster answers a
/// metadata request.
#[derive(Clone)]
pub struct Readiness {
    pool: PgPool,
    kafka: Arc<BaseConsumer>,
}

impl Readiness {
    /// Builds the checks over an existing pool and a new Kafka metadata client.
    pub fn new(pool: PgPool, kafka: &KafkaConfig) -> anyhow::Result<Self> {
        let client: BaseConsumer = client_config(kafka).create()?;
        Ok(Self {
            pool,
            kafka: Arc::new(client),
        })
    }
}

#[derive(OpenApi)]
#[openapi(paths(healthz, readyz, metrics))]
pub struct HealthApi;

/// Returns the routes for health, metrics and the given OpenAPI document.
pub fn health_routes(readiness: Readiness, openapi: utoipa::openapi::OpenApi) -> Router {
    let openapi = Arc::new(openapi);
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(readiness)
        .route(
            "/openapi.json",
            get(move || async move { Json(openapi.as_ref().clone()) }),
        )
}

/// The process is alive.
#[utoipa::path(get, path = "/healthz", tag = "operations", responses((status = 200, description = "alive")))]
pub async fn healthz() -> &'static str {
    "ok"
}

/// Kafka and PostgreSQL are reachable.
#[utoipa::path(get, path = "/readyz", tag = "operations", responses(
    (status = 200, description = "ready"),
    (status = 503, description = "Kafka or PostgreSQL is unreachable"),
))]
pub async fn readyz(State(readiness): State<Readiness>) -> Response {
    let database = sqlx::query("SELECT 1")
        .execute(&readiness.pool)
        .await
        .is_ok();
    let client = readiness.kafka.clone();
    let kafka = tokio::task::spawn_blocking(move || {
        client.fetch_metadata(None, Duration::from_secs(2)).is_ok()
    })
    .await
    .unwrap_or(false);
    let body = Json(serde_json::json!({"postgresql": database, "kafka": kafka}));
    if database && kafka {
        (StatusCode::OK, body).into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, body).into_response()
    }
}

/// Prometheus metrics in the text exposition format.
#[utoipa::path(get, path = "/metrics", tag = "operations", responses((status = 200, description = "metrics", content_type = "text/plain")))]
pub async fn metrics() -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        metrics_handle().render(),
    )
        .into_response()
}
