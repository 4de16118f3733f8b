//! Audit endpoints: an account's complete history and its state at any past instant, for
//! accounts with the `auditor` role only.
//!
//! Both read the redacted history that the projector keeps in `audit_events`. The state is
//! rebuilt with `AccountState::evolve`, the fold the write side uses. Redaction keeps the
//! JSON types, so redacted events still decode.

use std::collections::HashMap;

use accounts_events::{AccountState, Actor, ActorKind, DomainEvent, EventMeta, RecordedEvent};
use accounts_platform::problem::internal_error;
use accounts_platform::{FieldError, Problem, ProblemDetails};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use chrono::{DateTime, Utc};
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::{await_min_position, picture_url, AppState};

/// Largest page of `GET /v1/audit/accounts/{id}/events`.
const MAX_PAGE: i64 = 1000;
const DEFAULT_PAGE: i64 = 100;

/// One event of an account's history.
#[derive(Serialize, ToSchema)]
pub struct AuditEntry {
    pub sequence: i64,
    pub event_id: Uuid,
    #[serde(rename = "type")]
    pub event_type: String,
    pub schema_version: i32,
    pub time: DateTime<Utc>,
    /// `{type, id, ip, user_agent}`: an account, a service or an anonymous request.
    #[schema(value_type = Object)]
    pub actor: serde_json::Value,
    /// The payload with hashes, encrypted secrets and tokens replaced by `[redacted]`.
    #[schema(value_type = Object)]
    pub data: serde_json::Value,
    /// The event's partition in `accounts.events.v1`.
    pub partition: i32,
    pub offset: i64,
}

/// A page of history.
#[derive(Serialize, ToSchema)]
pub struct AuditPage {
    pub events: Vec<AuditEntry>,
    /// Pass as `after` for the next page; absent on the last page.
    pub next: Option<i64>,
}

/// The account as of an instant.
#[derive(Serialize, ToSchema)]
pub struct AuditState {
    pub account_id: Uuid,
    pub at: DateTime<Utc>,
    /// The sequence number of the last event included.
    pub sequence: u64,
    pub email: String,
    pub email_verified: bool,
    pub pending_email: Option<String>,
    pub name: String,
    pub company_name: Option<String>,
    pub industry: Option<String>,
    pub business_phone: Option<String>,
    pub picture_url: Option<String>,
    pub mfa_enabled: bool,
    pub backup_codes_remaining: usize,
    /// Sessions neither revoked nor expired at that instant.
    pub active_sessions: usize,
    pub password_changed_at: Option<DateTime<Utc>>,
    pub roles: Vec<String>,
    pub registered_at: Option<DateTime<Utc>>,
    pub updated_at: Option<DateTime<Utc>>,
}

fn invalid(field: &str, code: &str, message: &str) -> Problem {
    Problem::validation(vec![FieldError {
        field: field.into(),
        code: code.into(),
        message: message.into(),
    }])
}

/// Checks the session and the auditor role, and parses the account id of the path.
async fn authorize(state: &AppState, headers: &HeaderMap, account: &str) -> Result<Uuid, Problem> {
    let caller = state.auth.authenticate(headers).await?;
    await_min_position(state, headers).await?;
    tracing::Span::current().record("account_id", tracing::field::display(caller.account_id));
    let auditor: Option<bool> =
        sqlx::query_scalar("SELECT 'auditor' = ANY(roles) FROM accounts WHERE account_id = $1")
            .bind(caller.account_id)
            .fetch_optional(&state.pool)
            .await
            .map_err(|error| {
                internal_error(&anyhow::Error::new(error).context("failed to load roles"))
            })?;
    if auditor != Some(true) {
        return Err(Problem::new(
            StatusCode::FORBIDDEN,
            "auditor_role_required",
            "only accounts with the auditor role may read audit endpoints; an operator grants it with accounts-command grant-role",
        ));
    }
    Uuid::parse_str(account)
        .map_err(|_| Problem::malformed("account_id", "use an account id, a UUID"))
}

