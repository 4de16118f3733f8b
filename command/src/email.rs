//! Email verification and email change.
//!
//! Registration and `POST /v1/email-change` mail a link, and opening it calls
//! `POST /v1/email-change/confirm`. For the account's own address that verifies it. For a
//! new address it starts a saga of decider steps (confirm, claim, complete, release), and
//! each step commits in one Kafka transaction with the command of the next step. The account
//! moves to the new address once the email-claim aggregate grants it the claim.

use std::net::SocketAddr;

use accounts_events::{ActorKind, AggregateId};
use accounts_platform::problem::internal_error;
use accounts_platform::{Problem, ProblemDetails};
use axum::body::Body;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use chrono::Utc;
use serde::Deserialize;
use utoipa::{OpenApi, ToSchema};
use uuid::Uuid;

use crate::domain::EmailAddress;
use crate::http::{
    accepted_status, actor, command_id, idempotency_key, read_json, with_etag, AppState,
    CommandResponse,
};
use crate::security::require_recent_check;
use crate::wire::Command;

#[derive(OpenApi)]
#[openapi(
    paths(
        request_email_change,
        confirm_email,
        cancel_email_change,
        request_verification
    ),
    components(schemas(EmailChangeRequest, ConfirmEmailRequest))
)]
pub struct EmailApi;

/// Returns the routes of this module.
pub fn routes(state: AppState) -> Router {
    Router::new()
        .route(
            "/v1/email-change",
            post(request_email_change).delete(cancel_email_change),
        )
        .route("/v1/email-change/confirm", post(confirm_email))
        .route("/v1/email-verification", post(request_verification))
        .route("/v1/email-verification/confirm", post(confirm_email))
        .with_state(state)
}

/// Body of `POST /v1/email-change`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EmailChangeRequest {
    pub new_email: String,
}

/// Body of `POST /v1/email-change/confirm`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ConfirmEmailRequest {
    /// The `token` parameter of the mailed link.
    pub token: String,
}

/// Returns 503 when no encryption key is configured, because the mailed token could not
/// be sealed for the notifier.
pub(crate) fn mail_links(
    state: &AppState,
) -> Result<&accounts_platform::secrets::SecretBox, Problem> {
    state.secrets.as_ref().ok_or_else(|| {
        Problem::unavailable(
            "mail_links_unavailable",
            "this server has no ENCRYPTION_KEYS configured, so it cannot mail links",
            60,
        )
    })
}

