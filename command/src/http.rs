//! The command service's HTTP API.

use std::net::SocketAddr;
use std::time::Duration;

use accounts_events::{Actor, ActorKind, AggregateId};
use accounts_platform::auth::hash_token;
use accounts_platform::problem::internal_error;
use accounts_platform::{FieldError, Position, Problem, ProblemDetails, ProjectionProgress};
use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{patch, post};
use axum::{Json, Router};
use base64::Engine as _;
use chrono::Utc;
use rand::RngCore;
use secrecy::{ExposeSecret, SecretString};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize};
use sqlx::PgPool;
use utoipa::{OpenApi, ToSchema};
use uuid::Uuid;

use crate::bus::{BusError, CommandBus};
use crate::decider::Rejection;
use crate::domain::{
    BusinessPhone, CompanyName, DisplayName, EmailAddress, Industry, NewPassword, PasswordContext,
};
use crate::password::PasswordHasherPool;
use crate::wire::{Command, CommandEnvelope, FieldValue, Outcome, ProfileChanges};

/// Largest accepted JSON body.
const MAX_BODY_BYTES: usize = 64 * 1024;
/// Longest accepted `Idempotency-Key`.
const MAX_IDEMPOTENCY_KEY: usize = 255;
/// Maximum length of the user agent recorded on events, in characters.
const MAX_USER_AGENT: usize = 512;
/// Namespace of command ids derived from `Idempotency-Key`.
const IDEMPOTENCY_NAMESPACE: Uuid = Uuid::from_u128(0x6a1f_3c2e_9b4d_4e8a_a5c1_2f7d_0e9b_8c31);

/// Everything the handlers share.
#[derive(Clone)]
pub struct AppState {
    pub bus: CommandBus,
    pub pool: PgPool,
    pub auth: accounts_platform::SessionAuth,
    pub progress: ProjectionProgress,
    pub hasher: PasswordHasherPool,
    pub sign_in_limits: crate::ratelimit::AttemptLimits,
    /// The maximum age of a password or second-factor check for sensitive changes.
    pub step_up_window: chrono::Duration,
    /// Wrong second-factor codes in a row that lock the factor.
    pub mfa_lock_after: u32,
    /// The first lock's length in seconds; each further wrong code doubles it.
    pub mfa_lock_base_seconds: u64,
    /// Encrypts TOTP secrets and MFA tokens; `None` when no key is configured.
    pub secrets: Option<crate::secrets::SecretBox>,
    pub partitions: i32,
    pub session_ttl: chrono::Duration,
    /// How long a response waits for the read models to include a command's events.
    pub visibility_timeout: Duration,
    /// How long a link mailed to verify an address stays valid.
    pub email_link_ttl: chrono::Duration,
    /// How long a password-reset link stays valid.
    pub reset_link_ttl: chrono::Duration,
    pub reset_limits: crate::ratelimit::AttemptLimits,
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "accounts-command",
        description = "Account settings: commands."
    ),
    paths(register, sign_in, update_profile),
    components(schemas(
        RegisterRequest,
        RegisterResponse,
        SignInRequest,
        SessionResponse,
        ProfilePatch,
        PhoneInput,
        CommandResponse,
        ProblemDetails,
        FieldError
    ))
)]
pub struct CommandApi;

/// Returns the API routes.
pub fn routes(state: AppState) -> Router {
    Router::new()
        .route("/v1/accounts", post(register))
        .route("/v1/sessions", post(sign_in))
        .route("/v1/profile", patch(update_profile))
        .with_state(state)
}

// ---- Request parsing -------------------------------------------------------------------