fn account_not_found() -> Problem {
    Problem::new(
        StatusCode::NOT_FOUND,
        "account_not_found",
        "no account has this id",
    )
}

type AuditRow = (
    i64,
    Uuid,
    String,
    i32,
    DateTime<Utc>,
    serde_json::Value,
    serde_json::Value,
    i32,
    i64,
);

/// Returns an account's history in order, a page at a time.
#[utoipa::path(get, path = "/v1/audit/accounts/{account_id}/events", tag = "audit", params(
    ("account_id" = Uuid, Path),
    ("after" = Option<i64>, Query, description = "return events after this sequence number; 0 by default"),
    ("limit" = Option<i64>, Query, description = "at most this many events, 1 to 1000; 100 by default"),
), responses(
    (status = 200, body = AuditPage), (status = 400, body = ProblemDetails), (status = 401, body = ProblemDetails),
    (status = 403, body = ProblemDetails, description = "auditor_role_required"),
    (status = 404, body = ProblemDetails, description = "account_not_found"), (status = 422, body = ProblemDetails),
), security(("bearer" = [])))]
#[tracing::instrument(skip_all, fields(account_id = tracing::field::Empty))]
pub(crate) async fn list_events(
    State(state): State<AppState>,
    Path(account): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Result<Json<AuditPage>, Problem> {
    let account_id = authorize(&state, &headers, &account).await?;
    if let Some(unknown) = query.keys().find(|key| *key != "after" && *key != "limit") {
        return Err(invalid(
            unknown,
            "unknown_parameter",
            "use only after and limit",
        ));
    }
    let after = match query.get("after") {
        Some(text) => text
            .parse::<i64>()
            .ok()
            .filter(|after| *after >= 0)
            .ok_or_else(|| {
                invalid(
                    "after",
                    "invalid_after",
                    "use a sequence number of 0 or more",
                )
            })?,
        None => 0,
    };
    let limit = match query.get("limit") {
        Some(text) => text
            .parse::<i64>()
            .ok()
            .filter(|limit| (1..=MAX_PAGE).contains(limit))
            .ok_or_else(|| invalid("limit", "invalid_limit", "use a limit from 1 to 1000"))?,
        None => DEFAULT_PAGE,
    };
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM accounts WHERE account_id = $1)")
            .bind(account_id)
            .fetch_one(&state.pool)
            .await
            .map_err(|error| {
                internal_error(&anyhow::Error::new(error).context("failed to find the account"))
            })?;
    if !exists {
        return Err(account_not_found());
    }
    let rows: Vec<AuditRow> = sqlx::query_as(
        "SELECT sequence, event_id, event_type, schema_version, time, actor, data, kafka_partition, kafka_offset \
         FROM audit_events WHERE account_id = $1 AND sequence > $2 ORDER BY sequence LIMIT $3",
    )
    .bind(account_id)
    .bind(after)
    .bind(limit + 1)
    .fetch_all(&state.pool)
    .await
    .map_err(|error| internal_error(&anyhow::Error::new(error).context("failed to load the history")))?;
    let more = rows.len() as i64 > limit;
    let events: Vec<AuditEntry> = rows
        .into_iter()
        .take(usize::try_from(limit).unwrap_or(0))
        .map(
            |(
                sequence,
                event_id,
                event_type,
                schema_version,
                time,
                actor,
                data,
                partition,
                offset,
            )| {
                AuditEntry {
                    sequence,
                    event_id,
                    event_type,
                    schema_version,
                    time,
                    actor,
                    data,
                    partition,
                    offset,
                }
            },
        )
        .collect();
    let next = more
        .then(|| events.last().map(|entry| entry.sequence))
        .flatten();
    Ok(Json(AuditPage { events, next }))
}

