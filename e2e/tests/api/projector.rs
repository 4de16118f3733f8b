use std::sync::Arc;
use std::time::Duration;

use accounts_platform::kafka::{client_config, create_topics, fetch_watermarks};
use accounts_platform::KafkaConfig;
use accounts_projector::{spawn_projector, Crashed, ProjectorControl};
use rdkafka::consumer::BaseConsumer;
use serde_json::json;
use sqlx::PgPool;

use uuid::Uuid;

use crate::helpers::{create_database, spawn_app, TestApp, User};

#[tokio::test(flavor = "multi_thread")]
async fn new_topic_watermarks_are_read() {
    let kafka = KafkaConfig {
        brokers: std::env::var("KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".to_owned()),
        topic_prefix: format!("test-{}.", Uuid::new_v4().simple()),
        partitions: 12,
    };
    create_topics(&kafka).await.unwrap();

    // Straight after creation the broker may still be electing leaders.
    let consumer: BaseConsumer = client_config(&kafka).create().unwrap();
    let topic = kafka.topics().events;
    for partition in 0..kafka.partitions {
        let watermarks =
            fetch_watermarks(&consumer, &topic, partition, Duration::from_secs(30)).await;
        assert_eq!(watermarks.unwrap(), (0, 0), "partition {partition}");
    }
}

async fn rename_all(app: &TestApp, users: &[User], round: usize) {
    let requests = users.iter().map(|user| {
        app.patch_profile(
            user,
            &json!({"name": format!("Round {round}"), "company_name": format!("Company {round}")}),
        )
        .send()
    });
    for response in futures::future::join_all(requests).await {
        let status = response.unwrap().status();
        assert!(status == 200 || status == 202, "{status}");
    }
}

/// Returns every read-model row as text, ordered, so two databases can be compared.
async fn dump(pool: &PgPool) -> Vec<String> {
    let mut rows = Vec::new();
    for query in [
        "SELECT row_to_json(a)::text FROM (SELECT * FROM accounts ORDER BY account_id) a",
        "SELECT row_to_json(c)::text FROM (SELECT * FROM credentials ORDER BY account_id) c",
        "SELECT row_to_json(s)::text FROM (SELECT * FROM sessions ORDER BY session_id) s",
        "SELECT row_to_json(o)::text FROM (SELECT partition, next_offset FROM projection_offsets WHERE projection = 'read_models' ORDER BY partition) o",
    ] {
        let texts: Vec<(String,)> = sqlx::query_as(query).fetch_all(pool).await.unwrap();
        rows.extend(texts.into_iter().map(|(text,)| text));
    }
    rows
}

#[tokio::test(flavor = "multi_thread")]
async fn restarted_projector_matches_rebuild_from_zero() {
    let mut app = spawn_app(1).await;
    let mut users = Vec::new();
    for _ in 0..4 {
        users.push(app.new_user().await);
    }

    // Killed inside a batch: the transaction is rolled back.
    app.projector.crash_inside_next_batch();
    rename_all(&app, &users, 1).await;
    let crashed = (&mut app.projector_task).await.unwrap();
    assert!(crashed.unwrap_err().is::<Crashed>());

    // Restarted, then killed between batches.
    let control = Arc::new(ProjectorControl::default());
    app.projector_task = spawn_projector(app.kafka.clone(), app.pool.clone(), control.clone())
        .await
        .unwrap();
    rename_all(&app, &users, 2).await;
    app.wait_until_projected(&app.pool).await;
    app.projector_task.abort();
    rename_all(&app, &users, 3).await;

    // Restarted for good.
    app.projector_task = spawn_projector(
        app.kafka.clone(),
        app.pool.clone(),
        Arc::new(ProjectorControl::default()),
    )
    .await
    .unwrap();
    app.wait_until_projected(&app.pool).await;

    let (_, fresh) = create_database().await.unwrap();
    let rebuild = spawn_projector(
        app.kafka.clone(),
        fresh.clone(),
        Arc::new(ProjectorControl::default()),
    )
    .await
    .unwrap();
    app.wait_until_projected(&fresh).await;
    rebuild.abort();

    let live = dump(&app.pool).await;
    assert!(live.iter().any(|row| row.contains("Round 3")));
    assert_eq!(live, dump(&fresh).await);
    tokio::time::sleep(Duration::from_millis(10)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn projector_refuses_another_clusters_database() {
    let app = spawn_app(1).await;
    let (_, foreign) = create_database().await.unwrap();
    sqlx::query("INSERT INTO projection_sources (projection, topic, cluster_id) VALUES ('read_models', $1, 'another-cluster')")
        .bind(app.kafka.topics().events)
        .execute(&foreign)
        .await
        .unwrap();

    let error = spawn_projector(
        app.kafka.clone(),
        foreign,
        Arc::new(ProjectorControl::default()),
    )
    .await
    .expect_err("the projector started on another cluster's read models");
    assert!(
        format!("{error:#}").contains("projected from Kafka cluster another-cluster"),
        "{error:#}"
    );
}
