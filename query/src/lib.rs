//! The read API for the dashboard: profiles, pictures, sessions, security settings,
//! workspaces and reference data from the read models.

mod audit;
mod pictures;
mod workspaces;

use std::net::SocketAddr;
use std::time::Duration;

use accounts_events::INDUSTRIES;
use accounts_platform::auth::{bearer_token_hash, LIVE_SESSION};
use accounts_platform::http::{health_routes, HealthApi, Readiness};
use accounts_platform::problem::internal_error;
use accounts_platform::{
    DatabaseConfig, FieldError, KafkaConfig, Position, Problem, ProblemDetails, ProjectionProgress,
};
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use utoipa::{OpenApi, ToSchema};
use uuid::Uuid;

/// Returns the path under which this service serves the picture rendition `sha256`.
pub fn picture_url(sha256: &str) -> String {
    format!("/v1/pictures/{sha256}")
}

/// Maximum wait for `X-Min-Position`.
const MIN_POSITION_WAIT: Duration = Duration::from_secs(2);

/// Settings of `accounts-query serve`.
#[derive(Clone, Debug, clap::Args)]
pub struct ServeConfig {
    #[command(flatten)]
    pub kafka: KafkaConfig,
    #[command(flatten)]
    pub database: DatabaseConfig,
    /// Address the HTTP API listens on.
    #[arg(long, env = "QUERY_ADDR", default_value = "127.0.0.1:8081")]
    pub addr: SocketAddr,
    #[command(flatten)]
    pub sessions: accounts_platform::SessionConfig,
}

#[derive(Clone)]
pub(crate) struct AppState {
    pool: PgPool,
    auth: accounts_platform::SessionAuth,
    progress: ProjectionProgress,
    partitions: i32,
}

#[derive(OpenApi)]
#[openapi(
    info(title = "accounts-query", description = "Account settings: reads."),
    paths(
        get_profile,
        list_industries,
        list_sessions,
        get_security,
        pictures::get_own_picture,
        pictures::get_picture,
        workspaces::list_members,
        workspaces::list_agents,
        audit::list_events,
        audit::state_at
    ),
    components(schemas(
        Profile,
        IndustryOption,
        SessionView,
        SecuritySummary,
        workspaces::MemberView,
        workspaces::AgentView,
        workspaces::AgentOwner,
        audit::AuditEntry,
        audit::AuditPage,
        audit::AuditState,
        ProblemDetails,
        FieldError
    ))
)]
struct QueryApi;

/// Serves the query API on `listener` until the returned task is aborted.
pub async fn serve_api(
    config: &ServeConfig,
    listener: TcpListener,
) -> anyhow::Result<JoinHandle<()>> {
    let pool = accounts_platform::db::connect(&config.database).await?;
    let state = AppState {
        progress: ProjectionProgress::start(pool.clone(), config.kafka.topics().events).await?,
        auth: accounts_platform::SessionAuth::new(pool.clone(), &config.sessions),
        pool: pool.clone(),
        partitions: config.kafka.partitions,
    };
    let mut openapi = QueryApi::openapi();
    openapi.merge(HealthApi::openapi());
    let app = accounts_platform::http::finish_api(
        Router::new()
            .route("/v1/profile", get(get_profile))
            .route("/v1/industries", get(list_industries))
            .route("/v1/sessions", get(list_sessions))
            .route("/v1/security", get(get_security))
            .route("/v1/profile/picture", get(pictures::get_own_picture))
            .route("/v1/pictures/{sha256}", get(pictures::get_picture))
            .route(
                "/v1/workspaces/{workspace_id}/members",
                get(workspaces::list_members),
            )
            .route(
                "/v1/workspaces/{workspace_id}/agents",
                get(workspaces::list_agents),
            )
            .route(
                "/v1/audit/accounts/{account_id}/events",
                get(audit::list_events),
            )
            .route(
                "/v1/audit/accounts/{account_id}/state",
                get(audit::state_at),
            )
            .with_state(state)
            .merge(health_routes(Readiness::new(pool, &config.kafka)?, openapi)),
    );
    let address = listener.local_addr()?;
    tracing::info!(%address, "query API listening");
    Ok(tokio::spawn(async move {
        if let Err(error) = axum::serve(listener, app).await {
            tracing::error!(%error, "query API stopped");
        }
    }))
}

