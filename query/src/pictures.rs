//! Profile pictures: the caller's own, and any rendition by its SHA-256.

use accounts_platform::problem::internal_error;
use accounts_platform::{Problem, ProblemDetails};
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::{await_min_position, AppState};

/// Returns the picture bytes with their stored type, marked so that browsers do not guess
/// another one.
fn picture_response(content_type: &str, bytes: Vec<u8>, sha256: &str, immutable: bool) -> Response {
    let mut response = bytes.into_response();
    let headers = response.headers_mut();
    if let Ok(value) = HeaderValue::from_str(content_type) {
        headers.insert(header::CONTENT_TYPE, value);
    }
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'"),
    );
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static(if immutable {
            "public, max-age=31536000, immutable"
        } else {
            "private, no-cache"
        }),
    );
    if let Ok(value) = HeaderValue::from_str(&format!("\"{sha256}\"")) {
        headers.insert(header::ETAG, value);
    }
    response
}

/// Returns true when `If-None-Match` names the picture's entity tag.
fn not_modified(headers: &HeaderMap, sha256: &str) -> bool {
    let tag = format!("\"{sha256}\"");
    headers
        .get(header::IF_NONE_MATCH)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| {
            value.split(',').any(|candidate| {
                let candidate = candidate.trim();
                candidate == "*" || candidate.trim_start_matches("W/") == tag
            })
        })
}

fn unchanged(sha256: &str) -> Response {
    let mut response = StatusCode::NOT_MODIFIED.into_response();
    if let Ok(value) = HeaderValue::from_str(&format!("\"{sha256}\"")) {
        response.headers_mut().insert(header::ETAG, value);
    }
    response
}

fn no_picture() -> Problem {
    Problem::new(
        StatusCode::NOT_FOUND,
        "picture_not_found",
        "there is no picture; upload one with PUT /v1/profile/picture",
    )
}

/// Returns the signed-in account's profile picture, 200x200.
#[utoipa::path(get, path = "/v1/profile/picture", tag = "profile", responses(
    (status = 200, description = "the image, with the type detected at upload and X-Content-Type-Options: nosniff",
        content_type = "image/*"),
    (status = 401, body = ProblemDetails), (status = 404, body = ProblemDetails, description = "picture_not_found"),
), security(("bearer" = [])))]
#[tracing::instrument(skip_all, fields(account_id = tracing::field::Empty))]
pub(crate) async fn get_own_picture(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    let caller = state.auth.authenticate(&headers).await?;
    await_min_position(&state, &headers).await?;
    tracing::Span::current().record("account_id", tracing::field::display(caller.account_id));
    let row: Option<(String, String, Vec<u8>)> = sqlx::query_as(
        "SELECT p.sha256, p.content_type, p.bytes FROM accounts a \
         JOIN pictures p ON p.sha256 = a.picture_sha256 WHERE a.account_id = $1",
    )
    .bind(caller.account_id)
    .fetch_optional(&state.pool)
    .await
    .map_err(|error| {
        internal_error(&anyhow::Error::new(error).context("failed to load the picture"))
    })?;
    let (sha256, content_type, bytes) = row.ok_or_else(no_picture)?;
    if not_modified(&headers, &sha256) {
        return Ok(unchanged(&sha256));
    }
    Ok(picture_response(&content_type, bytes, &sha256, false))
}

/// Returns a picture rendition by the SHA-256 in a `picture_url`. No session is needed,
/// because the address names the content.
///
/// NOTE: renditions are never deleted, so this address keeps serving a picture after its
/// account removed or replaced it, and after an upload whose command was rejected.
#[utoipa::path(get, path = "/v1/pictures/{sha256}", tag = "profile", params(("sha256" = String, Path)), responses(
    (status = 200, description = "the image, cacheable forever", content_type = "image/*"),
    (status = 304, description = "If-None-Match names this picture"),
    (status = 400, body = ProblemDetails), (status = 404, body = ProblemDetails, description = "picture_not_found"),
))]
pub(crate) async fn get_picture(
    State(state): State<AppState>,
    Path(sha256): Path<String>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    if sha256.len() != 64 || !sha256.bytes().all(|byte| byte.is_ascii_hexdigit()) {
        return Err(Problem::malformed(
            "sha256",
            "use the picture_url of a profile, which ends in 64 hex digits",
        ));
    }
    let sha256 = sha256.to_ascii_lowercase();
    if not_modified(&headers, &sha256) {
        return Ok(unchanged(&sha256));
    }
    let row: Option<(String, Vec<u8>)> =
        sqlx::query_as("SELECT content_type, bytes FROM pictures WHERE sha256 = $1")
            .bind(&sha256)
            .fetch_optional(&state.pool)
            .await
            .map_err(|error| {
                internal_error(&anyhow::Error::new(error).context("failed to load the picture"))
            })?;
    let (content_type, bytes) = row.ok_or_else(no_picture)?;
    Ok(picture_response(&content_type, bytes, &sha256, true))
}
