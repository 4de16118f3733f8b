//! Two-factor authentication with TOTP (RFC 6238: SHA-1, 6 digits, 30-second steps) and
//! single-use backup codes.
//!
//! Codes are checked here, outside the decider, against the encrypted secret in the
//! credentials read model. The decider then makes sure each step and each backup code is
//! used once: a code whose step is not after the last accepted step is rejected, so two
//! racing requests with one code cannot both succeed.

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
use rand::Rng;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use totp_rs::{Algorithm, TOTP};
use utoipa::{OpenApi, ToSchema};
use uuid::Uuid;

use crate::http::{accepted_status, actor, factor_locked, open_session, read_json, AppState};
use crate::secrets::SecretBox;
use crate::wire::{Command, SecondFactor};

/// TOTP step length in seconds.
const STEP_SECONDS: u64 = 30;
/// Secret length: 160 bits, as RFC 4226 recommends.
const SECRET_BYTES: usize = 20;
const BACKUP_CODES: usize = 10;
/// Characters of a backup code: 16 from a 32-symbol alphabet, 80 bits.
const BACKUP_CODE_CHARS: usize = 16;
/// Letters and digits without the look-alikes 0, O, 1 and I.
const BACKUP_ALPHABET: &[u8; 32] = b"ABCDEFGHJKLMNPQRSTUVWXYZ23456789";
/// Lifetime of the token that links the password step of a sign-in to its second factor.
const MFA_TOKEN_SECONDS: i64 = 300;
const ISSUER: &str = "Accounts";
const MFA_TOKEN_CONTEXT: &str = "mfa_token";

#[derive(OpenApi)]
#[openapi(
    paths(
        start_enrollment,
        confirm_enrollment,
        sign_in_with_second_factor,
        disable,
        regenerate_backup_codes
    ),
    components(schemas(
        Enrollment,
        CodeRequest,
        BackupCodes,
        SecondFactorRequest,
        FactorRequest
    ))
)]
pub struct MfaApi;

/// Returns the routes of this module.
pub fn routes(state: AppState) -> Router {
    Router::new()
        .route("/v1/mfa/totp", post(start_enrollment).delete(disable))
        .route("/v1/mfa/backup-codes", post(regenerate_backup_codes))
        .route("/v1/mfa/totp/confirm", post(confirm_enrollment))
        .route("/v1/sessions/mfa", post(sign_in_with_second_factor))
        .with_state(state)
}

fn secrets(state: &AppState) -> Result<&SecretBox, Problem> {
    state.secrets.as_ref().ok_or_else(|| {
        Problem::unavailable(
            "mfa_unavailable",
            "two-factor authentication is not configured on this server (ENCRYPTION_KEYS is empty)",
            60,
        )
    })
}

fn totp(secret: Vec<u8>, account_name: &str) -> Result<TOTP, Problem> {
    TOTP::new(
        Algorithm::SHA1,
        6,
        1,
        STEP_SECONDS,
        secret,
        Some(ISSUER.to_owned()),
        account_name.to_owned(),
    )
    .map_err(|error| internal_error(&anyhow::anyhow!("failed to set up TOTP: {error:?}")))
}

/// Returns the step of `code` among the previous, current and next step at `now`, comparing
/// in constant time.
fn matching_step(totp: &TOTP, code: &str, now: u64) -> Option<u64> {
    if code.len() != 6 || !code.bytes().all(|byte| byte.is_ascii_digit()) {
        return None;
    }
    let current = now / STEP_SECONDS;
    [current.saturating_sub(1), current, current + 1]
        .into_iter()
        .find(|step| {
            bool::from(
                totp.generate(step * STEP_SECONDS)
                    .as_bytes()
                    .ct_eq(code.as_bytes()),
            )
        })
}

fn unix_now() -> u64 {
    u64::try_from(Utc::now().timestamp()).unwrap_or_default()
}

/// Returns the hex SHA-256 of a backup code, ignoring case, spaces and dashes.
fn hash_backup_code(code: &str) -> String {
    let normalized: String = code
        .chars()
        .filter(|c| !matches!(c, '-' | ' '))
        .map(|c| c.to_ascii_uppercase())
        .collect();
    hex::encode(Sha256::digest(normalized.as_bytes()))
}

fn new_backup_code() -> String {
    let mut rng = rand::rngs::OsRng;
    let symbols: Vec<char> = (0..BACKUP_CODE_CHARS)
        .map(|_| char::from(BACKUP_ALPHABET[rng.gen_range(0..BACKUP_ALPHABET.len())]))
        .collect();
    symbols
        .chunks(4)
        .map(|chunk| chunk.iter().collect::<String>())
        .collect::<Vec<_>>()
        .join("-")
}

