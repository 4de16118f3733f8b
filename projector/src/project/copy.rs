//! Loading the audit history of a batch with `COPY ... FROM STDIN (FORMAT binary)`, which
//! costs PostgreSQL less than the `INSERT ... SELECT FROM UNNEST` of
//! [`super::record_audit`] because it skips the arrays and the `ON CONFLICT` check.

use accounts_events::RecordedEvent;
use chrono::{DateTime, NaiveDate, Utc};
use serde::Serialize;
use sqlx::{Postgres, Transaction};
use uuid::Uuid;

use super::Positioned;

/// The SQLSTATE of `unique_violation`.
const UNIQUE_VIOLATION: &str = "23505";

/// Adds the account events of a batch to the audit history, like [`super::record_audit`].
///
/// `COPY` has no `ON CONFLICT`, so it runs inside a savepoint. When a row is already there,
/// as when the log repeats an event, the savepoint is rolled back and the batch goes
/// through [`super::record_audit`] instead.
pub async fn copy_audit(
    transaction: &mut Transaction<'_, Postgres>,
    events: &[Positioned<'_>],
) -> sqlx::Result<()> {
    let data = encode_rows(events)?;
    if data.rows == 0 {
        return Ok(());
    }
    sqlx::query("SAVEPOINT copy_audit")
        .execute(&mut **transaction)
        .await?;
    let copied = async {
        let mut copy = transaction
            .copy_in_raw(
                "COPY audit_events (account_id, sequence, event_id, event_type, schema_version, \
                 time, actor, data, kafka_partition, kafka_offset) FROM STDIN (FORMAT binary)",
            )
            .await?;
        copy.send(data.bytes).await?;
        copy.finish().await
    }
    .await;
    match copied {
        Ok(_) => {
            sqlx::query("RELEASE SAVEPOINT copy_audit")
                .execute(&mut **transaction)
                .await?;
            Ok(())
        }
        Err(sqlx::Error::Database(error)) if error.code().as_deref() == Some(UNIQUE_VIOLATION) => {
            let (first_partition, first_offset) = events
                .first()
                .map_or((0, 0), |(_, partition, offset)| (*partition, *offset));
            tracing::info!(
                %error,
                events = events.len(),
                first_partition,
                first_offset,
                "audit rows already present, so the batch is inserted with ON CONFLICT DO NOTHING"
            );
            sqlx::query("ROLLBACK TO SAVEPOINT copy_audit")
                .execute(&mut **transaction)
                .await?;
            super::record_audit(transaction, events).await
        }
        Err(error) => Err(error),
    }
}

/// The `actor` column, with the keys that [`super::record_audit`] writes.
#[derive(Serialize)]
struct AuditActor<'a> {
    #[serde(rename = "type")]
    kind: &'a accounts_events::ActorKind,
    id: &'a Option<String>,
    ip: &'a Option<String>,
    user_agent: &'a Option<String>,
}

/// A binary `COPY` stream and the number of rows in it.
struct CopyData {
    bytes: Vec<u8>,
    rows: usize,
}