/// Reads a JSON body. Returns 413 past [`MAX_BODY_BYTES`], 415 for another content type,
/// and 400 naming the field for malformed JSON, unknown fields or wrong types.
pub(crate) async fn read_json<T: DeserializeOwned>(
    headers: &HeaderMap,
    body: Body,
) -> Result<T, Problem> {
    if let Some(content_type) = headers.get(header::CONTENT_TYPE) {
        let content_type = content_type
            .to_str()
            .unwrap_or_default()
            .to_ascii_lowercase();
        let essence = content_type.split(';').next().unwrap_or_default().trim();
        if essence != "application/json" && !essence.ends_with("+json") {
            return Err(Problem::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "send the body as application/json",
            ));
        }
    }
    let bytes: Bytes = axum::body::to_bytes(body, MAX_BODY_BYTES)
        .await
        .map_err(|_| {
            Problem::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                format!("the body must be at most {MAX_BODY_BYTES} bytes"),
            )
        })?;
    if bytes.iter().find(|byte| !byte.is_ascii_whitespace()) != Some(&b'{') {
        return Err(Problem::malformed("body", "the body must be a JSON object"));
    }
    let mut deserializer = serde_json::Deserializer::from_slice(&bytes);
    let value = serde_path_to_error::deserialize(&mut deserializer).map_err(|error| {
        let path = error.path().to_string();
        let inner = error.into_inner();
        match inner.classify() {
            serde_json::error::Category::Syntax | serde_json::error::Category::Eof => {
                Problem::malformed("body", format!("the body is not valid JSON: {inner}"))
            }
            _ => Problem::malformed(&field_of(&path, &inner.to_string()), inner.to_string()),
        }
    })?;
    deserializer.end().map_err(|error| {
        Problem::malformed("body", format!("the body is not valid JSON: {error}"))
    })?;
    Ok(value)
}

/// Returns the path of the field an error is about. serde reports a missing or duplicate
/// field at its parent object, naming the field only in the message.
fn field_of(path: &str, message: &str) -> String {
    let named = ["missing field `", "duplicate field `"]
        .iter()
        .find_map(|prefix| message.strip_prefix(prefix))
        .and_then(|rest| rest.split('`').next());
    match (path, named) {
        (".", Some(name)) => name.to_owned(),
        (".", None) => "body".to_owned(),
        (parent, Some(name)) => format!("{parent}.{name}"),
        (path, None) => path.to_owned(),
    }
}

/// Deserialises a present field, `null` included, as `Some`, so that absent and `null`
/// differ: absent leaves a field unchanged, `null` clears it.
fn present<'de, T: Deserialize<'de>, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(deserializer).map(Some)
}

pub(crate) fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, Problem> {
    let Some(value) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let key = value
        .to_str()
        .ok()
        .filter(|key| {
            !key.is_empty()
                && key.len() <= MAX_IDEMPOTENCY_KEY
                && key.bytes().all(|byte| byte.is_ascii_graphic())
        })
        .ok_or_else(|| {
            Problem::malformed(
                "Idempotency-Key",
                format!("use 1 to {MAX_IDEMPOTENCY_KEY} visible ASCII characters"),
            )
        })?;
    Ok(Some(key.to_owned()))
}

/// Returns the command id: derived from the caller's scope, the command kind and the
/// `Idempotency-Key` when one is given, else fresh.
pub(crate) fn command_id(scope: &str, kind: &str, key: Option<&str>) -> Uuid {
    match key {
        Some(key) => Uuid::new_v5(
            &IDEMPOTENCY_NAMESPACE,
            format!("{scope}\n{kind}\n{key}").as_bytes(),
        ),
        None => Uuid::now_v7(),
    }
}

/// Parses `If-Match: "<version>"` (weak tags and bare numbers too); `*` imposes nothing.
pub(crate) fn expected_version(headers: &HeaderMap) -> Result<Option<u64>, Problem> {
    let Some(value) = headers.get(header::IF_MATCH) else {
        return Ok(None);
    };
    let invalid = || {
        Problem::malformed(
            "If-Match",
            "use the ETag of the last response, such as \"3\"",
        )
    };
    let text = value.to_str().map_err(|_| invalid())?.trim();
    if text == "*" {
        return Ok(None);
    }
    let tag = text.strip_prefix("W/").unwrap_or(text);
    let digits = match tag.strip_prefix('"') {
        Some(quoted) => quoted.strip_suffix('"').ok_or_else(invalid)?,
        None => tag,
    };
    if digits.is_empty() || !digits.bytes().all(|byte| byte.is_ascii_digit()) {
        return Err(invalid());
    }
    digits.parse().map(Some).map_err(|_| invalid())
}

pub(crate) fn actor(
    kind: ActorKind,
    id: Option<String>,
    address: SocketAddr,
    headers: &HeaderMap,
) -> Actor {
    let user_agent = headers
        .get(header::USER_AGENT)
        .and_then(|value| value.to_str().ok())
        .map(|agent| agent.chars().take(MAX_USER_AGENT).collect());
    Actor {
        kind,
        id,
        ip: Some(address.ip().to_string()),
        user_agent,
    }
}

// ---- Running a command -----------------------------------------------------------------

