use std::time::Duration;

use accounts_command::processor::transactional_id;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::ClientConfig;

use crate::helpers::spawn_app;

fn producer(brokers: &str, id: &str) -> BaseProducer {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("transactional.id", id)
        .create()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn new_owner_fences_previous_writer() {
    let app = spawn_app(0).await;
    let brokers = app.kafka.brokers.clone();
    let topic = app.kafka.topics().events;
    let id = transactional_id(&app.kafka.topic_prefix, 0);

    let commit_result = tokio::task::spawn_blocking(move || {
        let timeout = Duration::from_secs(30);
        let zombie = producer(&brokers, &id);
        zombie.init_transactions(timeout).unwrap();
        zombie.begin_transaction().unwrap();
        zombie
            .send(
                BaseRecord::<str, str>::to(&topic)
                    .partition(0)
                    .key("zombie")
                    .payload("{}"),
            )
            .map_err(|(error, _)| error)
            .unwrap();
        zombie.flush(timeout).unwrap();

        // The next owner of partition 0 starts with the same transactional id.
        let successor = producer(&brokers, &id);
        successor.init_transactions(timeout).unwrap();

        zombie.commit_transaction(timeout)
    })
    .await
    .unwrap();

    let error = commit_result.expect_err("the fenced producer committed");
    let fenced = matches!(
        &error,
        KafkaError::Transaction(inner) if inner.code() == RDKafkaErrorCode::ProducerFenced || inner.is_fatal()
    );
    assert!(fenced, "unexpected error: {error:?}");
    assert!(
        app.committed_events().is_empty(),
        "the fenced producer's record is visible"
    );
    assert!(
        !app.all_event_records().is_empty(),
        "the fenced producer wrote nothing, so nothing was tested"
    );
}
