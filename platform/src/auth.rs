//! Session authentication shared by the command and query services.
//!
//! A session token is 32 random bytes, base64url-encoded, and only its SHA-256 is stored.
//! Both services check the `sessions` read model on every request, and a command that
//! revokes a session responds only after that read model includes the revocation, so a
//! revoked token is rejected on the very next request.

use axum::http::{header, HeaderMap};
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use uuid::Uuid;

use crate::problem::{internal_error, Problem};

/// The caller behind a valid session token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Authenticated {
    pub account_id: Uuid,
    pub session_id: Uuid,
}

/// Returns the hex SHA-256 of a session or reset token, the only form that is stored.
pub fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// Longest accepted `Authorization` token; real ones are 43 characters.
const MAX_TOKEN_LENGTH: usize = 256;

/// Resolves the `Authorization: Bearer` header to an active session.
pub async fn authenticate(pool: &PgPool, headers: &HeaderMap) -> Result<Authenticated, Problem> {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|token| !token.is_empty() && token.len() <= MAX_TOKEN_LENGTH)
        .ok_or_else(Problem::unauthorized)?;

    let row: Option<(Uuid, Uuid)> = sqlx::query_as(
        "SELECT account_id, session_id FROM sessions \
         WHERE token_sha256 = $1 AND revoked_at IS NULL AND expires_at > now()",
    )
    .bind(hash_token(token))
    .fetch_optional(pool)
    .await
    .map_err(|error| {
        internal_error(&anyhow::Error::new(error).context("failed to look up session"))
    })?;

    let (account_id, session_id) = row.ok_or_else(Problem::unauthorized)?;
    Ok(Authenticated {
        account_id,
        session_id,
    })
}