/// Encodes the audit rows of the account events in binary `COPY` format. The stream is a
/// header, then per row a 16-bit field count and each field as a 32-bit length followed by
/// the value in its type's binary send format, then a 16-bit trailer of -1.
fn encode_rows(events: &[Positioned<'_>]) -> sqlx::Result<CopyData> {
    let mut bytes = Vec::with_capacity(64 + events.len() * 512);
    bytes.extend_from_slice(b"PGCOPY\n\xff\r\n\0");
    bytes.extend_from_slice(&0_i32.to_be_bytes());
    bytes.extend_from_slice(&0_i32.to_be_bytes());
    let mut rows = 0;
    for (recorded, partition, offset) in events {
        let Ok(account_id) = Uuid::parse_str(&recorded.meta.subject) else {
            continue;
        };
        encode_row(&mut bytes, recorded, account_id, *partition, *offset)?;
        rows += 1;
    }
    bytes.extend_from_slice(&(-1_i16).to_be_bytes());
    Ok(CopyData { bytes, rows })
}

fn encode_row(
    bytes: &mut Vec<u8>,
    recorded: &RecordedEvent,
    account_id: Uuid,
    partition: i32,
    offset: i64,
) -> sqlx::Result<()> {
    let meta = &recorded.meta;
    bytes.extend_from_slice(&10_i16.to_be_bytes());
    put_field(bytes, account_id.as_bytes())?;
    put_field(bytes, &super::version_of(recorded).to_be_bytes())?;
    put_field(bytes, meta.event_id.as_bytes())?;
    put_field(bytes, recorded.event.event_type().as_bytes())?;
    let schema_version = i32::try_from(recorded.event.schema_version()).unwrap_or(i32::MAX);
    put_field(bytes, &schema_version.to_be_bytes())?;
    put_field(bytes, &postgres_micros(meta.time)?.to_be_bytes())?;
    let actor = AuditActor {
        kind: &meta.actor.kind,
        id: &meta.actor.id,
        ip: &meta.actor.ip,
        user_agent: &meta.actor.user_agent,
    };
    put_jsonb(bytes, &actor)?;
    let data = recorded
        .event
        .redacted_data()
        .map_err(|error| sqlx::Error::Encode(Box::new(error)))?;
    put_jsonb(bytes, &data)?;
    put_field(bytes, &partition.to_be_bytes())?;
    put_field(bytes, &offset.to_be_bytes())?;
    Ok(())
}

/// Appends one field: its length, then its bytes.
fn put_field(bytes: &mut Vec<u8>, value: &[u8]) -> sqlx::Result<()> {
    let length =
        i32::try_from(value.len()).map_err(|error| sqlx::Error::Encode(Box::new(error)))?;
    bytes.extend_from_slice(&length.to_be_bytes());
    bytes.extend_from_slice(value);
    Ok(())
}

/// Appends a `jsonb` field: the format version 1, then the JSON text.
fn put_jsonb(bytes: &mut Vec<u8>, value: &impl Serialize) -> sqlx::Result<()> {
    let start = bytes.len();
    bytes.extend_from_slice(&0_i32.to_be_bytes());
    bytes.push(1);
    serde_json::to_writer(&mut *bytes, value)
        .map_err(|error| sqlx::Error::Encode(Box::new(error)))?;
    let length = i32::try_from(bytes.len() - start - 4)
        .map_err(|error| sqlx::Error::Encode(Box::new(error)))?;
    bytes[start..start + 4].copy_from_slice(&length.to_be_bytes());
    Ok(())
}

/// Returns `time` as PostgreSQL stores a `timestamptz`: microseconds since
/// 2000-01-01 00:00:00 UTC. The nanoseconds are truncated with the same computation that
/// sqlx 0.8 uses when it binds a time, so both paths store equal values.
fn postgres_micros(time: DateTime<Utc>) -> sqlx::Result<i64> {
    let epoch = NaiveDate::from_ymd_opt(2000, 1, 1)
        .and_then(|date| date.and_hms_opt(0, 0, 0))
        .ok_or_else(|| sqlx::Error::Encode("the PostgreSQL epoch is not a valid date".into()))?;
    (time.naive_utc() - epoch)
        .num_microseconds()
        .ok_or_else(|| {
            sqlx::Error::Encode(format!("{time} is out of range for timestamptz").into())
        })
}

#[cfg(test)]
mod tests {
    use accounts_events::{AccountRegistered, DomainEvent, ProfileUpdated, WorkspaceCreated};
    use chrono::TimeZone;

    use super::*;
    use crate::project::test_db::{account_event, assert_same_rows, TestDatabase};

    /// Returns account events of two accounts, with times that carry nanoseconds, and a
    /// workspace event that has no audit history.
    fn events() -> Vec<RecordedEvent> {
        let base = Utc
            .timestamp_opt(1_800_000_000, 123_456_789)
            .single()
            .unwrap_or_default();
        let mut events = Vec::new();
        for account in [Uuid::new_v4(), Uuid::new_v4()] {
            events.push(account_event(
                account,
                1,
                base,
                DomainEvent::AccountRegistered(AccountRegistered {
                    account_id: account,
                    email: "Ünïcode+tag@example.com".to_owned(),
                    email_normalized: "ünïcode+tag@example.com".to_owned(),
                    name: "Back\\slash \"quote\"".to_owned(),
                    password_hash: "$argon2id$v=19$secret".to_owned(),
                }),
            ));
            for sequence in 2..6 {
                events.push(account_event(
                    account,
                    sequence,
                    base + chrono::Duration::nanoseconds(
                        i64::try_from(sequence).unwrap_or(0) * 1_999,
                    ),
                    DomainEvent::ProfileUpdated(ProfileUpdated {
                        name: format!("Name\n{sequence}"),
                        company_name: None,
                        industry: Some("software".to_owned()),
                        business_phone: None,
                        changed: vec!["name".to_owned()],
                    }),
                ));
            }
        }
        let workspace = Uuid::new_v4();
        let mut created = account_event(
            workspace,
            1,
            base,
            DomainEvent::WorkspaceCreated(WorkspaceCreated {
                workspace_id: workspace,
                name: "Workspace".to_owned(),
                owner_id: Uuid::new_v4(),
            }),
        );
        created.meta.subject = accounts_events::AggregateId::Workspace(workspace).key();
        events.push(created);
        events
    }

    fn positioned(events: &[RecordedEvent], first_offset: i64) -> Vec<Positioned<'_>> {
        events
            .iter()
            .zip(first_offset..)
            .map(|(event, offset)| (event, 3, offset))
            .collect()
    }

    async fn insert_and_copy(
        database: &TestDatabase,
        batches: &[Vec<Positioned<'_>>],
    ) -> anyhow::Result<()> {
        for batch in batches {
            let mut transaction = database.begin_in("inserted").await?;
            super::super::record_audit(&mut transaction, batch).await?;
            transaction.commit().await?;
            let mut transaction = database.begin_in("copied").await?;
            copy_audit(&mut transaction, batch).await?;
            transaction.commit().await?;
        }
        Ok(())
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn copy_audit_matches_record_audit() -> anyhow::Result<()> {
        let database = TestDatabase::create(&["inserted", "copied"]).await?;
        let events = events();
        insert_and_copy(&database, &[positioned(&events, 100)]).await?;

        let copied = database.dump("copied").await?;
        let inserted = database.dump("inserted").await?;
        assert_same_rows(&inserted, &copied, "copy_audit differs from record_audit");
        assert_eq!(copied.len(), events.len() - 1, "{copied:#?}");
        database.drop().await
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn copy_audit_skips_rows_already_present() -> anyhow::Result<()> {
        let database = TestDatabase::create(&["inserted", "copied"]).await?;
        let events = events();
        let (first, second) = events.split_at(4);
        // The second batch repeats the first one's last two events and one of its own.
        let mut repeated = positioned(&first[2..], 102);
        repeated.extend(positioned(second, 104));
        repeated.extend(positioned(&second[..1], 104));
        insert_and_copy(&database, &[positioned(first, 100), repeated]).await?;

        let copied = database.dump("copied").await?;
        let inserted = database.dump("inserted").await?;
        assert_same_rows(&inserted, &copied, "copy_audit differs from record_audit");
        assert_eq!(copied.len(), events.len() - 1, "{copied:#?}");
        database.drop().await
    }
}
