//! Service plumbing shared by `accounts-command`, `accounts-projector` and `accounts-query`.

pub mod auth;
pub mod config;
pub mod db;
pub mod http;
pub mod kafka;
pub mod problem;
pub mod progress;
pub mod secrets;
pub mod telemetry;

pub use auth::{hash_token, Authenticated, SessionAuth, SessionConfig};
pub use config::{DatabaseConfig, KafkaConfig};
pub use problem::{FieldError, Problem, ProblemDetails};
pub use progress::{Position, ProjectionProgress};