/// A command's accepted result and whether the read models already show it.
pub(crate) struct Executed {
    pub(crate) account_id: Uuid,
    pub(crate) version: u64,
    pub(crate) position: Option<String>,
    pub(crate) visible: bool,
    /// From sending the command until its decider's reply arrived.
    pub(crate) decided_in: Duration,
    /// From the reply until the read models showed the events, or the wait gave up.
    pub(crate) shown_in: Duration,
}

impl AppState {
    /// Runs a command that the signed-in account issues on itself, with a fresh command id
    /// and no expected version.
    pub(crate) async fn execute_for_account(
        &self,
        account_id: Uuid,
        command: Command,
        address: SocketAddr,
        headers: &HeaderMap,
    ) -> Result<Executed, Problem> {
        let actor = actor(
            ActorKind::Account,
            Some(account_id.to_string()),
            address,
            headers,
        );
        self.execute(
            AggregateId::Account(account_id),
            Uuid::now_v7(),
            None,
            actor,
            command,
        )
        .await
    }

    fn envelope(
        &self,
        aggregate: &AggregateId,
        command_id: Uuid,
        expected_version: Option<u64>,
        actor: Actor,
        command: Command,
    ) -> CommandEnvelope {
        CommandEnvelope {
            command_id,
            request_id: Uuid::new_v4(),
            aggregate_key: aggregate.key(),
            expected_version,
            reply_to: self.bus.route(),
            correlation_id: Uuid::now_v7(),
            actor,
            issued_at: Utc::now(),
            request_digest: Some(command.request_digest(expected_version)),
            command,
        }
    }

    /// Stores a command in Kafka for its decider and returns without waiting for the
    /// outcome.
    pub(crate) async fn submit(
        &self,
        aggregate: AggregateId,
        actor: Actor,
        command: Command,
    ) -> Result<(), Problem> {
        let envelope = self.envelope(&aggregate, Uuid::now_v7(), None, actor, command);
        self.bus
            .submit(aggregate.partition(self.partitions), &envelope)
            .await
            .map_err(|error| internal_error(&anyhow::Error::new(error)))
    }

    /// Sends a command to its decider and returns the outcome, without waiting for the
    /// read models.
    pub(crate) async fn send(
        &self,
        aggregate: AggregateId,
        command_id: Uuid,
        expected_version: Option<u64>,
        actor: Actor,
        command: Command,
    ) -> Result<Outcome, Problem> {
        let envelope = self.envelope(&aggregate, command_id, expected_version, actor, command);
        match self
            .bus
            .send(aggregate.partition(self.partitions), &envelope)
            .await
        {
            Ok(outcome) => Ok(outcome),
            Err(BusError::Timeout(waited)) => {
                tracing::warn!(%command_id, ?waited, "command got no reply in time");
                Err(Problem::unavailable(
                    "command_timeout",
                    "the command was sent but not confirmed in time; retry with the same Idempotency-Key to get its outcome",
                    1,
                ))
            }
            Err(BusError::Kafka(error)) => Err(internal_error(&error)),
        }
    }

    /// Runs a command and waits, within the visibility timeout, until the read models show
    /// its events.
    pub(crate) async fn execute(
        &self,
        aggregate: AggregateId,
        command_id: Uuid,
        expected_version: Option<u64>,
        actor: Actor,
        command: Command,
    ) -> Result<Executed, Problem> {
        let sending = std::time::Instant::now();
        let outcome = self
            .send(aggregate, command_id, expected_version, actor, command)
            .await?;
        let decided_in = sending.elapsed();
        let (account_id, version, position) = match outcome {
            Outcome::Accepted {
                account_id,
                version,
                position,
            } => (account_id, version, position),
            Outcome::Rejected { rejection } => {
                return Err(rejection_problem(&rejection, command_id))
            }
        };
        let waiting = std::time::Instant::now();
        let visible = match position.as_deref().map(str::parse::<Position>) {
            Some(Ok(position)) => {
                self.progress
                    .wait_for(position, self.visibility_timeout)
                    .await
            }
            _ => true,
        };
        let shown_in = waiting.elapsed();
        metrics::histogram!("command_visibility_wait_seconds").record(shown_in.as_secs_f64());
        Ok(Executed {
            account_id,
            version,
            position,
            visible,
            decided_in,
            shown_in,
        })
    }
}

