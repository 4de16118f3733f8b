//! The read-model changes of each event. Every statement is idempotent and guarded by
//! the aggregate sequence, so replays and out-of-date events change nothing.

use accounts_events::{DomainEvent, RecordedEvent};
use sqlx::{PgConnection, Postgres, Transaction};
use uuid::Uuid;

mod batch;
mod copy;
#[cfg(test)]
mod test_db;

pub use batch::{apply_batch, BatchError, Positioned, UPDATE_PROFILES};
pub use copy::copy_audit;

/// Applies one event inside the batch's transaction.
pub async fn apply(
    transaction: &mut Transaction<'_, Postgres>,
    recorded: &RecordedEvent,
) -> sqlx::Result<()> {
    let connection: &mut PgConnection = transaction;
    let meta = &recorded.meta;
    let version = version_of(recorded);
    match &recorded.event {
        DomainEvent::AccountRegistered(registered) => {
            sqlx::query(
                "INSERT INTO accounts (account_id, email, email_normalized, name, version, created_at, updated_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $6) ON CONFLICT (account_id) DO NOTHING",
            )
            .bind(registered.account_id)
            .bind(&registered.email)
            .bind(&registered.email_normalized)
            .bind(&registered.name)
            .bind(version)
            .bind(meta.time)
            .execute(&mut *connection)
            .await?;
            sqlx::query(
                "INSERT INTO credentials (account_id, email_normalized, password_hash, credential_version, version) \
                 VALUES ($1, $2, $3, 1, $4) ON CONFLICT (account_id) DO NOTHING",
            )
            .bind(registered.account_id)
            .bind(&registered.email_normalized)
            .bind(&registered.password_hash)
            .bind(version)
            .execute(&mut *connection)
            .await?;
        }
        DomainEvent::ProfileUpdated(profile) => {
            let account_id = account_id(&meta.subject)?;
            sqlx::query(
                "UPDATE accounts SET name = $2, company_name = $3, industry = $4, business_phone = $5, \
                 version = $6, updated_at = $7 WHERE account_id = $1 AND version < $6",
            )
            .bind(account_id)
            .bind(&profile.name)
            .bind(&profile.company_name)
            .bind(&profile.industry)
            .bind(&profile.business_phone)
            .bind(version)
            .bind(meta.time)
            .execute(&mut *connection)
            .await?;
        }
        DomainEvent::SessionStarted(session) => {
            let account_id = account_id(&meta.subject)?;
            sqlx::query(
                "INSERT INTO sessions (session_id, account_id, token_sha256, created_at, expires_at, user_agent, ip, verified_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $4) ON CONFLICT (session_id) DO NOTHING",
            )
            .bind(session.session_id)
            .bind(account_id)
            .bind(&session.token_sha256)
            .bind(meta.time)
            .bind(session.expires_at)
            .bind(&session.client.user_agent)
            .bind(&session.client.ip)
            .execute(&mut *connection)
            .await?;
            bump_version(connection, account_id, version).await?;
        }
        DomainEvent::SessionsRevoked(revoked) => {
            let account_id = account_id(&meta.subject)?;
            sqlx::query(
                "UPDATE sessions SET revoked_at = $3 \
                 WHERE account_id = $1 AND session_id = ANY($2) AND revoked_at IS NULL",
            )
            .bind(account_id)
            .bind(&revoked.session_ids)
            .bind(meta.time)
            .execute(&mut *connection)
            .await?;
            bump_version(connection, account_id, version).await?;
        }
        DomainEvent::PasswordChanged(changed) => {
            let account_id = account_id(&meta.subject)?;
            sqlx::query(
                "UPDATE credentials SET password_hash = $2, credential_version = $3, \
                 password_changed_at = $4, version = $5 WHERE account_id = $1 AND version < $5",
            )
            .bind(account_id)
            .bind(&changed.password_hash)
            .bind(i64::try_from(changed.credential_version).unwrap_or(i64::MAX))
            .bind(meta.time)
            .bind(version)
            .execute(&mut *connection)
            .await?;
            bump_version(connection, account_id, version).await?;
        }
        DomainEvent::TotpEnrollmentStarted(started) => {
            let account_id = account_id(&meta.subject)?;
            sqlx::query("UPDATE credentials SET totp_pending = $2, version = $3 WHERE account_id = $1 AND version < $3")
                .bind(account_id)
                .bind(&started.secret_ciphertext)
                .bind(version)
                .execute(&mut *connection)
                .await?;
            bump_version(connection, account_id, version).await?;
        }
        DomainEvent::TotpEnabled(enabled) => {
            let account_id = account_id(&meta.subject)?;
            sqlx::query(
                "UPDATE credentials SET totp_pending = NULL, totp_secret = $2, backup_code_hashes = $3, \
                 backup_codes_used = '{}', mfa_failures = 0, mfa_locked_until = NULL, \
                 last_totp_step = GREATEST(last_totp_step, $4), credential_version = $5, version = $6 \
                 WHERE account_id = $1 AND version < $6",
            )
            .bind(account_id)
            .bind(&enabled.secret_ciphertext)
            .bind(&enabled.backup_code_hashes)
            .bind(i64::try_from(enabled.confirmed_step).unwrap_or(i64::MAX))
            .bind(i64::try_from(enabled.credential_version).unwrap_or(i64::MAX))
            .bind(version)
            .execute(&mut *connection)
            .await?;
            bump_version(connection, account_id, version).await?;
        }
        DomainEvent::TotpStepUsed(used) => {
            let account_id = account_id(&meta.subject)?;
            sqlx::query(
                "UPDATE credentials SET last_totp_step = GREATEST(last_totp_step, $2), \
                 mfa_failures = 0, mfa_locked_until = NULL, version = $3 \
                 WHERE account_id = $1 AND version < $3",
            )
            .bind(account_id)
            .bind(i64::try_from(used.step).unwrap_or(i64::MAX))
            .bind(version)
            .execute(&mut *connection)
            .await?;
            bump_version(connection, account_id, version).await?;
        }
        DomainEvent::BackupCodeUsed(used) => {
            let account_id = account_id(&meta.subject)?;
            sqlx::query(
                "UPDATE credentials SET backup_codes_used = array_append(backup_codes_used, $2), \
                 mfa_failures = 0, mfa_locked_until = NULL, version = $3 \
                 WHERE account_id = $1 AND version < $3",
            )
            .bind(account_id)
            .bind(i32::try_from(used.index).unwrap_or(i32::MAX))
            .bind(version)
            .execute(&mut *connection)
            .await?;
            bump_version(connection, account_id, version).await?;
        }
        DomainEvent::TotpDisabled(disabled) => {
            let account_id = account_id(&meta.subject)?;
            sqlx::query(
                "UPDATE credentials SET totp_pending = NULL, totp_secret = NULL, backup_code_hashes = '{}', \
                 backup_codes_used = '{}', mfa_failures = 0, mfa_locked_until = NULL, \
                 credential_version = $2, version = $3 WHERE account_id = $1 AND version < $3",
            )
            .bind(account_id)
            .bind(i64::try_from(disabled.credential_version).unwrap_or(i64::MAX))
            .bind(version)
            .execute(&mut *connection)
            .await?;
            bump_version(connection, account_id, version).await?;
        }
        DomainEvent::BackupCodesRegenerated(regenerated) => {
            let account_id = account_id(&meta.subject)?;
            sqlx::query(
                "UPDATE credentials SET backup_code_hashes = $2, backup_codes_used = '{}', version = $3 \
                 WHERE account_id = $1 AND version < $3",
            )
            .bind(account_id)
            .bind(&regenerated.backup_code_hashes)
            .bind(version)
            .execute(&mut *connection)
            .await?;
            bump_version(connection, account_id, version).await?;
        }
        DomainEvent::SessionVerified(verified) => {
            let account_id = account_id(&meta.subject)?;
            sqlx::query(
                "UPDATE sessions SET verified_at = GREATEST(COALESCE(verified_at, created_at), $3) \
                 WHERE account_id = $1 AND session_id = $2",
            )
            .bind(account_id)
            .bind(verified.session_id)
            .bind(meta.time)
            .execute(&mut *connection)
            .await?;
            bump_version(connection, account_id, version).await?;
        }
        DomainEvent::SecondFactorFailed(failed) => {
            let account_id = account_id(&meta.subject)?;
            sqlx::query(
                "UPDATE credentials SET mfa_failures = $2, mfa_locked_until = $3, version = $4 \
                 WHERE account_id = $1 AND version < $4",
            )
            .bind(account_id)
            .bind(i32::try_from(failed.failures).unwrap_or(i32::MAX))
            .bind(failed.locked_until)
            .bind(version)
            .execute(&mut *connection)
            .await?;
            bump_version(connection, account_id, version).await?;
        }
        DomainEvent::PasswordReset(reset) => {
            let account_id = account_id(&meta.subject)?;
            sqlx::query(
                "UPDATE credentials SET password_hash = $2, credential_version = $3, \
                 password_changed_at = $4, version = $5 WHERE account_id = $1 AND version < $5",
            )
            .bind(account_id)
            .bind(&reset.password_hash)
            .bind(i64::try_from(reset.credential_version).unwrap_or(i64::MAX))
            .bind(meta.time)
            .bind(version)
            .execute(&mut *connection)
            .await?;
            bump_version(connection, account_id, version).await?;
        }
        DomainEvent::EmailVerificationRequested(requested) => {
            let account_id = account_id(&meta.subject)?;
            let pending = (requested.purpose == "email_change").then_some(&requested.email);
            set_pending_email(connection, account_id, version, meta.time, pending).await?;
        }
        DomainEvent::EmailChangeFailed(_) | DomainEvent::EmailChangeCancelled(_) => {
            let account_id = account_id(&meta.subject)?;
            set_pending_email(connection, account_id, version, meta.time, None).await?;
        }
        DomainEvent::EmailVerified(_) => {
            let account_id = account_id(&meta.subject)?;
            sqlx::query(
                "UPDATE accounts SET email_verified = true, version = $2, updated_at = $3 \
                 WHERE account_id = $1 AND version < $2",
            )
            .bind(account_id)
            .bind(version)
            .bind(meta.time)
            .execute(&mut *connection)
            .await?;
        }
        DomainEvent::EmailChanged(changed) => {
            let account_id = account_id(&meta.subject)?;
            sqlx::query(
                "UPDATE accounts SET email = $2, email_normalized = $3, email_verified = true, \
                 pending_email = NULL, version = $4, updated_at = $5 WHERE account_id = $1 AND version < $4",
            )
            .bind(account_id)
            .bind(&changed.email)
            .bind(&changed.email_normalized)
            .bind(version)
            .bind(meta.time)
            .execute(&mut *connection)
            .await?;
            sqlx::query(
                "UPDATE credentials SET email_normalized = $2, version = $3 \
                 WHERE account_id = $1 AND version < $3",
            )
            .bind(account_id)
            .bind(&changed.email_normalized)
            .bind(version)
            .execute(&mut *connection)
            .await?;
        }
        DomainEvent::PasswordResetRequested(_) | DomainEvent::EmailChangeConfirmed(_) => {
            let account_id = account_id(&meta.subject)?;
            bump_version(connection, account_id, version).await?;
        }
        DomainEvent::ProfilePictureChanged(changed) => {
            let account_id = account_id(&meta.subject)?;
            set_picture(
                connection,
                account_id,
                version,
                meta.time,
                Some(&changed.sha256),
            )
            .await?;
        }
        DomainEvent::ProfilePictureRemoved(_) => {
            let account_id = account_id(&meta.subject)?;
            set_picture(connection, account_id, version, meta.time, None).await?;
        }
        DomainEvent::WorkspaceCreated(created) => {
            sqlx::query(
                "INSERT INTO workspaces (workspace_id, name, owner_id, version, created_at) \
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT (workspace_id) DO NOTHING",
            )
            .bind(created.workspace_id)
            .bind(&created.name)
            .bind(created.owner_id)
            .bind(version)
            .bind(meta.time)
            .execute(&mut *connection)
            .await?;
            sqlx::query(
                "INSERT INTO workspace_members (workspace_id, account_id, added_at) \
                 VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
            )
            .bind(created.workspace_id)
            .bind(created.owner_id)
            .bind(meta.time)
            .execute(&mut *connection)
            .await?;
        }
        DomainEvent::WorkspaceMemberAdded(added) => {
            let workspace_id = workspace_id(&meta.subject)?;
            if advance_workspace(connection, workspace_id, version).await? {
                sqlx::query(
                    "INSERT INTO workspace_members (workspace_id, account_id, added_at) \
                     VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
                )
                .bind(workspace_id)
                .bind(added.account_id)
                .bind(meta.time)
                .execute(&mut *connection)
                .await?;
            }
        }
        DomainEvent::WorkspaceMemberRemoved(removed) => {
            let workspace_id = workspace_id(&meta.subject)?;
            if advance_workspace(connection, workspace_id, version).await? {
                sqlx::query(
                    "DELETE FROM workspace_members WHERE workspace_id = $1 AND account_id = $2",
                )
                .bind(workspace_id)
                .bind(removed.account_id)
                .execute(&mut *connection)
                .await?;
            }
        }
        DomainEvent::AgentCreated(created) => {
            let workspace_id = workspace_id(&meta.subject)?;
            if advance_workspace(connection, workspace_id, version).await? {
                sqlx::query(
                    "INSERT INTO agents (agent_id, workspace_id, name, owner_id, created_at) \
                     VALUES ($1, $2, $3, $4, $5) ON CONFLICT (agent_id) DO NOTHING",
                )
                .bind(created.agent_id)
                .bind(workspace_id)
                .bind(&created.name)
                .bind(created.owner_id)
                .bind(meta.time)
                .execute(&mut *connection)
                .await?;
            }
        }
        DomainEvent::AgentDeleted(deleted) => {
            let workspace_id = workspace_id(&meta.subject)?;
            if advance_workspace(connection, workspace_id, version).await? {
                sqlx::query("DELETE FROM agents WHERE agent_id = $1")
                    .bind(deleted.agent_id)
                    .execute(&mut *connection)
                    .await?;
            }
        }
        DomainEvent::RoleGranted(granted) => {
            let account_id = account_id(&meta.subject)?;
            sqlx::query(
                "UPDATE accounts SET roles = array_append(array_remove(roles, $2), $2), version = $3 \
                 WHERE account_id = $1 AND version < $3",
            )
            .bind(account_id)
            .bind(&granted.role)
            .bind(version)
            .execute(&mut *connection)
            .await?;
        }
        DomainEvent::RoleRevoked(revoked) => {
            let account_id = account_id(&meta.subject)?;
            sqlx::query(
                "UPDATE accounts SET roles = array_remove(roles, $2), version = $3 \
                 WHERE account_id = $1 AND version < $3",
            )
            .bind(account_id)
            .bind(&revoked.role)
            .bind(version)
            .execute(&mut *connection)
            .await?;
        }
        DomainEvent::EmailClaimed(_) | DomainEvent::EmailReleased(_) => {}
    }
    Ok(())
}

