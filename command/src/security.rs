//! Security settings: signing out, revoking sessions and changing the password.

use std::net::SocketAddr;

use accounts_events::{ActorKind, AggregateId};
use accounts_platform::auth::Authenticated;
use accounts_platform::problem::internal_error;
use accounts_platform::{FieldError, Problem, ProblemDetails};
use axum::body::Body;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, post, put};
use axum::{Json, Router};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use utoipa::{OpenApi, ToSchema};
use uuid::Uuid;

use crate::domain::{EmailAddress, NewPassword, PasswordContext};
use crate::http::{
    accepted_status, actor, command_id, expected_version, idempotency_key, read_json, with_etag,
    AppState, CommandResponse, Executed,
};
use crate::wire::{Command, RevokeScope};

#[derive(OpenApi)]
#[openapi(
    paths(
        sign_out,
        revoke_session,
        revoke_all_sessions,
        change_password,
        reauthenticate
    ),
    components(schemas(ChangePasswordRequest, ReauthenticateRequest))
)]
pub struct SecurityApi;

/// Returns the routes of this module.
pub fn routes(state: AppState) -> Router {
    Router::new()
        .route("/v1/sessions/current", delete(sign_out))
        .route("/v1/sessions/revoke-all", post(revoke_all_sessions))
        .route("/v1/sessions/{session_id}", delete(revoke_session))
        .route("/v1/password", put(change_password))
        .route("/v1/sessions/reauthenticate", post(reauthenticate))
        .with_state(state)
}

async fn revoke(
    state: &AppState,
    caller: Authenticated,
    scope: RevokeScope,
    address: SocketAddr,
    headers: &HeaderMap,
) -> Result<Executed, Problem> {
    let account_id = caller.account_id;
    let command = Command::RevokeSessions {
        account_id,
        scope,
        current_session: caller.session_id,
    };
    state
        .execute_for_account(account_id, command, address, headers)
        .await
}

/// Ends the caller's session.
#[utoipa::path(delete, path = "/v1/sessions/current", tag = "sessions", responses(
    (status = 204, description = "signed out"), (status = 401, body = ProblemDetails),
), security(("bearer" = [])))]
#[tracing::instrument(skip_all, fields(account_id = tracing::field::Empty))]
pub async fn sign_out(
    State(state): State<AppState>,
    ConnectInfo(address): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    let caller = state.auth.authenticate(&headers).await?;
    tracing::Span::current().record("account_id", tracing::field::display(caller.account_id));
    let scope = RevokeScope::One {
        session_id: caller.session_id,
    };
    let executed = revoke(&state, caller, scope, address, &headers).await?;
    Ok(no_content(&executed))
}

/// Ends one session of the caller's account.
#[utoipa::path(delete, path = "/v1/sessions/{session_id}", tag = "sessions", params(("session_id" = Uuid, Path)), responses(
    (status = 204, description = "the session is revoked"), (status = 400, body = ProblemDetails),
    (status = 401, body = ProblemDetails), (status = 404, body = ProblemDetails, description = "session_not_found"),
), security(("bearer" = [])))]
#[tracing::instrument(skip_all, fields(account_id = tracing::field::Empty))]
pub async fn revoke_session(
    State(state): State<AppState>,
    ConnectInfo(address): ConnectInfo<SocketAddr>,
    Path(session_id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    let caller = state.auth.authenticate(&headers).await?;
    tracing::Span::current().record("account_id", tracing::field::display(caller.account_id));
    let session_id = Uuid::parse_str(&session_id)
        .map_err(|_| Problem::malformed("session_id", "use a session id from GET /v1/sessions"))?;
    let executed = revoke(
        &state,
        caller,
        RevokeScope::One { session_id },
        address,
        &headers,
    )
    .await?;
    Ok(no_content(&executed))
}

/// Ends every session of the caller's account, the caller's own included.
#[utoipa::path(post, path = "/v1/sessions/revoke-all", tag = "sessions", responses(
    (status = 200, body = CommandResponse), (status = 401, body = ProblemDetails),
), security(("bearer" = [])))]
#[tracing::instrument(skip_all, fields(account_id = tracing::field::Empty))]
pub async fn revoke_all_sessions(
    State(state): State<AppState>,
    ConnectInfo(address): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    let caller = state.auth.authenticate(&headers).await?;
    tracing::Span::current().record("account_id", tracing::field::display(caller.account_id));
    let executed = revoke(&state, caller, RevokeScope::All, address, &headers).await?;
    let body = CommandResponse {
        version: executed.version,
        position: executed.position.clone(),
    };
    Ok(with_etag(
        (accepted_status(&executed, StatusCode::OK), Json(body)).into_response(),
        executed.version,
    ))
}

