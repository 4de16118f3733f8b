//! End-to-end tests against a real Kafka broker and PostgreSQL. They need the stack that
//! `deploy/local/test` starts (KAFKA_BROKERS and TEST_DATABASE_URL).

mod audit;
mod batching;
mod bench;
mod concurrency;
mod email;
mod failover;
mod fencing;
mod helpers;
mod mfa;
mod picture;
mod projector;
mod public;
mod rebuild;
mod reset;
mod security;
mod slice;
mod validation;
mod workspaces;
