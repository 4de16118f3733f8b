use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::{spawn_app, PASSWORD};

#[tokio::test(flavor = "multi_thread")]
async fn patch_is_visible_on_next_get() {
    let app = spawn_app(1).await;
    let email = format!("Zoe.{}@Example.com", uuid::Uuid::new_v4().simple());

    let registered = app.register(&email, "Zoë Müller").await;
    assert_eq!(registered.status(), StatusCode::CREATED);
    let account_id = registered.json::<Value>().await.unwrap()["account_id"]
        .as_str()
        .unwrap()
        .to_owned();

    let session = app.sign_in(&email.to_lowercase(), PASSWORD).await;
    assert_eq!(session.status(), StatusCode::CREATED);
    let session: Value = session.json().await.unwrap();
    let token = session["token"].as_str().unwrap().to_owned();
    let user = crate::helpers::User {
        account_id: account_id.parse().unwrap(),
        email: email.clone(),
        token,
    };

    let patched = app
        .patch_profile(
            &user,
            &json!({
                "company_name": "My company",
                "industry": "AI Agents",
                "business_phone": {"country_code": "+91", "number": "99887 76655"}
            }),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(patched.status(), StatusCode::OK);
    let etag = patched.headers()["etag"].to_str().unwrap().to_owned();
    let timing = patched.headers()["server-timing"]
        .to_str()
        .unwrap()
        .to_owned();
    let durations: Vec<(&str, f64)> = timing
        .split(", ")
        .map(|metric| {
            let (name, duration) = metric.split_once(";dur=").unwrap();
            (name, duration.parse().unwrap())
        })
        .collect();
    assert_eq!(
        durations.iter().map(|(name, _)| *name).collect::<Vec<_>>(),
        ["decide", "project"],
        "{timing}"
    );
    assert!(durations.iter().all(|(_, ms)| *ms >= 0.0), "{timing}");
    let patched: Value = patched.json().await.unwrap();
    let version = patched["version"].as_u64().unwrap();
    assert_eq!(etag, format!("\"{version}\""));
    assert!(patched["position"].is_string());

    let profile = app.profile(&user).await;
    assert_eq!(profile.status(), StatusCode::OK);
    assert_eq!(profile.headers()["etag"].to_str().unwrap(), etag);
    let profile: Value = profile.json().await.unwrap();
    assert_eq!(profile["account_id"], account_id.as_str());
    assert_eq!(profile["email"], email.as_str());
    assert_eq!(profile["name"], "Zoë Müller");
    assert_eq!(profile["company_name"], "My company");
    assert_eq!(profile["industry"], "ai_agents");
    assert_eq!(profile["business_phone"], "+919988776655");
    assert_eq!(profile["version"].as_u64(), Some(version));
}

#[tokio::test(flavor = "multi_thread")]
async fn registration_event_carries_only_the_hash() {
    let app = spawn_app(1).await;
    let user = app.new_user().await;

    let events = app.committed_events();
    let registered = events
        .iter()
        .find(|event| {
            event.event_type() == "accounts.AccountRegistered"
                && event.subject() == user.account_id.to_string()
        })
        .expect("no AccountRegistered event");
    assert_eq!(registered.value["specversion"], "1.0");
    assert_eq!(registered.value["datacontenttype"], "application/json");
    assert_eq!(registered.value["aggregatesequence"], 1);
    let hash = registered.value["data"]["password_hash"].as_str().unwrap();
    assert!(
        hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
        "{hash}"
    );
    let raw = serde_json::to_string(&events.iter().map(|event| &event.value).collect::<Vec<_>>())
        .unwrap();
    assert!(!raw.contains(PASSWORD));
    assert!(!raw.contains(&user.token));
}

#[tokio::test(flavor = "multi_thread")]
async fn email_taken_case_insensitively() {
    let app = spawn_app(1).await;
    let local = uuid::Uuid::new_v4().simple().to_string();
    let first = app
        .register(&format!("User.{local}@Example.com"), "First")
        .await;
    assert_eq!(first.status(), StatusCode::CREATED);

    let second = app
        .register(&format!("user.{local}@example.COM"), "Second")
        .await;
    assert_eq!(second.status(), StatusCode::CONFLICT);
    assert_eq!(second.headers()["content-type"], "application/problem+json");
    let problem: Value = second.json().await.unwrap();
    assert_eq!(problem["code"], "email_taken");
}

#[tokio::test(flavor = "multi_thread")]
async fn wrong_password_and_unknown_email_look_alike() {
    let app = spawn_app(1).await;
    let user = app.new_user().await;

    let wrong = app.sign_in(&user.email, "Wrong-Password-1").await;
    let unknown = app.sign_in("nobody@example.com", PASSWORD).await;
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(unknown.status(), StatusCode::UNAUTHORIZED);
    let wrong: Value = wrong.json().await.unwrap();
    let unknown: Value = unknown.json().await.unwrap();
    assert_eq!(wrong["code"], "invalid_credentials");
    assert_eq!(wrong, unknown);
}

#[tokio::test(flavor = "multi_thread")]
async fn retried_idempotency_key_returns_first_outcome() {
    let app = spawn_app(1).await;
    let user = app.new_user().await;

    let send = || {
        app.patch_profile(&user, &json!({"name": "Retried Name"}))
            .header("Idempotency-Key", "rename-1")
            .send()
    };
    let first: Value = send().await.unwrap().json().await.unwrap();
    let end = app.event_log_end();
    let again = send().await.unwrap();
    assert_eq!(again.status(), StatusCode::OK);
    let again: Value = again.json().await.unwrap();
    assert_eq!(first, again);
    assert_eq!(app.event_log_end(), end);
}

#[tokio::test(flavor = "multi_thread")]
async fn unchanged_patch_appends_nothing() {
    let app = spawn_app(1).await;
    let user = app.new_user().await;
    let end = app.event_log_end();

    let same = app
        .patch_profile(&user, &json!({"name": "Test User"}))
        .send()
        .await
        .unwrap();
    assert_eq!(same.status(), StatusCode::OK);
    assert_eq!(app.event_log_end(), end);
}

#[tokio::test(flavor = "multi_thread")]
async fn min_position_waits_for_projection() {
    let app = spawn_app(1).await;
    let user = app.new_user().await;
    let patched: Value = app
        .patch_profile(&user, &json!({"name": "Positioned"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let position = patched["position"].as_str().unwrap();

    let read = app.profile_after(&user, position).await;
    assert_eq!(read.status(), StatusCode::OK);

    let (partition, _) = position.split_once('-').unwrap();
    let future = app
        .http
        .get(format!("{}/v1/profile", app.query_url))
        .bearer_auth(&user.token)
        .header("X-Min-Position", format!("{partition}-999999999"))
        .send()
        .await
        .unwrap();
    assert_eq!(future.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(future.headers()["retry-after"], "1");
    let problem: Value = future.json().await.unwrap();
    assert_eq!(problem["code"], "projection_lagging");
}

#[tokio::test(flavor = "multi_thread")]
async fn every_service_serves_operations_endpoints() {
    let app = spawn_app(1).await;
    for base in [&app.command_url, &app.query_url] {
        for path in ["/healthz", "/readyz", "/metrics"] {
            let response = app.http.get(format!("{base}{path}")).send().await.unwrap();
            assert_eq!(response.status(), StatusCode::OK, "{base}{path}");
        }
        let openapi: Value = app
            .http
            .get(format!("{base}/openapi.json"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(
            openapi["openapi"]
                .as_str()
                .map(|version| version.starts_with("3.")),
            Some(true)
        );
        assert!(openapi["paths"]["/readyz"].is_object());
    }
    let command: Value = app
        .http
        .get(format!("{}/openapi.json", app.command_url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(command["paths"]["/v1/profile"]["patch"].is_object());
    let query: Value = app
        .http
        .get(format!("{}/openapi.json", app.query_url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(query["paths"]["/v1/profile"]["get"].is_object());

    let industries: Value = app
        .http
        .get(format!("{}/v1/industries", app.query_url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(industries
        .as_array()
        .unwrap()
        .iter()
        .any(|industry| industry["id"] == "ai_agents" && industry["label"] == "AI Agents"));
}

#[tokio::test(flavor = "multi_thread")]
async fn profile_needs_a_session() {
    let app = spawn_app(1).await;
    let anonymous = app
        .http
        .get(format!("{}/v1/profile", app.query_url))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
    let forged = app
        .http
        .get(format!("{}/v1/profile", app.query_url))
        .bearer_auth("forged")
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), StatusCode::UNAUTHORIZED);
    let patch = app
        .http
        .patch(format!("{}/v1/profile", app.command_url))
        .json(&json!({"name": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(patch.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_retries_share_one_outcome() {
    let app = spawn_app(1).await;
    let user = app.new_user().await;

    for round in 0..5 {
        let company = format!("Company {round}");
        let requests = (0..6).map(|_| {
            app.patch_profile(&user, &json!({"company_name": company}))
                .header("Idempotency-Key", format!("company-{round}"))
                .send()
        });
        let mut versions = Vec::new();
        for response in futures::future::join_all(requests).await {
            let response = response.unwrap();
            assert_eq!(response.status(), StatusCode::OK);
            versions.push(
                response.json::<Value>().await.unwrap()["version"]
                    .as_u64()
                    .unwrap(),
            );
        }
        versions.dedup();
        assert_eq!(
            versions.len(),
            1,
            "round {round}: retries got different versions"
        );
    }

    let email = format!("racer.{}@example.com", uuid::Uuid::new_v4().simple());
    let registrations = (0..6).map(|_| {
        app.http
            .post(format!("{}/v1/accounts", app.command_url))
            .header("Idempotency-Key", "register-once")
            .json(&json!({"email": email, "password": PASSWORD, "name": "Racer"}))
            .send()
    });
    let mut account_ids = Vec::new();
    for response in futures::future::join_all(registrations).await {
        let response = response.unwrap();
        assert_eq!(response.status(), StatusCode::CREATED);
        account_ids.push(
            response.json::<Value>().await.unwrap()["account_id"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    account_ids.dedup();
    assert_eq!(account_ids.len(), 1);

    let events = app.committed_events();
    for round in 0..5 {
        let company = format!("Company {round}");
        let count = events
            .iter()
            .filter(|event| {
                event.subject() == user.account_id.to_string()
                    && event.value["data"]["company_name"] == company.as_str()
            })
            .count();
        assert_eq!(count, 1, "{company} was appended {count} times");
    }
    let registered = events
        .iter()
        .filter(|event| {
            event.event_type() == "accounts.AccountRegistered"
                && event.value["data"]["email"] == email.as_str()
        })
        .count();
    assert_eq!(registered, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn reused_idempotency_key_is_rejected() {
    let app = spawn_app(1).await;
    let user = app.new_user().await;
    let send = |name: &'static str| {
        app.patch_profile(&user, &json!({"name": name}))
            .header("Idempotency-Key", "rename-once")
            .send()
    };
    let first = send("First Name").await.unwrap();
    assert_eq!(first.status(), StatusCode::OK);
    let end = app.event_log_end();

    let reused = send("Other Name").await.unwrap();
    assert_eq!(reused.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let problem: Value = reused.json().await.unwrap();
    assert_eq!(problem["code"], "idempotency_key_reused");
    assert_eq!(send("First Name").await.unwrap().status(), StatusCode::OK);
    assert_eq!(app.event_log_end(), end);

    let profile: Value = app.profile(&user).await.json().await.unwrap();
    assert_eq!(profile["name"], "First Name");
}
