use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::{spawn_app, TestApp, User, PASSWORD};

const NEW_PASSWORD: &str = "Velvet-Otter-Sings-41";

async fn second_session(app: &TestApp, user: &User, password: &str) -> User {
    let response = app.sign_in(&user.email, password).await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let token = response.json::<Value>().await.unwrap()["token"]
        .as_str()
        .unwrap()
        .to_owned();
    User {
        account_id: user.account_id,
        email: user.email.clone(),
        token,
    }
}

async fn change_password(
    app: &TestApp,
    user: &User,
    current: &str,
    new: &str,
    confirm: &str,
) -> reqwest::Response {
    app.http
        .put(format!("{}/v1/password", app.command_url))
        .bearer_auth(&user.token)
        .json(
            &json!({"current_password": current, "new_password": new, "confirm_password": confirm}),
        )
        .send()
        .await
        .unwrap()
}

async fn profile_status(app: &TestApp, user: &User) -> StatusCode {
    app.profile(user).await.status()
}

#[tokio::test(flavor = "multi_thread")]
async fn password_change_signs_out_other_sessions() {
    let app = spawn_app(1).await;
    let a = app.new_user().await;
    let b = second_session(&app, &a, PASSWORD).await;

    let changed = change_password(&app, &a, PASSWORD, NEW_PASSWORD, NEW_PASSWORD).await;
    assert_eq!(changed.status(), StatusCode::OK);

    assert_eq!(profile_status(&app, &b).await, StatusCode::UNAUTHORIZED);
    let patch_from_b = app
        .patch_profile(&b, &json!({"name": "From B"}))
        .send()
        .await
        .unwrap();
    assert_eq!(patch_from_b.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(profile_status(&app, &a).await, StatusCode::OK);
    assert_eq!(
        app.sign_in(&a.email, PASSWORD).await.status(),
        StatusCode::UNAUTHORIZED
    );
    let c = second_session(&app, &a, NEW_PASSWORD).await;

    let revoked = app
        .http
        .post(format!("{}/v1/sessions/revoke-all", app.command_url))
        .bearer_auth(&a.token)
        .send()
        .await
        .unwrap();
    assert_eq!(revoked.status(), StatusCode::OK);
    assert_eq!(profile_status(&app, &a).await, StatusCode::UNAUTHORIZED);
    assert_eq!(profile_status(&app, &c).await, StatusCode::UNAUTHORIZED);

    let events = app.committed_events();
    let raw = serde_json::to_string(&events.iter().map(|event| &event.value).collect::<Vec<_>>())
        .unwrap();
    assert!(!raw.contains(NEW_PASSWORD));
    assert!(!raw.contains(&a.token));
}

#[tokio::test(flavor = "multi_thread")]
async fn password_policy_codes_are_distinct() {
    let app = spawn_app(1).await;
    let user = app.new_user().await;
    let local_part = user.email.split('@').next().unwrap().to_owned();
    let end = app.event_log_end();

    let cases = [
        ("Sh0rt!".to_owned(), "password_too_short"),
        (format!("Aa1!{}", "x".repeat(130)), "password_too_long"),
        ("alllower-case-1".to_owned(), "password_missing_uppercase"),
        ("ALLUPPER-CASE-1".to_owned(), "password_missing_lowercase"),
        ("No-Digits-Here".to_owned(), "password_missing_digit"),
        ("NoSpecial123".to_owned(), "password_missing_special"),
        (format!("Xy7!{local_part}"), "password_contains_email"),
        ("Quartz-User-77!".to_owned(), "password_contains_name"),
        ("Password1!".to_owned(), "password_too_common"),
    ];
    for (password, code) in cases {
        let response = change_password(&app, &user, PASSWORD, &password, &password).await;
        assert_eq!(
            response.status(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "{code}"
        );
        let problem: Value = response.json().await.unwrap();
        assert_eq!(problem["errors"][0]["field"], "new_password", "{code}");
        assert_eq!(problem["errors"][0]["code"], code);
    }

    let mismatch = change_password(&app, &user, PASSWORD, NEW_PASSWORD, "Something-Else-42").await;
    assert_eq!(mismatch.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let problem: Value = mismatch.json().await.unwrap();
    assert_eq!(problem["errors"][0]["code"], "password_mismatch");
    assert_eq!(problem["errors"][0]["field"], "confirm_password");

    let wrong_current =
        change_password(&app, &user, "Wrong-Current-1", NEW_PASSWORD, NEW_PASSWORD).await;
    assert_eq!(wrong_current.status(), StatusCode::FORBIDDEN);
    let problem: Value = wrong_current.json().await.unwrap();
    assert_eq!(problem["code"], "invalid_current_password");

    assert_eq!(
        app.event_log_end(),
        end,
        "a rejected password change appended an event"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sessions_are_listed_and_revoked_one_by_one() {
    let app = spawn_app(1).await;
    let a = app.new_user().await;
    let b = second_session(&app, &a, PASSWORD).await;

    let sessions: Value = app
        .http
        .get(format!("{}/v1/sessions", app.query_url))
        .bearer_auth(&a.token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let sessions = sessions.as_array().unwrap();
    assert_eq!(sessions.len(), 2);
    assert_eq!(
        sessions
            .iter()
            .filter(|session| session["current"] == true)
            .count(),
        1
    );
    assert!(sessions.iter().all(|session| session["ip"] == "127.0.0.1"));
    let b_id = sessions
        .iter()
        .find(|session| session["current"] == false)
        .unwrap()["session_id"]
        .as_str()
        .unwrap()
        .to_owned();

    let delete = |token: &str, id: &str| {
        app.http
            .delete(format!("{}/v1/sessions/{id}", app.command_url))
            .bearer_auth(token.to_owned())
            .send()
    };
    assert_eq!(
        delete(&a.token, &b_id).await.unwrap().status(),
        StatusCode::NO_CONTENT
    );
    assert_eq!(profile_status(&app, &b).await, StatusCode::UNAUTHORIZED);
    assert_eq!(
        delete(&a.token, &b_id).await.unwrap().status(),
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        delete(&a.token, "not-a-uuid").await.unwrap().status(),
        StatusCode::BAD_REQUEST
    );

    let other = app.new_user().await;
    let foreign = app
        .http
        .get(format!("{}/v1/sessions", app.query_url))
        .bearer_auth(&other.token)
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap()[0]["session_id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        delete(&a.token, &foreign).await.unwrap().status(),
        StatusCode::NOT_FOUND
    );
    assert_eq!(profile_status(&app, &other).await, StatusCode::OK);

    assert_eq!(
        delete(&a.token, "current").await.unwrap().status(),
        StatusCode::NO_CONTENT
    );
    assert_eq!(profile_status(&app, &a).await, StatusCode::UNAUTHORIZED);
}

#[tokio::test(flavor = "multi_thread")]
async fn repeated_sign_in_is_rate_limited() {
    let app = spawn_app(1).await;
    let user = app.new_user().await;

    // The test stack allows 5 attempts per account per minute; new_user used one.
    for attempt in 0..4 {
        let response = app.sign_in(&user.email, "Wrong-Password-1").await;
        assert_eq!(
            response.status(),
            StatusCode::UNAUTHORIZED,
            "attempt {attempt}"
        );
    }
    let limited = app.sign_in(&user.email, PASSWORD).await;
    assert_eq!(limited.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry_after: u64 = limited.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry_after), "{retry_after}");
    let problem: Value = limited.json().await.unwrap();
    assert_eq!(problem["code"], "rate_limited");

    let other = app.new_user().await;
    assert_eq!(profile_status(&app, &other).await, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread")]
async fn idle_session_expires() {
    let app = spawn_app(1).await;
    let idle = app.new_user().await;
    let active = second_session(&app, &idle, PASSWORD).await;
    assert_eq!(profile_status(&app, &idle).await, StatusCode::OK);
    assert_eq!(profile_status(&app, &active).await, StatusCode::OK);

    // The test stack ends sessions after 30 idle minutes; age the first one past that.
    let idle_hash = accounts_platform::hash_token(&idle.token);
    let aged = sqlx::query(
        "UPDATE session_activity SET last_seen_at = now() - interval '31 minutes' \
         WHERE session_id = (SELECT session_id FROM sessions WHERE token_sha256 = $1)",
    )
    .bind(&idle_hash)
    .execute(&app.pool)
    .await
    .unwrap();
    assert_eq!(aged.rows_affected(), 1);

    assert_eq!(profile_status(&app, &idle).await, StatusCode::UNAUTHORIZED);
    let patch = app
        .patch_profile(&idle, &json!({"name": "Idle"}))
        .send()
        .await
        .unwrap();
    assert_eq!(patch.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(profile_status(&app, &active).await, StatusCode::OK);

    let listed: Value = app
        .http
        .get(format!("{}/v1/sessions", app.query_url))
        .bearer_auth(&active.token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn session_use_is_written_once_per_interval() {
    let app = spawn_app(1).await;
    let user = app.new_user().await;
    let hash = accounts_platform::hash_token(&user.token);
    let last_seen = || async {
        sqlx::query_scalar::<_, f64>(
            "SELECT EXTRACT(EPOCH FROM now() - last_seen_at)::float8 FROM session_activity \
             WHERE session_id = (SELECT session_id FROM sessions WHERE token_sha256 = $1)",
        )
        .bind(&hash)
        .fetch_one(&app.pool)
        .await
        .unwrap()
    };
    assert_eq!(profile_status(&app, &user).await, StatusCode::OK);
    assert!(last_seen().await < 30.0);

    // Within the interval a use changes nothing. Past it, the next use is written.
    let age = |seconds: f64| {
        sqlx::query(
            "UPDATE session_activity SET last_seen_at = now() - make_interval(secs => $2) \
             WHERE session_id = (SELECT session_id FROM sessions WHERE token_sha256 = $1)",
        )
        .bind(&hash)
        .bind(seconds)
        .execute(&app.pool)
    };
    age(40.0).await.unwrap();
    assert_eq!(profile_status(&app, &user).await, StatusCode::OK);
    assert!(
        last_seen().await >= 39.0,
        "a use within the interval was written"
    );
    age(300.0).await.unwrap();
    assert_eq!(profile_status(&app, &user).await, StatusCode::OK);
    assert!(
        last_seen().await < 30.0,
        "the use after the interval was not written"
    );
    age(300.0).await.unwrap();
    let sessions = app
        .http
        .get(format!("{}/v1/sessions", app.query_url))
        .bearer_auth(&user.token)
        .send()
        .await
        .unwrap();
    assert_eq!(sessions.status(), StatusCode::OK);
    assert!(
        last_seen().await < 30.0,
        "a session list did not record the use"
    );
}
