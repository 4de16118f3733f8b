//! Auditors: the auditor role, complete redacted histories, states at past instants, the
//! hash chain, and version 1 records read by every consumer.

use std::time::Duration;

use accounts_command::roles::{change_role, Role, RoleChange};
use accounts_events::envelope::record_hash;
use accounts_events::partition_for;
use accounts_platform::hash_token;
use accounts_projector::chain::verify_chain;
use chrono::Utc;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;
use reqwest::StatusCode;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::helpers::{spawn_app, Event, TestApp, User, PASSWORD};

/// Grants `user` the auditor role and waits until the query service has applied it.
async fn grant_auditor(app: &TestApp, user: &User) {
    let change = change_role(&app.kafka, user.account_id, Role::Auditor, true)
        .await
        .expect("grant-role failed");
    await_change(app, user, change).await;
}

/// Waits until the query service's read models include `change`.
async fn await_change(app: &TestApp, user: &User, change: RoleChange) {
    let position = change
        .position
        .expect("an accepted change has a log position");
    let response = app.profile_after(user, &position).await;
    assert_eq!(response.status(), StatusCode::OK);
}

async fn audit_get(app: &TestApp, auditor: &User, path: &str) -> reqwest::Response {
    app.http
        .get(format!("{}/v1/audit/accounts/{path}", app.query_url))
        .bearer_auth(&auditor.token)
        .send()
        .await
        .unwrap()
}

/// Reads an account's whole history through the paged endpoint.
async fn history(app: &TestApp, auditor: &User, account_id: Uuid) -> Vec<Value> {
    let mut events = Vec::new();
    let mut after = 0;
    loop {
        let response = audit_get(
            app,
            auditor,
            &format!("{account_id}/events?after={after}&limit=100"),
        )
        .await;
        assert_eq!(response.status(), StatusCode::OK);
        let page: Value = response.json().await.unwrap();
        events.extend(page["events"].as_array().unwrap().iter().cloned());
        match page["next"].as_i64() {
            Some(next) => after = next,
            None => return events,
        }
    }
}

