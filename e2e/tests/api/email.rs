//! Email verification and email change through mailed links, read from the Maildir of the
//! local SMTP server.

use reqwest::StatusCode;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::helpers::{link_token, spawn_app, wait_for_mails, TestApp, User, PASSWORD};

fn unique_address(tag: &str) -> String {
    format!("{tag}-{}@example.com", Uuid::new_v4().simple())
}

async fn request_change(app: &TestApp, user: &User, new_email: &str) -> reqwest::Response {
    app.post(
        "/v1/email-change",
        Some(&user.token),
        &json!({"new_email": new_email}),
    )
    .await
}

async fn confirm(app: &TestApp, token: &str) -> reqwest::Response {
    app.post("/v1/email-change/confirm", None, &json!({"token": token}))
        .await
}

async fn code_of(response: reqwest::Response) -> String {
    let body: Value = response.json().await.unwrap();
    body["code"].as_str().unwrap_or_default().to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn registration_mail_verifies_the_address() {
    let app = spawn_app(1).await;
    let user = app.new_user().await;
    assert_eq!(app.profile_json(&user).await["email_verified"], false);

    let mails = wait_for_mails(&user.email, 1).await;
    assert!(mails[0].contains("Subject: Verify your email address"));
    assert!(mails[0].contains("Content-Type: text/html"));
    let token = link_token(&mails[0], "verify-email");

    let confirmed = app
        .post(
            "/v1/email-verification/confirm",
            None,
            &json!({"token": token}),
        )
        .await;
    assert_eq!(confirmed.status(), StatusCode::OK);
    assert_eq!(app.profile_json(&user).await["email_verified"], true);

    let again = confirm(&app, &token).await;
    assert_eq!(again.status(), StatusCode::GONE);
    assert_eq!(code_of(again).await, "token_expired_or_superseded");
}

#[tokio::test(flavor = "multi_thread")]
async fn email_change_moves_account_and_notifies() {
    let app = spawn_app(1).await;
    let user = app.new_user().await;
    let typed = format!("New.Person+work-{}@Example.com", Uuid::new_v4().simple());

    let requested = request_change(&app, &user, &typed).await;
    assert_eq!(requested.status(), StatusCode::ACCEPTED);
    let profile = app.profile_json(&user).await;
    assert_eq!(profile["pending_email"], typed.as_str());
    assert_eq!(profile["email"], user.email.as_str());

    let mails = wait_for_mails(&typed, 1).await;
    assert!(mails[0].contains("Subject: Confirm your new email address"));
    let token = link_token(&mails[0], "confirm-email-change");
    let confirmed = confirm(&app, &token).await;
    assert_eq!(confirmed.status(), StatusCode::OK);

    let profile = app.profile_json(&user).await;
    assert_eq!(
        profile["email"],
        typed.as_str(),
        "stored as typed, +tag kept"
    );
    assert_eq!(profile["email_verified"], true);
    assert_eq!(profile["pending_email"], Value::Null);

    // The old address learns of the change, after its own verification mail.
    let old_mails = wait_for_mails(&user.email, 2).await;
    assert!(old_mails
        .iter()
        .any(|mail| mail.contains("Subject: Your email address was changed")));

    assert_eq!(
        app.sign_in(&typed.to_lowercase(), PASSWORD).await.status(),
        StatusCode::CREATED
    );
    assert_eq!(
        app.sign_in(&user.email, PASSWORD).await.status(),
        StatusCode::UNAUTHORIZED
    );
    // The old address is free again.
    assert_eq!(
        app.register(&user.email, "Someone Else").await.status(),
        StatusCode::CREATED
    );
    assert_eq!(confirm(&app, &token).await.status(), StatusCode::GONE);
}

#[tokio::test(flavor = "multi_thread")]
async fn newer_request_voids_the_older_link() {
    let app = spawn_app(1).await;
    let user = app.new_user().await;
    let first = unique_address("first");
    let second = unique_address("second");
    assert_eq!(
        request_change(&app, &user, &first).await.status(),
        StatusCode::ACCEPTED
    );
    assert_eq!(
        request_change(&app, &user, &second).await.status(),
        StatusCode::ACCEPTED
    );
    let older = link_token(&wait_for_mails(&first, 1).await[0], "confirm-email-change");
    let newer = link_token(&wait_for_mails(&second, 1).await[0], "confirm-email-change");

    let response = confirm(&app, &older).await;
    assert_eq!(response.status(), StatusCode::GONE);
    assert_eq!(code_of(response).await, "token_expired_or_superseded");
    assert_eq!(app.profile_json(&user).await["email"], user.email.as_str());

    assert_eq!(confirm(&app, &newer).await.status(), StatusCode::OK);
    assert_eq!(app.profile_json(&user).await["email"], second.as_str());
}

#[tokio::test(flavor = "multi_thread")]
async fn racing_confirmations_give_the_address_to_one_account() {
    let app = spawn_app(2).await;
    let contested = unique_address("contested");
    let (alice, bob) = (app.new_user().await, app.new_user().await);
    assert_eq!(
        request_change(&app, &alice, &contested).await.status(),
        StatusCode::ACCEPTED
    );
    assert_eq!(
        request_change(&app, &bob, &contested).await.status(),
        StatusCode::ACCEPTED
    );
    let mails = wait_for_mails(&contested, 2).await;
    let tokens: Vec<String> = mails
        .iter()
        .map(|mail| link_token(mail, "confirm-email-change"))
        .collect();

    let (first, second) = tokio::join!(confirm(&app, &tokens[0]), confirm(&app, &tokens[1]));
    let mut statuses = vec![first.status(), second.status()];
    statuses.sort();
    assert_eq!(statuses, vec![StatusCode::OK, StatusCode::CONFLICT]);
    let loser = if first.status() == StatusCode::CONFLICT {
        first
    } else {
        second
    };
    assert_eq!(code_of(loser).await, "email_taken");

    let emails = [
        app.profile_json(&alice).await["email"].clone(),
        app.profile_json(&bob).await["email"].clone(),
    ];
    let holders = emails
        .iter()
        .filter(|email| email.as_str() == Some(contested.as_str()))
        .count();
    assert_eq!(holders, 1, "{emails:?}");
    for user in [&alice, &bob] {
        assert_eq!(app.profile_json(user).await["pending_email"], Value::Null);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn addresses_compare_without_case() {
    let app = spawn_app(1).await;
    let local = format!("User-{}", Uuid::new_v4().simple());
    let taken = format!("{local}@Example.com");
    assert_eq!(
        app.register(&taken, "First Owner").await.status(),
        StatusCode::CREATED
    );
    let lower = taken.to_lowercase();
    let registered = app.register(&lower, "Second Owner").await;
    assert_eq!(registered.status(), StatusCode::CONFLICT);
    assert_eq!(code_of(registered).await, "email_taken");

    let user = app.new_user().await;
    let changed = request_change(&app, &user, &format!("{local}@EXAMPLE.COM")).await;
    assert_eq!(changed.status(), StatusCode::CONFLICT);
    assert_eq!(code_of(changed).await, "email_taken");
}

#[tokio::test(flavor = "multi_thread")]
async fn cancelled_change_voids_its_link() {
    let app = spawn_app(1).await;
    let user = app.new_user().await;
    let target = unique_address("cancelled");
    assert_eq!(
        request_change(&app, &user, &target).await.status(),
        StatusCode::ACCEPTED
    );
    let token = link_token(&wait_for_mails(&target, 1).await[0], "confirm-email-change");
    let cancelled = app
        .http
        .delete(format!("{}/v1/email-change", app.command_url))
        .bearer_auth(&user.token)
        .send()
        .await
        .unwrap();
    assert_eq!(cancelled.status(), StatusCode::NO_CONTENT);
    assert_eq!(app.profile_json(&user).await["pending_email"], Value::Null);
    assert_eq!(confirm(&app, &token).await.status(), StatusCode::GONE);
    assert_eq!(app.profile_json(&user).await["email"], user.email.as_str());
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_email_change_input_names_the_field() {
    let app = spawn_app(1).await;
    let user = app.new_user().await;
    let events_before = app.committed_events().len();

    let invalid = request_change(&app, &user, "not-an-address").await;
    assert_eq!(invalid.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let body: Value = invalid.json().await.unwrap();
    assert_eq!(body["errors"][0]["field"], "new_email");

    let unchanged = request_change(&app, &user, &user.email).await;
    assert_eq!(unchanged.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        unchanged.json::<Value>().await.unwrap()["errors"][0]["code"],
        "email_unchanged"
    );

    let malformed = confirm(&app, "abc").await;
    assert_eq!(malformed.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        malformed.json::<Value>().await.unwrap()["errors"][0]["field"],
        "token"
    );
    let unauthenticated = app
        .post(
            "/v1/email-change",
            None,
            &json!({"new_email": "x@example.com"}),
        )
        .await;
    assert_eq!(unauthenticated.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(unauthenticated.headers()["www-authenticate"], "Bearer");
    assert_eq!(app.committed_events().len(), events_before);
}

#[tokio::test(flavor = "multi_thread")]
async fn email_change_needs_a_recent_check() {
    let app = spawn_app(1).await;
    let user = app.new_user().await;
    // The test stack requires a check within 10 minutes, so age the session's last one.
    let aged = sqlx::query(
        "UPDATE sessions SET verified_at = now() - interval '11 minutes' WHERE account_id = $1",
    )
    .bind(user.account_id)
    .execute(&app.pool)
    .await
    .unwrap();
    assert_eq!(aged.rows_affected(), 1);
    let target = unique_address("stepup");

    let rejected = request_change(&app, &user, &target).await;
    assert_eq!(rejected.status(), StatusCode::FORBIDDEN);
    assert_eq!(code_of(rejected).await, "reauthentication_required");
    assert_eq!(app.profile_json(&user).await["pending_email"], Value::Null);

    let checked = app
        .post(
            "/v1/sessions/reauthenticate",
            Some(&user.token),
            &json!({"password": PASSWORD}),
        )
        .await;
    assert_eq!(checked.status(), StatusCode::OK);
    assert_eq!(
        request_change(&app, &user, &target).await.status(),
        StatusCode::ACCEPTED
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn verification_link_can_be_resent() {
    let app = spawn_app(1).await;
    let user = app.new_user().await;
    let first = link_token(&wait_for_mails(&user.email, 1).await[0], "verify-email");

    let resent = app
        .post("/v1/email-verification", Some(&user.token), &json!({}))
        .await;
    assert_eq!(resent.status(), StatusCode::ACCEPTED);
    let second = link_token(&wait_for_mails(&user.email, 2).await[1], "verify-email");
    assert_ne!(first, second);

    let stale = confirm(&app, &first).await;
    assert_eq!(stale.status(), StatusCode::GONE);
    assert_eq!(confirm(&app, &second).await.status(), StatusCode::OK);
    assert_eq!(app.profile_json(&user).await["email_verified"], true);

    let again = app
        .post("/v1/email-verification", Some(&user.token), &json!({}))
        .await;
    assert_eq!(again.status(), StatusCode::CONFLICT);
    assert_eq!(code_of(again).await, "email_already_verified");
}