fn invalid_code() -> Problem {
    Problem::new(
        StatusCode::UNAUTHORIZED,
        "invalid_code",
        "the code is wrong or expired; enter the current code",
    )
}

#[derive(sqlx::FromRow)]
pub(crate) struct FactorRow {
    email: String,
    credential_version: i64,
    totp_pending: Option<String>,
    totp_secret: Option<String>,
    backup_code_hashes: Vec<String>,
    mfa_locked_until: Option<chrono::DateTime<Utc>>,
}

pub(crate) async fn load_factors(state: &AppState, account_id: Uuid) -> Result<FactorRow, Problem> {
    sqlx::query_as(
        "SELECT a.email, c.credential_version, c.totp_pending, c.totp_secret, c.backup_code_hashes, c.mfa_locked_until \
         FROM credentials c JOIN accounts a USING (account_id) WHERE c.account_id = $1",
    )
    .bind(account_id)
    .fetch_optional(&state.pool)
    .await
    .map_err(|error| internal_error(&anyhow::Error::new(error).context("failed to load second factors")))?
    .ok_or_else(Problem::unauthorized)
}

/// A new TOTP factor, shown once.
#[derive(Serialize, ToSchema)]
pub struct Enrollment {
    /// The secret in base32, for typing into an authenticator app.
    pub secret: String,
    pub otpauth_uri: String,
    /// A PNG of the QR code of `otpauth_uri`, base64-encoded.
    pub qr_png_base64: String,
}

/// Starts TOTP enrollment. The factor stays pending until confirmed with a code.
#[utoipa::path(post, path = "/v1/mfa/totp", tag = "mfa", responses(
    (status = 200, body = Enrollment), (status = 401, body = ProblemDetails),
    (status = 403, body = ProblemDetails, description = "reauthentication_required"),
    (status = 409, body = ProblemDetails, description = "mfa_already_enabled"),
), security(("bearer" = [])))]
#[tracing::instrument(skip_all, fields(account_id = tracing::field::Empty))]
pub async fn start_enrollment(
    State(state): State<AppState>,
    ConnectInfo(address): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    let caller = state.auth.authenticate(&headers).await?;
    let account_id = caller.account_id;
    tracing::Span::current().record("account_id", tracing::field::display(account_id));
    // A stolen session alone must not be enough to lock the owner out with a new factor.
    crate::security::require_recent_check(&state, caller).await?;
    let secrets = secrets(&state)?;
    let factors = load_factors(&state, account_id).await?;

    let mut secret = vec![0_u8; SECRET_BYTES];
    rand::rngs::OsRng.fill(secret.as_mut_slice());
    let sealed = secrets
        .seal(&secret, &account_id.to_string())
        .map_err(|error| internal_error(&error))?;
    let totp = totp(secret, &factors.email)?;
    let qr_png_base64 = totp
        .get_qr_base64()
        .map_err(|error| internal_error(&anyhow::anyhow!("failed to draw the QR code: {error}")))?;

    let command = Command::StartTotpEnrollment {
        account_id,
        secret_ciphertext: sealed,
    };
    let executed = state
        .execute_for_account(account_id, command, address, &headers)
        .await?;
    let body = Enrollment {
        secret: totp.get_secret_base32(),
        otpauth_uri: totp.get_url(),
        qr_png_base64,
    };
    Ok((accepted_status(&executed, StatusCode::OK), Json(body)).into_response())
}

/// Body with a 6-digit code from the authenticator app.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CodeRequest {
    pub code: String,
}

/// Backup codes, shown once. Each signs in once in place of a TOTP code.
#[derive(Serialize, ToSchema)]
pub struct BackupCodes {
    pub backup_codes: Vec<String>,
}

impl BackupCodes {
    /// Draws a new set of codes. Returns them for the response and their hashes to store.
    fn issue() -> (Self, Vec<String>) {
        let backup_codes: Vec<String> = (0..BACKUP_CODES).map(|_| new_backup_code()).collect();
        let hashes = backup_codes
            .iter()
            .map(|code| hash_backup_code(code))
            .collect();
        (Self { backup_codes }, hashes)
    }
}

