use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::{sequences_of, spawn_app};

#[tokio::test(flavor = "multi_thread")]
async fn same_if_match_lets_one_win() {
    let app = spawn_app(2).await;
    let user = app.new_user().await;
    let profile: Value = app.profile(&user).await.json().await.unwrap();
    let version = profile["version"].as_u64().unwrap();

    let requests = (0..50).map(|index| {
        app.patch_profile(&user, &json!({"name": format!("Concurrent {index}")}))
            .header("If-Match", format!("\"{version}\""))
            .send()
    });
    let responses = futures::future::join_all(requests).await;
    let statuses: Vec<StatusCode> = responses
        .iter()
        .map(|response| response.as_ref().unwrap().status())
        .collect();

    let won = statuses
        .iter()
        .filter(|status| **status == StatusCode::OK)
        .count();
    let lost = statuses
        .iter()
        .filter(|status| **status == StatusCode::PRECONDITION_FAILED)
        .count();
    assert_eq!(won, 1, "{statuses:?}");
    assert_eq!(lost, 49, "{statuses:?}");

    let sequences = sequences_of(&app.committed_events(), &user.account_id.to_string());
    let expected: Vec<u64> = (1..=sequences.len() as u64).collect();
    assert_eq!(
        sequences, expected,
        "sequence numbers have a gap or a duplicate"
    );
    let profile: Value = app.profile(&user).await.json().await.unwrap();
    assert_eq!(profile["version"].as_u64(), Some(version + 1));
}
