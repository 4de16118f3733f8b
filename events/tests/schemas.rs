//! Every event type has a sample that round-trips through its `data`, matches the JSON
//! Schema the code derives, and matches the schema file committed in `events/schemas/`.
//! Run with `UPDATE_SCHEMAS=1` to rewrite the files after changing a payload.

// A failed step should stop the test with its message.
#![allow(clippy::unwrap_used, clippy::panic)]

use std::path::PathBuf;

use accounts_events::event::*;
use accounts_events::PublicProfile;
use chrono::{TimeZone, Utc};
use uuid::Uuid;

fn samples() -> Vec<DomainEvent> {
    let id = Uuid::from_u128(0x0193_0000_0000_7000_8000_0000_0000_0001);
    let time = Utc.with_ymd_and_hms(2026, 12, 4, 12, 0, 0).unwrap();
    let sealed = "v1:local:bm9uY2U:Y2lwaGVydGV4dA".to_owned();
    let hash = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08".to_owned();
    let phc = "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA".to_owned();
    vec![
        DomainEvent::AccountRegistered(AccountRegistered {
            account_id: id,
            email: "Zoe+work@Example.com".into(),
            email_normalized: "zoe+work@example.com".into(),
            name: "Zoë Müller".into(),
            password_hash: phc.clone(),
        }),
        DomainEvent::ProfileUpdated(ProfileUpdated {
            name: "Zoë Müller".into(),
            company_name: Some("My company".into()),
            industry: Some("ai_agents".into()),
            business_phone: Some("+919988776655".into()),
            changed: vec!["company_name".into()],
        }),
        DomainEvent::SessionStarted(SessionStarted {
            session_id: id,
            token_sha256: hash.clone(),
            expires_at: time,
            client: SessionClient {
                user_agent: Some("curl/8".into()),
                ip: Some("127.0.0.1".into()),
            },
            method: "password".into(),
        }),
        DomainEvent::SessionsRevoked(SessionsRevoked {
            session_ids: vec![id],
            reason: "revoke_all".into(),
        }),
        DomainEvent::PasswordChanged(PasswordChanged {
            password_hash: phc.clone(),
            credential_version: 2,
        }),
        DomainEvent::TotpEnrollmentStarted(TotpEnrollmentStarted {
            secret_ciphertext: sealed.clone(),
        }),
        DomainEvent::TotpEnabled(TotpEnabled {
            secret_ciphertext: sealed.clone(),
            backup_code_hashes: vec![hash.clone()],
            confirmed_step: 59_000_000,
            credential_version: 3,
        }),
        DomainEvent::TotpStepUsed(TotpStepUsed { step: 59_000_001 }),
        DomainEvent::BackupCodeUsed(BackupCodeUsed { index: 0 }),
        DomainEvent::SecondFactorFailed(SecondFactorFailed {
            failures: 5,
            locked_until: Some(time),
        }),
        DomainEvent::TotpDisabled(TotpDisabled {
            credential_version: 4,
        }),
        DomainEvent::BackupCodesRegenerated(BackupCodesRegenerated {
            backup_code_hashes: vec![hash.clone()],
        }),
        DomainEvent::SessionVerified(SessionVerified {
            session_id: id,
            method: "password".into(),
        }),
        DomainEvent::EmailClaimed(EmailClaimed {
            email_normalized: "zoe@example.com".into(),
            account_id: id,
        }),
        DomainEvent::EmailVerificationRequested(EmailVerificationRequested {
            email: "Zoe@Example.com".into(),
            email_normalized: "zoe@example.com".into(),
            purpose: "registration".into(),
            token_sha256: hash.clone(),
            token_ciphertext: sealed.clone(),
            expires_at: time,
        }),
        DomainEvent::EmailVerified(EmailVerified {
            email: "Zoe@Example.com".into(),
        }),
        DomainEvent::EmailChangeConfirmed(EmailChangeConfirmed {
            email: "new@example.com".into(),
            email_normalized: "new@example.com".into(),
        }),
        DomainEvent::EmailChanged(EmailChanged {
            previous_email: "Zoe@Example.com".into(),
            email: "new@example.com".into(),
            email_normalized: "new@example.com".into(),
        }),
        DomainEvent::EmailChangeFailed(EmailChangeFailed {
            email: "new@example.com".into(),
            reason: "email_taken".into(),
        }),
        DomainEvent::EmailChangeCancelled(EmailChangeCancelled {
            email: "new@example.com".into(),
        }),
        DomainEvent::PasswordResetRequested(PasswordResetRequested {
            email: "Zoe@Example.com".into(),
            token_sha256: hash.clone(),
            token_ciphertext: sealed,
            expires_at: time,
        }),
        DomainEvent::PasswordReset(PasswordReset {
            password_hash: phc,
            credential_version: 5,
        }),
        DomainEvent::EmailReleased(EmailReleased {
            email_normalized: "zoe@example.com".into(),
            account_id: id,
        }),
        DomainEvent::WorkspaceCreated(WorkspaceCreated {
            workspace_id: id,
            name: "Research".into(),
            owner_id: id,
        }),
        DomainEvent::WorkspaceMemberAdded(WorkspaceMemberAdded { account_id: id }),
        DomainEvent::WorkspaceMemberRemoved(WorkspaceMemberRemoved { account_id: id }),
        DomainEvent::AgentCreated(AgentCreated {
            agent_id: id,
            name: "Support agent".into(),
            owner_id: id,
        }),
        DomainEvent::AgentDeleted(AgentDeleted { agent_id: id }),
        DomainEvent::ProfilePictureChanged(ProfilePictureChanged {
            content_type: "image/png".into(),
            size: 48_213,
            width: 640,
            height: 480,
            upload_sha256: hash.clone(),
            sha256: hash,
        }),
        DomainEvent::ProfilePictureRemoved(ProfilePictureRemoved {}),
        DomainEvent::RoleGranted(RoleGranted {
            role: "auditor".into(),
        }),
        DomainEvent::RoleRevoked(RoleRevoked {
            role: "auditor".into(),
        }),
    ]
}