/// Adds the account events of a batch to the redacted audit history, in one statement.
/// Events of other aggregates have no history here. Each item is an event with its
/// partition and offset.
pub async fn record_audit(
    transaction: &mut Transaction<'_, Postgres>,
    events: &[(&RecordedEvent, i32, i64)],
) -> sqlx::Result<()> {
    let mut account_ids = Vec::with_capacity(events.len());
    let mut sequences = Vec::with_capacity(events.len());
    let mut event_ids = Vec::with_capacity(events.len());
    let mut types = Vec::with_capacity(events.len());
    let mut versions = Vec::with_capacity(events.len());
    let mut times = Vec::with_capacity(events.len());
    let mut actors = Vec::with_capacity(events.len());
    let mut data = Vec::with_capacity(events.len());
    let mut partitions = Vec::with_capacity(events.len());
    let mut offsets = Vec::with_capacity(events.len());
    for (recorded, partition, offset) in events {
        let Ok(account_id) = Uuid::parse_str(&recorded.meta.subject) else {
            continue;
        };
        let meta = &recorded.meta;
        account_ids.push(account_id);
        sequences.push(i64::try_from(meta.sequence).unwrap_or(i64::MAX));
        event_ids.push(meta.event_id);
        types.push(recorded.event.event_type());
        versions.push(i32::try_from(recorded.event.schema_version()).unwrap_or(i32::MAX));
        times.push(meta.time);
        actors.push(serde_json::json!({
            "type": meta.actor.kind,
            "id": meta.actor.id,
            "ip": meta.actor.ip,
            "user_agent": meta.actor.user_agent,
        }));
        data.push(
            recorded
                .event
                .redacted_data()
                .map_err(|error| sqlx::Error::Encode(Box::new(error)))?,
        );
        partitions.push(*partition);
        offsets.push(*offset);
    }
    if account_ids.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO audit_events (account_id, sequence, event_id, event_type, schema_version, time, \
         actor, data, kafka_partition, kafka_offset) \
         SELECT * FROM UNNEST($1::uuid[], $2::bigint[], $3::uuid[], $4::text[], $5::int[], \
         $6::timestamptz[], $7::jsonb[], $8::jsonb[], $9::int[], $10::bigint[]) \
         ON CONFLICT (account_id, sequence) DO NOTHING",
    )
    .bind(&account_ids)
    .bind(&sequences)
    .bind(&event_ids)
    .bind(&types)
    .bind(&versions)
    .bind(&times)
    .bind(&actors)
    .bind(&data)
    .bind(&partitions)
    .bind(&offsets)
    .execute(&mut **transaction)
    .await?;
    Ok(())
}

