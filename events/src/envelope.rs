//! The record envelope: a CloudEvents 1.0 JSON object in structured mode.
//!
//! Besides the standard attributes, each record carries extension attributes.
//! `aggregatetype` and `aggregatesequence` name the aggregate and its version after this
//! event, starting at 1. `schemaversion`, `commandid`, `correlationid` and `causationid`
//! follow. The actor is in `actortype`, `actorid`, `actorip` and `actoruseragent`.
//! `requestdigest`, the SHA-256 of the request behind the command, is present when known.
//! `previoushash` is the hex SHA-256 of the record value of the aggregate's previous event,
//! and is absent on its first event. The events of an aggregate thus form a hash chain over
//! the exact bytes stored in Kafka, and an altered, removed or inserted event breaks it.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::event::{DomainEvent, PayloadError};

/// Content type of a record value.
pub const CONTENT_TYPE: &str = "application/cloudevents+json";

const SPEC_VERSION: &str = "1.0";

/// The kind of actor that caused an event.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ActorKind {
    /// A signed-in account.
    Account,
    /// A request without a session, such as a registration or a sign-in.
    Anonymous,
    /// An operator tool or another service.
    Service,
}

/// The actor recorded on every event.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Actor {
    pub kind: ActorKind,
    /// The account id or service name; absent for anonymous requests.
    pub id: Option<String>,
    pub ip: Option<String>,
    pub user_agent: Option<String>,
}

/// Everything about an event except its payload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventMeta {
    pub event_id: Uuid,
    pub source: String,
    pub time: DateTime<Utc>,
    /// The aggregate's record key, see [`crate::AggregateId::key`].
    pub subject: String,
    pub aggregate_type: String,
    pub sequence: u64,
    pub command_id: Uuid,
    pub correlation_id: Uuid,
    pub causation_id: Uuid,
    pub actor: Actor,
    /// SHA-256 of the request that issued the command, which distinguishes a retry from a
    /// reused idempotency key with another request. Absent in older records.
    pub request_digest: Option<String>,
    /// Hex SHA-256 of the record value of the aggregate's previous event; absent on the
    /// first event.
    pub previous_hash: Option<String>,
}

/// Returns the hex SHA-256 of a record value, the link that the next event of the same
/// aggregate carries as `previoushash`.
pub fn record_hash(record_value: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(record_value);
    digest.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// An event together with its metadata.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordedEvent {
    pub meta: EventMeta,
    pub event: DomainEvent,
}

/// The JSON shape of a record value: a CloudEvents 1.0 event in structured mode, with
/// extension attributes for the aggregate, the command and the actor.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
#[schemars(title = "CloudEvent")]
struct CloudEvent {
    /// Always `1.0`.
    specversion: String,
    /// The event id, a UUIDv7.
    id: Uuid,
    /// The service that wrote the event, such as `/accounts-command`.
    source: String,
    /// The event type, such as `accounts.ProfileUpdated`.
    #[serde(rename = "type")]
    event_type: String,
    time: DateTime<Utc>,
    /// The aggregate key: an account id, `email:<address>` or `workspace:<id>`.
    subject: String,
    /// Always `application/json`.
    datacontenttype: String,
    /// `account`, `email_claim` or `workspace`.
    aggregatetype: String,
    /// The event's sequence number within its aggregate, from 1 without gaps.
    aggregatesequence: u64,
    /// The schema version of `data`.
    schemaversion: u32,
    /// The command that caused the event.
    commandid: Uuid,
    correlationid: Uuid,
    causationid: Uuid,
    actortype: ActorKind,
    /// The account id of the actor, when an account acted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    actorid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    actorip: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    actoruseragent: Option<String>,
    /// SHA-256 of the request that issued the command.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    requestdigest: Option<String>,
    /// Hex SHA-256 of the record value of the aggregate's previous event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    previoushash: Option<String>,
    /// The event payload, as described by the schema of `type`.
    data: serde_json::Value,
}

/// Returns the JSON Schema of a record value of `accounts.events.v1`.
pub fn envelope_schema() -> schemars::Schema {
    schemars::schema_for!(CloudEvent)
}