/// Confirms the pending TOTP factor with a valid code and turns MFA on.
#[utoipa::path(post, path = "/v1/mfa/totp/confirm", tag = "mfa", request_body = CodeRequest, responses(
    (status = 200, body = BackupCodes), (status = 401, body = ProblemDetails, description = "invalid_code"),
    (status = 409, body = ProblemDetails, description = "mfa_already_enabled or no_pending_enrollment"),
), security(("bearer" = [])))]
#[tracing::instrument(skip_all, fields(account_id = tracing::field::Empty))]
pub async fn confirm_enrollment(
    State(state): State<AppState>,
    ConnectInfo(address): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, Problem> {
    let caller = state.auth.authenticate(&headers).await?;
    let account_id = caller.account_id;
    tracing::Span::current().record("account_id", tracing::field::display(account_id));
    let request: CodeRequest = read_json(&headers, body).await?;
    let secrets = secrets(&state)?;
    let factors = load_factors(&state, account_id).await?;

    let Some(pending) = factors.totp_pending else {
        let already = factors.totp_secret.is_some();
        let rejection = if already {
            crate::decider::Rejection::MfaAlreadyEnabled
        } else {
            crate::decider::Rejection::NoPendingEnrollment
        };
        return Err(crate::http::rejection_problem(&rejection, Uuid::nil()));
    };
    let secret = secrets
        .open(&pending, &account_id.to_string())
        .map_err(|error| internal_error(&error))?;
    let totp = totp(secret, &factors.email)?;
    let step = matching_step(&totp, request.code.trim(), unix_now()).ok_or_else(invalid_code)?;

    let (codes, hashes) = BackupCodes::issue();
    let command = Command::ConfirmTotp {
        account_id,
        secret_ciphertext: pending,
        step,
        backup_code_hashes: hashes,
        credential_version: u64::try_from(factors.credential_version).unwrap_or_default(),
    };
    let executed = state
        .execute_for_account(account_id, command, address, &headers)
        .await?;
    Ok((accepted_status(&executed, StatusCode::OK), Json(codes)).into_response())
}

/// The claims of an MFA token, sealed so that only this service can read or forge them.
#[derive(Serialize, Deserialize)]
struct MfaClaims {
    account_id: Uuid,
    credential_version: u64,
    expires_at: i64,
}

/// Returns the 401 `mfa_required` response to a correct password on an account with MFA on.
pub fn challenge(
    state: &AppState,
    account_id: Uuid,
    credential_version: u64,
) -> Result<Problem, Problem> {
    let claims = MfaClaims {
        account_id,
        credential_version,
        expires_at: Utc::now().timestamp() + MFA_TOKEN_SECONDS,
    };
    let json = serde_json::to_vec(&claims).map_err(|error| internal_error(&error.into()))?;
    let token = secrets(state)?
        .seal(&json, MFA_TOKEN_CONTEXT)
        .map_err(|error| internal_error(&error))?;
    Ok(Problem::new(
        StatusCode::UNAUTHORIZED,
        "mfa_required",
        "enter a code from your authenticator app, or a backup code, with POST /v1/sessions/mfa",
    )
    .with_extension("mfa_token", token.into()))
}

/// Body of `POST /v1/sessions/mfa`: the token of the password step and one second factor.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SecondFactorRequest {
    pub mfa_token: String,
    pub code: Option<String>,
    pub backup_code: Option<String>,
}

/// Records a wrong code as an event, so that every instance counts it, and returns 401
/// `invalid_code`, or 429 `factor_locked` when this failure locked the factor.
async fn record_failure(
    state: &AppState,
    account_id: Uuid,
    address: SocketAddr,
    headers: &HeaderMap,
) -> Problem {
    let command = Command::RecordSecondFactorFailure {
        account_id,
        lock_after: state.mfa_lock_after,
        base_lock_seconds: state.mfa_lock_base_seconds,
    };
    let actor = actor(ActorKind::Anonymous, None, address, headers);
    if let Err(problem) = state
        .execute(
            AggregateId::Account(account_id),
            Uuid::now_v7(),
            None,
            actor,
            command,
        )
        .await
    {
        return problem;
    }
    match load_factors(state, account_id).await {
        Ok(factors) => match factors.mfa_locked_until.filter(|until| *until > Utc::now()) {
            Some(until) => factor_locked(until),
            None => invalid_code(),
        },
        Err(problem) => problem,
    }
}

fn invalid_mfa_token() -> Problem {
    Problem::new(
        StatusCode::UNAUTHORIZED,
        "invalid_mfa_token",
        "the MFA token is invalid or expired; sign in with your password again",
    )
}