/// Sets or clears the picture of an account.
async fn set_picture(
    connection: &mut PgConnection,
    account_id: Uuid,
    version: i64,
    time: chrono::DateTime<chrono::Utc>,
    sha256: Option<&String>,
) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE accounts SET picture_sha256 = $2, version = $3, updated_at = $4 \
         WHERE account_id = $1 AND version < $3",
    )
    .bind(account_id)
    .bind(sha256)
    .bind(version)
    .bind(time)
    .execute(&mut *connection)
    .await?;
    Ok(())
}

/// Moves the workspace row to `version`. Returns false when the row already reflects this
/// event or a later one, so the caller skips a replayed change.
async fn advance_workspace(
    connection: &mut PgConnection,
    workspace_id: Uuid,
    version: i64,
) -> sqlx::Result<bool> {
    let advanced =
        sqlx::query("UPDATE workspaces SET version = $2 WHERE workspace_id = $1 AND version < $2")
            .bind(workspace_id)
            .bind(version)
            .execute(&mut *connection)
            .await?;
    Ok(advanced.rows_affected() == 1)
}

fn workspace_id(subject: &str) -> sqlx::Result<Uuid> {
    match accounts_events::AggregateId::parse(subject) {
        Some(accounts_events::AggregateId::Workspace(id)) => Ok(id),
        _ => Err(sqlx::Error::Decode(
            format!("{subject:?} is not a workspace subject").into(),
        )),
    }
}