/// Maps each rejection to its status and problem code.
pub(crate) fn rejection_problem(rejection: &Rejection, command_id: Uuid) -> Problem {
    match rejection {
        Rejection::VersionMismatch { expected, actual } => Problem::new(
            StatusCode::PRECONDITION_FAILED,
            "version_mismatch",
            format!("the account changed: it is at version {actual}, not {expected}; reload it and retry"),
        )
        .with_extension("current_version", (*actual).into()),
        Rejection::EmailTaken => Problem::new(StatusCode::CONFLICT, "email_taken", "an account with this email address already exists"),
        Rejection::AccountNotFound => Problem::new(StatusCode::NOT_FOUND, "account_not_found", "the account does not exist"),
        Rejection::CredentialsChanged => invalid_credentials(),
        Rejection::IdempotencyKeyReused => Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "idempotency_key_reused",
            "this Idempotency-Key was used for a different request; use a new key for a new request",
        ),
        Rejection::MfaAlreadyEnabled => Problem::new(
            StatusCode::CONFLICT,
            "mfa_already_enabled",
            "two-factor authentication is already on; disable it first to enroll again",
        ),
        Rejection::NoPendingEnrollment => Problem::new(
            StatusCode::CONFLICT,
            "no_pending_enrollment",
            "no TOTP enrollment waits for confirmation; start one with POST /v1/mfa/totp",
        ),
        Rejection::CodeAlreadyUsed => Problem::new(
            StatusCode::UNAUTHORIZED,
            "code_already_used",
            "this code was already used; wait for the next code of your authenticator app",
        ),
        Rejection::FactorLocked { until } => factor_locked(*until),
        Rejection::MfaNotEnabled => Problem::new(
            StatusCode::CONFLICT,
            "mfa_not_enabled",
            "two-factor authentication is off; turn it on with POST /v1/mfa/totp",
        ),
        Rejection::MfaRequired => Problem::new(
            StatusCode::UNAUTHORIZED,
            "mfa_required",
            "sign-in needs a code from your authenticator app",
        ),
        Rejection::SessionNotFound => Problem::new(
            StatusCode::NOT_FOUND,
            "session_not_found",
            "no active session of this account has that id; list them with GET /v1/sessions",
        ),
        Rejection::EmailTokenInvalid => Problem::new(
            StatusCode::GONE,
            "token_expired_or_superseded",
            "this link expired, was replaced by a newer one or was already used; request a new one",
        ),
        Rejection::ResetTokenInvalid => Problem::new(
            StatusCode::GONE,
            "token_expired_or_used",
            "this reset link expired, was replaced by a newer one or was already used; request a new one with POST /v1/password-reset",
        ),
        Rejection::EmailUnchanged => Problem::validation(vec![FieldError {
            field: "new_email".into(),
            code: "email_unchanged".into(),
            message: "this is already the account's address; enter another one".into(),
        }]),
        Rejection::EmailAlreadyVerified => Problem::new(
            StatusCode::CONFLICT,
            "email_already_verified",
            "the address is already verified",
        ),
        Rejection::NotAgentOwner => Problem::new(
            StatusCode::FORBIDDEN,
            "not_agent_owner",
            "only the agent's owner or the owner of the workspace may delete it",
        ),
        Rejection::WorkspaceNotFound => Problem::new(StatusCode::NOT_FOUND, "workspace_not_found", "no workspace has this id"),
        Rejection::WorkspaceExists => Problem::new(
            StatusCode::CONFLICT,
            "workspace_exists",
            "a workspace with this id exists; retry with a new Idempotency-Key",
        ),
        Rejection::NotWorkspaceOwner => Problem::new(
            StatusCode::FORBIDDEN,
            "not_workspace_owner",
            "only the owner of the workspace may do this",
        ),
        Rejection::NotWorkspaceMember => Problem::new(
            StatusCode::FORBIDDEN,
            "not_workspace_member",
            "only members of the workspace may do this",
        ),
        Rejection::MemberNotFound => Problem::new(
            StatusCode::NOT_FOUND,
            "member_not_found",
            "this account is not a member of the workspace",
        ),
        Rejection::OwnerCannotLeave => Problem::new(
            StatusCode::CONFLICT,
            "owner_cannot_leave",
            "the owner cannot be removed from the workspace",
        ),
        Rejection::AgentNotFound => Problem::new(StatusCode::NOT_FOUND, "agent_not_found", "no agent has this id"),
        Rejection::SessionAlreadyExpired | Rejection::Misaddressed => {
            internal_error(&anyhow::anyhow!("command {command_id} rejected by the decider: {rejection}"))
        }
    }
}

