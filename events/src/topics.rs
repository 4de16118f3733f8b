//! Topic names, aggregate ids and the partitioning function.

use sha2::{Digest, Sha256};
use uuid::Uuid;

/// Number of partitions of the command and event topics when none is configured.
/// It is fixed when the topics are created: changing it moves aggregates between
/// partitions, so it is a data migration.
pub const DEFAULT_PARTITIONS: i32 = 12;

/// Names of the topics, each with an optional prefix so that several stacks or tests can
/// share one broker.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Topics {
    pub commands: String,
    pub events: String,
    pub replies: String,
    pub public_profiles: String,
}

impl Topics {
    /// Builds the topic names with `prefix` in front of each.
    pub fn with_prefix(prefix: &str) -> Self {
        Self {
            commands: format!("{prefix}accounts.commands.v1"),
            events: format!("{prefix}accounts.events.v1"),
            replies: format!("{prefix}accounts.replies.v1"),
            public_profiles: format!("{prefix}profiles.public.v1"),
        }
    }
}

/// Returns the partition of the command and event topics that contains `key`.
///
/// Every producer sets the partition explicitly from this function, so placement never
/// depends on a client library's default partitioner (librdkafka's and Java's differ).
/// The value is the first four bytes of SHA-256 of the key, big-endian, modulo `partitions`.
pub fn partition_for(key: &str, partitions: i32) -> i32 {
    let digest = Sha256::digest(key.as_bytes());
    let head = u32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]]);
    let partitions = u32::try_from(partitions.max(1)).unwrap_or(1);
    // The remainder is below `partitions`, which came from an i32.
    i32::try_from(head % partitions).unwrap_or(0)
}

/// Identifier of an aggregate, also the record key on the command and event topics.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum AggregateId {
    /// An account, keyed by its UUID.
    Account(Uuid),
    /// The claim on one email address, keyed by the normalised address.
    EmailClaim(String),
    /// A workspace, keyed by `workspace:` and its UUID.
    Workspace(Uuid),
}

const EMAIL_CLAIM_PREFIX: &str = "email:";
const WORKSPACE_PREFIX: &str = "workspace:";

impl AggregateId {
    /// Returns the record key: the account UUID, `email:` and the normalised address, or
    /// `workspace:` and the workspace UUID.
    pub fn key(&self) -> String {
        match self {
            Self::Account(id) => id.to_string(),
            Self::EmailClaim(address) => format!("{EMAIL_CLAIM_PREFIX}{address}"),
            Self::Workspace(id) => format!("{WORKSPACE_PREFIX}{id}"),
        }
    }

    /// Parses a record key written by [`AggregateId::key`].
    pub fn parse(key: &str) -> Option<Self> {
        if let Some(id) = key.strip_prefix(WORKSPACE_PREFIX) {
            return Uuid::parse_str(id).ok().map(Self::Workspace);
        }
        match key.strip_prefix(EMAIL_CLAIM_PREFIX) {
            Some(address) if !address.is_empty() => Some(Self::EmailClaim(address.to_owned())),
            Some(_) => None,
            None => Uuid::parse_str(key).ok().map(Self::Account),
        }
    }

    /// Returns the partition that contains this aggregate's commands and events.
    pub fn partition(&self, partitions: i32) -> i32 {
        partition_for(&self.key(), partitions)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn topic_names_carry_the_prefix() {
        let topics = Topics::with_prefix("t1.");
        assert_eq!(topics.commands, "t1.accounts.commands.v1");
        assert_eq!(topics.events, "t1.accounts.events.v1");
        assert_eq!(topics.replies, "t1.accounts.replies.v1");
        assert_eq!(topics.public_profiles, "t1.profiles.public.v1");
    }

    #[test]
    fn partition_is_stable_across_releases() {
        // Computed independently with Python's hashlib. A change here moves aggregates
        // to other partitions, which breaks every existing log.
        assert_eq!(partition_for("email:user@example.com", 12), 6);
        assert_eq!(
            partition_for("0190c7a4-0000-7000-8000-000000000000", 12),
            10
        );
    }

    #[test]
    fn aggregate_key_round_trips() {
        let account = AggregateId::Account(Uuid::now_v7());
        let claim = AggregateId::EmailClaim("a@b.example".into());
        assert_eq!(AggregateId::parse(&account.key()), Some(account));
        assert_eq!(AggregateId::parse(&claim.key()), Some(claim));
        assert_eq!(AggregateId::parse("email:"), None);
        assert_eq!(AggregateId::parse("not-a-uuid"), None);
    }

    proptest! {
        #[test]
        fn partition_is_within_range(key in ".*", partitions in 1i32..256) {
            let partition = partition_for(&key, partitions);
            prop_assert!((0..partitions).contains(&partition));
        }
    }
}