fn schema_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("schemas")
}

/// Returns the file name of the current schema of `event_type`, such as
/// `AccountRegistered.v1.json`.
fn schema_file(event_type: &str) -> String {
    format!(
        "{}.v{}.json",
        event_type.trim_start_matches("accounts."),
        DomainEvent::current_version(event_type)
    )
}

fn check_file(name: &str, schema: &schemars::Schema) {
    let path = schema_dir().join(name);
    let generated = format!("{}\n", serde_json::to_string_pretty(schema).unwrap());
    if std::env::var_os("UPDATE_SCHEMAS").is_some() {
        std::fs::write(&path, &generated).unwrap();
        return;
    }
    let committed = std::fs::read_to_string(&path)
        .unwrap_or_else(|_| panic!("{} is missing; run with UPDATE_SCHEMAS=1", path.display()));
    assert_eq!(
        committed, generated,
        "{name} is out of date; run with UPDATE_SCHEMAS=1"
    );
}

fn validator(schema: &schemars::Schema) -> jsonschema::Validator {
    jsonschema::validator_for(&serde_json::to_value(schema).unwrap()).unwrap()
}

#[test]
fn every_type_has_a_sample() {
    let mut sampled: Vec<&str> = samples().iter().map(DomainEvent::event_type).collect();
    let mut known = DomainEvent::TYPES.to_vec();
    sampled.sort_unstable();
    known.sort_unstable();
    assert_eq!(sampled, known);
}

#[test]
fn samples_round_trip_and_match_their_schema() {
    for event in samples() {
        let event_type = event.event_type();
        let data = event.to_data().unwrap();
        let decoded = DomainEvent::from_data(event_type, event.schema_version(), data.clone())
            .unwrap()
            .unwrap_or_else(|| panic!("{event_type} is not decoded"));
        assert_eq!(decoded, event);

        let schema = DomainEvent::data_schema(event_type).unwrap();
        let errors: Vec<String> = validator(&schema)
            .iter_errors(&data)
            .map(|error| error.to_string())
            .collect();
        assert!(errors.is_empty(), "{event_type}: {errors:?}");
        check_file(&schema_file(event_type), &schema);
    }
}

#[test]
fn schemas_reject_unknown_fields() {
    let schema = DomainEvent::data_schema(DomainEvent::PROFILE_PICTURE_REMOVED).unwrap();
    assert!(!validator(&schema).is_valid(&serde_json::json!({"bytes": "..."})));
}

