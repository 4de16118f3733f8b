//! Account, email-claim and workspace state, folded from events.
//!
//! `evolve` only assigns: every rule about whether an event may happen lives in the
//! command service's deciders. The query side uses the same fold to show an account as of
//! a past instant.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::envelope::RecordedEvent;
use crate::event::DomainEvent;

/// An account as its events describe it. `version` is 0 until the account is registered.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AccountState {
    pub account_id: Option<Uuid>,
    pub email: String,
    pub email_normalized: String,
    pub name: String,
    pub company_name: Option<String>,
    pub industry: Option<String>,
    pub business_phone: Option<String>,
    pub password_hash: String,
    /// Increases with every change of the password or second factors. Sign-in checks run
    /// outside the decider against one credential version, and the decider rejects their
    /// result when the version moved meanwhile.
    pub credential_version: u64,
    pub password_changed_at: Option<DateTime<Utc>>,
    pub sessions: BTreeMap<Uuid, SessionState>,
    /// Encrypted secret of a TOTP factor that waits for confirmation.
    pub totp_pending: Option<String>,
    /// Encrypted secret of the confirmed TOTP factor; set while MFA is on.
    pub totp_secret: Option<String>,
    /// The last 30-second step whose code was accepted.
    pub last_totp_step: u64,
    /// Hashes of the backup codes, `None` for a used one.
    pub backup_codes: Vec<Option<String>>,
    /// Wrong second-factor codes in a row since the last accepted one.
    pub factor_failures: u32,
    pub factor_locked_until: Option<DateTime<Utc>>,
    /// True once the current address was proved through a mailed link.
    pub email_verified: bool,
    /// The address whose mailed link waits to be confirmed, if any.
    pub pending_email: Option<PendingEmail>,
    /// A confirmed new address waiting for its email claim.
    pub claiming_email: Option<(String, String)>,
    /// The password-reset link that is still valid, if any.
    pub password_reset: Option<PendingReset>,
    pub picture: Option<Picture>,
    /// Roles given by operators, such as `auditor`.
    pub roles: BTreeSet<String>,
    pub registered_at: Option<DateTime<Utc>>,
    pub updated_at: Option<DateTime<Utc>>,
    /// The sequence number of the last event applied.
    pub version: u64,
}

/// A session of an account.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionState {
    pub started_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
    /// The last password or second-factor check in this session; sign-in is one.
    pub verified_at: DateTime<Utc>,
}

impl SessionState {
    /// Returns true when the session is neither revoked nor expired at `now`.
    pub fn is_active(&self, now: DateTime<Utc>) -> bool {
        self.revoked_at.is_none() && self.expires_at > now
    }
}

/// An address waiting for the user to open the link mailed to it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PendingEmail {
    pub email: String,
    pub email_normalized: String,
    /// `registration` or `email_change`, as in `EmailVerificationRequested`.
    pub purpose: String,
    pub token_sha256: String,
    pub expires_at: DateTime<Utc>,
}

/// The profile picture of an account.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Picture {
    pub content_type: String,
    /// Hex SHA-256 of the served rendition.
    pub sha256: String,
}

/// A workspace with its members and agents.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WorkspaceState {
    pub name: String,
    pub owner_id: Option<Uuid>,
    pub members: BTreeSet<Uuid>,
    pub agents: BTreeMap<Uuid, AgentState>,
    pub version: u64,
}

/// An agent of a workspace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentState {
    pub name: String,
    pub owner_id: Uuid,
}

impl WorkspaceState {
    /// Returns true once the workspace has been created.
    pub fn exists(&self) -> bool {
        self.version > 0
    }

    /// Applies one of this workspace's events.
    pub fn evolve(&mut self, recorded: &RecordedEvent) {
        match &recorded.event {
            DomainEvent::WorkspaceCreated(created) => {
                self.name = created.name.clone();
                self.owner_id = Some(created.owner_id);
                self.members.insert(created.owner_id);
            }
            DomainEvent::WorkspaceMemberAdded(added) => {
                self.members.insert(added.account_id);
            }
            DomainEvent::WorkspaceMemberRemoved(removed) => {
                self.members.remove(&removed.account_id);
            }
            DomainEvent::AgentCreated(created) => {
                self.agents.insert(
                    created.agent_id,
                    AgentState {
                        name: created.name.clone(),
                        owner_id: created.owner_id,
                    },
                );
            }
            DomainEvent::AgentDeleted(deleted) => {
                self.agents.remove(&deleted.agent_id);
            }
            _ => {}
        }
        self.version = recorded.meta.sequence;
    }
}

/// The valid password-reset link of an account.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PendingReset {
    pub token_sha256: String,
    pub expires_at: DateTime<Utc>,
}

/// The claim on one normalised email address.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EmailClaimState {
    pub account_id: Option<Uuid>,
    pub version: u64,
}

impl AccountState {
    /// Returns true while sign-in needs a second factor.
    pub fn mfa_enabled(&self) -> bool {
        self.totp_secret.is_some()
    }

    /// Returns true once the account has been registered.
    pub fn exists(&self) -> bool {
        self.version > 0
    }

