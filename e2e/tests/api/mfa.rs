use std::process::Command;

use base64::Engine as _;
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::{spawn_app, TestApp, User, PASSWORD};

/// Returns the codes for the current and the next 30-second step, computed by oathtool
/// (an independent RFC 6238 implementation) from the secret in `otpauth_uri`.
fn oathtool_codes(otpauth_uri: &str) -> (String, String) {
    let secret = otpauth_uri
        .split(['?', '&'])
        .find_map(|part| part.strip_prefix("secret="))
        .expect("the otpauth URI has no secret");
    let output = Command::new("oathtool")
        .args(["--totp", "-b", "-w", "1", secret])
        .output()
        .expect("oathtool is not installed; deploy/local/packages installs it");
    assert!(output.status.success(), "oathtool failed");
    let text = String::from_utf8(output.stdout).unwrap();
    let mut lines = text.lines().map(str::to_owned);
    (lines.next().unwrap(), lines.next().unwrap())
}

async fn post(app: &TestApp, path: &str, token: Option<&str>, body: Value) -> reqwest::Response {
    let mut request = app
        .http
        .post(format!("{}{path}", app.command_url))
        .json(&body);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    request.send().await.unwrap()
}

/// Enrolls and confirms TOTP for `user`; returns the otpauth URI and the backup codes.
async fn enable_mfa(app: &TestApp, user: &User) -> (String, Vec<String>) {
    let enrollment = post(app, "/v1/mfa/totp", Some(&user.token), json!({})).await;
    assert_eq!(enrollment.status(), StatusCode::OK);
    let enrollment: Value = enrollment.json().await.unwrap();
    let uri = enrollment["otpauth_uri"].as_str().unwrap().to_owned();
    assert!(uri.starts_with("otpauth://totp/"), "{uri}");
    assert!(uri.contains(&format!(
        "secret={}",
        enrollment["secret"].as_str().unwrap()
    )));
    let png = base64::engine::general_purpose::STANDARD
        .decode(enrollment["qr_png_base64"].as_str().unwrap())
        .unwrap();
    assert!(png.starts_with(b"\x89PNG"));

    let wrong = post(
        app,
        "/v1/mfa/totp/confirm",
        Some(&user.token),
        json!({"code": "000000"}),
    )
    .await;
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);

    let (current, _) = oathtool_codes(&uri);
    let confirmed = post(
        app,
        "/v1/mfa/totp/confirm",
        Some(&user.token),
        json!({"code": current}),
    )
    .await;
    assert_eq!(confirmed.status(), StatusCode::OK);
    let codes: Vec<String> = confirmed.json::<Value>().await.unwrap()["backup_codes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|code| code.as_str().unwrap().to_owned())
        .collect();
    (uri, codes)
}

async fn mfa_token(app: &TestApp, user: &User) -> String {
    let response = app.sign_in(&user.email, PASSWORD).await;
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    let problem: Value = response.json().await.unwrap();
    assert_eq!(problem["code"], "mfa_required");
    problem["mfa_token"].as_str().unwrap().to_owned()
}