#[test]
fn public_profile_schema_is_current() {
    let schema = schemars::schema_for!(PublicProfile);
    check_file("PublicProfile.v1.json", &schema);
    let profile = serde_json::json!({
        "account_id": "01930000-0000-7000-8000-000000000001",
        "name": "Zoë Müller",
        "company_name": null,
        "industry": "ai_agents",
        "picture_url": "/v1/pictures/9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
        "version": 7,
        "updated_at": "2026-12-04T12:00:00Z"
    });
    assert!(validator(&schema).is_valid(&profile));
}

#[test]
fn envelope_schema_is_current_and_matches_records() {
    let schema = accounts_events::envelope::envelope_schema();
    check_file("CloudEvent.v1.json", &schema);
    let validator = validator(&schema);
    for event in samples() {
        let recorded = accounts_events::RecordedEvent {
            meta: accounts_events::EventMeta {
                event_id: Uuid::now_v7(),
                source: "/accounts-command".into(),
                time: Utc::now(),
                subject: Uuid::now_v7().to_string(),
                aggregate_type: "account".into(),
                sequence: 1,
                command_id: Uuid::now_v7(),
                correlation_id: Uuid::now_v7(),
                causation_id: Uuid::now_v7(),
                actor: accounts_events::Actor {
                    kind: accounts_events::ActorKind::Account,
                    id: Some("01930000-0000-7000-8000-000000000001".into()),
                    ip: Some("127.0.0.1".into()),
                    user_agent: None,
                },
                request_digest: None,
                previous_hash: Some("ab".repeat(32)),
            },
            event,
        };
        let value: serde_json::Value = serde_json::from_slice(&recorded.encode().unwrap()).unwrap();
        assert!(validator.is_valid(&value), "{value}");
    }
}

/// Builds the AsyncAPI 3 document of the topics from the event types.
fn asyncapi() -> serde_json::Value {
    use serde_json::{json, Map, Value};
    let mut messages = Map::new();
    let mut event_refs = Map::new();
    for event_type in DomainEvent::TYPES {
        let name = event_type.trim_start_matches("accounts.");
        messages.insert(
            name.to_owned(),
            json!({
                "name": event_type,
                "title": name,
                "contentType": "application/cloudevents+json",
                "headers": {"$ref": "#/components/schemas/RecordHeaders"},
                "payload": {
                    "allOf": [
                        {"$ref": "./schemas/CloudEvent.v1.json"},
                        {
                            "type": "object",
                            "properties": {
                                "type": {"const": event_type},
                                "schemaversion": {"const": DomainEvent::current_version(event_type)},
                                "data": {"$ref": format!("./schemas/{}", schema_file(event_type))}
                            }
                        }
                    ]
                },
                "bindings": {"kafka": {"key": {"type": "string", "description": "The aggregate key, equal to the subject."}, "bindingVersion": "0.5.0"}}
            }),
        );
        event_refs.insert(
            name.to_owned(),
            json!({"$ref": format!("#/components/messages/{name}")}),
        );
    }
    messages.insert(
        "PublicProfile".to_owned(),
        json!({
            "name": "PublicProfile",
            "title": "Public profile",
            "summary": "The latest public profile of an account; an empty value is a tombstone.",
            "contentType": "application/json",
            "payload": {"$ref": "./schemas/PublicProfile.v1.json"},
            "bindings": {"kafka": {"key": {"type": "string", "format": "uuid", "description": "The account id."}, "bindingVersion": "0.5.0"}}
        }),
    );
    json!({
        "asyncapi": "3.0.0",
        "info": {
            "title": "Account settings events",
            "version": "1.0.0",
            "description": "The topics that other services read. Topic names may carry a prefix from TOPIC_PREFIX. Every record is on the partition given by the first four bytes of SHA-256 of its key, big-endian, modulo the partition count (12 by default). accounts.commands.v1 and accounts.replies.v1 are internal to the command service and not described here."
        },
        "servers": {
            "local": {"host": "127.0.0.1:9092", "protocol": "kafka", "description": "The broker that deploy/local/up starts."}
        },
        "channels": {
            "events": {
                "address": "accounts.events.v1",
                "title": "Event store",
                "description": "Every event of every account, email claim and workspace, kept forever. Written only in Kafka transactions: read with isolation.level=read_committed. Readers skip types they do not know.",
                "messages": Value::Object(event_refs),
                "bindings": {"kafka": {"partitions": 12, "topicConfiguration": {"cleanup.policy": ["delete"], "retention.ms": -1}, "bindingVersion": "0.5.0"}}
            },
            "publicProfiles": {
                "address": "profiles.public.v1",
                "title": "Public profiles",
                "description": "The latest public profile per account, one record per public change, written exactly once in Kafka transactions: read with isolation.level=read_committed.",
                "messages": {"PublicProfile": {"$ref": "#/components/messages/PublicProfile"}},
                "bindings": {"kafka": {"partitions": 12, "topicConfiguration": {"cleanup.policy": ["compact"]}, "bindingVersion": "0.5.0"}}
            }
        },
        "operations": {
            "readEvents": {"action": "receive", "channel": {"$ref": "#/channels/events"}, "summary": "Auditors and projections read the event store."},
            "readPublicProfiles": {"action": "receive", "channel": {"$ref": "#/channels/publicProfiles"}, "summary": "Workspace services keep their copy of member profiles current."}
        },
        "components": {
            "messages": Value::Object(messages),
            "schemas": {
                "RecordHeaders": {
                    "type": "object",
                    "properties": {
                        "content-type": {"type": "string", "const": "application/cloudevents+json"},
                        "traceparent": {"type": "string", "description": "W3C trace context of the command."}
                    }
                }
            }
        }
    })
}