/// Completes a sign-in with a TOTP code or a backup code.
#[utoipa::path(post, path = "/v1/sessions/mfa", tag = "sessions", request_body = SecondFactorRequest, responses(
    (status = 201, body = crate::http::SessionResponse),
    (status = 401, body = ProblemDetails, description = "invalid_code, code_already_used or invalid_mfa_token"),
    (status = 422, body = ProblemDetails), (status = 429, body = ProblemDetails),
))]
#[tracing::instrument(skip_all, fields(account_id = tracing::field::Empty))]
pub async fn sign_in_with_second_factor(
    State(state): State<AppState>,
    ConnectInfo(address): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, Problem> {
    let request: SecondFactorRequest = read_json(&headers, body).await?;
    let secrets = secrets(&state)?;
    let claims: MfaClaims = secrets
        .open(request.mfa_token.trim(), MFA_TOKEN_CONTEXT)
        .ok()
        .and_then(|json| serde_json::from_slice(&json).ok())
        .filter(|claims: &MfaClaims| claims.expires_at > Utc::now().timestamp())
        .ok_or_else(invalid_mfa_token)?;
    let account_id = claims.account_id;
    tracing::Span::current().record("account_id", tracing::field::display(account_id));
    state
        .sign_in_limits
        // Per account, wrong codes lock the factor (below); this limits one address.
        .check_ip(address.ip())?;

    let factors = load_factors(&state, account_id).await?;
    if u64::try_from(factors.credential_version).ok() != Some(claims.credential_version) {
        return Err(invalid_mfa_token());
    }
    if factors.totp_secret.is_none() {
        return Err(invalid_mfa_token());
    }
    let submitted = Submitted {
        code: request.code.as_deref(),
        backup_code: request.backup_code.as_deref(),
    };
    let factor =
        verify_second_factor(&state, account_id, &factors, submitted, address, &headers).await?;
    open_session(
        &state,
        account_id,
        claims.credential_version,
        Some(factor),
        address,
        &headers,
    )
    .await
}

/// The second factor a request submitted: a TOTP code or a backup code.
pub(crate) struct Submitted<'a> {
    pub(crate) code: Option<&'a str>,
    pub(crate) backup_code: Option<&'a str>,
}

/// Checks a submitted TOTP code or backup code against the account's factors. A wrong one is
/// recorded as a failure; a locked factor is refused before anything is checked. Whether the
/// code was used before is left to the decider.
pub(crate) async fn verify_second_factor(
    state: &AppState,
    account_id: Uuid,
    factors: &FactorRow,
    submitted: Submitted<'_>,
    address: SocketAddr,
    headers: &HeaderMap,
) -> Result<SecondFactor, Problem> {
    if let Some(until) = factors.mfa_locked_until.filter(|until| *until > Utc::now()) {
        return Err(factor_locked(until));
    }
    let sealed_secret = factors.totp_secret.as_deref().ok_or_else(|| {
        crate::http::rejection_problem(&crate::decider::Rejection::MfaNotEnabled, Uuid::nil())
    })?;
    let matched = match (submitted.code, submitted.backup_code) {
        (Some(code), None) => {
            let secret = secrets(state)?
                .open(sealed_secret, &account_id.to_string())
                .map_err(|error| internal_error(&error))?;
            matching_step(&totp(secret, &factors.email)?, code.trim(), unix_now())
                .map(|step| SecondFactor::Totp { step })
        }
        (None, Some(backup_code)) => {
            let hash = hash_backup_code(backup_code);
            factors
                .backup_code_hashes
                .iter()
                // A used code still matches here; the decider rejects it with code_already_used.
                .position(|stored| bool::from(stored.as_bytes().ct_eq(hash.as_bytes())))
                .map(|index| SecondFactor::BackupCode {
                    index,
                    hash: hash.clone(),
                })
        }
        _ => {
            return Err(Problem::validation(vec![accounts_platform::FieldError {
                field: "code".into(),
                code: "one_factor_required".into(),
                message: "send exactly one of code and backup_code".into(),
            }]))
        }
    };
    match matched {
        Some(factor) => Ok(factor),
        None => Err(record_failure(state, account_id, address, headers).await),
    }
}

/// Body of `DELETE /v1/mfa/totp`: a TOTP code or a backup code.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FactorRequest {
    pub code: Option<String>,
    pub backup_code: Option<String>,
}

