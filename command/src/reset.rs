//! Password reset through a mailed link.
//!
//! `POST /v1/password-reset` returns 202 for any address. For an unknown one it sends a
//! command to an account that does not exist, which the decider rejects. Both cases return
//! once Kafka has stored the command, so they take the same steps and about the same time. The link's token works once, until it
//! expires, a newer link is requested or the password changes; using it ends every session.

use std::net::SocketAddr;

use accounts_events::{ActorKind, AggregateId};
use accounts_platform::problem::internal_error;
use accounts_platform::{FieldError, Problem, ProblemDetails};
use axum::body::Body;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use chrono::Utc;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use utoipa::{OpenApi, ToSchema};
use uuid::Uuid;

use crate::decider::Rejection;
use crate::domain::{EmailAddress, NewPassword, PasswordContext};
use crate::email::mail_links;
use crate::http::{actor, read_json, rejection_problem, AppState, CommandResponse};
use crate::wire::Command;

#[derive(OpenApi)]
#[openapi(
    paths(request_password_reset, confirm_password_reset),
    components(schemas(PasswordResetRequest, ConfirmPasswordResetRequest))
)]
pub struct ResetApi;

/// Returns the routes of this module.
pub fn routes(state: AppState) -> Router {
    Router::new()
        .route("/v1/password-reset", post(request_password_reset))
        .route("/v1/password-reset/confirm", post(confirm_password_reset))
        .with_state(state)
}

/// Body of `POST /v1/password-reset`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PasswordResetRequest {
    pub email: String,
}

/// Body of `POST /v1/password-reset/confirm`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ConfirmPasswordResetRequest {
    /// The `token` parameter of the mailed link.
    pub token: String,
    #[schema(value_type = String, format = Password)]
    pub new_password: SecretString,
    #[schema(value_type = String, format = Password)]
    pub confirm_password: SecretString,
}

/// Mails a reset link if an account has this address. The response is the same either way.
#[utoipa::path(post, path = "/v1/password-reset", tag = "security", request_body = PasswordResetRequest, responses(
    (status = 202, description = "if an account has this address, a link is on its way"),
    (status = 400, body = ProblemDetails), (status = 422, body = ProblemDetails, description = "invalid_email"),
    (status = 429, body = ProblemDetails, description = "rate_limited, with Retry-After"),
))]
#[tracing::instrument(skip_all)]
pub async fn request_password_reset(
    State(state): State<AppState>,
    ConnectInfo(address): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, Problem> {
    let request: PasswordResetRequest = read_json(&headers, body).await?;
    let email = EmailAddress::parse("email", &request.email)
        .map_err(|error| Problem::validation(vec![error]))?;
    state.reset_limits.check(address.ip(), email.normalized())?;
    let secrets = mail_links(&state)?;

    let known: Option<Uuid> = sqlx::query_scalar(
        "SELECT account_id FROM credentials WHERE email_normalized = $1 LIMIT 1",
    )
    .bind(email.normalized())
    .fetch_optional(&state.pool)
    .await
    .map_err(|error| {
        internal_error(&anyhow::Error::new(error).context("failed to look up the address"))
    })?;
    // An unknown address goes to a random account id, which the decider rejects as
    // missing after the same steps.
    let account_id = known.unwrap_or_else(Uuid::new_v4);
    let token = crate::links::issue(secrets, account_id, Utc::now() + state.reset_link_ttl)
        .map_err(|error| internal_error(&error))?;
    // Both cases return once Kafka stored the command, before any decider acts on it.
    state
        .submit(
            AggregateId::Account(account_id),
            actor(ActorKind::Anonymous, None, address, &headers),
            Command::RequestPasswordReset { account_id, token },
        )
        .await?;
    Ok(StatusCode::ACCEPTED.into_response())
}

/// Sets a new password with the token of a reset link, and ends every session.
#[utoipa::path(post, path = "/v1/password-reset/confirm", tag = "security", request_body = ConfirmPasswordResetRequest, responses(
    (status = 200, body = CommandResponse), (status = 400, body = ProblemDetails),
    (status = 410, body = ProblemDetails, description = "token_expired_or_used"),
    (status = 422, body = ProblemDetails, description = "invalid_token, password_mismatch or a policy code"),
    (status = 429, body = ProblemDetails),
))]
#[tracing::instrument(skip_all, fields(account_id = tracing::field::Empty))]
pub async fn confirm_password_reset(
    State(state): State<AppState>,
    ConnectInfo(address): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, Problem> {
    let request: ConfirmPasswordResetRequest = read_json(&headers, body).await?;
    let token = crate::links::parse("token", &request.token)
        .map_err(|error| Problem::validation(vec![error]))?;
    state.reset_limits.check_ip(address.ip())?;
    let account_id = token.account_id;
    tracing::Span::current().record("account_id", tracing::field::display(account_id));
    let void = || rejection_problem(&Rejection::ResetTokenInvalid, Uuid::nil());

    let profile: Option<(String, String)> =
        sqlx::query_as("SELECT email, name FROM accounts WHERE account_id = $1")
            .bind(account_id)
            .fetch_optional(&state.pool)
            .await
            .map_err(|error| {
                internal_error(&anyhow::Error::new(error).context("failed to load the account"))
            })?;
    let (email, name) = profile.ok_or_else(void)?;
    if request.new_password.expose_secret() != request.confirm_password.expose_secret() {
        return Err(Problem::validation(vec![FieldError {
            field: "confirm_password".into(),
            code: "password_mismatch".into(),
            message: "the confirmation does not match the new password".into(),
        }]));
    }
    let email = EmailAddress::parse("email", &email).ok();
    let context = PasswordContext {
        email: email.as_ref(),
        name: Some(&name),
    };
    let new_password = NewPassword::parse("new_password", &request.new_password, &context)
        .map_err(|error| Problem::validation(vec![error]))?;
    let password_hash = state
        .hasher
        .hash(new_password.secret().clone())
        .await
        .map_err(|error| internal_error(&error))?;

    let command = Command::ResetPassword {
        account_id,
        token_sha256: token.token_sha256,
        password_hash,
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
            "account_not_found" => void(),
            _ => problem,
        })?;
    Ok(crate::http::command_reply(&executed, StatusCode::OK))
}
