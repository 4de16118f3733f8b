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
use crate::problem::Problem;
use crate::telemetry::metrics_handle;

/// The checks of `/readyz`: PostgreSQL runs a query and the Kafka cluster returns a
/// metadata response.
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
    // Install the recorder now: metrics recorded before it exists are lost.
    drop(metrics_handle());
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

/// Reports that the process is alive.
#[utoipa::path(get, path = "/healthz", tag = "operations", responses((status = 200, description = "alive")))]
pub async fn healthz() -> &'static str {
    "ok"
}

/// Reports whether Kafka and PostgreSQL are reachable.
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

/// Renders Prometheus metrics in the text exposition format.
#[utoipa::path(get, path = "/metrics", tag = "operations", responses((status = 200, description = "metrics", content_type = "text/plain")))]
pub async fn metrics() -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        metrics_handle().render(),
    )
        .into_response()
}

/// Records `http_requests_total` and `http_request_duration_seconds` per route, method and
/// status. Use with `axum::middleware::from_fn`.
pub async fn track_requests(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let started = std::time::Instant::now();
    let route = request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |path| path.as_str().to_owned());
    let method = request.method().to_string();

    let response = next.run(request).await;

    let status = response.status().as_u16().to_string();
    let labels = [("route", route), ("method", method), ("status", status)];
    metrics::counter!("http_requests_total", &labels).increment(1);
    metrics::histogram!("http_request_duration_seconds", &labels)
        .record(started.elapsed().as_secs_f64());
    response
}

/// Maximum time a request may take, reading its body included, before it gets 408.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Adds what every API router shares: problem+json 404 and 405 responses, request
/// metrics, a request timeout, and request tracing.
pub fn finish_api(router: Router) -> Router {
    router
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .route_layer(axum::middleware::from_fn(track_requests))
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            REQUEST_TIMEOUT,
        ))
        // Failures are logged where they happen, with their cause, and expected 503s such as
        // `projection_lagging` are not errors.
        .layer(tower_http::trace::TraceLayer::new_for_http().on_failure(()))
}

async fn not_found() -> Problem {
    Problem::new(
        StatusCode::NOT_FOUND,
        "not_found",
        "no endpoint has this path; see /openapi.json",
    )
}

async fn method_not_allowed() -> Problem {
    Problem::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this endpoint does not accept that method; see /openapi.json",
    )
}
