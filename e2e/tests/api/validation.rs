use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::spawn_app;

#[tokio::test(flavor = "multi_thread")]
async fn bad_profile_input_appends_nothing() {
    let app = spawn_app(1).await;
    let user = app.new_user().await;
    let end = app.event_log_end();

    let cases: Vec<(&str, reqwest::RequestBuilder, StatusCode, &str)> = vec![
        (
            "invalid JSON",
            app.http
                .patch(format!("{}/v1/profile", app.command_url))
                .bearer_auth(&user.token)
                .header("content-type", "application/json")
                .body("{\"name\": "),
            StatusCode::BAD_REQUEST,
            "body",
        ),
        (
            "unknown field",
            app.patch_profile(&user, &json!({"nickname": "x"})),
            StatusCode::BAD_REQUEST,
            "nickname",
        ),
        (
            "wrong type",
            app.patch_profile(&user, &json!({"name": 42})),
            StatusCode::BAD_REQUEST,
            "name",
        ),
        (
            "unknown industry",
            app.patch_profile(&user, &json!({"industry": "Alchemy"})),
            StatusCode::UNPROCESSABLE_ENTITY,
            "industry",
        ),
        (
            "short phone",
            app.patch_profile(
                &user,
                &json!({"business_phone": {"country_code": "+91", "number": "98765 4321"}}),
            ),
            StatusCode::UNPROCESSABLE_ENTITY,
            "business_phone.number",
        ),
        (
            "101-character name",
            app.patch_profile(&user, &json!({"name": "é".repeat(101)})),
            StatusCode::UNPROCESSABLE_ENTITY,
            "name",
        ),
        (
            "bidi override",
            app.patch_profile(&user, &json!({"name": "Zoë\u{202E}rellüM"})),
            StatusCode::UNPROCESSABLE_ENTITY,
            "name",
        ),
        (
            "invisible name",
            app.patch_profile(&user, &json!({"name": "\u{200B}\u{2060}"})),
            StatusCode::UNPROCESSABLE_ENTITY,
            "name",
        ),
        (
            "null name",
            app.patch_profile(&user, &json!({"name": null})),
            StatusCode::UNPROCESSABLE_ENTITY,
            "name",
        ),
        (
            "bad If-Match",
            app.patch_profile(&user, &json!({"name": "x"}))
                .header("If-Match", "\"v1\""),
            StatusCode::BAD_REQUEST,
            "If-Match",
        ),
    ];
    for (case, request, status, field) in cases {
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), status, "{case}");
        assert_eq!(
            response.headers()["content-type"],
            "application/problem+json",
            "{case}"
        );
        let problem: Value = response.json().await.unwrap();
        assert_eq!(
            problem["status"].as_u64(),
            Some(u64::from(status.as_u16())),
            "{case}"
        );
        let fields: Vec<&str> = problem["errors"]
            .as_array()
            .unwrap()
            .iter()
            .map(|error| error["field"].as_str().unwrap())
            .collect();
        assert!(fields.contains(&field), "{case}: {problem}");
    }
    assert_eq!(
        app.event_log_end(),
        end,
        "a rejected request appended an event"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_registration_lists_every_invalid_field() {
    let app = spawn_app(1).await;
    let end = app.event_log_end();
    let response = app
        .http
        .post(format!("{}/v1/accounts", app.command_url))
        .json(&json!({"email": "not-an-address", "password": "short", "name": "a\u{202E}b"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let problem: Value = response.json().await.unwrap();
    let codes: Vec<(&str, &str)> = problem["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|error| {
            (
                error["field"].as_str().unwrap(),
                error["code"].as_str().unwrap(),
            )
        })
        .collect();
    assert!(codes.contains(&("email", "invalid_email")), "{problem}");
    assert!(
        codes.contains(&("password", "password_too_short")),
        "{problem}"
    );
    assert!(codes.contains(&("name", "invalid_character")), "{problem}");
    assert_eq!(app.event_log_end(), end);
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_bodies_name_the_field() {
    let app = spawn_app(1).await;
    let end = app.event_log_end();
    let post = |body: &'static str| {
        app.http
            .post(format!("{}/v1/accounts", app.command_url))
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    let cases = [
        (
            r#"{"email":"t@example.com","password":"Correct-Horse-9-battery","name":"A"} xx"#,
            "body",
        ),
        (r#"{"email":"t@example.com","name":"A"}"#, "password"),
        (
            r#"{"email":"t@example.com","email":"u@example.com","password":"Correct-Horse-9-battery","name":"A"}"#,
            "email",
        ),
        (r#"[1, 2]"#, "body"),
    ];
    for (body, field) in cases {
        let response = post(body).await.unwrap();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{body}");
        let problem: Value = response.json().await.unwrap();
        assert_eq!(problem["errors"][0]["field"], field, "{body}: {problem}");
    }
    assert_eq!(app.event_log_end(), end);
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_routes_answer_problem_json() {
    let app = spawn_app(1).await;
    for base in [&app.command_url, &app.query_url] {
        let missing = app.http.get(format!("{base}/nope")).send().await.unwrap();
        assert_eq!(missing.status(), StatusCode::NOT_FOUND);
        assert_eq!(
            missing.headers()["content-type"],
            "application/problem+json"
        );
        let problem: Value = missing.json().await.unwrap();
        assert_eq!(problem["code"], "not_found");
    }
    let wrong_method = app
        .http
        .get(format!("{}/v1/accounts", app.command_url))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong_method.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(
        wrong_method.headers()["content-type"],
        "application/problem+json"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn min_position_is_checked_after_authentication() {
    let app = spawn_app(1).await;
    let anonymous = app
        .http
        .get(format!("{}/v1/profile", app.query_url))
        .header("X-Min-Position", "3-999999999")
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);

    let user = app.new_user().await;
    let beyond = app
        .http
        .get(format!("{}/v1/profile", app.query_url))
        .bearer_auth(&user.token)
        .header("X-Min-Position", "99-1")
        .send()
        .await
        .unwrap();
    assert_eq!(beyond.status(), StatusCode::BAD_REQUEST);
    let problem: Value = beyond.json().await.unwrap();
    assert_eq!(problem["errors"][0]["field"], "X-Min-Position");

    let lower_case_scheme = app
        .http
        .get(format!("{}/v1/profile", app.query_url))
        .header("authorization", format!("bearer {}", user.token))
        .send()
        .await
        .unwrap();
    assert_eq!(lower_case_scheme.status(), StatusCode::OK);
}