/// Returns 204 once the read models show the revocation, else 202.
fn no_content(executed: &Executed) -> Response {
    accepted_status(executed, StatusCode::NO_CONTENT).into_response()
}

/// Body of `PUT /v1/password`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChangePasswordRequest {
    #[schema(value_type = String, format = Password)]
    pub current_password: SecretString,
    #[schema(value_type = String, format = Password)]
    pub new_password: SecretString,
    #[schema(value_type = String, format = Password)]
    pub confirm_password: SecretString,
}

#[derive(sqlx::FromRow)]
struct CredentialRow {
    password_hash: String,
    credential_version: i64,
    email: String,
    name: String,
}

/// Replaces the password and ends every other session of the account.
#[utoipa::path(put, path = "/v1/password", tag = "security", request_body = ChangePasswordRequest, responses(
    (status = 200, body = CommandResponse), (status = 400, body = ProblemDetails), (status = 401, body = ProblemDetails),
    (status = 403, body = ProblemDetails, description = "invalid_current_password"),
    (status = 422, body = ProblemDetails, description = "password_mismatch or a policy code"),
), security(("bearer" = [])))]
#[tracing::instrument(skip_all, fields(account_id = tracing::field::Empty))]
pub async fn change_password(
    State(state): State<AppState>,
    ConnectInfo(address): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, Problem> {
    let caller = state.auth.authenticate(&headers).await?;
    let account_id = caller.account_id;
    tracing::Span::current().record("account_id", tracing::field::display(account_id));
    let request: ChangePasswordRequest = read_json(&headers, body).await?;
    let expected = expected_version(&headers)?;
    let key = idempotency_key(&headers)?;

    let row: CredentialRow = sqlx::query_as(
        "SELECT c.password_hash, c.credential_version, a.email, a.name \
         FROM credentials c JOIN accounts a USING (account_id) WHERE c.account_id = $1",
    )
    .bind(account_id)
    .fetch_optional(&state.pool)
    .await
    .map_err(|error| {
        internal_error(&anyhow::Error::new(error).context("failed to load credentials"))
    })?
    .ok_or_else(Problem::unauthorized)?;

    if request.new_password.expose_secret() != request.confirm_password.expose_secret() {
        return Err(Problem::validation(vec![FieldError {
            field: "confirm_password".into(),
            code: "password_mismatch".into(),
            message: "the confirmation does not match the new password".into(),
        }]));
    }
    let email = EmailAddress::parse("email", &row.email).ok();
    let context = PasswordContext {
        email: email.as_ref(),
        name: Some(&row.name),
    };
    let new_password = NewPassword::parse("new_password", &request.new_password, &context)
        .map_err(|error| Problem::validation(vec![error]))?;

    // The current password is guessable like a sign-in, so it shares the sign-in limits.
    state
        .sign_in_limits
        .check(address.ip(), &format!("password-change:{account_id}"))?;
    let verified = state
        .hasher
        .verify(request.current_password, Some(row.password_hash))
        .await
        .map_err(|error| internal_error(&error))?;
    if !verified {
        return Err(invalid_current_password());
    }
    let password_hash = state
        .hasher
        .hash(new_password.secret().clone())
        .await
        .map_err(|error| internal_error(&error))?;

    let command = Command::ChangePassword {
        account_id,
        password_hash,
        credential_version: u64::try_from(row.credential_version).unwrap_or_default(),
        current_session: caller.session_id,
    };
    let id = command_id(&account_id.to_string(), "change_password", key.as_deref());
    let actor = actor(
        ActorKind::Account,
        Some(account_id.to_string()),
        address,
        &headers,
    );
    let executed = state
        .execute(
            AggregateId::Account(account_id),
            id,
            expected,
            actor,
            command,
        )
        .await
        .map_err(|problem| match problem.code.as_str() {
            // The password changed after the current one was checked.
            "invalid_credentials" => invalid_current_password(),
            _ => problem,
        })?;
    let body = CommandResponse {
        version: executed.version,
        position: executed.position.clone(),
    };
    Ok(with_etag(
        (accepted_status(&executed, StatusCode::OK), Json(body)).into_response(),
        executed.version,
    ))
}

fn invalid_current_password() -> Problem {
    Problem::new(
        StatusCode::FORBIDDEN,
        "invalid_current_password",
        "the current password is wrong",
    )
}

/// Returns 403 `reauthentication_required` unless the caller's session passed a password or
/// second-factor check within the step-up window. Signing in is such a check.
pub(crate) async fn require_recent_check(
    state: &AppState,
    caller: Authenticated,
) -> Result<(), Problem> {
    let verified_at: Option<chrono::DateTime<chrono::Utc>> = sqlx::query_scalar(
        "SELECT COALESCE(verified_at, created_at) FROM sessions WHERE session_id = $1",
    )
    .bind(caller.session_id)
    .fetch_optional(&state.pool)
    .await
    .map_err(|error| {
        internal_error(&anyhow::Error::new(error).context("failed to load session check time"))
    })?;
    match verified_at {
        Some(at) if at + state.step_up_window > chrono::Utc::now() => Ok(()),
        _ => Err(Problem::new(
            StatusCode::FORBIDDEN,
            "reauthentication_required",
            "confirm your password or a code with POST /v1/sessions/reauthenticate, then retry",
        )),
    }
}

/// Body of `POST /v1/sessions/reauthenticate`: the password, a TOTP code or a backup code.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReauthenticateRequest {
    #[schema(value_type = Option<String>, format = Password)]
    pub password: Option<SecretString>,
    pub code: Option<String>,
    pub backup_code: Option<String>,
}

