//! Records of `profiles.public.v1`: the latest public profile of each account, for the
//! services that keep their own copy of member profiles, such as workspace services.
//!
//! # Contract
//!
//! - Key: the account id as text (a UUID). The record is on partition
//!   [`crate::partition_for`] of the key, like the account's events.
//! - Value: a [`PublicProfile`] as JSON, never a hash, a secret or an address; an empty
//!   value (a tombstone) means the profile was erased.
//! - The topic is compacted, so reading it from the start gives the latest profile of every
//!   account. One record is produced per event that changes a public field, exactly once:
//!   the producer commits the records and its position in the event log in one Kafka
//!   transaction, so read it with `isolation.level=read_committed`.
//! - `version` is the account's event sequence number that the record reflects. A record
//!   with a lower version than one already applied is stale and can be ignored.
//! - New fields may be added; readers ignore fields they do not know.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::event::DomainEvent;
use crate::RecordedEvent;

/// The public profile of an account.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct PublicProfile {
    pub account_id: Uuid,
    pub name: String,
    pub company_name: Option<String>,
    /// Identifier from the fixed industry list, such as `ai_agents`.
    pub industry: Option<String>,
    /// Path of the 200x200 picture on the query service, such as
    /// `/v1/pictures/<sha256>`; absent without a picture.
    pub picture_url: Option<String>,
    pub version: u64,
    pub updated_at: DateTime<Utc>,
}

/// Returns the path under which the query service serves the picture rendition `sha256`.
pub fn picture_url(sha256: &str) -> String {
    format!("/v1/pictures/{sha256}")
}

impl PublicProfile {
    /// Returns the profile after `recorded`, given the one before it, or `None` when the
    /// event changes no public field.
    pub fn after(previous: Option<&Self>, recorded: &RecordedEvent) -> Option<Self> {
        let account_id = Uuid::parse_str(&recorded.meta.subject).ok()?;
        let mut profile = match (&recorded.event, previous) {
            (DomainEvent::AccountRegistered(registered), _) => Self {
                account_id,
                name: registered.name.clone(),
                company_name: None,
                industry: None,
                picture_url: None,
                version: 0,
                updated_at: recorded.meta.time,
            },
            (_, Some(previous)) => previous.clone(),
            (_, None) => return None,
        };
        match &recorded.event {
            DomainEvent::AccountRegistered(_) => {}
            DomainEvent::ProfileUpdated(updated) => {
                let public = ["name", "company_name", "industry"];
                if !updated
                    .changed
                    .iter()
                    .any(|field| public.contains(&field.as_str()))
                {
                    return None;
                }
                profile.name = updated.name.clone();
                profile.company_name = updated.company_name.clone();
                profile.industry = updated.industry.clone();
            }
            DomainEvent::ProfilePictureChanged(changed) => {
                profile.picture_url = Some(picture_url(&changed.sha256));
            }
            DomainEvent::ProfilePictureRemoved(_) => profile.picture_url = None,
            _ => return None,
        }
        profile.version = recorded.meta.sequence;
        profile.updated_at = recorded.meta.time;
        Some(profile)
    }
}

/// A local copy of the topic: the latest profile per account.
#[derive(Clone, Debug, Default)]
pub struct PublicProfiles {
    profiles: HashMap<Uuid, PublicProfile>,
}

/// Error applying a record of the topic.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("the record key {0:?} is not an account id")]
    InvalidKey(String),
    #[error("the record value is not a public profile: {0}")]
    InvalidValue(#[from] serde_json::Error),
}

impl PublicProfiles {
    /// Applies one record: stores a newer profile, drops the account on a tombstone, and
    /// ignores a stale profile. Returns true when the copy changed.
    pub fn apply(&mut self, key: &[u8], value: Option<&[u8]>) -> Result<bool, RecordError> {
        let key = String::from_utf8_lossy(key);
        let account_id =
            Uuid::parse_str(&key).map_err(|_| RecordError::InvalidKey(key.to_string()))?;
        let Some(value) = value.filter(|value| !value.is_empty()) else {
            return Ok(self.profiles.remove(&account_id).is_some());
        };
        let profile: PublicProfile = serde_json::from_slice(value)?;
        match self.profiles.get(&account_id) {
            Some(known) if known.version >= profile.version => Ok(false),
            _ => {
                self.profiles.insert(account_id, profile);
                Ok(true)
            }
        }
    }

    pub fn get(&self, account_id: &Uuid) -> Option<&PublicProfile> {
        self.profiles.get(account_id)
    }

    pub fn len(&self) -> usize {
        self.profiles.len()
    }

    pub fn is_empty(&self) -> bool {
        self.profiles.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &PublicProfile> {
        self.profiles.values()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn profile(version: u64, name: &str) -> Vec<u8> {
        serde_json::to_vec(&PublicProfile {
            account_id: Uuid::nil(),
            name: name.to_owned(),
            company_name: None,
            industry: None,
            picture_url: None,
            version,
            updated_at: DateTime::<Utc>::UNIX_EPOCH,
        })
        .unwrap()
    }

    #[test]
    fn newer_records_win_and_tombstones_erase() {
        let key = Uuid::nil().to_string();
        let mut profiles = PublicProfiles::default();
        assert!(profiles
            .apply(key.as_bytes(), Some(&profile(3, "New")))
            .unwrap());
        assert!(!profiles
            .apply(key.as_bytes(), Some(&profile(2, "Old")))
            .unwrap());
        assert_eq!(profiles.get(&Uuid::nil()).unwrap().name, "New");
        assert!(profiles.apply(key.as_bytes(), None).unwrap());
        assert!(profiles.is_empty());
        assert!(profiles
            .apply(b"not-an-id", Some(&profile(1, "X")))
            .is_err());
    }
}