/// Turns two-factor authentication off. Needs a valid code or backup code.
#[utoipa::path(delete, path = "/v1/mfa/totp", tag = "mfa", request_body = FactorRequest, responses(
    (status = 200, description = "MFA is off"), (status = 401, body = ProblemDetails, description = "invalid_code or code_already_used"),
    (status = 409, body = ProblemDetails, description = "mfa_not_enabled"), (status = 429, body = ProblemDetails, description = "factor_locked"),
), security(("bearer" = [])))]
#[tracing::instrument(skip_all, fields(account_id = tracing::field::Empty))]
pub async fn disable(
    State(state): State<AppState>,
    ConnectInfo(address): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, Problem> {
    let caller = state.auth.authenticate(&headers).await?;
    let account_id = caller.account_id;
    tracing::Span::current().record("account_id", tracing::field::display(account_id));
    let request: FactorRequest = read_json(&headers, body).await?;
    let factors = load_factors(&state, account_id).await?;
    let submitted = Submitted {
        code: request.code.as_deref(),
        backup_code: request.backup_code.as_deref(),
    };
    let second_factor =
        verify_second_factor(&state, account_id, &factors, submitted, address, &headers).await?;

    let command = Command::DisableTotp {
        account_id,
        second_factor,
        credential_version: u64::try_from(factors.credential_version).unwrap_or_default(),
    };
    let executed = state
        .execute_for_account(account_id, command, address, &headers)
        .await?;
    let body = serde_json::json!({"mfa_enabled": false, "version": executed.version});
    Ok((accepted_status(&executed, StatusCode::OK), Json(body)).into_response())
}

/// Replaces the backup codes. Needs a valid TOTP code; the old codes stop working.
#[utoipa::path(post, path = "/v1/mfa/backup-codes", tag = "mfa", request_body = CodeRequest, responses(
    (status = 200, body = BackupCodes), (status = 401, body = ProblemDetails, description = "invalid_code or code_already_used"),
    (status = 409, body = ProblemDetails, description = "mfa_not_enabled"), (status = 429, body = ProblemDetails, description = "factor_locked"),
), security(("bearer" = [])))]
#[tracing::instrument(skip_all, fields(account_id = tracing::field::Empty))]
pub async fn regenerate_backup_codes(
    State(state): State<AppState>,
    ConnectInfo(address): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, Problem> {
    let caller = state.auth.authenticate(&headers).await?;
    let account_id = caller.account_id;
    tracing::Span::current().record("account_id", tracing::field::display(account_id));
    let request: CodeRequest = read_json(&headers, body).await?;
    let factors = load_factors(&state, account_id).await?;
    let submitted = Submitted {
        code: Some(request.code.as_str()),
        backup_code: None,
    };
    let SecondFactor::Totp { step } =
        verify_second_factor(&state, account_id, &factors, submitted, address, &headers).await?
    else {
        return Err(invalid_code());
    };

    let (codes, hashes) = BackupCodes::issue();
    let command = Command::RegenerateBackupCodes {
        account_id,
        credential_version: u64::try_from(factors.credential_version).unwrap_or_default(),
        step,
        backup_code_hashes: hashes,
    };
    let executed = state
        .execute_for_account(account_id, command, address, &headers)
        .await?;
    Ok((accepted_status(&executed, StatusCode::OK), Json(codes)).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_totp() -> TOTP {
        totp(b"12345678901234567890".to_vec(), "zoe@example.com").unwrap()
    }

    #[test]
    fn code_matches_one_step_of_skew_each_way() {
        let totp = sample_totp();
        let now = 59 * STEP_SECONDS + 10;
        let current = now / STEP_SECONDS;
        for step in [current - 1, current, current + 1] {
            let code = totp.generate(step * STEP_SECONDS);
            assert_eq!(matching_step(&totp, &code, now), Some(step));
        }
        for step in [current - 2, current + 2] {
            let code = totp.generate(step * STEP_SECONDS);
            assert_eq!(matching_step(&totp, &code, now), None, "step {step}");
        }
    }

    #[test]
    fn rfc_6238_vector_matches() {
        // RFC 6238 appendix B: SHA-1, T = 59 s gives 94287082, whose last six digits are used.
        assert_eq!(sample_totp().generate(59), "287082");
    }

    #[test]
    fn malformed_codes_never_match() {
        let totp = sample_totp();
        for code in ["", "12345", "1234567", "abcdef", "12 456"] {
            assert_eq!(matching_step(&totp, code, 1_000_000), None, "{code:?}");
        }
    }

    #[test]
    fn backup_codes_are_long_and_hash_loosely() {
        let code = new_backup_code();
        assert_eq!(code.len(), BACKUP_CODE_CHARS + 3);
        assert_eq!(
            hash_backup_code(&code),
            hash_backup_code(&code.to_lowercase().replace('-', " "))
        );
        assert_ne!(new_backup_code(), code);
    }
}