/// Confirms who uses the session, for changes that need a recent check.
#[utoipa::path(post, path = "/v1/sessions/reauthenticate", tag = "sessions", request_body = ReauthenticateRequest, responses(
    (status = 200, body = CommandResponse), (status = 401, body = ProblemDetails, description = "invalid_code"),
    (status = 403, body = ProblemDetails, description = "invalid_current_password"), (status = 422, body = ProblemDetails),
    (status = 429, body = ProblemDetails),
), security(("bearer" = [])))]
#[tracing::instrument(skip_all, fields(account_id = tracing::field::Empty))]
pub async fn reauthenticate(
    State(state): State<AppState>,
    ConnectInfo(address): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, Problem> {
    let caller = state.auth.authenticate(&headers).await?;
    let account_id = caller.account_id;
    tracing::Span::current().record("account_id", tracing::field::display(account_id));
    let request: ReauthenticateRequest = read_json(&headers, body).await?;

    let second_factor = match (
        request.password,
        request.code.as_deref(),
        request.backup_code.as_deref(),
    ) {
        (Some(password), None, None) => {
            state
                .sign_in_limits
                .check(address.ip(), &format!("reauthenticate:{account_id}"))?;
            let stored: Option<String> =
                sqlx::query_scalar("SELECT password_hash FROM credentials WHERE account_id = $1")
                    .bind(account_id)
                    .fetch_optional(&state.pool)
                    .await
                    .map_err(|error| {
                        internal_error(
                            &anyhow::Error::new(error).context("failed to load credentials"),
                        )
                    })?;
            let verified = state
                .hasher
                .verify(password, stored)
                .await
                .map_err(|error| internal_error(&error))?;
            if !verified {
                return Err(invalid_current_password());
            }
            None
        }
        (None, code, backup_code) if code.is_some() != backup_code.is_some() => {
            let factors = crate::mfa::load_factors(&state, account_id).await?;
            let submitted = crate::mfa::Submitted { code, backup_code };
            Some(
                crate::mfa::verify_second_factor(
                    &state, account_id, &factors, submitted, address, &headers,
                )
                .await?,
            )
        }
        _ => {
            return Err(Problem::validation(vec![FieldError {
                field: "password".into(),
                code: "one_proof_required".into(),
                message: "send exactly one of password, code and backup_code".into(),
            }]))
        }
    };

    let credential_version: i64 =
        sqlx::query_scalar("SELECT credential_version FROM credentials WHERE account_id = $1")
            .bind(account_id)
            .fetch_one(&state.pool)
            .await
            .map_err(|error| {
                internal_error(
                    &anyhow::Error::new(error).context("failed to load credential version"),
                )
            })?;
    let command = Command::VerifySession {
        account_id,
        session_id: caller.session_id,
        credential_version: u64::try_from(credential_version).unwrap_or_default(),
        second_factor,
    };
    let executed = state
        .execute_for_account(account_id, command, address, &headers)
        .await?;
    let body = CommandResponse {
        version: executed.version,
        position: executed.position.clone(),
    };
    Ok((accepted_status(&executed, StatusCode::OK), Json(body)).into_response())
}
