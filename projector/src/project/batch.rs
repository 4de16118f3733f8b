//! Applying a batch of events with fewer statements than one per event.
//!
//! A run of consecutive events of one kind is written with one multi-row statement per
//! table when replaying the run event by event would leave the same rows:
//!
//! - `AccountRegistered` inserts with `ON CONFLICT DO NOTHING`, so the first event of each
//!   account in the run decides the rows.
//! - `ProfileUpdated` overwrites the same columns under the guard `version < $n`, so the
//!   event with the highest sequence of each account decides the row, the first of them
//!   when a sequence repeats.
//! - `SessionStarted` inserts sessions with `ON CONFLICT DO NOTHING` and raises the
//!   account's version, so the first event of each session and the highest sequence of
//!   each account decide the rows.
//!
//! Runs never reach across an event of another kind, so statements of different kinds keep
//! their log order. Every other event, and a run of one event, goes through
//! [`super::apply`].

use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};
use std::fmt;

use accounts_events::{DomainEvent, RecordedEvent};
use chrono::{DateTime, Utc};
use sqlx::{PgConnection, Postgres, Transaction};
use uuid::Uuid;

/// An event of a batch with the partition and offset of its record.
pub type Positioned<'a> = (&'a RecordedEvent, i32, i64);

/// The failure of one statement of [`apply_batch`], with the events that it wrote.
#[derive(Debug)]
pub struct BatchError {
    event_type: &'static str,
    event_id: Uuid,
    events: usize,
    first: (i32, i64),
    last: (i32, i64),
    source: sqlx::Error,
}

impl BatchError {
    fn new(run: &[Positioned<'_>], source: sqlx::Error) -> Self {
        let (first_event, first_partition, first_offset) = run[0];
        let (_, last_partition, last_offset) = run[run.len() - 1];
        Self {
            event_type: first_event.event.event_type(),
            event_id: first_event.meta.event_id,
            events: run.len(),
            first: (first_partition, first_offset),
            last: (last_partition, last_offset),
            source,
        }
    }
}

impl fmt::Display for BatchError {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (first_partition, first_offset) = self.first;
        let (last_partition, last_offset) = self.last;
        if self.events == 1 {
            write!(
                formatter,
                "failed to project {} event {} at {first_partition}/{first_offset}",
                self.event_type, self.event_id
            )
        } else {
            write!(
                formatter,
                "failed to project {} {} events, from {first_partition}/{first_offset} \
                 to {last_partition}/{last_offset}",
                self.events, self.event_type
            )
        }
    }
}

impl std::error::Error for BatchError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

/// The kinds of event whose runs are written with multi-row statements.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RunKind {
    AccountRegistered,
    ProfileUpdated,
    SessionStarted,
    Single,
}

fn run_kind(event: &DomainEvent) -> RunKind {
    match event {
        DomainEvent::AccountRegistered(_) => RunKind::AccountRegistered,
        DomainEvent::ProfileUpdated(_) => RunKind::ProfileUpdated,
        DomainEvent::SessionStarted(_) => RunKind::SessionStarted,
        _ => RunKind::Single,
    }
}

