//! RFC 9457 problem details, the body of every error response.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// Content type of every error response.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// One invalid input field.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct FieldError {
    /// Path of the field, such as `business_phone.number`.
    pub field: String,
    /// Stable machine-readable code, such as `invalid_phone_number`.
    pub code: String,
    pub message: String,
}

/// An error response, boxed so that `Result<_, Problem>` stays small.
#[derive(Clone, Debug)]
pub struct Problem(Box<ProblemDetails>);

impl std::ops::Deref for Problem {
    type Target = ProblemDetails;

    fn deref(&self) -> &ProblemDetails {
        &self.0
    }
}

/// The body of an error response. `code` is stable and unique per kind of failure.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
#[schema(as = Problem)]
pub struct ProblemDetails {
    #[serde(rename = "type")]
    pub problem_type: String,
    pub title: String,
    #[schema(value_type = u16)]
    #[serde(serialize_with = "serialize_status")]
    pub status: StatusCode,
    pub detail: String,
    pub code: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldError>,
    /// Seconds after which a retry may succeed, sent as `Retry-After`.
    #[serde(skip)]
    pub retry_after: Option<u64>,
    /// Extra members of the body, such as `mfa_token` or `position`.
    #[serde(flatten)]
    #[schema(value_type = Object)]
    pub extensions: serde_json::Map<String, serde_json::Value>,
}

fn serialize_status<S: serde::Serializer>(
    status: &StatusCode,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.serialize_u16(status.as_u16())
}

impl Problem {
    /// Builds a problem with a status, a stable code and a sentence for people.
    pub fn new(status: StatusCode, code: &str, detail: impl Into<String>) -> Self {
        Self(Box::new(ProblemDetails {
            problem_type: format!("urn:accounts:problem:{code}"),
            title: status.canonical_reason().unwrap_or("Error").to_owned(),
            status,
            detail: detail.into(),
            code: code.to_owned(),
            errors: Vec::new(),
            retry_after: None,
            extensions: serde_json::Map::new(),
        }))
    }

    /// Builds a 422 for well-formed input with invalid values.
    pub fn validation(errors: Vec<FieldError>) -> Self {
        let fields: Vec<&str> = errors.iter().map(|error| error.field.as_str()).collect();
        let mut problem = Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
            format!("invalid value in: {}", fields.join(", ")),
        );
        problem.0.errors = errors;
        problem
    }

    /// Builds a 400 for a body that is not the JSON the endpoint expects.
    pub fn malformed(field: &str, message: impl Into<String>) -> Self {
        let message = message.into();
        let mut problem = Self::new(
            StatusCode::BAD_REQUEST,
            "malformed_request",
            message.clone(),
        );
        problem.0.errors.push(FieldError {
            field: field.to_owned(),
            code: "malformed".to_owned(),
            message,
        });
        problem
    }

    /// Builds a 401 for a missing, expired or revoked session.
    pub fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
            "a valid session token is required in the Authorization header as `Bearer <token>`",
        )
    }

    /// Builds an opaque 500. The caller logs the cause once.
    pub fn internal() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal_error",
            "the request failed on the server; retry later",
        )
    }

    /// Builds a 503 that tells the client to retry after `seconds`.
    pub fn unavailable(code: &str, detail: impl Into<String>, seconds: u64) -> Self {
        let mut problem = Self::new(StatusCode::SERVICE_UNAVAILABLE, code, detail);
        problem.0.retry_after = Some(seconds);
        problem
    }

    /// Sets the `Retry-After` header, in seconds.
    pub fn with_retry_after(mut self, seconds: u64) -> Self {
        self.0.retry_after = Some(seconds);
        self
    }

    /// Adds a member to the body.
    pub fn with_extension(mut self, name: &str, value: serde_json::Value) -> Self {
        self.0.extensions.insert(name.to_owned(), value);
        self
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = self.status;
        let retry_after = self.retry_after;
        let body = serde_json::to_vec(&*self.0).unwrap_or_else(|_| b"{}".to_vec());
        let mut response = (status, body).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        if let Some(seconds) = retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        if status == StatusCode::UNAUTHORIZED {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

/// Logs an infrastructure failure once with its cause chain and returns the opaque 500.
pub fn internal_error(error: &anyhow::Error) -> Problem {
    tracing::error!(error = format!("{error:#}"), "request failed");
    Problem::internal()
}