    /// Applies one of this account's events.
    pub fn evolve(&mut self, recorded: &RecordedEvent) {
        let time = recorded.meta.time;
        match &recorded.event {
            DomainEvent::AccountRegistered(registered) => {
                self.account_id = Some(registered.account_id);
                self.email = registered.email.clone();
                self.email_normalized = registered.email_normalized.clone();
                self.name = registered.name.clone();
                self.password_hash = registered.password_hash.clone();
                self.credential_version = 1;
                self.registered_at = Some(time);
            }
            DomainEvent::ProfileUpdated(profile) => {
                self.name = profile.name.clone();
                self.company_name = profile.company_name.clone();
                self.industry = profile.industry.clone();
                self.business_phone = profile.business_phone.clone();
            }
            DomainEvent::SessionStarted(session) => {
                self.sessions.insert(
                    session.session_id,
                    SessionState {
                        started_at: time,
                        expires_at: session.expires_at,
                        revoked_at: None,
                        verified_at: time,
                    },
                );
            }
            DomainEvent::SessionsRevoked(revoked) => {
                for session_id in &revoked.session_ids {
                    if let Some(session) = self.sessions.get_mut(session_id) {
                        session.revoked_at = Some(time);
                    }
                }
            }
            DomainEvent::PasswordChanged(changed) => {
                self.password_hash = changed.password_hash.clone();
                self.credential_version = changed.credential_version;
                self.password_changed_at = Some(time);
                self.password_reset = None;
            }
            DomainEvent::PasswordReset(reset) => {
                self.password_hash = reset.password_hash.clone();
                self.credential_version = reset.credential_version;
                self.password_changed_at = Some(time);
                self.password_reset = None;
            }
            DomainEvent::PasswordResetRequested(requested) => {
                self.password_reset = Some(PendingReset {
                    token_sha256: requested.token_sha256.clone(),
                    expires_at: requested.expires_at,
                });
            }
            DomainEvent::EmailVerificationRequested(requested) => {
                self.pending_email = Some(PendingEmail {
                    email: requested.email.clone(),
                    email_normalized: requested.email_normalized.clone(),
                    purpose: requested.purpose.clone(),
                    token_sha256: requested.token_sha256.clone(),
                    expires_at: requested.expires_at,
                });
            }
            DomainEvent::EmailVerified(_) => {
                self.email_verified = true;
                self.pending_email = None;
            }
            DomainEvent::EmailChangeConfirmed(confirmed) => {
                self.pending_email = None;
                self.claiming_email =
                    Some((confirmed.email.clone(), confirmed.email_normalized.clone()));
            }
            DomainEvent::EmailChanged(changed) => {
                self.email = changed.email.clone();
                self.email_normalized = changed.email_normalized.clone();
                self.email_verified = true;
                self.claiming_email = None;
            }
            DomainEvent::EmailChangeFailed(_) => {
                self.claiming_email = None;
            }
            DomainEvent::EmailChangeCancelled(_) => {
                self.pending_email = None;
                self.claiming_email = None;
            }
            DomainEvent::TotpEnrollmentStarted(started) => {
                self.totp_pending = Some(started.secret_ciphertext.clone());
            }
            DomainEvent::TotpEnabled(enabled) => {
                self.totp_pending = None;
                self.totp_secret = Some(enabled.secret_ciphertext.clone());
                self.last_totp_step = self.last_totp_step.max(enabled.confirmed_step);
                self.backup_codes = enabled
                    .backup_code_hashes
                    .iter()
                    .cloned()
                    .map(Some)
                    .collect();
                self.credential_version = enabled.credential_version;
                self.factor_failures = 0;
                self.factor_locked_until = None;
            }
            DomainEvent::TotpStepUsed(used) => {
                self.last_totp_step = self.last_totp_step.max(used.step);
                self.factor_failures = 0;
                self.factor_locked_until = None;
            }
            DomainEvent::BackupCodeUsed(used) => {
                if let Some(code) = self.backup_codes.get_mut(used.index) {
                    *code = None;
                }
                self.factor_failures = 0;
                self.factor_locked_until = None;
            }
            DomainEvent::TotpDisabled(disabled) => {
                self.totp_pending = None;
                self.totp_secret = None;
                self.backup_codes.clear();
                self.credential_version = disabled.credential_version;
                self.factor_failures = 0;
                self.factor_locked_until = None;
            }
            DomainEvent::BackupCodesRegenerated(regenerated) => {
                self.backup_codes = regenerated
                    .backup_code_hashes
                    .iter()
                    .cloned()
                    .map(Some)
                    .collect();
            }
            DomainEvent::SessionVerified(verified) => {
                if let Some(session) = self.sessions.get_mut(&verified.session_id) {
                    session.verified_at = time;
                }
            }
            DomainEvent::SecondFactorFailed(failed) => {
                self.factor_failures = failed.failures;
                self.factor_locked_until = failed.locked_until;
            }
            DomainEvent::ProfilePictureChanged(changed) => {
                self.picture = Some(Picture {
                    content_type: changed.content_type.clone(),
                    sha256: changed.sha256.clone(),
                });
            }
            DomainEvent::ProfilePictureRemoved(_) => {
                self.picture = None;
            }
            DomainEvent::RoleGranted(granted) => {
                self.roles.insert(granted.role.clone());
            }
            DomainEvent::RoleRevoked(revoked) => {
                self.roles.remove(&revoked.role);
            }
            DomainEvent::EmailClaimed(_)
            | DomainEvent::EmailReleased(_)
            | DomainEvent::WorkspaceCreated(_)
            | DomainEvent::WorkspaceMemberAdded(_)
            | DomainEvent::WorkspaceMemberRemoved(_)
            | DomainEvent::AgentCreated(_)
            | DomainEvent::AgentDeleted(_) => {}
        }
        self.updated_at = Some(time);
        self.version = recorded.meta.sequence;
    }
}

impl EmailClaimState {
    /// Applies one of this claim's events.
    pub fn evolve(&mut self, recorded: &RecordedEvent) {
        match &recorded.event {
            DomainEvent::EmailClaimed(claimed) => self.account_id = Some(claimed.account_id),
            DomainEvent::EmailReleased(_) => self.account_id = None,
            _ => {}
        }
        self.version = recorded.meta.sequence;
    }
}
