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

/// Session settings shared by the command and query services.
#[derive(Clone, Debug, clap::Args)]
pub struct SessionConfig {
    /// Minutes without a request after which a session ends.
    #[arg(
        long = "session-idle-minutes",
        env = "SESSION_IDLE_MINUTES",
        default_value_t = 60
    )]
    pub idle_minutes: u32,
}

/// Seconds between two writes of a session's last use.
const ACTIVITY_WRITE_INTERVAL_SECONDS: f64 = 60.0;

/// The query that selects `account_id`, `session_id` and `stale` of the session whose token
/// hash is `$1`, if it is not revoked, not expired and not idle for more than `$2` seconds.
/// `stale` is true when its recorded last use is older than `$3` seconds. Only then is the
/// use written, so most requests write nothing. A query that needs the caller's rows in the
/// same round trip reads this as a common table expression.
pub const LIVE_SESSION: &str = "SELECT s.account_id, s.session_id, \
     COALESCE(a.last_seen_at < now() - make_interval(secs => $3), true) AS stale \
     FROM sessions s LEFT JOIN session_activity a USING (session_id) \
     WHERE s.token_sha256 = $1 AND s.revoked_at IS NULL AND s.expires_at > now() \
     AND COALESCE(a.last_seen_at, s.created_at) > now() - make_interval(secs => $2)";

/// Returns the SHA-256 of the `Authorization: Bearer` token, or 401 when the header is
/// missing or malformed.
pub fn bearer_token_hash(headers: &HeaderMap) -> Result<String, Problem> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| {
            // Authentication schemes are case-insensitive (RFC 9110, section 11.1).
            let (scheme, token) = value.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then_some(token)
        })
        .map(str::trim)
        .filter(|token| !token.is_empty() && token.len() <= MAX_TOKEN_LENGTH)
        .map(hash_token)
        .ok_or_else(Problem::unauthorized)
}

/// Resolves bearer tokens to active sessions.
#[derive(Clone)]
pub struct SessionAuth {
    pool: PgPool,
    idle_seconds: f64,
}

impl SessionAuth {
    pub fn new(pool: PgPool, config: &SessionConfig) -> Self {
        Self {
            pool,
            idle_seconds: f64::from(config.idle_minutes) * 60.0,
        }
    }

    /// Resolves the `Authorization: Bearer` header to a session that is not revoked, not
    /// expired and not idle for longer than the idle timeout, and records its use.
    pub async fn authenticate(&self, headers: &HeaderMap) -> Result<Authenticated, Problem> {
        let token_sha256 = bearer_token_hash(headers)?;
        let row: Option<(Uuid, Uuid, bool)> = sqlx::query_as(LIVE_SESSION)
            .bind(token_sha256)
            .bind(self.idle_seconds)
            .bind(ACTIVITY_WRITE_INTERVAL_SECONDS)
            .fetch_optional(&self.pool)
            .await
            .map_err(|error| {
                internal_error(&anyhow::Error::new(error).context("failed to look up session"))
            })?;
        let (account_id, session_id, stale) = row.ok_or_else(Problem::unauthorized)?;
        if stale {
            self.record_use(session_id).await?;
        }
        Ok(Authenticated {
            account_id,
            session_id,
        })
    }

    /// Records that a session was used now, unless a use within the write interval was
    /// recorded already. Call it when [`LIVE_SESSION`] returned `stale`.
    pub async fn record_use(&self, session_id: Uuid) -> Result<(), Problem> {
        sqlx::query(
            "INSERT INTO session_activity (session_id, last_seen_at) VALUES ($1, now()) \
             ON CONFLICT (session_id) DO UPDATE SET last_seen_at = now() \
             WHERE session_activity.last_seen_at < now() - make_interval(secs => $2)",
        )
        .bind(session_id)
        .bind(ACTIVITY_WRITE_INTERVAL_SECONDS)
        .execute(&self.pool)
        .await
        .map_err(|error| {
            internal_error(
                &anyhow::Error::new(error)
                    .context(format!("failed to record use of session {session_id}")),
            )
        })?;
        Ok(())
    }

    /// Returns the parameters `$2` and `$3` of [`LIVE_SESSION`]: the idle timeout and the
    /// write interval of session use, in seconds.
    pub fn live_session_limits(&self) -> (f64, f64) {
        (self.idle_seconds, ACTIVITY_WRITE_INTERVAL_SECONDS)
    }

    /// Returns the idle timeout in seconds, for queries that list active sessions.
    pub fn idle_seconds(&self) -> f64 {
        self.idle_seconds
    }
}
