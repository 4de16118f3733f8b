use std::time::Duration;

use accounts_command::spawn_deciders;
use accounts_command::wire::{Command, CommandEnvelope, FieldValue, ProfileChanges, ReplyRoute};
use accounts_events::{Actor, ActorKind, AggregateId};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::ClientConfig;
use serde_json::Value;
use uuid::Uuid;

use crate::helpers::spawn_app;

#[tokio::test(flavor = "multi_thread")]
async fn duplicates_in_one_batch_append_once() {
    let mut app = spawn_app(1).await;
    let user = app.new_user().await;

    // Stop the decider so the duplicates queue up and the next one reads them together.
    let decider = app.deciders.remove(0);
    decider.control.stop();
    tokio::task::spawn_blocking(move || decider.thread.join())
        .await
        .unwrap()
        .unwrap();

    let aggregate = AggregateId::Account(user.account_id);
    let command_id = Uuid::now_v7();
    let commands_topic = app.kafka.topics().commands;
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", &app.kafka.brokers)
        .create()
        .unwrap();
    // Each copy requests another value, as a client reusing a key by mistake would.
    for copy in 0..5 {
        let command = Command::UpdateProfile {
            account_id: user.account_id,
            changes: ProfileChanges {
                company_name: Some(FieldValue {
                    value: Some(format!("Batched {copy}")),
                }),
                ..ProfileChanges::default()
            },
        };
        let envelope = CommandEnvelope {
            request_digest: Some(command.request_digest(None)),
            command_id,
            request_id: Uuid::new_v4(),
            aggregate_key: aggregate.key(),
            expected_version: None,
            reply_to: ReplyRoute {
                partition: 0,
                route: "nobody".into(),
            },
            correlation_id: Uuid::now_v7(),
            actor: Actor {
                kind: ActorKind::Service,
                id: Some("test".into()),
                ip: None,
                user_agent: None,
            },
            issued_at: chrono::Utc::now(),
            command,
        };
        let payload = serde_json::to_vec(&envelope).unwrap();
        let key = aggregate.key();
        let record = BaseRecord::<String, Vec<u8>>::to(&commands_topic)
            .partition(aggregate.partition(app.kafka.partitions))
            .key(&key)
            .payload(&payload);
        producer.send(record).map_err(|(error, _)| error).unwrap();
    }
    producer.flush(Duration::from_secs(10)).unwrap();

    app.deciders = spawn_deciders(&app.kafka, 1).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let profile: Value = app.profile(&user).await.json().await.unwrap();
        if profile["company_name"]
            .as_str()
            .is_some_and(|name| name.starts_with("Batched"))
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the queued commands were never applied"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let appended = app
        .committed_events()
        .iter()
        .filter(|event| event.value["commandid"] == command_id.to_string())
        .count();
    assert_eq!(appended, 1, "one command id appended {appended} events");
    let profile: Value = app.profile(&user).await.json().await.unwrap();
    assert_eq!(
        profile["company_name"], "Batched 0",
        "the first copy must win"
    );
}