/// Returns the account as of `at`, rebuilt from its history.
#[utoipa::path(get, path = "/v1/audit/accounts/{account_id}/state", tag = "audit", params(
    ("account_id" = Uuid, Path),
    ("at" = String, Query, description = "an RFC 3339 instant, such as 2026-12-04T12:00:00Z"),
), responses(
    (status = 200, body = AuditState), (status = 400, body = ProblemDetails), (status = 401, body = ProblemDetails),
    (status = 403, body = ProblemDetails, description = "auditor_role_required"),
    (status = 404, body = ProblemDetails, description = "account_not_found: none, or not yet registered at that instant"),
    (status = 422, body = ProblemDetails),
), security(("bearer" = [])))]
#[tracing::instrument(skip_all, fields(account_id = tracing::field::Empty))]
pub(crate) async fn state_at(
    State(state): State<AppState>,
    Path(account): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Result<Json<AuditState>, Problem> {
    let account_id = authorize(&state, &headers, &account).await?;
    let at = query.get("at").ok_or_else(|| {
        invalid(
            "at",
            "required",
            "give the instant as at=<RFC 3339>, such as 2026-12-04T12:00:00Z",
        )
    })?;
    let at = DateTime::parse_from_rfc3339(at)
        .map_err(|_| {
            invalid(
                "at",
                "invalid_instant",
                "use an RFC 3339 instant, such as 2026-12-04T12:00:00Z",
            )
        })?
        .with_timezone(&Utc);
    let rows: Vec<(i64, Uuid, String, i32, DateTime<Utc>, serde_json::Value)> = sqlx::query_as(
        "SELECT sequence, event_id, event_type, schema_version, time, data FROM audit_events \
         WHERE account_id = $1 AND time <= $2 ORDER BY sequence",
    )
    .bind(account_id)
    .bind(at)
    .fetch_all(&state.pool)
    .await
    .map_err(|error| {
        internal_error(&anyhow::Error::new(error).context("failed to load the history"))
    })?;

    let mut account = AccountState::default();
    for (sequence, event_id, event_type, schema_version, time, data) in rows {
        let event = DomainEvent::from_data(
            &event_type,
            u32::try_from(schema_version).unwrap_or(0),
            data,
        )
        .map_err(|error| {
            internal_error(
                &anyhow::Error::new(error).context(format!("failed to read event {event_id}")),
            )
        })?;
        let Some(event) = event else { continue };
        account.evolve(&RecordedEvent {
            meta: EventMeta {
                event_id,
                source: String::new(),
                time,
                subject: account_id.to_string(),
                aggregate_type: "account".to_owned(),
                sequence: u64::try_from(sequence).unwrap_or_default(),
                command_id: Uuid::nil(),
                correlation_id: Uuid::nil(),
                causation_id: Uuid::nil(),
                actor: Actor {
                    kind: ActorKind::Service,
                    id: None,
                    ip: None,
                    user_agent: None,
                },
                request_digest: None,
                previous_hash: None,
            },
            event,
        });
    }
    if !account.exists() {
        return Err(account_not_found());
    }
    let pending_email = account
        .pending_email
        .as_ref()
        .filter(|pending| pending.purpose == "email_change")
        .map(|pending| pending.email.clone())
        .or_else(|| {
            account
                .claiming_email
                .as_ref()
                .map(|(email, _)| email.clone())
        });
    Ok(Json(AuditState {
        account_id,
        at,
        sequence: account.version,
        email: account.email.clone(),
        email_verified: account.email_verified,
        pending_email,
        name: account.name.clone(),
        company_name: account.company_name.clone(),
        industry: account.industry.clone(),
        business_phone: account.business_phone.clone(),
        picture_url: account
            .picture
            .as_ref()
            .map(|picture| picture_url(&picture.sha256)),
        mfa_enabled: account.mfa_enabled(),
        backup_codes_remaining: account.backup_codes.iter().flatten().count(),
        active_sessions: account
            .sessions
            .values()
            .filter(|session| session.is_active(at))
            .count(),
        password_changed_at: account.password_changed_at,
        roles: account.roles.iter().cloned().collect(),
        registered_at: account.registered_at,
        updated_at: account.updated_at,
    }))
}