/// Returns the 429 of a second factor locked until `until`.
pub(crate) fn factor_locked(until: chrono::DateTime<Utc>) -> Problem {
    let milliseconds = u64::try_from((until - Utc::now()).num_milliseconds().max(1)).unwrap_or(1);
    let seconds = milliseconds.div_ceil(1000);
    Problem::new(
        StatusCode::TOO_MANY_REQUESTS,
        "factor_locked",
        format!("too many wrong codes; try again in {seconds} s"),
    )
    .with_retry_after(seconds)
}

pub(crate) fn invalid_credentials() -> Problem {
    Problem::new(
        StatusCode::UNAUTHORIZED,
        "invalid_credentials",
        "the email address or password is wrong",
    )
}

/// The body of a command response.
#[derive(Debug, Serialize, ToSchema)]
pub struct CommandResponse {
    /// The account's version after the command, also sent as `ETag`.
    pub version: u64,
    /// Pass as `X-Min-Position` to a query to read at least this state.
    pub position: Option<String>,
}

/// Returns the `{version, position}` body of a command with `ETag` and `Server-Timing`,
/// and `status` once the read models show the command (202 before).
pub(crate) fn command_reply(executed: &Executed, status: StatusCode) -> Response {
    let body = CommandResponse {
        version: executed.version,
        position: executed.position.clone(),
    };
    let response = with_etag(
        (accepted_status(executed, status), Json(body)).into_response(),
        executed.version,
    );
    with_server_timing(response, executed)
}

const SERVER_TIMING: header::HeaderName = header::HeaderName::from_static("server-timing");

/// Sets `Server-Timing` on a command's response: `decide` is the time until the decider
/// committed and replied, `project` the time from that reply until the read models showed
/// the events (or the wait gave up), both in milliseconds.
pub(crate) fn with_server_timing(mut response: Response, executed: &Executed) -> Response {
    let value = format!(
        "decide;dur={:.3}, project;dur={:.3}",
        executed.decided_in.as_secs_f64() * 1e3,
        executed.shown_in.as_secs_f64() * 1e3
    );
    if let Ok(value) = HeaderValue::from_str(&value) {
        response.headers_mut().insert(SERVER_TIMING, value);
    }
    response
}

pub(crate) fn with_etag(mut response: Response, version: u64) -> Response {
    if let Ok(value) = HeaderValue::from_str(&format!("\"{version}\"")) {
        response.headers_mut().insert(header::ETAG, value);
    }
    response
}

pub(crate) fn accepted_status(executed: &Executed, done: StatusCode) -> StatusCode {
    if executed.visible {
        done
    } else {
        StatusCode::ACCEPTED
    }
}

// ---- Handlers --------------------------------------------------------------------------

/// Body of `POST /v1/accounts`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterRequest {
    pub email: String,
    #[schema(value_type = String, format = Password)]
    pub password: SecretString,
    pub name: String,
}

#[derive(Serialize, ToSchema)]
pub struct RegisterResponse {
    pub account_id: Uuid,
    pub position: Option<String>,
}