async fn security(app: &TestApp, token: &str) -> Value {
    app.http
        .get(format!("{}/v1/security", app.query_url))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn totp_code_signs_in_once() {
    let app = spawn_app(1).await;
    let user = app.new_user().await;
    let (uri, _) = enable_mfa(&app, &user).await;
    assert_eq!(security(&app, &user.token).await["mfa_enabled"], true);

    let signed_out = app
        .http
        .delete(format!("{}/v1/sessions/current", app.command_url))
        .bearer_auth(&user.token)
        .send()
        .await
        .unwrap();
    assert_eq!(signed_out.status(), StatusCode::NO_CONTENT);
    let token = mfa_token(&app, &user).await;

    // The confirming code used up the current step, so sign in with the next one.
    let (_, next) = oathtool_codes(&uri);
    let body = json!({"mfa_token": token, "code": next});
    let (first, second) = tokio::join!(
        post(&app, "/v1/sessions/mfa", None, body.clone()),
        post(&app, "/v1/sessions/mfa", None, body.clone())
    );
    let mut statuses = [first.status(), second.status()];
    statuses.sort();
    assert_eq!(
        statuses,
        [StatusCode::CREATED, StatusCode::UNAUTHORIZED],
        "racing uses of one code"
    );
    let loser = if first.status() == StatusCode::UNAUTHORIZED {
        first
    } else {
        second
    };
    assert_eq!(
        loser.json::<Value>().await.unwrap()["code"],
        "code_already_used"
    );

    let again = post(&app, "/v1/sessions/mfa", None, body).await;
    assert_eq!(again.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        again.json::<Value>().await.unwrap()["code"],
        "code_already_used"
    );

    let wrong = post(
        &app,
        "/v1/sessions/mfa",
        None,
        json!({"mfa_token": mfa_token(&app, &user).await, "code": "123456"}),
    )
    .await;
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    let forged = post(
        &app,
        "/v1/sessions/mfa",
        None,
        json!({"mfa_token": "v1:test:AAAA:BBBB", "code": "123456"}),
    )
    .await;
    assert_eq!(
        forged.json::<Value>().await.unwrap()["code"],
        "invalid_mfa_token"
    );

    let secret = uri
        .split("secret=")
        .nth(1)
        .unwrap()
        .split('&')
        .next()
        .unwrap()
        .to_owned();
    let events = serde_json::to_string(
        &app.committed_events()
            .iter()
            .map(|event| &event.value)
            .collect::<Vec<_>>(),
    )
    .unwrap();
    assert!(
        !events.contains(&secret),
        "the TOTP secret is in the event log"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn backup_codes_work_once_each() {
    let app = spawn_app(1).await;
    let user = app.new_user().await;
    let (_, codes) = enable_mfa(&app, &user).await;
    assert_eq!(codes.len(), 10);
    assert_eq!(
        security(&app, &user.token).await["backup_codes_remaining"],
        10
    );

    let first = json!({"mfa_token": mfa_token(&app, &user).await, "backup_code": codes[0]});
    let session = post(&app, "/v1/sessions/mfa", None, first.clone()).await;
    assert_eq!(session.status(), StatusCode::CREATED);
    let new_token = session.json::<Value>().await.unwrap()["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let reused = post(&app, "/v1/sessions/mfa", None, first).await;
    assert_eq!(
        reused.json::<Value>().await.unwrap()["code"],
        "code_already_used"
    );

    let second =
        json!({"mfa_token": mfa_token(&app, &user).await, "backup_code": codes[1].to_lowercase()});
    let (left, right) = tokio::join!(
        post(&app, "/v1/sessions/mfa", None, second.clone()),
        post(&app, "/v1/sessions/mfa", None, second)
    );
    let mut statuses = [left.status(), right.status()];
    statuses.sort();
    assert_eq!(
        statuses,
        [StatusCode::CREATED, StatusCode::UNAUTHORIZED],
        "racing uses of one backup code"
    );

    assert_eq!(
        security(&app, &new_token).await["backup_codes_remaining"],
        8
    );
    let events = serde_json::to_string(
        &app.committed_events()
            .iter()
            .map(|event| &event.value)
            .collect::<Vec<_>>(),
    )
    .unwrap();
    for code in &codes {
        assert!(
            !events.contains(code.as_str()),
            "a backup code is in the event log"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn wrong_codes_lock_the_factor_longer_each_time() {
    let app = spawn_app(1).await;
    let user = app.new_user().await;
    let (uri, _) = enable_mfa(&app, &user).await;
    let token = mfa_token(&app, &user).await;
    let wrong = json!({"mfa_token": token, "code": "000000"});

    // The test stack locks after 3 wrong codes, for 1 s, doubled with each further one.
    for attempt in 0..2 {
        let response = post(&app, "/v1/sessions/mfa", None, wrong.clone()).await;
        assert_eq!(
            response.status(),
            StatusCode::UNAUTHORIZED,
            "attempt {attempt}"
        );
        assert_eq!(
            response.json::<Value>().await.unwrap()["code"],
            "invalid_code"
        );
    }
    let mut delays = Vec::new();
    for _ in 0..3 {
        let locked = post(&app, "/v1/sessions/mfa", None, wrong.clone()).await;
        assert_eq!(locked.status(), StatusCode::TOO_MANY_REQUESTS);
        let retry_after: u64 = locked.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(
            locked.json::<Value>().await.unwrap()["code"],
            "factor_locked"
        );

        // While locked, even a right code is refused.
        let (_, next) = oathtool_codes(&uri);
        let refused = post(
            &app,
            "/v1/sessions/mfa",
            None,
            json!({"mfa_token": token, "code": next}),
        )
        .await;
        assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);

        delays.push(retry_after);
        tokio::time::sleep(std::time::Duration::from_millis(retry_after * 1000 + 200)).await;
    }
    assert_eq!(delays, vec![1, 2, 4]);

    let (_, next) = oathtool_codes(&uri);
    let accepted = post(
        &app,
        "/v1/sessions/mfa",
        None,
        json!({"mfa_token": token, "code": next}),
    )
    .await;
    assert_eq!(accepted.status(), StatusCode::CREATED);
    let failures: Vec<u64> = app
        .committed_events()
        .iter()
        .filter(|event| event.event_type() == "accounts.SecondFactorFailed")
        .map(|event| event.value["data"]["failures"].as_u64().unwrap())
        .collect();
    assert_eq!(failures, vec![1, 2, 3, 4, 5]);
}

async fn delete_totp(app: &TestApp, token: &str, body: Value) -> reqwest::Response {
    app.http
        .delete(format!("{}/v1/mfa/totp", app.command_url))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn regenerated_codes_replace_old_ones() {
    let app = spawn_app(1).await;
    let user = app.new_user().await;
    let (uri, old_codes) = enable_mfa(&app, &user).await;

    let wrong = post(
        &app,
        "/v1/mfa/backup-codes",
        Some(&user.token),
        json!({"code": "000000"}),
    )
    .await;
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    let (_, next) = oathtool_codes(&uri);
    let regenerated = post(
        &app,
        "/v1/mfa/backup-codes",
        Some(&user.token),
        json!({"code": next}),
    )
    .await;
    assert_eq!(regenerated.status(), StatusCode::OK);
    let new_codes: Vec<String> = regenerated.json::<Value>().await.unwrap()["backup_codes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|code| code.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(new_codes.len(), 10);
    assert!(new_codes.iter().all(|code| !old_codes.contains(code)));

    let old = post(
        &app,
        "/v1/sessions/mfa",
        None,
        json!({"mfa_token": mfa_token(&app, &user).await, "backup_code": old_codes[0]}),
    )
    .await;
    assert_eq!(old.json::<Value>().await.unwrap()["code"], "invalid_code");
    let new = post(
        &app,
        "/v1/sessions/mfa",
        None,
        json!({"mfa_token": mfa_token(&app, &user).await, "backup_code": new_codes[0]}),
    )
    .await;
    assert_eq!(new.status(), StatusCode::CREATED);
}

#[tokio::test(flavor = "multi_thread")]
async fn disabling_mfa_needs_a_valid_code() {
    let app = spawn_app(1).await;
    let user = app.new_user().await;
    let (_, codes) = enable_mfa(&app, &user).await;

    let wrong = delete_totp(&app, &user.token, json!({"code": "000000"})).await;
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(security(&app, &user.token).await["mfa_enabled"], true);

    let disabled = delete_totp(&app, &user.token, json!({"backup_code": codes[3]})).await;
    assert_eq!(disabled.status(), StatusCode::OK);
    let summary = security(&app, &user.token).await;
    assert_eq!(summary["mfa_enabled"], false);
    assert_eq!(summary["backup_codes_remaining"], 0);

    let again = delete_totp(&app, &user.token, json!({"backup_code": codes[4]})).await;
    assert_eq!(again.status(), StatusCode::CONFLICT);
    assert_eq!(
        app.sign_in(&user.email, PASSWORD).await.status(),
        StatusCode::CREATED
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn enrolling_needs_a_recent_check() {
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

    let refused = post(&app, "/v1/mfa/totp", Some(&user.token), json!({})).await;
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);
    assert_eq!(
        refused.json::<Value>().await.unwrap()["code"],
        "reauthentication_required"
    );

    let wrong = post(
        &app,
        "/v1/sessions/reauthenticate",
        Some(&user.token),
        json!({"password": "Wrong-Password-1"}),
    )
    .await;
    assert_eq!(wrong.status(), StatusCode::FORBIDDEN);
    assert_eq!(
        wrong.json::<Value>().await.unwrap()["code"],
        "invalid_current_password"
    );
    let both = post(
        &app,
        "/v1/sessions/reauthenticate",
        Some(&user.token),
        json!({"password": PASSWORD, "code": "123456"}),
    )
    .await;
    assert_eq!(both.status(), StatusCode::UNPROCESSABLE_ENTITY);

    let confirmed = post(
        &app,
        "/v1/sessions/reauthenticate",
        Some(&user.token),
        json!({"password": PASSWORD}),
    )
    .await;
    assert_eq!(confirmed.status(), StatusCode::OK);
    let enrolled = post(&app, "/v1/mfa/totp", Some(&user.token), json!({})).await;
    assert_eq!(enrolled.status(), StatusCode::OK);

    let verified = app
        .committed_events()
        .iter()
        .filter(|event| {
            event.event_type() == "accounts.SessionVerified"
                && event.subject() == user.account_id.to_string()
        })
        .count();
    assert_eq!(verified, 1);
}

/// Returns every row of every table in the test database as JSON text.
async fn dump_tables(pool: &sqlx::PgPool) -> String {
    let tables: Vec<(String,)> =
        sqlx::query_as("SELECT tablename::text FROM pg_tables WHERE schemaname = 'public'")
            .fetch_all(pool)
            .await
            .unwrap();
    let mut dump = String::new();
    for (table,) in tables {
        let rows: Vec<(String,)> =
            sqlx::query_as(&format!("SELECT row_to_json(t)::text FROM \"{table}\" t"))
                .fetch_all(pool)
                .await
                .unwrap();
        for (row,) in rows {
            dump.push_str(&row);
            dump.push('\n');
        }
    }
    dump
}

#[tokio::test(flavor = "multi_thread")]
async fn plaintext_secrets_stay_out_of_storage_and_logs() {
    let app = spawn_app(1).await;
    let user = app.new_user().await;
    let new_password = "Violet-Kettle-Drums-82";
    let changed = app
        .http
        .put(format!("{}/v1/password", app.command_url))
        .bearer_auth(&user.token)
        .json(&json!({"current_password": PASSWORD, "new_password": new_password, "confirm_password": new_password}))
        .send()
        .await
        .unwrap();
    assert_eq!(changed.status(), StatusCode::OK);
    let (uri, codes) = enable_mfa(&app, &user).await;
    let secret = uri
        .split("secret=")
        .nth(1)
        .unwrap()
        .split('&')
        .next()
        .unwrap()
        .to_owned();

    let response = app.sign_in(&user.email, new_password).await;
    let mfa_token = response.json::<Value>().await.unwrap()["mfa_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let session = post(
        &app,
        "/v1/sessions/mfa",
        None,
        json!({"mfa_token": mfa_token, "backup_code": codes[0]}),
    )
    .await;
    assert_eq!(session.status(), StatusCode::CREATED);
    let second_token = session.json::<Value>().await.unwrap()["token"]
        .as_str()
        .unwrap()
        .to_owned();

    // A password reset and the registration's verification link add mailed tokens.
    let mails = crate::helpers::wait_for_mails(&user.email, 1).await;
    let verification_token = crate::helpers::link_token(&mails[0], "verify-email");
    let reset = app
        .post("/v1/password-reset", None, &json!({"email": user.email}))
        .await;
    assert_eq!(reset.status(), StatusCode::ACCEPTED);
    let mails = crate::helpers::wait_for_mails(&user.email, 2).await;
    let reset_token = crate::helpers::link_token(&mails[1], "reset-password");
    let reset_password = "Amber-Thistle-Canyon-47";
    let confirmed = app
        .post(
            "/v1/password-reset/confirm",
            None,
            &json!({"token": reset_token, "new_password": reset_password, "confirm_password": reset_password}),
        )
        .await;
    assert_eq!(confirmed.status(), StatusCode::OK);

    let topics = app.kafka.topics();
    let mut stored = dump_tables(&app.pool).await;
    for topic in [&topics.commands, &topics.events, &topics.replies] {
        for record in crate::helpers::read_all_records(&app.kafka, topic) {
            stored.push_str(&record.value.to_string());
            stored.push('\n');
        }
    }
    assert!(
        stored.contains(&user.account_id.to_string()),
        "the dump is empty, so nothing was checked"
    );
    // Everything the services of this process logged so far, at debug level.
    let logs = std::fs::read_to_string(crate::helpers::log_file()).unwrap();
    assert!(
        logs.contains(&user.account_id.to_string()),
        "the log holds nothing of this test, so nothing was checked"
    );

    let mut secrets = vec![
        PASSWORD.to_owned(),
        new_password.to_owned(),
        reset_password.to_owned(),
        user.token.clone(),
        second_token,
        secret,
        mfa_token,
        verification_token,
        reset_token,
    ];
    secrets.extend(codes);
    for value in &secrets {
        assert!(
            !logs.contains(value.as_str()),
            "a plaintext secret is in the logs: {}…",
            &value[..4]
        );
    }
    for value in &secrets {
        assert!(
            !stored.contains(value.as_str()),
            "a plaintext secret is stored: {}…",
            &value[..4]
        );
    }
}
