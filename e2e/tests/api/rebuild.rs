//! Rebuilding the read models from offset 0 while queries run.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use accounts_projector::rebuild::{rebuild, ProgressOutput, TABLES};
use reqwest::StatusCode;
use serde_json::json;
use sqlx::PgPool;

use crate::helpers::spawn_app;

/// Returns every row of the rebuilt tables as JSON text, sorted, leaving out when each
/// offset row was last written.
async fn dump(pool: &PgPool) -> Vec<String> {
    let mut rows = Vec::new();
    for table in TABLES {
        let query = if *table == "projection_offsets" {
            "SELECT json_build_object('partition', partition, 'next', next_offset)::text \
             FROM projection_offsets WHERE projection = 'read_models'"
                .to_owned()
        } else {
            format!("SELECT '{table} ' || row_to_json(t)::text FROM {table} t")
        };
        let texts: Vec<(String,)> = sqlx::query_as(&query).fetch_all(pool).await.unwrap();
        rows.extend(texts.into_iter().map(|(text,)| text));
    }
    rows.sort();
    rows
}

#[tokio::test(flavor = "multi_thread")]
async fn rebuild_swaps_equal_tables_while_queries_run() {
    let app = spawn_app(1).await;
    let mut users = Vec::new();
    for index in 0..4 {
        let user = app.new_user().await;
        let patched = app
            .patch_profile(
                &user,
                &json!({"name": format!("Rebuilt {index}"), "industry": "software"}),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(patched.status(), StatusCode::OK);
        users.push(user);
    }
    let workspace = app
        .post(
            "/v1/workspaces",
            Some(&users[0].token),
            &json!({"name": "Rebuild"}),
        )
        .await;
    assert_eq!(workspace.status(), StatusCode::CREATED);
    app.wait_until_projected(&app.pool).await;
    // The notifier stores its progress in the same table once the log is quiet.
    let notifier_rows = || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM projection_offsets WHERE projection = 'notifier'",
        )
        .fetch_one(&app.pool)
        .await
        .unwrap()
    };
    while notifier_rows().await == 0 {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let before = dump(&app.pool).await;
    let notifier_before = notifier_rows().await;
    assert!(before.len() > 20, "{} rows", before.len());

    // Queries run during the whole rebuild and the swap.
    let stop = Arc::new(AtomicBool::new(false));
    let (served, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut readers = Vec::new();
    for user in &users {
        let (http, url, token) = (app.http.clone(), app.query_url.clone(), user.token.clone());
        let (stop, served, failed) = (stop.clone(), served.clone(), failed.clone());
        readers.push(tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                for path in ["/v1/profile", "/v1/sessions", "/v1/security"] {
                    let response = http
                        .get(format!("{url}{path}"))
                        .bearer_auth(&token)
                        .send()
                        .await;
                    match response {
                        Ok(response) if response.status() == StatusCode::OK => {
                            served.fetch_add(1, Ordering::SeqCst)
                        }
                        _ => failed.fetch_add(1, Ordering::SeqCst),
                    };
                }
            }
        }));
    }

    let report = rebuild(&app.kafka, &app.pool, "read_models", ProgressOutput::Quiet)
        .await
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    stop.store(true, Ordering::SeqCst);
    for reader in readers {
        reader.await.unwrap();
    }
    assert!(report.events > 20, "{report:?}");
    assert!(served.load(Ordering::SeqCst) > 0);
    assert_eq!(
        failed.load(Ordering::SeqCst),
        0,
        "queries failed during the rebuild"
    );
    assert_eq!(dump(&app.pool).await, before);
    assert_eq!(
        notifier_rows().await,
        notifier_before,
        "the notifier's progress was kept"
    );

    // The live projector writes into the swapped-in tables.
    let patched = app
        .patch_profile(&users[1], &json!({"name": "After the swap"}))
        .send()
        .await
        .unwrap();
    assert_eq!(patched.status(), StatusCode::OK);
    assert_eq!(app.profile_json(&users[1]).await["name"], "After the swap");

    let unknown = rebuild(
        &app.kafka,
        &app.pool,
        "sessions_only",
        ProgressOutput::Quiet,
    )
    .await;
    assert!(unknown.is_err());
}