/// Waits until the read models include the `X-Min-Position` header's position, if any.
pub(crate) async fn await_min_position(
    state: &AppState,
    headers: &HeaderMap,
) -> Result<(), Problem> {
    let Some(value) = headers.get("x-min-position") else {
        return Ok(());
    };
    let position: Position = value
        .to_str()
        .ok()
        .and_then(|text| text.parse().ok())
        .ok_or_else(|| {
            Problem::malformed(
                "X-Min-Position",
                "use the position returned by a command, such as \"3-1042\"",
            )
        })?;
    if position.partition >= state.partitions {
        return Err(Problem::malformed(
            "X-Min-Position",
            format!(
                "position {position} names partition {}, but the event topic has {}",
                position.partition, state.partitions
            ),
        ));
    }
    if state.progress.wait_for(position, MIN_POSITION_WAIT).await {
        Ok(())
    } else {
        Err(Problem::unavailable(
            "projection_lagging",
            format!("the read models do not include position {position} yet; retry shortly"),
            1,
        ))
    }
}

/// The signed-in account's profile.
#[derive(Serialize, ToSchema)]
pub struct Profile {
    pub account_id: Uuid,
    pub email: String,
    pub email_verified: bool,
    /// The new address of an email change whose link was not opened yet.
    pub pending_email: Option<String>,
    pub name: String,
    pub company_name: Option<String>,
    /// Identifier from `GET /v1/industries`.
    pub industry: Option<String>,
    /// E.164, such as `+919988776655`.
    pub business_phone: Option<String>,
    pub picture_url: Option<String>,
    pub version: i64,
    pub updated_at: DateTime<Utc>,
}

const PROFILE_COLUMNS: &str = "SELECT account_id, email, email_verified, pending_email, name, \
     company_name, industry, business_phone, picture_sha256, version, updated_at FROM accounts";

/// The caller's session and profile, selected by the session token's hash.
static PROFILE_OF_SESSION: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "WITH caller AS ({LIVE_SESSION}) \
         SELECT caller.session_id, caller.stale, profile.* FROM caller \
         JOIN ({PROFILE_COLUMNS}) AS profile USING (account_id)"
    )
});

#[derive(sqlx::FromRow)]
struct SessionProfileRow {
    session_id: Uuid,
    stale: bool,
    #[sqlx(flatten)]
    profile: ProfileRow,
}

#[derive(sqlx::FromRow)]
struct ProfileRow {
    account_id: Uuid,
    email: String,
    email_verified: bool,
    pending_email: Option<String>,
    name: String,
    company_name: Option<String>,
    industry: Option<String>,
    business_phone: Option<String>,
    picture_sha256: Option<String>,
    version: i64,
    updated_at: DateTime<Utc>,
}

/// Returns the signed-in account's profile.
#[utoipa::path(get, path = "/v1/profile", tag = "profile", params(
    ("X-Min-Position" = Option<String>, Header, description = "wait up to 2 s until the read models include this position"),
), responses(
    (status = 200, body = Profile, headers(("ETag" = String, description = "the account version"))),
    (status = 401, body = ProblemDetails), (status = 503, body = ProblemDetails, description = "projection_lagging"),
), security(("bearer" = [])))]
#[tracing::instrument(skip_all, fields(account_id = tracing::field::Empty))]
async fn get_profile(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    let row = if headers.contains_key("x-min-position") {
        let caller = state.auth.authenticate(&headers).await?;
        await_min_position(&state, &headers).await?;
        sqlx::query_as::<_, ProfileRow>(&format!("{PROFILE_COLUMNS} WHERE account_id = $1"))
            .bind(caller.account_id)
            .fetch_optional(&state.pool)
            .await
            .map_err(|error| {
                internal_error(&anyhow::Error::new(error).context("failed to load profile"))
            })?
    } else {
        // The session lookup and the profile read share one round trip.
        let token_sha256 = bearer_token_hash(&headers)?;
        let (idle_seconds, write_interval) = state.auth.live_session_limits();
        let row: Option<SessionProfileRow> = sqlx::query_as(&PROFILE_OF_SESSION)
            .bind(token_sha256)
            .bind(idle_seconds)
            .bind(write_interval)
            .fetch_optional(&state.pool)
            .await
            .map_err(|error| {
                internal_error(&anyhow::Error::new(error).context("failed to load profile"))
            })?;
        if let Some(row) = row.as_ref().filter(|row| row.stale) {
            state.auth.record_use(row.session_id).await?;
        }
        row.map(|row| row.profile)
    };
    let Some(row) = row else {
        return Err(Problem::unauthorized());
    };
    tracing::Span::current().record("account_id", tracing::field::display(row.account_id));

    let version = row.version;
    let profile = Profile {
        account_id: row.account_id,
        email: row.email,
        email_verified: row.email_verified,
        pending_email: row.pending_email,
        name: row.name,
        company_name: row.company_name,
        industry: row.industry,
        business_phone: row.business_phone,
        picture_url: row.picture_sha256.as_deref().map(picture_url),
        version,
        updated_at: row.updated_at,
    };
    let mut response = Json(profile).into_response();
    if let Ok(etag) = HeaderValue::from_str(&format!("\"{version}\"")) {
        response.headers_mut().insert(header::ETAG, etag);
    }
    Ok(response)
}