/// Applies `events` in log order inside the batch's transaction, leaving the same rows as
/// [`super::apply`] called on each event in turn.
pub async fn apply_batch(
    transaction: &mut Transaction<'_, Postgres>,
    events: &[Positioned<'_>],
) -> Result<(), BatchError> {
    let mut start = 0;
    while start < events.len() {
        let kind = run_kind(&events[start].0.event);
        let mut end = start + 1;
        if kind != RunKind::Single {
            while end < events.len() && run_kind(&events[end].0.event) == kind {
                end += 1;
            }
        }
        let run = &events[start..end];
        let result = match kind {
            _ if run.len() == 1 => super::apply(transaction, run[0].0).await,
            RunKind::AccountRegistered => insert_registrations(transaction, run).await,
            RunKind::ProfileUpdated => update_profiles(transaction, run).await,
            RunKind::SessionStarted => insert_sessions(transaction, run).await,
            RunKind::Single => super::apply(transaction, run[0].0).await,
        };
        result.map_err(|source| BatchError::new(run, source))?;
        start = end;
    }
    Ok(())
}

/// The statement that writes a run of `ProfileUpdated` events. The arrays `$1` (account
/// ids) to `$7` (event times) hold at most one change per account, the one with the
/// highest sequence.
pub const UPDATE_PROFILES: &str = "UPDATE accounts SET name = changed.name, \
     company_name = changed.company_name, industry = changed.industry, \
     business_phone = changed.business_phone, version = changed.version, updated_at = changed.time \
     FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::bigint[], \
     $7::timestamptz[]) AS changed(account_id, name, company_name, industry, business_phone, version, time) \
     WHERE accounts.account_id = changed.account_id AND accounts.version < changed.version";

/// Inserts the accounts and credentials of a run of `AccountRegistered` events.
async fn insert_registrations(
    connection: &mut PgConnection,
    run: &[Positioned<'_>],
) -> sqlx::Result<()> {
    let mut seen = HashSet::with_capacity(run.len());
    let mut account_ids = Vec::with_capacity(run.len());
    let mut emails = Vec::with_capacity(run.len());
    let mut normalized = Vec::with_capacity(run.len());
    let mut names = Vec::with_capacity(run.len());
    let mut password_hashes = Vec::with_capacity(run.len());
    let mut versions = Vec::with_capacity(run.len());
    let mut times = Vec::with_capacity(run.len());
    for (recorded, _, _) in run {
        let DomainEvent::AccountRegistered(registered) = &recorded.event else {
            continue;
        };
        if !seen.insert(registered.account_id) {
            continue;
        }
        account_ids.push(registered.account_id);
        emails.push(registered.email.as_str());
        normalized.push(registered.email_normalized.as_str());
        names.push(registered.name.as_str());
        password_hashes.push(registered.password_hash.as_str());
        versions.push(super::version_of(recorded));
        times.push(recorded.meta.time);
    }

    sqlx::query(
        "INSERT INTO accounts (account_id, email, email_normalized, name, version, created_at, updated_at) \
         SELECT account_id, email, email_normalized, name, version, time, time \
         FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[], $5::bigint[], $6::timestamptz[]) \
         AS registered(account_id, email, email_normalized, name, version, time) \
         ON CONFLICT (account_id) DO NOTHING",
    )
    .bind(&account_ids)
    .bind(&emails)
    .bind(&normalized)
    .bind(&names)
    .bind(&versions)
    .bind(&times)
    .execute(&mut *connection)
    .await?;

    sqlx::query(
        "INSERT INTO credentials (account_id, email_normalized, password_hash, credential_version, version) \
         SELECT account_id, email_normalized, password_hash, 1, version \
         FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::bigint[]) \
         AS registered(account_id, email_normalized, password_hash, version) \
         ON CONFLICT (account_id) DO NOTHING",
    )
    .bind(&account_ids)
    .bind(&normalized)
    .bind(&password_hashes)
    .bind(&versions)
    .execute(&mut *connection)
    .await?;
    Ok(())
}

/// A `ProfileUpdated` event with its account, sequence and time.
struct ProfileChange<'a> {
    account_id: Uuid,
    version: i64,
    time: DateTime<Utc>,
    profile: &'a accounts_events::ProfileUpdated,
}

/// Updates the profiles of a run of `ProfileUpdated` events, each account to its event
/// with the highest sequence.
async fn update_profiles(
    connection: &mut PgConnection,
    run: &[Positioned<'_>],
) -> sqlx::Result<()> {
    let mut changes: Vec<ProfileChange<'_>> = Vec::with_capacity(run.len());
    let mut index_of: HashMap<Uuid, usize> = HashMap::with_capacity(run.len());
    for (recorded, _, _) in run {
        let DomainEvent::ProfileUpdated(profile) = &recorded.event else {
            continue;
        };
        let change = ProfileChange {
            account_id: super::account_id(&recorded.meta.subject)?,
            version: super::version_of(recorded),
            time: recorded.meta.time,
            profile,
        };
        match index_of.entry(change.account_id) {
            Entry::Vacant(vacant) => {
                vacant.insert(changes.len());
                changes.push(change);
            }
            // A later event with an equal or lower sequence would fail the guard.
            Entry::Occupied(occupied) => {
                let highest = &mut changes[*occupied.get()];
                if change.version > highest.version {
                    *highest = change;
                }
            }
        }
    }

    let account_ids: Vec<Uuid> = changes.iter().map(|change| change.account_id).collect();
    let names: Vec<&str> = changes
        .iter()
        .map(|change| change.profile.name.as_str())
        .collect();
    let company_names: Vec<Option<&str>> = changes
        .iter()
        .map(|change| change.profile.company_name.as_deref())
        .collect();
    let industries: Vec<Option<&str>> = changes
        .iter()
        .map(|change| change.profile.industry.as_deref())
        .collect();
    let phones: Vec<Option<&str>> = changes
        .iter()
        .map(|change| change.profile.business_phone.as_deref())
        .collect();
    let versions: Vec<i64> = changes.iter().map(|change| change.version).collect();
    let times: Vec<DateTime<Utc>> = changes.iter().map(|change| change.time).collect();

    sqlx::query(UPDATE_PROFILES)
        .bind(&account_ids)
        .bind(&names)
        .bind(&company_names)
        .bind(&industries)
        .bind(&phones)
        .bind(&versions)
        .bind(&times)
        .execute(&mut *connection)
        .await?;
    Ok(())
}

/// Inserts the sessions of a run of `SessionStarted` events and raises each account's
/// version to the highest sequence among them.
async fn insert_sessions(
    connection: &mut PgConnection,
    run: &[Positioned<'_>],
) -> sqlx::Result<()> {
    let mut seen = HashSet::with_capacity(run.len());
    let mut session_ids = Vec::with_capacity(run.len());
    let mut account_ids = Vec::with_capacity(run.len());
    let mut tokens = Vec::with_capacity(run.len());
    let mut times = Vec::with_capacity(run.len());
    let mut expiries = Vec::with_capacity(run.len());
    let mut user_agents = Vec::with_capacity(run.len());
    let mut ips = Vec::with_capacity(run.len());
    let mut versions: HashMap<Uuid, i64> = HashMap::with_capacity(run.len());
    for (recorded, _, _) in run {
        let DomainEvent::SessionStarted(session) = &recorded.event else {
            continue;
        };
        let account_id = super::account_id(&recorded.meta.subject)?;
        let version = super::version_of(recorded);
        versions
            .entry(account_id)
            .and_modify(|highest| *highest = (*highest).max(version))
            .or_insert(version);
        if !seen.insert(session.session_id) {
            continue;
        }
        session_ids.push(session.session_id);
        account_ids.push(account_id);
        tokens.push(session.token_sha256.as_str());
        times.push(recorded.meta.time);
        expiries.push(session.expires_at);
        user_agents.push(session.client.user_agent.as_deref());
        ips.push(session.client.ip.as_deref());
    }

    sqlx::query(
        "INSERT INTO sessions (session_id, account_id, token_sha256, created_at, expires_at, user_agent, ip, verified_at) \
         SELECT session_id, account_id, token_sha256, time, expires_at, user_agent, ip, time \
         FROM UNNEST($1::uuid[], $2::uuid[], $3::text[], $4::timestamptz[], $5::timestamptz[], \
         $6::text[], $7::text[]) \
         AS started(session_id, account_id, token_sha256, time, expires_at, user_agent, ip) \
         ON CONFLICT (session_id) DO NOTHING",
    )
    .bind(&session_ids)
    .bind(&account_ids)
    .bind(&tokens)
    .bind(&times)
    .bind(&expiries)
    .bind(&user_agents)
    .bind(&ips)
    .execute(&mut *connection)
    .await?;

    let (bumped, bumped_versions): (Vec<Uuid>, Vec<i64>) = versions.into_iter().unzip();
    sqlx::query(
        "UPDATE accounts SET version = bumped.version \
         FROM UNNEST($1::uuid[], $2::bigint[]) AS bumped(account_id, version) \
         WHERE accounts.account_id = bumped.account_id AND accounts.version < bumped.version",
    )
    .bind(&bumped)
    .bind(&bumped_versions)
    .execute(&mut *connection)
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use accounts_events::{
        AccountRegistered, EmailChanged, EmailVerified, PasswordChanged, ProfileUpdated,
        SessionClient, SessionStarted, SessionVerified, SessionsRevoked,
    };
    use chrono::{Duration, TimeZone};
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use super::*;
    use crate::project::test_db::{account_event, assert_same_rows, TestDatabase};

    fn time(seconds: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_800_000_000, 0)
            .single()
            .unwrap_or_default()
            + Duration::seconds(seconds)
    }

    fn registered(account: Uuid, name: &str) -> DomainEvent {
        DomainEvent::AccountRegistered(AccountRegistered {
            account_id: account,
            email: format!("{name}@example.com"),
            email_normalized: format!("{name}@example.com"),
            name: name.to_owned(),
            password_hash: format!("hash of {name}"),
        })
    }

    fn profile(name: &str) -> DomainEvent {
        DomainEvent::ProfileUpdated(ProfileUpdated {
            name: name.to_owned(),
            company_name: Some(format!("{name} Ltd")),
            industry: name.len().is_multiple_of(2).then(|| "software".to_owned()),
            business_phone: None,
            changed: vec!["name".to_owned()],
        })
    }

    fn session(session_id: Uuid) -> DomainEvent {
        DomainEvent::SessionStarted(SessionStarted {
            session_id,
            token_sha256: format!("token of {session_id}"),
            expires_at: time(86_400),
            client: SessionClient {
                user_agent: Some("test agent".to_owned()),
                ip: None,
            },
            method: "password".to_owned(),
        })
    }

    fn email_changed(email: &str) -> DomainEvent {
        DomainEvent::EmailChanged(EmailChanged {
            previous_email: "old@example.com".to_owned(),
            email: email.to_owned(),
            email_normalized: email.to_lowercase(),
        })
    }

    fn password_changed(credential_version: u64) -> DomainEvent {
        DomainEvent::PasswordChanged(PasswordChanged {
            password_hash: format!("hash {credential_version}"),
            credential_version,
        })
    }

    /// Applies `events` event by event in schema `per_event` and with one `apply_batch`
    /// in schema `batched`, and returns the dumps of both schemas.
    async fn apply_both(
        database: &TestDatabase,
        events: &[RecordedEvent],
    ) -> anyhow::Result<(Vec<String>, Vec<String>)> {
        let mut transaction = database.begin_in("per_event").await?;
        for event in events {
            super::super::apply(&mut transaction, event).await?;
        }
        transaction.commit().await?;

        let positioned: Vec<Positioned<'_>> = events
            .iter()
            .enumerate()
            .map(|(offset, event)| (event, 0, i64::try_from(offset).unwrap_or(i64::MAX)))
            .collect();
        let mut transaction = database.begin_in("batched").await?;
        apply_batch(&mut transaction, &positioned).await?;
        transaction.commit().await?;

        Ok((
            database.dump("per_event").await?,
            database.dump("batched").await?,
        ))
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn batch_with_interleaved_kinds_matches_per_event() -> anyhow::Result<()> {
        let database = TestDatabase::create(&["per_event", "batched"]).await?;
        let (a, b, c) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        let unregistered = Uuid::new_v4();
        let (a_session, b_session) = (Uuid::new_v4(), Uuid::new_v4());
        let events = vec![
            account_event(a, 1, time(1), registered(a, "alice")),
            account_event(b, 1, time(2), registered(b, "bob")),
            account_event(c, 1, time(2), registered(c, "carol")),
            // A replayed registration with other content must not win.
            account_event(a, 1, time(3), registered(a, "alice-replayed")),
            account_event(a, 2, time(4), profile("Alice 2")),
            account_event(b, 2, time(5), profile("Bob 2")),
            account_event(unregistered, 2, time(6), profile("Nobody")),
            account_event(a, 3, time(7), profile("Alice 3")),
            // A profile run that reached past this event would make its guard fail.
            account_event(a, 4, time(8), email_changed("Alice.New@example.com")),
            account_event(b, 3, time(9), profile("Bob 3")),
            account_event(a, 5, time(10), profile("Alice 5")),
            // Lower than the row's version by now, so skipped.
            account_event(a, 4, time(11), profile("Alice stale")),
            account_event(a, 6, time(12), profile("Alice 6 first")),
            account_event(a, 6, time(13), profile("Alice 6 second")),
            account_event(b, 4, time(14), session(b_session)),
            account_event(a, 7, time(15), session(a_session)),
            account_event(a, 7, time(15), session(a_session)),
            account_event(b, 5, time(16), password_changed(2)),
            account_event(b, 6, time(17), session(Uuid::new_v4())),
            account_event(
                b,
                7,
                time(18),
                DomainEvent::SessionVerified(SessionVerified {
                    session_id: b_session,
                    method: "totp".to_owned(),
                }),
            ),
            account_event(
                a,
                8,
                time(19),
                DomainEvent::SessionsRevoked(SessionsRevoked {
                    session_ids: vec![a_session],
                    reason: "sign_out".to_owned(),
                }),
            ),
            account_event(
                b,
                8,
                time(20),
                DomainEvent::EmailVerified(EmailVerified {
                    email: "bob@example.com".to_owned(),
                }),
            ),
            // The last events decide the rows. Applying profile runs before the email
            // changes around them loses Alice's address, and applying them after loses
            // Bob's name. Keeping the last event of a run instead of the highest sequence
            // loses Alice's name, and keeping the second of an equal pair loses Carol's.
            account_event(b, 9, time(21), profile("Bob 9")),
            account_event(a, 9, time(22), profile("Alice 9")),
            account_event(c, 2, time(23), profile("Carol 2 first")),
            account_event(a, 8, time(24), profile("Alice stale 8")),
            account_event(c, 2, time(25), profile("Carol 2 second")),
            account_event(b, 10, time(26), email_changed("Bob.New@example.com")),
        ];

        let (per_event, batched) = apply_both(&database, &events).await?;
        assert_same_rows(&per_event, &batched, "apply_batch differs from apply");

        let account = |id: Uuid| {
            sqlx::query_as::<_, (String, String, i64)>(
                "SELECT email, name, version FROM batched.accounts WHERE account_id = $1",
            )
            .bind(id)
            .fetch_one(&database.pool)
        };
        let (email, name, version) = account(a).await?;
        assert_eq!(email, "Alice.New@example.com");
        assert_eq!(name, "Alice 9");
        assert_eq!(version, 9);
        let (email, name, version) = account(b).await?;
        assert_eq!(email, "Bob.New@example.com");
        assert_eq!(name, "Bob 9");
        assert_eq!(version, 10);
        let (_, name, _) = account(c).await?;
        assert_eq!(name, "Carol 2 first");
        let sessions: i64 = sqlx::query_scalar("SELECT count(*) FROM batched.sessions")
            .fetch_one(&database.pool)
            .await?;
        assert_eq!(sessions, 3);

        let (per_event_replayed, batched_replayed) = apply_both(&database, &events).await?;
        assert_same_rows(
            &per_event_replayed,
            &batched_replayed,
            "a replayed apply_batch differs from a replayed apply",
        );
        assert_same_rows(&batched, &batched_replayed, "a replayed batch changed rows");

        database.drop().await
    }

    /// Returns a random event of one of `accounts`. Sequences mostly rise per account but
    /// sometimes fall behind or repeat, as in a replayed or out-of-date record.
    fn random_event(
        rng: &mut StdRng,
        accounts: &[Uuid],
        sequences: &mut [u64],
        sessions: &mut Vec<(usize, Uuid)>,
        previous: Option<&RecordedEvent>,
    ) -> RecordedEvent {
        if let Some(previous) = previous.filter(|_| rng.gen_bool(0.1)) {
            return previous.clone();
        }
        let index = rng.gen_range(0..accounts.len());
        let account = accounts[index];
        sequences[index] += 1;
        let sequence = if rng.gen_bool(0.15) {
            sequences[index].saturating_sub(rng.gen_range(1..4)).max(2)
        } else {
            sequences[index]
        };
        let at = time(i64::try_from(sequence).unwrap_or(0) * 10 + rng.gen_range(0..10));
        let event = match rng.gen_range(0..10) {
            0 => {
                return account_event(account, 1, at, registered(account, &format!("user{index}")))
            }
            1..=3 => profile(&format!("Name {index} {}", rng.gen_range(0..1000))),
            4 | 5 => {
                let session_id = Uuid::new_v4();
                sessions.push((index, session_id));
                session(session_id)
            }
            6 => email_changed(&format!("User{index}.{sequence}@Example.com")),
            7 => password_changed(sequence),
            8 => DomainEvent::EmailVerified(EmailVerified {
                email: format!("user{index}@example.com"),
            }),
            _ => {
                let own: Vec<Uuid> = sessions
                    .iter()
                    .filter(|(owner, _)| *owner == index)
                    .map(|(_, id)| *id)
                    .collect();
                let session_id = if own.is_empty() {
                    Uuid::new_v4()
                } else {
                    own[rng.gen_range(0..own.len())]
                };
                DomainEvent::SessionVerified(SessionVerified {
                    session_id,
                    method: "password".to_owned(),
                })
            }
        };
        account_event(account, sequence, at, event)
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn random_batches_match_per_event() -> anyhow::Result<()> {
        let database = TestDatabase::create(&["per_event", "batched"]).await?;
        let mut rng = StdRng::seed_from_u64(20_261_205);
        let accounts: Vec<Uuid> = (0..3).map(|_| Uuid::new_v4()).collect();
        let mut sequences = vec![1_u64; accounts.len()];
        let mut sessions = Vec::new();
        for round in 0..30 {
            let mut events: Vec<RecordedEvent> = Vec::new();
            let size = rng.gen_range(1..60);
            for _ in 0..size {
                let event = random_event(
                    &mut rng,
                    &accounts,
                    &mut sequences,
                    &mut sessions,
                    events.last(),
                );
                events.push(event);
            }
            let (per_event, batched) = apply_both(&database, &events).await?;
            assert_same_rows(
                &per_event,
                &batched,
                &format!("apply_batch differs from apply in round {round} of {size} events"),
            );
        }
        database.drop().await
    }
}