fn events_of<'a>(log: &'a [Event], subject: &str) -> Vec<&'a Event> {
    log.iter()
        .filter(|event| event.subject() == subject)
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn audit_endpoints_need_the_auditor_role() {
    let app = spawn_app(1).await;
    let (user, auditor) = (app.new_user().await, app.new_user().await);
    let path = format!("{}/events", user.account_id);

    let rejected = audit_get(&app, &auditor, &path).await;
    assert_eq!(rejected.status(), StatusCode::FORBIDDEN);
    assert_eq!(
        rejected.json::<Value>().await.unwrap()["code"],
        "auditor_role_required"
    );
    let rejected = audit_get(
        &app,
        &auditor,
        &format!(
            "{}/state?at={}",
            user.account_id,
            Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        ),
    )
    .await;
    assert_eq!(rejected.status(), StatusCode::FORBIDDEN);

    grant_auditor(&app, &auditor).await;
    let allowed = audit_get(&app, &auditor, &path).await;
    assert_eq!(allowed.status(), StatusCode::OK);
    let page: Value = allowed.json().await.unwrap();
    assert_eq!(page["events"][0]["type"], "accounts.AccountRegistered");

    // The grant is itself on record, made by a service.
    let own = history(&app, &auditor, auditor.account_id).await;
    let granted = own
        .iter()
        .find(|event| event["type"] == "accounts.RoleGranted")
        .expect("RoleGranted is in the history");
    assert_eq!(granted["data"]["role"], "auditor");
    assert_eq!(granted["actor"]["type"], "service");

    for (query, field) in [
        ("events?limit=0", "limit"),
        ("events?after=-1", "after"),
        ("events?page=2", "page"),
        ("state", "at"),
        ("state?at=yesterday", "at"),
    ] {
        let response = audit_get(&app, &auditor, &format!("{}/{query}", user.account_id)).await;
        assert_eq!(
            response.status(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "{query}"
        );
        assert_eq!(
            response.json::<Value>().await.unwrap()["errors"][0]["field"],
            field
        );
    }
    let unknown = audit_get(&app, &auditor, &format!("{}/events", Uuid::now_v7())).await;
    assert_eq!(unknown.status(), StatusCode::NOT_FOUND);

    let revoked = change_role(&app.kafka, auditor.account_id, Role::Auditor, false)
        .await
        .unwrap();
    await_change(&app, &auditor, revoked).await;
    assert_eq!(
        audit_get(&app, &auditor, &path).await.status(),
        StatusCode::FORBIDDEN
    );
}

/// Sends one command of the mix for `user`.
async fn step(app: &TestApp, user: &User, round: u64) -> StatusCode {
    let industries = ["ai_agents", "software", "healthcare", "education"];
    match round % 8 {
        0..=2 => app
            .patch_profile(user, &json!({"name": format!("Person {round}")}))
            .send()
            .await
            .unwrap()
            .status(),
        3 | 4 => app
            .patch_profile(
                user,
                &json!({"company_name": format!("Company {round}"), "industry": industries[(round % 4) as usize]}),
            )
            .send()
            .await
            .unwrap()
            .status(),
        5 => app
            .patch_profile(
                user,
                &json!({"business_phone": {"country_code": "+91", "number": format!("99887 7{:04}", round % 10_000)}}),
            )
            .send()
            .await
            .unwrap()
            .status(),
        6 => app
            .post(
                "/v1/email-change",
                Some(&user.token),
                &json!({"new_email": format!("moved-{round}-{}@example.com", Uuid::new_v4().simple())}),
            )
            .await
            .status(),
        _ => app
            .patch_profile(user, &json!({"company_name": null}))
            .send()
            .await
            .unwrap()
            .status(),
    }
}

fn profile_fields(profile: &Value) -> Value {
    json!({
        "email": profile["email"],
        "email_verified": profile["email_verified"],
        "pending_email": profile["pending_email"],
        "name": profile["name"],
        "company_name": profile["company_name"],
        "industry": profile["industry"],
        "business_phone": profile["business_phone"],
        "picture_url": profile["picture_url"],
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn histories_are_complete_and_states_match_past_profiles() {
    let app = spawn_app(2).await;
    let auditor = app.new_user().await;
    grant_auditor(&app, &auditor).await;
    let users = [
        app.new_user().await,
        app.new_user().await,
        app.new_user().await,
    ];

    // 1,002 commands: one sequential stream per account, sampling the profile now and then.
    let streams = users.iter().enumerate().map(|(index, user)| {
        let app = &app;
        async move {
            let mut samples = Vec::new();
            for round in 0..334_u64 {
                let status = step(app, user, round + 1000 * index as u64).await;
                assert!(
                    status.is_success(),
                    "a command of the mix failed with {status}"
                );
                if round % 67 == 0 {
                    let profile = app.profile_json(user).await;
                    samples.push((Utc::now(), profile));
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
            samples
        }
    });
    let samples = futures::future::join_all(streams).await;

    let log = app.committed_events();
    for (user, samples) in users.iter().zip(samples) {
        let subject = user.account_id.to_string();
        let stored = events_of(&log, &subject);
        let audited = history(&app, &auditor, user.account_id).await;
        assert!(audited.len() > 334, "{} events", audited.len());
        assert_eq!(audited.len(), stored.len());
        for (index, (entry, event)) in audited.iter().zip(&stored).enumerate() {
            assert_eq!(entry["sequence"], index as u64 + 1);
            assert_eq!(entry["event_id"], event.value["id"]);
            assert_eq!(entry["type"], event.value["type"]);
            assert_eq!(entry["partition"], event.partition);
            assert_eq!(entry["offset"], event.offset);
        }

        // No password, session token, hash, sealed secret or token in the history.
        let text = serde_json::to_string(&audited).unwrap();
        assert!(!text.contains(PASSWORD));
        assert!(!text.contains(&user.token));
        assert!(!text.contains("$argon2id"));
        for event in &stored {
            for field in accounts_events::event::REDACTED_FIELDS {
                let values = match &event.value["data"][field] {
                    Value::String(value) => vec![value.clone()],
                    Value::Array(items) => items
                        .iter()
                        .filter_map(|item| item.as_str().map(str::to_owned))
                        .collect(),
                    _ => vec![],
                };
                for value in values {
                    assert!(
                        !text.contains(&value),
                        "{field} of {} is in the history",
                        event.value["type"]
                    );
                }
            }
        }

        for (at, profile) in samples {
            let response = audit_get(
                &app,
                &auditor,
                &format!(
                    "{}/state?at={}",
                    user.account_id,
                    at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
                ),
            )
            .await;
            assert_eq!(response.status(), StatusCode::OK);
            let state: Value = response.json().await.unwrap();
            assert_eq!(profile_fields(&state), profile_fields(&profile), "at {at}");
            assert_eq!(state["sequence"], profile["version"], "at {at}");
        }
    }
}

async fn produce(app: &TestApp, key: &str, value: &[u8]) -> (i32, i64) {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &app.kafka.brokers)
        .create()
        .unwrap();
    let partition = partition_for(key, app.kafka.partitions);
    let delivered = producer
        .send(
            FutureRecord::to(&app.kafka.topics().events)
                .partition(partition)
                .key(key)
                .payload(value),
            Duration::from_secs(10),
        )
        .await
        .map_err(|(error, _)| error)
        .unwrap();
    (delivered.partition, delivered.offset)
}

/// Returns a record value for `user`'s next event, in the envelope of the last one.
fn next_record(
    last: &Event,
    event_type: &str,
    version: u32,
    data: Value,
    previous: &str,
) -> (Uuid, Vec<u8>) {
    let mut value = last.value.clone();
    let event_id = Uuid::now_v7();
    value["id"] = json!(event_id);
    value["type"] = json!(event_type);
    value["time"] = json!(Utc::now());
    value["aggregatesequence"] = json!(last.sequence() + 1);
    value["schemaversion"] = json!(version);
    value["previoushash"] = json!(previous);
    value["data"] = data;
    (event_id, serde_json::to_vec(&value).unwrap())
}

#[tokio::test(flavor = "multi_thread")]
async fn first_broken_link_is_reported() {
    let app = spawn_app(1).await;
    let (user, other) = (app.new_user().await, app.new_user().await);
    let kafka = app.kafka.clone();
    let report = tokio::task::spawn_blocking(move || verify_chain(&kafka, None))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(report.broken, None);
    assert!(report.events >= 4, "{report:?}");

    let subject = user.account_id.to_string();
    let log = app.committed_events();
    let last = *events_of(&log, &subject).last().unwrap();
    let data = json!({"name": "Forged", "company_name": null, "industry": null, "business_phone": null, "changed": ["name"]});
    let (event_id, value) = next_record(last, "accounts.ProfileUpdated", 1, data, &"0".repeat(64));
    let (partition, offset) = produce(&app, &subject, &value).await;

    let kafka = app.kafka.clone();
    let report = tokio::task::spawn_blocking(move || verify_chain(&kafka, None))
        .await
        .unwrap()
        .unwrap();
    let broken = report.broken.expect("the forged event breaks the chain");
    assert_eq!((broken.partition, broken.offset), (partition, offset));
    assert_eq!(broken.event_id, Some(event_id));
    assert_eq!(broken.subject, subject);
    assert_eq!(
        broken.expected.as_deref(),
        Some(record_hash(&last.raw).as_str())
    );

    let kafka = app.kafka.clone();
    let other_id = other.account_id;
    let report = tokio::task::spawn_blocking(move || verify_chain(&kafka, Some(other_id)))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(report.broken, None, "{report:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn version_one_records_are_upcast_by_every_reader() {
    let mut app = spawn_app(1).await;
    let user = app.new_user().await;
    grant_auditor(&app, &user).await;

    // Stop the decider, write a session in the version 1 form, then start a new decider
    // that rebuilds the partition from the log.
    for decider in app.deciders.drain(..) {
        decider.control.stop();
        decider.thread.join().unwrap();
    }
    let subject = user.account_id.to_string();
    let log = app.committed_events();
    let last = *events_of(&log, &subject).last().unwrap();
    let (session_id, legacy_token) = (
        Uuid::now_v7(),
        format!("legacy-{}", Uuid::new_v4().simple()),
    );
    let data = json!({
        "session_id": session_id,
        "token_sha256": hash_token(&legacy_token),
        "expires_at": Utc::now() + chrono::Duration::hours(1),
        "user_agent": "LegacyAgent/1.0",
        "ip": "192.0.2.7",
        "method": "password"
    });
    let (_, value) = next_record(
        last,
        "accounts.SessionStarted",
        1,
        data,
        &record_hash(&last.raw),
    );
    produce(&app, &subject, &value).await;
    app.deciders = accounts_command::spawn_deciders(&app.kafka, 1).unwrap();
    app.wait_until_projected(&app.pool).await;

    // The projector: the session is listed with the client of the version 1 record.
    let sessions: Value = app
        .http
        .get(format!("{}/v1/sessions", app.query_url))
        .bearer_auth(&legacy_token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let legacy = sessions
        .as_array()
        .unwrap()
        .iter()
        .find(|session| session["session_id"] == session_id.to_string())
        .expect("the version 1 session is listed");
    assert_eq!(legacy["user_agent"], "LegacyAgent/1.0");
    assert_eq!(legacy["ip"], "192.0.2.7");

    // The audit history shows it in the version 2 form.
    let audited = history(&app, &user, user.account_id).await;
    let entry = audited
        .iter()
        .find(|event| event["data"]["session_id"] == session_id.to_string())
        .unwrap_or_else(|| panic!("no audit entry for the session: {audited:#?}"));
    assert_eq!(entry["schema_version"], 2);
    assert_eq!(entry["data"]["client"]["user_agent"], "LegacyAgent/1.0");

    // The decider rebuilt the session from the version 1 record, so it can revoke it.
    let revoked = app
        .http
        .delete(format!("{}/v1/sessions/{session_id}", app.command_url))
        .bearer_auth(&user.token)
        .send()
        .await
        .unwrap();
    assert_eq!(revoked.status(), StatusCode::NO_CONTENT);
    let after = app
        .http
        .get(format!("{}/v1/profile", app.query_url))
        .bearer_auth(&legacy_token)
        .send()
        .await
        .unwrap();
    assert_eq!(after.status(), StatusCode::UNAUTHORIZED);

    // The chain still holds: the record was written with the right link.
    let kafka = app.kafka.clone();
    let account = user.account_id;
    let report = tokio::task::spawn_blocking(move || verify_chain(&kafka, Some(account)))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(report.broken, None, "{report:?}");
}