/// An industry a profile can name.
#[derive(Serialize, ToSchema)]
pub struct IndustryOption {
    pub id: &'static str,
    pub label: &'static str,
}

/// Lists the industries a profile can name. No session is needed.
#[utoipa::path(get, path = "/v1/industries", tag = "profile", responses((status = 200, body = Vec<IndustryOption>)))]
async fn list_industries() -> Json<Vec<IndustryOption>> {
    Json(
        INDUSTRIES
            .iter()
            .map(|(id, label)| IndustryOption { id, label })
            .collect(),
    )
}

/// An active session of the signed-in account.
#[derive(Serialize, ToSchema, sqlx::FromRow)]
pub struct SessionView {
    pub session_id: Uuid,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub user_agent: Option<String>,
    pub ip: Option<String>,
    /// True for the session that made this request.
    #[sqlx(default)]
    pub current: bool,
}

/// Lists the signed-in account's active sessions, newest first.
#[utoipa::path(get, path = "/v1/sessions", tag = "sessions", params(
    ("X-Min-Position" = Option<String>, Header, description = "wait up to 2 s until the read models include this position"),
), responses(
    (status = 200, body = Vec<SessionView>), (status = 401, body = ProblemDetails), (status = 503, body = ProblemDetails),
), security(("bearer" = [])))]
#[tracing::instrument(skip_all, fields(account_id = tracing::field::Empty))]
async fn list_sessions(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<Vec<SessionView>>, Problem> {
    let caller = state.auth.authenticate(&headers).await?;
    await_min_position(&state, &headers).await?;
    tracing::Span::current().record("account_id", tracing::field::display(caller.account_id));

    let mut sessions: Vec<SessionView> = sqlx::query_as(
        "SELECT s.session_id, s.created_at, s.expires_at, s.user_agent, s.ip FROM sessions s \
         LEFT JOIN session_activity a USING (session_id) \
         WHERE s.account_id = $1 AND s.revoked_at IS NULL AND s.expires_at > now() \
         AND COALESCE(a.last_seen_at, s.created_at) > now() - make_interval(secs => $2) \
         ORDER BY s.created_at DESC, s.session_id",
    )
    .bind(caller.account_id)
    .bind(state.auth.idle_seconds())
    .fetch_all(&state.pool)
    .await
    .map_err(|error| {
        internal_error(&anyhow::Error::new(error).context("failed to list sessions"))
    })?;
    for session in &mut sessions {
        session.current = session.session_id == caller.session_id;
    }
    Ok(Json(sessions))
}

/// The security settings of the signed-in account.
#[derive(Serialize, ToSchema, sqlx::FromRow)]
pub struct SecuritySummary {
    pub mfa_enabled: bool,
    pub backup_codes_remaining: i64,
    pub password_changed_at: Option<DateTime<Utc>>,
    pub email_verified: bool,
}

/// Returns whether MFA is on, how many backup codes are left and when the password changed.
#[utoipa::path(get, path = "/v1/security", tag = "security", params(
    ("X-Min-Position" = Option<String>, Header, description = "wait up to 2 s until the read models include this position"),
), responses(
    (status = 200, body = SecuritySummary), (status = 401, body = ProblemDetails), (status = 503, body = ProblemDetails),
), security(("bearer" = [])))]
#[tracing::instrument(skip_all, fields(account_id = tracing::field::Empty))]
async fn get_security(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<SecuritySummary>, Problem> {
    let caller = state.auth.authenticate(&headers).await?;
    await_min_position(&state, &headers).await?;
    tracing::Span::current().record("account_id", tracing::field::display(caller.account_id));

    let summary: Option<SecuritySummary> = sqlx::query_as(
        "SELECT c.totp_secret IS NOT NULL AS mfa_enabled, \
         (cardinality(c.backup_code_hashes) - cardinality(c.backup_codes_used))::bigint AS backup_codes_remaining, \
         c.password_changed_at, a.email_verified \
         FROM credentials c JOIN accounts a USING (account_id) WHERE c.account_id = $1",
    )
    .bind(caller.account_id)
    .fetch_optional(&state.pool)
    .await
    .map_err(|error| internal_error(&anyhow::Error::new(error).context("failed to load security settings")))?;
    summary.map(Json).ok_or_else(Problem::unauthorized)
}