/// Creates an account.
#[utoipa::path(post, path = "/v1/accounts", tag = "accounts", request_body = RegisterRequest, params(
    ("Idempotency-Key" = Option<String>, Header, description = "makes a retry return the first outcome"),
), responses(
    (status = 201, body = RegisterResponse),
    (status = 202, body = RegisterResponse, description = "accepted; the read models do not show it yet"),
    (status = 400, body = ProblemDetails), (status = 409, body = ProblemDetails, description = "email_taken"), (status = 422, body = ProblemDetails),
))]
#[tracing::instrument(skip_all, fields(account_id = tracing::field::Empty))]
pub async fn register(
    State(state): State<AppState>,
    ConnectInfo(address): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, Problem> {
    let request: RegisterRequest = read_json(&headers, body).await?;
    let key = idempotency_key(&headers)?;

    let mut errors = Vec::new();
    let email = EmailAddress::parse("email", &request.email)
        .map_err(|error| errors.push(error))
        .ok();
    let name = DisplayName::parse("name", &request.name)
        .map_err(|error| errors.push(error))
        .ok();
    let context = PasswordContext {
        email: email.as_ref(),
        name: name.as_ref().map(DisplayName::as_str),
    };
    let password = NewPassword::parse("password", &request.password, &context)
        .map_err(|error| errors.push(error))
        .ok();
    let (Some(email), Some(name), Some(password)) = (email, name, password) else {
        return Err(Problem::validation(errors));
    };

    let password_hash = state
        .hasher
        .hash(password.secret().clone())
        .await
        .map_err(|error| internal_error(&error))?;
    let claim = AggregateId::EmailClaim(email.normalized().to_owned());
    let account_id = colocated_account_id(&claim, state.partitions);
    tracing::Span::current().record("account_id", tracing::field::display(account_id));
    let verification = match &state.secrets {
        Some(secrets) => Some(
            crate::links::issue(secrets, account_id, Utc::now() + state.email_link_ttl)
                .map_err(|error| internal_error(&error))?,
        ),
        None => None,
    };

    let command = Command::RegisterAccount {
        account_id,
        email: email.as_typed().to_owned(),
        email_normalized: email.normalized().to_owned(),
        name: name.into_inner(),
        password_hash,
        verification,
    };
    let id = command_id(email.normalized(), "register_account", key.as_deref());
    let executed = state
        .execute(
            claim,
            id,
            None,
            actor(ActorKind::Anonymous, None, address, &headers),
            command,
        )
        .await?;
    let status = accepted_status(&executed, StatusCode::CREATED);
    let body = RegisterResponse {
        account_id: executed.account_id,
        position: executed.position.clone(),
    };
    Ok(with_etag(
        (status, Json(body)).into_response(),
        executed.version,
    ))
}

/// Returns a new account id in the same partition as the email claim, so that the claim
/// and the account are created by one decider in one transaction. With P partitions this
/// takes P tries on average.
fn colocated_account_id(claim: &AggregateId, partitions: i32) -> Uuid {
    let wanted = claim.partition(partitions);
    loop {
        let id = Uuid::now_v7();
        if AggregateId::Account(id).partition(partitions) == wanted {
            return id;
        }
    }
}

/// Body of `POST /v1/sessions`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SignInRequest {
    pub email: String,
    #[schema(value_type = String, format = Password)]
    pub password: SecretString,
}

#[derive(Serialize, ToSchema)]
pub struct SessionResponse {
    /// The bearer token. It is shown once and stored only as a hash.
    pub token: String,
    pub session_id: Uuid,
    pub expires_at: chrono::DateTime<Utc>,
}

/// Maximum password length checked at sign-in, in bytes. Longer ones cannot match a stored
/// password, because registration accepts at most 128 characters.
const MAX_SIGN_IN_PASSWORD_BYTES: usize = 1024;

/// Signs in with email and password and opens a session.
#[utoipa::path(post, path = "/v1/sessions", tag = "sessions", request_body = SignInRequest, responses(
    (status = 201, body = SessionResponse),
    (status = 400, body = ProblemDetails), (status = 401, body = ProblemDetails, description = "invalid_credentials"), (status = 422, body = ProblemDetails),
    (status = 429, body = ProblemDetails, description = "rate_limited, with Retry-After"),
))]
#[tracing::instrument(skip_all, fields(account_id = tracing::field::Empty))]
pub async fn sign_in(
    State(state): State<AppState>,
    ConnectInfo(address): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, Problem> {
    let request: SignInRequest = read_json(&headers, body).await?;
    let email = EmailAddress::parse("email", &request.email)
        .map_err(|error| Problem::validation(vec![error]))?;
    state
        .sign_in_limits
        .check(address.ip(), email.normalized())?;
    if request.password.expose_secret().len() > MAX_SIGN_IN_PASSWORD_BYTES {
        return Err(invalid_credentials());
    }

    let credentials: Option<(Uuid, String, i64, bool)> = sqlx::query_as(
        "SELECT account_id, password_hash, credential_version, totp_secret IS NOT NULL \
         FROM credentials WHERE email_normalized = $1 LIMIT 1",
    )
    .bind(email.normalized())
    .fetch_optional(&state.pool)
    .await
    .map_err(|error| {
        internal_error(&anyhow::Error::new(error).context("failed to load credentials"))
    })?;
    let stored_hash = credentials.as_ref().map(|(_, hash, _, _)| hash.clone());
    let verified = state
        .hasher
        .verify(request.password, stored_hash)
        .await
        .map_err(|error| internal_error(&error))?;
    let Some((account_id, _, credential_version, mfa_enabled)) = credentials.filter(|_| verified)
    else {
        return Err(invalid_credentials());
    };
    tracing::Span::current().record("account_id", tracing::field::display(account_id));
    let credential_version = u64::try_from(credential_version).unwrap_or_default();
    if mfa_enabled {
        return Err(crate::mfa::challenge(
            &state,
            account_id,
            credential_version,
        )?);
    }
    open_session(
        &state,
        account_id,
        credential_version,
        None,
        address,
        &headers,
    )
    .await
}

/// Opens a session for an account whose credentials were verified at `credential_version`.
pub(crate) async fn open_session(
    state: &AppState,
    account_id: Uuid,
    credential_version: u64,
    second_factor: Option<crate::wire::SecondFactor>,
    address: SocketAddr,
    headers: &HeaderMap,
) -> Result<Response, Problem> {
    let token = new_token();
    let session_id = Uuid::now_v7();
    let expires_at = Utc::now() + state.session_ttl;
    let actor = actor(ActorKind::Anonymous, None, address, headers);
    let command = Command::StartSession {
        account_id,
        session_id,
        token_sha256: hash_token(&token),
        expires_at,
        user_agent: actor.user_agent.clone(),
        ip: actor.ip.clone(),
        credential_version,
        second_factor,
    };
    // A session token cannot be shown again, so sign-in has no idempotent retry.
    let executed = state
        .execute(
            AggregateId::Account(account_id),
            Uuid::now_v7(),
            None,
            actor,
            command,
        )
        .await?;
    let status = accepted_status(&executed, StatusCode::CREATED);
    let response = (
        status,
        Json(SessionResponse {
            token,
            session_id,
            expires_at,
        }),
    )
        .into_response();
    Ok(with_server_timing(response, &executed))
}

/// Returns 32 random bytes from the operating system, base64url-encoded without padding.
pub(crate) fn new_token() -> String {
    let mut bytes = [0_u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// Body of `PATCH /v1/profile`. Absent fields stay; `null` clears an optional field.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProfilePatch {
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>)]
    pub name: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>)]
    pub company_name: Option<Option<String>>,
    /// An identifier or label from `GET /v1/industries`.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>)]
    pub industry: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<PhoneInput>)]
    pub business_phone: Option<Option<PhoneInput>>,
}

