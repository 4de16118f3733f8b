//! `profiles.public.v1`: one record per public change, exactly once, and a subscriber that
//! starts from nothing ends with the profiles the query service shows.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use accounts_events::envelope::Decoded;
use accounts_events::subscriber::ProfileSubscriber;
use accounts_events::{PublicProfile, RecordedEvent};
use reqwest::StatusCode;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::helpers::{read_all_records, spawn_app, TestApp, User};

/// A small deterministic generator, so a failing run can be repeated.
struct Steps(u64);

impl Steps {
    fn next(&mut self, below: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % below
    }
}

fn png(shade: u8) -> Vec<u8> {
    let image = image::DynamicImage::ImageRgb8(image::RgbImage::from_pixel(
        32,
        32,
        image::Rgb([shade, 255 - shade, 40]),
    ));
    let mut bytes = std::io::Cursor::new(Vec::new());
    image.write_to(&mut bytes, image::ImageFormat::Png).unwrap();
    bytes.into_inner()
}

/// Sends one command of the mix and returns its status.
async fn step(app: &TestApp, user: &User, choice: u64, round: u64) -> StatusCode {
    let industries = ["ai_agents", "software", "financial_services", "healthcare"];
    match choice {
        0..=3 => app
            .patch_profile(user, &json!({"name": format!("Member {round}")}))
            .send()
            .await
            .unwrap()
            .status(),
        4 | 5 => app
            .patch_profile(
                user,
                &json!({"company_name": format!("Company {round}"), "industry": industries[(round % 4) as usize]}),
            )
            .send()
            .await
            .unwrap()
            .status(),
        6 => app
            .patch_profile(
                user,
                &json!({"business_phone": {"country_code": "+91", "number": format!("99887 7{:04}", round % 10_000)}}),
            )
            .send()
            .await
            .unwrap()
            .status(),
        7 => app
            .post(
                "/v1/email-change",
                Some(&user.token),
                &json!({"new_email": format!("moved-{round}-{}@example.com", Uuid::new_v4().simple())}),
            )
            .await
            .status(),
        8 => crate::picture::upload(app, user, "image/png", png((round % 256) as u8))
            .await
            .status(),
        _ => app
            .http
            .delete(format!("{}/v1/profile/picture", app.command_url))
            .bearer_auth(&user.token)
            .send()
            .await
            .unwrap()
            .status(),
    }
}

fn public_fields(value: &Value) -> Value {
    json!({
        "name": value["name"],
        "company_name": value["company_name"],
        "industry": value["industry"],
        "picture_url": value["picture_url"],
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn subscriber_from_nothing_matches_the_query_service() {
    let app = spawn_app(2).await;
    let mut users = Vec::new();
    for _ in 0..8 {
        users.push(app.new_user().await);
    }

    // 500 commands in four concurrent streams.
    let mut streams = Vec::new();
    for stream in 0..4_u64 {
        let (app, users) = (&app, &users);
        streams.push(async move {
            let mut steps = Steps(stream + 7);
            for round in 0..125 {
                let user = &users[steps.next(users.len() as u64) as usize];
                let status = step(app, user, steps.next(10), stream * 1000 + round).await;
                assert!(
                    status.is_success(),
                    "a command of the mix failed with {status}"
                );
            }
        });
    }
    futures::future::join_all(streams).await;

    let mut expected: HashMap<Uuid, Value> = HashMap::new();
    for user in &users {
        expected.insert(
            user.account_id,
            public_fields(&app.profile_json(user).await),
        );
    }
    let topic = app.kafka.topics().public_profiles;
    let mut subscriber = ProfileSubscriber::new(&app.kafka.brokers, &topic).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        subscriber.poll(Duration::from_millis(200)).unwrap();
        let copied: HashMap<Uuid, Value> = subscriber
            .profiles()
            .iter()
            .map(|profile| {
                (
                    profile.account_id,
                    public_fields(&serde_json::to_value(profile).unwrap()),
                )
            })
            .collect();
        if copied == expected {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the subscriber's copy differs after 60 s:\n{copied:#?}\nexpected:\n{expected:#?}"
        );
    }
    assert_eq!(subscriber.invalid_records(), 0);

    // Every record matches the published JSON Schemas.
    let envelope = jsonschema::validator_for(
        &serde_json::to_value(accounts_events::envelope::envelope_schema()).unwrap(),
    )
    .unwrap();
    for event in app.committed_events() {
        assert!(envelope.is_valid(&event.value), "{}", event.value);
        let schema = accounts_events::DomainEvent::data_schema(event.event_type())
            .unwrap_or_else(|| panic!("no schema for {}", event.event_type()));
        let data = jsonschema::validator_for(&serde_json::to_value(schema).unwrap()).unwrap();
        let errors: Vec<String> = data
            .iter_errors(&event.value["data"])
            .map(|error| error.to_string())
            .collect();
        assert!(errors.is_empty(), "{}: {errors:?}", event.event_type());
    }
    let profile_schema = jsonschema::validator_for(
        &serde_json::to_value(schemars::schema_for!(PublicProfile)).unwrap(),
    )
    .unwrap();
    for record in crate::helpers::read_committed_records(&app.kafka, &topic) {
        assert!(profile_schema.is_valid(&record.value), "{}", record.value);
    }

    // Exactly once: one committed record per event that changes a public field, and no hash,
    // secret or address in any of them.
    let mut latest: HashMap<String, PublicProfile> = HashMap::new();
    let mut public_changes = 0;
    for event in app.committed_events() {
        let bytes = serde_json::to_vec(&event.value).unwrap();
        let Ok(Decoded::Event(recorded)) = RecordedEvent::decode(&bytes) else {
            continue;
        };
        let recorded: RecordedEvent = *recorded;
        if let Some(profile) = PublicProfile::after(latest.get(&recorded.meta.subject), &recorded) {
            public_changes += 1;
            latest.insert(recorded.meta.subject.clone(), profile);
        }
    }
    let records = crate::helpers::read_committed_records(&app.kafka, &topic);
    assert_eq!(records.len(), public_changes);
    for user in &users {
        let text = read_all_records(&app.kafka, &topic)
            .iter()
            .map(|record| record.value.to_string())
            .collect::<String>();
        assert!(!text.contains(&user.email));
        assert!(!text.contains("argon2"));
    }
}