/// Error reading a record value.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("record value is not a CloudEvents JSON object of this schema: {0}")]
    Envelope(#[from] serde_json::Error),
    #[error("unsupported CloudEvents specversion {0:?}")]
    SpecVersion(String),
    #[error(transparent)]
    Payload(#[from] PayloadError),
}

/// The content a reader found in a record.
#[derive(Debug)]
pub enum Decoded {
    Event(Box<RecordedEvent>),
    /// A type this code does not know; readers skip and count it.
    Unknown {
        event_type: String,
        subject: String,
    },
}

impl RecordedEvent {
    /// Serialises the event as a CloudEvents JSON record value.
    pub fn encode(&self) -> serde_json::Result<Vec<u8>> {
        let meta = &self.meta;
        let envelope = CloudEvent {
            specversion: SPEC_VERSION.to_owned(),
            id: meta.event_id,
            source: meta.source.clone(),
            event_type: self.event.event_type().to_owned(),
            time: meta.time,
            subject: meta.subject.clone(),
            datacontenttype: "application/json".to_owned(),
            aggregatetype: meta.aggregate_type.clone(),
            aggregatesequence: meta.sequence,
            schemaversion: self.event.schema_version(),
            commandid: meta.command_id,
            correlationid: meta.correlation_id,
            causationid: meta.causation_id,
            actortype: meta.actor.kind,
            actorid: meta.actor.id.clone(),
            actorip: meta.actor.ip.clone(),
            actoruseragent: meta.actor.user_agent.clone(),
            requestdigest: meta.request_digest.clone(),
            previoushash: meta.previous_hash.clone(),
            data: self.event.to_data()?,
        };
        serde_json::to_vec(&envelope)
    }

    /// Parses a record value. Unknown event types are returned as [`Decoded::Unknown`].
    pub fn decode(bytes: &[u8]) -> Result<Decoded, DecodeError> {
        let envelope: CloudEvent = serde_json::from_slice(bytes)?;
        if envelope.specversion != SPEC_VERSION {
            return Err(DecodeError::SpecVersion(envelope.specversion));
        }
        let Some(event) =
            DomainEvent::from_data(&envelope.event_type, envelope.schemaversion, envelope.data)?
        else {
            return Ok(Decoded::Unknown {
                event_type: envelope.event_type,
                subject: envelope.subject,
            });
        };
        let meta = EventMeta {
            event_id: envelope.id,
            source: envelope.source,
            time: envelope.time,
            subject: envelope.subject,
            aggregate_type: envelope.aggregatetype,
            sequence: envelope.aggregatesequence,
            command_id: envelope.commandid,
            correlation_id: envelope.correlationid,
            causation_id: envelope.causationid,
            actor: Actor {
                kind: envelope.actortype,
                id: envelope.actorid,
                ip: envelope.actorip,
                user_agent: envelope.actoruseragent,
            },
            request_digest: envelope.requestdigest,
            previous_hash: envelope.previoushash,
        };
        Ok(Decoded::Event(Box::new(RecordedEvent { meta, event })))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::ProfileUpdated;

    fn sample() -> RecordedEvent {
        RecordedEvent {
            meta: EventMeta {
                event_id: Uuid::now_v7(),
                source: "/accounts-command".into(),
                time: Utc::now(),
                subject: Uuid::now_v7().to_string(),
                aggregate_type: "account".into(),
                sequence: 3,
                command_id: Uuid::now_v7(),
                correlation_id: Uuid::now_v7(),
                causation_id: Uuid::now_v7(),
                actor: Actor {
                    kind: ActorKind::Account,
                    id: Some("a".into()),
                    ip: Some("127.0.0.1".into()),
                    user_agent: None,
                },
                request_digest: Some("ab".repeat(32)),
                previous_hash: None,
            },
            event: DomainEvent::ProfileUpdated(ProfileUpdated {
                name: "Zoë Müller".into(),
                company_name: Some("My company".into()),
                industry: Some("ai_agents".into()),
                business_phone: None,
                changed: vec!["company_name".into()],
            }),
        }
    }

    #[test]
    fn record_round_trips() -> anyhow::Result<()> {
        let event = sample();
        let bytes = event.encode()?;
        match RecordedEvent::decode(&bytes)? {
            Decoded::Event(decoded) => assert_eq!(*decoded, event),
            Decoded::Unknown { event_type, .. } => panic!("decoded as unknown {event_type}"),
        }
        Ok(())
    }

    #[test]
    fn record_is_cloudevents_json() -> anyhow::Result<()> {
        let value: serde_json::Value = serde_json::from_slice(&sample().encode()?)?;
        assert_eq!(value["specversion"], "1.0");
        assert_eq!(value["type"], "accounts.ProfileUpdated");
        assert_eq!(value["datacontenttype"], "application/json");
        assert_eq!(value["aggregatesequence"], 3);
        assert_eq!(value["schemaversion"], 1);
        assert_eq!(value["data"]["industry"], "ai_agents");
        assert!(value.get("actoruseragent").is_none());
        Ok(())
    }

    #[test]
    fn unknown_type_is_reported_not_failed() -> anyhow::Result<()> {
        let mut value: serde_json::Value = serde_json::from_slice(&sample().encode()?)?;
        value["type"] = "accounts.SomethingNew".into();
        value["data"] = serde_json::json!({"anything": true});
        let decoded = RecordedEvent::decode(&serde_json::to_vec(&value)?)?;
        assert!(
            matches!(decoded, Decoded::Unknown { event_type, .. } if event_type == "accounts.SomethingNew")
        );
        Ok(())
    }
}