/// A phone number as typed: the country calling code and the rest.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PhoneInput {
    /// Such as `+91`.
    pub country_code: String,
    /// Digits, spaces allowed, such as `99887 76655`.
    pub number: String,
}

impl ProfilePatch {
    fn parse(self) -> Result<ProfileChanges, Problem> {
        let mut errors = Vec::new();
        let mut changes = ProfileChanges::default();
        match self.name {
            None => {}
            Some(None) => errors.push(FieldError {
                field: "name".into(),
                code: "required".into(),
                message: "a name cannot be removed; send a new one".into(),
            }),
            Some(Some(name)) => match DisplayName::parse("name", &name) {
                Ok(name) => changes.name = Some(name.into_inner()),
                Err(error) => errors.push(error),
            },
        }
        if let Some(company) = self.company_name {
            match CompanyName::parse("company_name", company.as_deref().unwrap_or_default()) {
                Ok(company) => {
                    changes.company_name = Some(FieldValue {
                        value: company.map(CompanyName::into_inner),
                    })
                }
                Err(error) => errors.push(error),
            }
        }
        if let Some(industry) = self.industry {
            match industry
                .map(|industry| Industry::parse("industry", &industry))
                .transpose()
            {
                Ok(industry) => {
                    changes.industry = Some(FieldValue {
                        value: industry.map(|industry| industry.id().to_owned()),
                    })
                }
                Err(error) => errors.push(error),
            }
        }
        if let Some(phone) = self.business_phone {
            match phone
                .map(|phone| {
                    BusinessPhone::parse("business_phone", &phone.country_code, &phone.number)
                })
                .transpose()
            {
                Ok(phone) => {
                    changes.business_phone = Some(FieldValue {
                        value: phone.map(BusinessPhone::into_inner),
                    })
                }
                Err(error) => errors.push(error),
            }
        }
        if errors.is_empty() {
            Ok(changes)
        } else {
            Err(Problem::validation(errors))
        }
    }
}

