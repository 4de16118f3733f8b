//! Roles that operators give accounts, such as `auditor`, from the command line.

use std::time::Duration;

use accounts_events::{Actor, ActorKind, AggregateId};
use accounts_platform::KafkaConfig;
use anyhow::{bail, Context};
use chrono::Utc;
use uuid::Uuid;

use crate::bus::CommandBus;
use crate::wire::{Command, CommandEnvelope, Outcome};

/// The roles an account can have.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Role {
    /// Reads the history and past states of any account through the audit endpoints.
    Auditor,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Auditor => "auditor",
        }
    }
}

/// A recorded grant or revocation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoleChange {
    /// The account's version after the change.
    pub version: u64,
    /// The event-log position the read models must include to apply the change. Send it as
    /// `X-Min-Position` to read after the change.
    pub position: Option<String>,
}

/// Grants or revokes `role` through the decider that owns the account. Needs a running
/// `accounts-command serve`.
pub async fn change_role(
    kafka: &KafkaConfig,
    account_id: Uuid,
    role: Role,
    grant: bool,
) -> anyhow::Result<RoleChange> {
    let bus = CommandBus::start(kafka, Duration::from_secs(30)).await?;
    let role = role.as_str().to_owned();
    let (command, operation) = if grant {
        (Command::GrantRole { account_id, role }, "grant-role")
    } else {
        (Command::RevokeRole { account_id, role }, "revoke-role")
    };
    let aggregate = AggregateId::Account(account_id);
    let envelope = CommandEnvelope {
        command_id: Uuid::now_v7(),
        request_id: Uuid::new_v4(),
        aggregate_key: aggregate.key(),
        expected_version: None,
        reply_to: bus.route(),
        correlation_id: Uuid::now_v7(),
        actor: Actor {
            kind: ActorKind::Service,
            id: Some(format!("accounts-command {operation}")),
            ip: None,
            user_agent: None,
        },
        issued_at: Utc::now(),
        request_digest: Some(command.request_digest(None)),
        command,
    };
    let outcome = bus
        .send(aggregate.partition(kafka.partitions), &envelope)
        .await
        .with_context(|| {
            format!("{operation} got no answer; is accounts-command serve running?")
        })?;
    match outcome {
        Outcome::Accepted {
            version, position, ..
        } => Ok(RoleChange { version, position }),
        Outcome::Rejected { rejection } => bail!("{operation} was rejected: {rejection}"),
    }
}
