use std::collections::HashMap;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::{sequences_of, spawn_app, TestApp, User};

/// Sends a PATCH, retrying with the same `Idempotency-Key` while the command is not
/// confirmed, as a client should. Returns the final status and body.
async fn patch_until_confirmed(
    app: &TestApp,
    user: &User,
    name: &str,
    key: &str,
) -> (StatusCode, Value) {
    for _ in 0..20 {
        let response = app
            .patch_profile(user, &json!({"name": name}))
            .header("Idempotency-Key", key)
            .send()
            .await
            .unwrap();
        let status = response.status();
        let body: Value = response.json().await.unwrap();
        if status != StatusCode::SERVICE_UNAVAILABLE {
            return (status, body);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("command {key} was never confirmed");
}

#[tokio::test(flavor = "multi_thread")]
async fn takeover_after_crash_keeps_exactly_once() {
    let app = spawn_app(2).await;
    let mut users = Vec::new();
    for _ in 0..12 {
        users.push(app.new_user().await);
    }

    // The first worker dies with its next transaction open; the second takes over.
    app.deciders[0].control.crash_before_next_commit();
    let rounds = 4;
    let tasks = users.iter().map(|user| {
        let app = &app;
        async move {
            let mut versions = Vec::new();
            for round in 0..rounds {
                let key = format!("{}-{round}", user.account_id);
                let (status, body) =
                    patch_until_confirmed(app, user, &format!("Name {round}"), &key).await;
                assert_eq!(status, StatusCode::OK, "{body}");
                versions.push(body["version"].as_u64().unwrap());

                // A stale If-Match is rejected and must leave no trace in the log.
                let rejected = app
                    .patch_profile(user, &json!({"name": format!("Rejected {round}")}))
                    .header("If-Match", "\"1\"")
                    .send()
                    .await
                    .unwrap();
                assert!(
                    [
                        StatusCode::PRECONDITION_FAILED,
                        StatusCode::SERVICE_UNAVAILABLE
                    ]
                    .contains(&rejected.status()),
                    "{}",
                    rejected.status()
                );
            }
            versions
        }
    });
    let versions: Vec<Vec<u64>> = futures::future::join_all(tasks).await;

    assert!(
        app.deciders[0].thread.is_finished(),
        "the first worker never reached its crash point"
    );

    // A retry of an acknowledged command returns its first outcome and appends nothing.
    let end = app.event_log_end();
    let key = format!("{}-0", users[0].account_id);
    let (status, body) = patch_until_confirmed(&app, &users[0], "Name 0", &key).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["version"].as_u64(), Some(versions[0][0]));
    assert_eq!(app.event_log_end(), end);

    // The same key with another request is refused, also after the takeover.
    let reused = app
        .patch_profile(&users[0], &json!({"name": "Another Name"}))
        .header("Idempotency-Key", &key)
        .send()
        .await
        .unwrap();
    assert_eq!(reused.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(app.event_log_end(), end);

    let committed = app.committed_events();
    for (user, versions) in users.iter().zip(&versions) {
        let subject = user.account_id.to_string();
        let sequences = sequences_of(&committed, &subject);
        let expected: Vec<u64> = (1..=sequences.len() as u64).collect();
        assert_eq!(
            sequences, expected,
            "account {subject} has a gap or a duplicate"
        );
        let updates = committed
            .iter()
            .filter(|event| {
                event.subject() == subject && event.event_type() == "accounts.ProfileUpdated"
            })
            .count();
        assert_eq!(
            updates, rounds,
            "account {subject}: acknowledged updates are not in the log exactly once"
        );
        // Each acknowledged version is one of the account's committed events.
        for version in versions {
            assert!(sequences.contains(version));
        }
    }

    assert!(
        !committed.iter().any(|event| event.value["data"]["name"]
            .as_str()
            .is_some_and(|name| name.starts_with("Rejected"))),
        "a rejected command's event is visible"
    );

    // The crashed worker's open transaction was written and then aborted: its records exist
    // but no read_committed reader sees them.
    let mut committed_ids: HashMap<String, usize> = HashMap::new();
    for event in &committed {
        *committed_ids
            .entry(event.value["id"].as_str().unwrap().to_owned())
            .or_default() += 1;
    }
    assert!(
        committed_ids.values().all(|count| *count == 1),
        "an event id appears twice"
    );
    let aborted = app
        .all_event_records()
        .into_iter()
        .filter(|event| !committed_ids.contains_key(event.value["id"].as_str().unwrap()))
        .count();
    assert!(
        aborted > 0,
        "the crash left no aborted records, so takeover was not exercised"
    );
}
