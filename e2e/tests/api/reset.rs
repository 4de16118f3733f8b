//! Password reset through a mailed link.

use reqwest::StatusCode;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::helpers::{link_token, mails_to, spawn_app, wait_for_mails, TestApp, User, PASSWORD};

const NEW_PASSWORD: &str = "Quartz-Meadow-Lantern-71";

async fn request_reset(app: &TestApp, email: &str) -> reqwest::Response {
    app.post("/v1/password-reset", None, &json!({"email": email}))
        .await
}

async fn confirm_reset(app: &TestApp, token: &str, password: &str) -> reqwest::Response {
    app.post(
        "/v1/password-reset/confirm",
        None,
        &json!({"token": token, "new_password": password, "confirm_password": password}),
    )
    .await
}

/// Returns the tokens of the reset mails `user` got, oldest first, once there are `count`.
async fn reset_tokens(user: &User, count: usize) -> Vec<String> {
    let mut tokens = Vec::new();
    let mut expected_mails = count;
    // The first mail of every account is its verification mail.
    while tokens.len() < count {
        tokens = wait_for_mails(&user.email, expected_mails + 1)
            .await
            .iter()
            .filter(|mail| mail.contains("Subject: Reset your password"))
            .map(|mail| link_token(mail, "reset-password"))
            .collect();
        expected_mails += 1;
    }
    tokens
}

async fn code_of(response: reqwest::Response) -> String {
    let body: Value = response.json().await.unwrap();
    body["code"].as_str().unwrap_or_default().to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn reset_link_works_once_and_ends_every_session() {
    let app = spawn_app(1).await;
    let user = app.new_user().await;
    let second = app.sign_in(&user.email, PASSWORD).await;
    assert_eq!(second.status(), StatusCode::CREATED);
    let second_token = second.json::<Value>().await.unwrap()["token"]
        .as_str()
        .unwrap()
        .to_owned();

    assert_eq!(
        request_reset(&app, &user.email).await.status(),
        StatusCode::ACCEPTED
    );
    let token = reset_tokens(&user, 1).await.remove(0);
    let reset = confirm_reset(&app, &token, NEW_PASSWORD).await;
    assert_eq!(reset.status(), StatusCode::OK);

    for bearer in [&user.token, &second_token] {
        let profile = app
            .http
            .get(format!("{}/v1/profile", app.query_url))
            .bearer_auth(bearer)
            .send()
            .await
            .unwrap();
        assert_eq!(profile.status(), StatusCode::UNAUTHORIZED);
    }
    assert_eq!(
        app.sign_in(&user.email, PASSWORD).await.status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        app.sign_in(&user.email, NEW_PASSWORD).await.status(),
        StatusCode::CREATED
    );

    let again = confirm_reset(&app, &token, "Another-Fresh-Pass-93").await;
    assert_eq!(again.status(), StatusCode::GONE);
    assert_eq!(code_of(again).await, "token_expired_or_used");
}

#[tokio::test(flavor = "multi_thread")]
async fn newer_request_and_password_change_void_older_links() {
    let app = spawn_app(1).await;
    let user = app.new_user().await;
    for _ in 0..2 {
        assert_eq!(
            request_reset(&app, &user.email).await.status(),
            StatusCode::ACCEPTED
        );
    }
    let tokens = reset_tokens(&user, 2).await;
    let superseded = confirm_reset(&app, &tokens[0], NEW_PASSWORD).await;
    assert_eq!(superseded.status(), StatusCode::GONE);
    assert_eq!(code_of(superseded).await, "token_expired_or_used");

    // A password change after the newer request voids its link too.
    let changed = app
        .http
        .put(format!("{}/v1/password", app.command_url))
        .bearer_auth(&user.token)
        .json(&json!({"current_password": PASSWORD, "new_password": NEW_PASSWORD, "confirm_password": NEW_PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(changed.status(), StatusCode::OK);
    let stale = confirm_reset(&app, &tokens[1], "Another-Fresh-Pass-93").await;
    assert_eq!(stale.status(), StatusCode::GONE);
    assert_eq!(
        app.sign_in(&user.email, NEW_PASSWORD).await.status(),
        StatusCode::CREATED
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn reset_unknown_address_mails_nothing() {
    let app = spawn_app(1).await;
    let unknown = format!("nobody-{}@example.com", Uuid::new_v4().simple());
    let events_before = app.committed_events().len();
    let response = request_reset(&app, &unknown).await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    assert_eq!(app.committed_events().len(), events_before);

    // A known address in the same test proves that mail flows, so the absence means something.
    let user = app.new_user().await;
    assert_eq!(
        request_reset(&app, &user.email).await.status(),
        StatusCode::ACCEPTED
    );
    reset_tokens(&user, 1).await;
    assert!(mails_to(&unknown).is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn reset_requests_are_rate_limited_per_address() {
    let app = spawn_app(1).await;
    let user = app.new_user().await;
    let mut statuses = Vec::new();
    for _ in 0..6 {
        let response = request_reset(&app, &user.email).await;
        let retry_after = response.headers().get("retry-after").cloned();
        statuses.push(response.status());
        if response.status() == StatusCode::TOO_MANY_REQUESTS {
            assert!(retry_after.is_some());
        }
    }
    assert_eq!(statuses[..5], [StatusCode::ACCEPTED; 5]);
    assert_eq!(statuses[5], StatusCode::TOO_MANY_REQUESTS);
}

#[tokio::test(flavor = "multi_thread")]
async fn reset_applies_the_password_policy() {
    let app = spawn_app(1).await;
    let user = app.new_user().await;
    assert_eq!(
        request_reset(&app, &user.email).await.status(),
        StatusCode::ACCEPTED
    );
    let token = reset_tokens(&user, 1).await.remove(0);

    let weak = confirm_reset(&app, &token, "password").await;
    assert_eq!(weak.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let body: Value = weak.json().await.unwrap();
    assert_eq!(body["errors"][0]["field"], "new_password");

    let mismatch = app
        .post(
            "/v1/password-reset/confirm",
            None,
            &json!({"token": token, "new_password": NEW_PASSWORD, "confirm_password": "different"}),
        )
        .await;
    assert_eq!(mismatch.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        mismatch.json::<Value>().await.unwrap()["errors"][0]["code"],
        "password_mismatch"
    );
    // The rejected attempts did not use the token up.
    assert_eq!(
        confirm_reset(&app, &token, NEW_PASSWORD).await.status(),
        StatusCode::OK
    );
}
