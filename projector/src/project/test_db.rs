//! A throwaway, migrated database for the tests of this module, created on the server of
//! `TEST_DATABASE_URL`, and helpers to compare the read models of two schemas in it.

use accounts_events::{Actor, ActorKind, DomainEvent, EventMeta, RecordedEvent};
use chrono::{DateTime, Utc};
use sqlx::{Connection, PgConnection, PgPool, Postgres, Transaction};
use uuid::Uuid;

/// Returns the tables that `apply`, `apply_batch` and the audit functions write: the
/// rebuilt tables without the offsets.
fn tables() -> impl Iterator<Item = &'static str> {
    crate::rebuild::TABLES
        .iter()
        .copied()
        .filter(|table| *table != "projection_offsets")
}

pub struct TestDatabase {
    pub pool: PgPool,
    admin_url: String,
    name: String,
}

fn admin_url() -> String {
    std::env::var("TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://accounts:accounts@127.0.0.1:5432/postgres".to_owned())
}

impl TestDatabase {
    /// Creates and migrates a database, with an empty copy of the read-model tables in
    /// each schema of `schemas`.
    pub async fn create(schemas: &[&str]) -> anyhow::Result<Self> {
        let admin_url = admin_url();
        let name = format!("accounts_projector_test_{}", Uuid::new_v4().simple());
        let mut admin = PgConnection::connect(&admin_url).await?;
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut admin)
            .await?;
        admin.close().await?;
        let (server, _) = admin_url.rsplit_once('/').ok_or_else(|| {
            anyhow::anyhow!("TEST_DATABASE_URL {admin_url:?} has no database name")
        })?;
        let pool = PgPool::connect(&format!("{server}/{name}")).await?;
        accounts_platform::db::migrate(&pool).await?;
        for schema in schemas {
            sqlx::query(&format!("CREATE SCHEMA {schema}"))
                .execute(&pool)
                .await?;
            for table in tables() {
                sqlx::query(&format!(
                    "CREATE TABLE {schema}.{table} (LIKE public.{table} INCLUDING ALL)"
                ))
                .execute(&pool)
                .await?;
            }
        }
        Ok(Self {
            pool,
            admin_url,
            name,
        })
    }

    /// Begins a transaction whose unqualified table names resolve in `schema`.
    pub async fn begin_in(&self, schema: &str) -> anyhow::Result<Transaction<'static, Postgres>> {
        let mut transaction = self.pool.begin().await?;
        sqlx::query(&format!("SET LOCAL search_path TO {schema}"))
            .execute(&mut *transaction)
            .await?;
        Ok(transaction)
    }

    /// Returns every row of the read-model tables of `schema` as JSON text, sorted.
    pub async fn dump(&self, schema: &str) -> anyhow::Result<Vec<String>> {
        let mut rows = Vec::new();
        for table in tables() {
            let texts: Vec<(String,)> = sqlx::query_as(&format!(
                "SELECT '{table} ' || row_to_json(t)::text FROM {schema}.{table} t"
            ))
            .fetch_all(&self.pool)
            .await?;
            rows.extend(texts.into_iter().map(|(text,)| text));
        }
        rows.sort();
        Ok(rows)
    }

    /// Drops the database, trying again for a few seconds while another session, such as
    /// an autovacuum worker that this user may not terminate, is still connected. A
    /// database left behind is dropped by the next `deploy/local/test`, so the last
    /// failure is printed, not returned.
    pub async fn drop(self) -> anyhow::Result<()> {
        self.pool.close().await;
        let mut admin = PgConnection::connect(&self.admin_url).await?;
        let statement = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        let mut attempts = 0;
        loop {
            attempts += 1;
            match sqlx::query(&statement).execute(&mut admin).await {
                Ok(_) => return Ok(()),
                Err(error) if attempts >= 20 => {
                    eprintln!("left test database {} behind: {error}", self.name);
                    return Ok(());
                }
                Err(_) => tokio::time::sleep(std::time::Duration::from_millis(250)).await,
            }
        }
    }
}

/// Returns an event of the account `subject` at `sequence` and `time`.
pub fn account_event(
    subject: Uuid,
    sequence: u64,
    time: DateTime<Utc>,
    event: DomainEvent,
) -> RecordedEvent {
    RecordedEvent {
        meta: EventMeta {
            event_id: Uuid::new_v4(),
            source: "/accounts-projector-test".to_owned(),
            time,
            subject: subject.to_string(),
            aggregate_type: "account".to_owned(),
            sequence,
            command_id: Uuid::new_v4(),
            correlation_id: Uuid::new_v4(),
            causation_id: Uuid::new_v4(),
            actor: Actor {
                kind: ActorKind::Account,
                id: Some(subject.to_string()),
                ip: Some("192.0.2.7".to_owned()),
                user_agent: Some("projector-test \"quoted\"\tand\ttabbed\n".to_owned()),
            },
            request_digest: None,
            previous_hash: None,
        },
        event,
    }
}

/// Asserts that two dumps contain the same rows, and lists the rows that only one has.
pub fn assert_same_rows(expected: &[String], actual: &[String], context: &str) {
    let missing: Vec<&String> = expected
        .iter()
        .filter(|row| !actual.contains(row))
        .collect();
    let unexpected: Vec<&String> = actual
        .iter()
        .filter(|row| !expected.contains(row))
        .collect();
    assert!(
        missing.is_empty() && unexpected.is_empty(),
        "{context}\nexpected rows that are missing: {missing:#?}\nrows that were not expected: {unexpected:#?}"
    );
    assert_eq!(
        actual, expected,
        "{context}: the same rows, but not as many times"
    );
}