/// Mails a verification link to a new address; the address changes once it is opened.
#[utoipa::path(post, path = "/v1/email-change", tag = "email", request_body = EmailChangeRequest, params(
    ("Idempotency-Key" = Option<String>, Header, description = "makes a retry return the first outcome"),
), responses(
    (status = 202, body = CommandResponse, description = "the link is on its way; an older link is void"),
    (status = 400, body = ProblemDetails), (status = 401, body = ProblemDetails),
    (status = 403, body = ProblemDetails, description = "reauthentication_required"),
    (status = 409, body = ProblemDetails, description = "email_taken"),
    (status = 422, body = ProblemDetails, description = "invalid_email or email_unchanged"),
), security(("bearer" = [])))]
#[tracing::instrument(skip_all, fields(account_id = tracing::field::Empty))]
pub async fn request_email_change(
    State(state): State<AppState>,
    ConnectInfo(address): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, Problem> {
    let caller = state.auth.authenticate(&headers).await?;
    let account_id = caller.account_id;
    tracing::Span::current().record("account_id", tracing::field::display(account_id));
    let request: EmailChangeRequest = read_json(&headers, body).await?;
    let key = idempotency_key(&headers)?;
    let email = EmailAddress::parse("new_email", &request.new_email)
        .map_err(|error| Problem::validation(vec![error]))?;
    require_recent_check(&state, caller).await?;
    let secrets = mail_links(&state)?;

    // The claim decides at confirmation, and this early check spares a mail that cannot work.
    let holder: Option<Uuid> = sqlx::query_scalar(
        "SELECT account_id FROM accounts WHERE email_normalized = $1 AND account_id <> $2 LIMIT 1",
    )
    .bind(email.normalized())
    .bind(account_id)
    .fetch_optional(&state.pool)
    .await
    .map_err(|error| {
        internal_error(&anyhow::Error::new(error).context("failed to look up the address"))
    })?;
    if holder.is_some() {
        return Err(Problem::new(
            StatusCode::CONFLICT,
            "email_taken",
            "an account with this email address already exists",
        ));
    }

    let token = crate::links::issue(secrets, account_id, Utc::now() + state.email_link_ttl)
        .map_err(|error| internal_error(&error))?;
    let command = Command::RequestEmailChange {
        account_id,
        email: email.as_typed().to_owned(),
        email_normalized: email.normalized().to_owned(),
        token,
    };
    let id = command_id(
        &account_id.to_string(),
        "request_email_change",
        key.as_deref(),
    );
    let actor = actor(
        ActorKind::Account,
        Some(account_id.to_string()),
        address,
        &headers,
    );
    let executed = state
        .execute(AggregateId::Account(account_id), id, None, actor, command)
        .await?;
    let body = CommandResponse {
        version: executed.version,
        position: executed.position.clone(),
    };
    Ok(with_etag(
        (StatusCode::ACCEPTED, Json(body)).into_response(),
        executed.version,
    ))
}

/// Opens a mailed link: verifies the account's address, or applies a pending change.
/// Needs no session, because the token proves control of the address.
#[utoipa::path(post, path = "/v1/email-change/confirm", tag = "email", request_body = ConfirmEmailRequest, responses(
    (status = 200, body = CommandResponse), (status = 400, body = ProblemDetails),
    (status = 409, body = ProblemDetails, description = "email_taken: another account took the address first"),
    (status = 410, body = ProblemDetails, description = "token_expired_or_superseded"),
    (status = 422, body = ProblemDetails, description = "invalid_token"),
    (status = 429, body = ProblemDetails),
))]
#[tracing::instrument(skip_all, fields(account_id = tracing::field::Empty))]
pub async fn confirm_email(
    State(state): State<AppState>,
    ConnectInfo(address): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, Problem> {
    let request: ConfirmEmailRequest = read_json(&headers, body).await?;
    let token = crate::links::parse("token", &request.token)
        .map_err(|error| Problem::validation(vec![error]))?;
    state.reset_limits.check_ip(address.ip())?;
    let account_id = token.account_id;
    tracing::Span::current().record("account_id", tracing::field::display(account_id));
    let command = Command::ConfirmEmail {
        account_id,
        token_sha256: token.token_sha256,
    };
    let executed = state
        .execute(
            AggregateId::Account(account_id),
            Uuid::now_v7(),
            None,
            actor(ActorKind::Anonymous, None, address, &headers),
            command,
        )
        .await
        .map_err(|problem| match problem.code.as_str() {
            // A token naming an account that does not exist is just as void.
            "account_not_found" => crate::http::rejection_problem(
                &crate::decider::Rejection::EmailTokenInvalid,
                Uuid::nil(),
            ),
            _ => problem,
        })?;
    Ok(crate::http::command_reply(&executed, StatusCode::OK))
}

/// Mails a new link that verifies the account's current address, voiding older links
/// (also the link of a pending email change).
#[utoipa::path(post, path = "/v1/email-verification", tag = "email", responses(
    (status = 202, body = CommandResponse, description = "the link is on its way"),
    (status = 401, body = ProblemDetails), (status = 409, body = ProblemDetails, description = "email_already_verified"),
    (status = 429, body = ProblemDetails),
), security(("bearer" = [])))]
#[tracing::instrument(skip_all, fields(account_id = tracing::field::Empty))]
pub async fn request_verification(
    State(state): State<AppState>,
    ConnectInfo(address): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    let caller = state.auth.authenticate(&headers).await?;
    let account_id = caller.account_id;
    tracing::Span::current().record("account_id", tracing::field::display(account_id));
    state
        .reset_limits
        .check(address.ip(), &format!("verification:{account_id}"))?;
    let secrets = mail_links(&state)?;
    let token = crate::links::issue(secrets, account_id, Utc::now() + state.email_link_ttl)
        .map_err(|error| internal_error(&error))?;
    let executed = state
        .execute_for_account(
            account_id,
            Command::RequestEmailVerification { account_id, token },
            address,
            &headers,
        )
        .await?;
    let body = CommandResponse {
        version: executed.version,
        position: executed.position.clone(),
    };
    Ok((StatusCode::ACCEPTED, Json(body)).into_response())
}

/// Cancels a pending email change; its link stops working.
#[utoipa::path(delete, path = "/v1/email-change", tag = "email", responses(
    (status = 204, description = "no change is pending any more; also when none was"),
    (status = 401, body = ProblemDetails),
), security(("bearer" = [])))]
#[tracing::instrument(skip_all, fields(account_id = tracing::field::Empty))]
pub async fn cancel_email_change(
    State(state): State<AppState>,
    ConnectInfo(address): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    let caller = state.auth.authenticate(&headers).await?;
    let account_id = caller.account_id;
    tracing::Span::current().record("account_id", tracing::field::display(account_id));
    let executed = state
        .execute_for_account(
            account_id,
            Command::CancelEmailChange { account_id },
            address,
            &headers,
        )
        .await?;
    Ok(accepted_status(&executed, StatusCode::NO_CONTENT).into_response())
}