/// Sets or clears the address of a pending email change.
async fn set_pending_email(
    connection: &mut PgConnection,
    account_id: Uuid,
    version: i64,
    time: chrono::DateTime<chrono::Utc>,
    pending: Option<&String>,
) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE accounts SET pending_email = $2, version = $3, updated_at = $4 \
         WHERE account_id = $1 AND version < $3",
    )
    .bind(account_id)
    .bind(pending)
    .bind(version)
    .bind(time)
    .execute(&mut *connection)
    .await?;
    Ok(())
}

/// Records that the account reached `version` through an event that changes no profile
/// field, so that the profile's version matches the account's.
async fn bump_version(
    connection: &mut PgConnection,
    account_id: Uuid,
    version: i64,
) -> sqlx::Result<()> {
    sqlx::query("UPDATE accounts SET version = $2 WHERE account_id = $1 AND version < $2")
        .bind(account_id)
        .bind(version)
        .execute(&mut *connection)
        .await?;
    Ok(())
}

/// Returns the aggregate sequence of an event as the `version` its rows store.
fn version_of(recorded: &RecordedEvent) -> i64 {
    i64::try_from(recorded.meta.sequence).unwrap_or(i64::MAX)
}

fn account_id(subject: &str) -> sqlx::Result<Uuid> {
    Uuid::parse_str(subject).map_err(|error| sqlx::Error::Decode(Box::new(error)))
}