#[test]
fn asyncapi_document_is_current() {
    let generated = format!("{}\n", serde_json::to_string_pretty(&asyncapi()).unwrap());
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("asyncapi.json");
    if std::env::var_os("UPDATE_SCHEMAS").is_some() {
        std::fs::write(&path, &generated).unwrap();
        return;
    }
    let committed = std::fs::read_to_string(&path).unwrap();
    assert_eq!(
        committed, generated,
        "asyncapi.json is out of date; run with UPDATE_SCHEMAS=1"
    );
    // Every schema file the document names exists.
    for reference in generated.split("\"./schemas/").skip(1) {
        let file = &reference[..reference.find('"').unwrap()];
        assert!(schema_dir().join(file).is_file(), "{file} is missing");
    }
}

#[test]
fn version_one_session_records_are_upcast() {
    let v1 = serde_json::json!({
        "session_id": "01930000-0000-7000-8000-000000000001",
        "token_sha256": "00",
        "expires_at": "2026-12-05T12:00:00Z",
        "user_agent": "curl/7",
        "ip": "10.0.0.1",
        "method": "password"
    });
    let Some(DomainEvent::SessionStarted(started)) =
        DomainEvent::from_data(DomainEvent::SESSION_STARTED, 1, v1.clone()).unwrap()
    else {
        panic!("version 1 did not decode");
    };
    assert_eq!(started.client.user_agent.as_deref(), Some("curl/7"));
    assert_eq!(started.client.ip.as_deref(), Some("10.0.0.1"));
    check_file(
        "SessionStarted.v1.json",
        &schemars::schema_for!(SessionStartedV1),
    );
    assert!(validator(&schemars::schema_for!(SessionStartedV1)).is_valid(&v1));
    // Version 1 is read, never written, and version 3 does not exist yet.
    assert_eq!(
        DomainEvent::current_version(DomainEvent::SESSION_STARTED),
        2
    );
    assert!(DomainEvent::from_data(DomainEvent::SESSION_STARTED, 3, v1).is_err());
}

#[test]
fn redaction_keeps_types_and_hides_secrets() {
    for event in samples() {
        let redacted = event.redacted_data().unwrap();
        let text = redacted.to_string();
        assert!(!text.contains("$argon2id"), "{text}");
        assert!(!text.contains("v1:local:"), "{text}");
        assert!(
            !text.contains("9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08")
                || matches!(event, DomainEvent::ProfilePictureChanged(_)),
            "{text}"
        );
        let decoded =
            DomainEvent::from_data(event.event_type(), event.schema_version(), redacted).unwrap();
        assert!(
            decoded.is_some(),
            "{} no longer decodes",
            event.event_type()
        );
    }
}