/// Changes profile fields. No event is appended when nothing changes.
#[utoipa::path(patch, path = "/v1/profile", tag = "profile", request_body = ProfilePatch, params(
    ("If-Match" = Option<String>, Header, description = "the ETag the change is based on; 412 when the account moved on"),
    ("Idempotency-Key" = Option<String>, Header, description = "makes a retry return the first outcome"),
), responses(
    (status = 200, body = CommandResponse, headers(
        ("ETag" = String, description = "the account's version after the change"),
        ("Server-Timing" = String, description = "`decide;dur=<ms>, project;dur=<ms>`: the time until the decider replied, then until the read models showed the change"),
    )),
    (status = 202, body = CommandResponse, description = "accepted; the read models do not show it yet"),
    (status = 400, body = ProblemDetails), (status = 401, body = ProblemDetails), (status = 412, body = ProblemDetails, description = "version_mismatch"), (status = 422, body = ProblemDetails),
), security(("bearer" = [])))]
#[tracing::instrument(skip_all, fields(account_id = tracing::field::Empty))]
pub async fn update_profile(
    State(state): State<AppState>,
    ConnectInfo(address): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, Problem> {
    let caller = state.auth.authenticate(&headers).await?;
    tracing::Span::current().record("account_id", tracing::field::display(caller.account_id));
    let patch: ProfilePatch = read_json(&headers, body).await?;
    let changes = patch.parse()?;
    let expected = expected_version(&headers)?;
    let key = idempotency_key(&headers)?;

    let account_id = caller.account_id;
    let id = command_id(&account_id.to_string(), "update_profile", key.as_deref());
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
            Command::UpdateProfile {
                account_id,
                changes,
            },
        )
        .await?;
    Ok(command_reply(&executed, StatusCode::OK))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colocated_id_shares_the_claim_partition() {
        let claim = AggregateId::EmailClaim("zoe@example.com".into());
        let id = colocated_account_id(&claim, 12);
        assert_eq!(AggregateId::Account(id).partition(12), claim.partition(12));
    }

    #[test]
    fn idempotency_key_scopes_by_caller_and_kind() {
        let first = command_id("a", "update_profile", Some("k"));
        assert_eq!(first, command_id("a", "update_profile", Some("k")));
        assert_ne!(first, command_id("b", "update_profile", Some("k")));
        assert_ne!(first, command_id("a", "register_account", Some("k")));
    }

    #[test]
    fn if_match_accepts_strong_weak_and_bare() {
        for (text, expected) in [
            ("\"3\"", Some(3)),
            ("W/\"4\"", Some(4)),
            ("5", Some(5)),
            ("*", None),
        ] {
            let mut headers = HeaderMap::new();
            headers.insert(header::IF_MATCH, HeaderValue::from_static(text));
            assert_eq!(expected_version(&headers).unwrap(), expected, "{text}");
        }
        for text in ["\"abc\"", "\"0", "\"+0\"", "-1", "\"\""] {
            let mut headers = HeaderMap::new();
            headers.insert(header::IF_MATCH, HeaderValue::from_static(text));
            let problem = expected_version(&headers).unwrap_err();
            assert_eq!(problem.errors[0].field, "If-Match", "{text}");
        }
    }

    #[test]
    fn field_of_names_missing_and_duplicate_fields() {
        assert_eq!(
            field_of(".", "missing field `password` at line 1 column 20"),
            "password"
        );
        assert_eq!(
            field_of(".", "duplicate field `email` at line 1 column 30"),
            "email"
        );
        assert_eq!(
            field_of("business_phone", "missing field `number`"),
            "business_phone.number"
        );
        assert_eq!(
            field_of("name", "invalid type: integer `42`, expected a string"),
            "name"
        );
        assert_eq!(
            field_of(".", "invalid type: string, expected a map"),
            "body"
        );
    }

    #[test]
    fn rejection_codes_are_unique() {
        let problems = [
            rejection_problem(
                &Rejection::VersionMismatch {
                    expected: 1,
                    actual: 2,
                },
                Uuid::nil(),
            ),
            rejection_problem(&Rejection::EmailTaken, Uuid::nil()),
            rejection_problem(&Rejection::AccountNotFound, Uuid::nil()),
            rejection_problem(&Rejection::CredentialsChanged, Uuid::nil()),
            rejection_problem(&Rejection::SessionNotFound, Uuid::nil()),
            rejection_problem(&Rejection::IdempotencyKeyReused, Uuid::nil()),
            rejection_problem(&Rejection::MfaAlreadyEnabled, Uuid::nil()),
            rejection_problem(&Rejection::NoPendingEnrollment, Uuid::nil()),
            rejection_problem(&Rejection::CodeAlreadyUsed, Uuid::nil()),
            rejection_problem(&Rejection::MfaRequired, Uuid::nil()),
            rejection_problem(&Rejection::MfaNotEnabled, Uuid::nil()),
            rejection_problem(&Rejection::FactorLocked { until: Utc::now() }, Uuid::nil()),
        ];
        let mut codes: Vec<&str> = problems
            .iter()
            .map(|problem| problem.code.as_str())
            .collect();
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), problems.len());
    }
}
