//! Records on `accounts.commands.v1` and `accounts.replies.v1`. Both are internal to the
//! command service; the published contract is the event topic.

use accounts_events::{Actor, AggregateId};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::decider::Rejection;

/// A command on its way to the decider that owns its aggregate's partition. Its `Debug`
/// shows ids only, because commands carry password hashes and token hashes.
#[derive(Clone, Serialize, Deserialize)]
pub struct CommandEnvelope {
    /// Identifies the command across retries; derived from `Idempotency-Key` when given.
    pub command_id: Uuid,
    /// Identifies this one delivery attempt, so that replies reach the waiting request.
    pub request_id: Uuid,
    /// The record key of the aggregate the command is addressed to.
    pub aggregate_key: String,
    /// The version the caller expects the account to be at (HTTP `If-Match`).
    pub expected_version: Option<u64>,
    pub reply_to: ReplyRoute,
    pub correlation_id: Uuid,
    pub actor: Actor,
    pub issued_at: DateTime<Utc>,
    /// See [`Command::request_digest`]; absent in commands from older versions.
    #[serde(default)]
    pub request_digest: Option<String>,
    pub command: Command,
}

/// The destination of a reply: a partition of the reply topic and the record key that the
/// waiting command-service instance filters on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplyRoute {
    pub partition: i32,
    pub route: String,
}

/// A field of a partial update: absent leaves it unchanged, `value: null` clears it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FieldValue {
    pub value: Option<String>,
}

/// The changes of a `PATCH /v1/profile`, already parsed into valid values.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProfileChanges {
    pub name: Option<String>,
    pub company_name: Option<FieldValue>,
    pub industry: Option<FieldValue>,
    pub business_phone: Option<FieldValue>,
}

/// The request a command carries.
#[derive(Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Command {
    /// Creates the email claim and the account in one transaction. It is addressed to the
    /// claim, and the account id is chosen so that it falls in the claim's partition.
    RegisterAccount {
        account_id: Uuid,
        email: String,
        email_normalized: String,
        name: String,
        password_hash: String,
        /// The link that verifies the address, mailed once the account exists.
        #[serde(default)]
        verification: Option<MailToken>,
    },
    UpdateProfile {
        account_id: Uuid,
        changes: ProfileChanges,
    },
    /// Opens a session after the password was verified against `credential_version`.
    StartSession {
        account_id: Uuid,
        session_id: Uuid,
        token_sha256: String,
        expires_at: DateTime<Utc>,
        user_agent: Option<String>,
        ip: Option<String>,
        credential_version: u64,
        /// The verified second factor, required while MFA is on.
        #[serde(default)]
        second_factor: Option<SecondFactor>,
    },
    /// Stores a new, unconfirmed TOTP secret, replacing any earlier unconfirmed one.
    StartTotpEnrollment {
        account_id: Uuid,
        secret_ciphertext: String,
    },
    /// Records that the user of `session_id` passed a password or second-factor check.
    VerifySession {
        account_id: Uuid,
        session_id: Uuid,
        credential_version: u64,
        second_factor: Option<SecondFactor>,
    },
    /// Turns MFA off after a second factor was verified against `credential_version`.
    DisableTotp {
        account_id: Uuid,
        second_factor: SecondFactor,
        credential_version: u64,
    },
    /// Replaces the backup codes after a TOTP code of `step` was verified.
    RegenerateBackupCodes {
        account_id: Uuid,
        step: u64,
        backup_code_hashes: Vec<String>,
        credential_version: u64,
    },
    /// Counts a wrong second-factor code; from `lock_after` failures on, the factor locks for
    /// `base_lock_seconds`, doubled with each further failure.
    RecordSecondFactorFailure {
        account_id: Uuid,
        lock_after: u32,
        base_lock_seconds: u64,
    },
    /// Confirms the pending TOTP secret with a code of `step`, verified outside the decider.
    ConfirmTotp {
        account_id: Uuid,
        secret_ciphertext: String,
        step: u64,
        backup_code_hashes: Vec<String>,
        credential_version: u64,
    },
    /// Ends sessions of the account. `current_session` is the caller's own.
    RevokeSessions {
        account_id: Uuid,
        scope: RevokeScope,
        current_session: Uuid,
    },
    /// Replaces the password after the current one was verified against
    /// `credential_version`, and ends every session but `current_session`.
    ChangePassword {
        account_id: Uuid,
        password_hash: String,
        credential_version: u64,
        current_session: Uuid,
    },
    /// Mails a link to `email`; confirming it replaces the account's address.
    RequestEmailChange {
        account_id: Uuid,
        email: String,
        email_normalized: String,
        token: MailToken,
    },
    /// Confirms the mailed link whose token hashes to `token_sha256`.
    ConfirmEmail {
        account_id: Uuid,
        token_sha256: String,
    },
    /// Voids the link of a pending email change.
    CancelEmailChange {
        account_id: Uuid,
    },
    /// Mails a new link that verifies the account's current address.
    RequestEmailVerification {
        account_id: Uuid,
        token: MailToken,
    },
    /// Saga step sent to the claim of a confirmed new address: claims it for the account.
    ClaimEmail {
        account_id: Uuid,
        email: String,
        email_normalized: String,
    },
    /// Saga step sent back to the account once the claim on its new address is held.
    CompleteEmailChange {
        account_id: Uuid,
        email: String,
        email_normalized: String,
    },
    /// Saga step sent back to the account when the new address belongs to another account.
    AbortEmailChange {
        account_id: Uuid,
        email: String,
    },
    /// Saga step sent to a claim the account no longer needs: releases it.
    ReleaseEmail {
        account_id: Uuid,
        email_normalized: String,
    },
    /// Mails a password-reset link to the account's address.
    RequestPasswordReset {
        account_id: Uuid,
        token: MailToken,
    },
    /// Sets the password through the reset link whose token hashes to `token_sha256`.
    ResetPassword {
        account_id: Uuid,
        token_sha256: String,
        password_hash: String,
    },
    /// Replaces the profile picture with one already stored under `picture.sha256`.
    ChangeProfilePicture {
        account_id: Uuid,
        picture: accounts_events::ProfilePictureChanged,
    },
    RemoveProfilePicture {
        account_id: Uuid,
    },
    /// Gives the account a role; issued by an operator.
    GrantRole {
        account_id: Uuid,
        role: String,
    },
    /// Takes a role away from the account; issued by an operator.
    RevokeRole {
        account_id: Uuid,
        role: String,
    },
    /// Creates a workspace owned by `owner_id`.
    CreateWorkspace {
        workspace_id: Uuid,
        owner_id: Uuid,
        name: String,
    },
    /// Adds a member; only the owner may.
    AddWorkspaceMember {
        workspace_id: Uuid,
        actor_id: Uuid,
        account_id: Uuid,
    },
    /// Removes a member; the owner may remove others, and a member may leave.
    RemoveWorkspaceMember {
        workspace_id: Uuid,
        actor_id: Uuid,
        account_id: Uuid,
    },
    /// Creates an agent owned by `actor_id`, who must be a member.
    CreateAgent {
        workspace_id: Uuid,
        actor_id: Uuid,
        agent_id: Uuid,
        name: String,
    },
    /// Deletes an agent; its owner or the workspace owner may.
    DeleteAgent {
        workspace_id: Uuid,
        actor_id: Uuid,
        agent_id: Uuid,
    },
}

/// A token mailed in a link: its hex SHA-256 to check it, and its sealed form for the
/// notifier that writes the mail.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MailToken {
    pub token_sha256: String,
    pub token_ciphertext: String,
    pub expires_at: DateTime<Utc>,
}

/// A second factor checked outside the decider, which only makes sure it is used once.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum SecondFactor {
    Totp {
        step: u64,
    },
    /// The code at `index`, whose hash must still be the one stored there: after the codes
    /// were replaced, an old code matches no slot.
    BackupCode {
        index: usize,
        hash: String,
    },
}

impl std::fmt::Debug for CommandEnvelope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CommandEnvelope")
            .field("command_id", &self.command_id)
            .field("request_id", &self.request_id)
            .field("aggregate_key", &self.aggregate_key)
            .field("command", &self.command)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for MailToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MailToken")
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.kind())
    }
}

/// The sessions a revocation ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum RevokeScope {
    One { session_id: Uuid },
    All,
}

impl Command {
    /// Returns the hex SHA-256 of what the client asked for, leaving out values the server
    /// generates (ids, salts, tokens). Two requests with one idempotency key and different
    /// digests are a reused key, not a retry.
    pub fn request_digest(&self, expected_version: Option<u64>) -> String {
        let request = match self {
            Self::RegisterAccount {
                email_normalized,
                name,
                ..
            } => {
                serde_json::json!(["register_account", email_normalized, name])
            }
            Self::UpdateProfile { changes, .. } => {
                serde_json::json!(["update_profile", changes, expected_version])
            }
            Self::StartSession { session_id, .. } => {
                serde_json::json!(["start_session", session_id])
            }
            Self::RevokeSessions {
                scope,
                current_session,
                ..
            } => {
                serde_json::json!(["revoke_sessions", scope, current_session])
            }
            Self::ChangePassword {
                current_session, ..
            } => {
                serde_json::json!(["change_password", current_session, expected_version])
            }
            Self::StartTotpEnrollment {
                secret_ciphertext, ..
            } => serde_json::json!(["start_totp_enrollment", secret_ciphertext]),
            Self::ConfirmTotp {
                secret_ciphertext,
                step,
                ..
            } => serde_json::json!(["confirm_totp", secret_ciphertext, step]),
            Self::RecordSecondFactorFailure { .. } => {
                serde_json::json!(["record_second_factor_failure"])
            }
            Self::DisableTotp { second_factor, .. } => {
                serde_json::json!(["disable_totp", second_factor])
            }
            Self::RegenerateBackupCodes { step, .. } => {
                serde_json::json!(["regenerate_backup_codes", step])
            }
            Self::VerifySession {
                session_id,
                second_factor,
                ..
            } => {
                serde_json::json!(["verify_session", session_id, second_factor])
            }
            Self::RequestEmailChange {
                email_normalized, ..
            } => serde_json::json!(["request_email_change", email_normalized]),
            Self::ConfirmEmail { token_sha256, .. } => {
                serde_json::json!(["confirm_email", token_sha256])
            }
            Self::CancelEmailChange { .. } => serde_json::json!(["cancel_email_change"]),
            Self::RequestEmailVerification { .. } => {
                serde_json::json!(["request_email_verification"])
            }
            Self::ClaimEmail {
                email_normalized, ..
            } => serde_json::json!(["claim_email", email_normalized]),
            Self::CompleteEmailChange {
                email_normalized, ..
            } => serde_json::json!(["complete_email_change", email_normalized]),
            Self::AbortEmailChange { email, .. } => {
                serde_json::json!(["abort_email_change", email])
            }
            Self::ReleaseEmail {
                email_normalized, ..
            } => serde_json::json!(["release_email", email_normalized]),
            Self::RequestPasswordReset { .. } => serde_json::json!(["request_password_reset"]),
            Self::ResetPassword { token_sha256, .. } => {
                serde_json::json!(["reset_password", token_sha256])
            }
            Self::ChangeProfilePicture { picture, .. } => {
                serde_json::json!([
                    "change_profile_picture",
                    picture.upload_sha256,
                    expected_version
                ])
            }
            Self::RemoveProfilePicture { .. } => {
                serde_json::json!(["remove_profile_picture", expected_version])
            }
            Self::GrantRole { role, .. } => serde_json::json!(["grant_role", role]),
            Self::RevokeRole { role, .. } => serde_json::json!(["revoke_role", role]),
            Self::CreateWorkspace { name, .. } => serde_json::json!(["create_workspace", name]),
            Self::AddWorkspaceMember {
                workspace_id,
                account_id,
                ..
            } => serde_json::json!(["add_workspace_member", workspace_id, account_id]),
            Self::RemoveWorkspaceMember {
                workspace_id,
                account_id,
                ..
            } => serde_json::json!(["remove_workspace_member", workspace_id, account_id]),
            Self::CreateAgent {
                workspace_id, name, ..
            } => serde_json::json!(["create_agent", workspace_id, name]),
            Self::DeleteAgent { agent_id, .. } => serde_json::json!(["delete_agent", agent_id]),
        };
        hex::encode(Sha256::digest(request.to_string().as_bytes()))
    }

    /// Returns a short name for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::RegisterAccount { .. } => "register_account",
            Self::UpdateProfile { .. } => "update_profile",
            Self::StartSession { .. } => "start_session",
            Self::RevokeSessions { .. } => "revoke_sessions",
            Self::ChangePassword { .. } => "change_password",
            Self::StartTotpEnrollment { .. } => "start_totp_enrollment",
            Self::ConfirmTotp { .. } => "confirm_totp",
            Self::RecordSecondFactorFailure { .. } => "record_second_factor_failure",
            Self::DisableTotp { .. } => "disable_totp",
            Self::VerifySession { .. } => "verify_session",
            Self::RegenerateBackupCodes { .. } => "regenerate_backup_codes",
            Self::RequestEmailChange { .. } => "request_email_change",
            Self::ConfirmEmail { .. } => "confirm_email",
            Self::CancelEmailChange { .. } => "cancel_email_change",
            Self::RequestEmailVerification { .. } => "request_email_verification",
            Self::ClaimEmail { .. } => "claim_email",
            Self::CompleteEmailChange { .. } => "complete_email_change",
            Self::AbortEmailChange { .. } => "abort_email_change",
            Self::ReleaseEmail { .. } => "release_email",
            Self::RequestPasswordReset { .. } => "request_password_reset",
            Self::ResetPassword { .. } => "reset_password",
            Self::ChangeProfilePicture { .. } => "change_profile_picture",
            Self::RemoveProfilePicture { .. } => "remove_profile_picture",
            Self::GrantRole { .. } => "grant_role",
            Self::RevokeRole { .. } => "revoke_role",
            Self::CreateWorkspace { .. } => "create_workspace",
            Self::AddWorkspaceMember { .. } => "add_workspace_member",
            Self::RemoveWorkspaceMember { .. } => "remove_workspace_member",
            Self::CreateAgent { .. } => "create_agent",
            Self::DeleteAgent { .. } => "delete_agent",
        }
    }

    /// Returns the aggregate the command is decided against. Registration is addressed to
    /// the email claim and creates the account in the same partition.
    pub fn aggregate(&self) -> AggregateId {
        match self {
            Self::RegisterAccount {
                email_normalized, ..
            }
            | Self::ClaimEmail {
                email_normalized, ..
            }
            | Self::ReleaseEmail {
                email_normalized, ..
            } => AggregateId::EmailClaim(email_normalized.clone()),
            Self::CreateWorkspace { workspace_id, .. }
            | Self::AddWorkspaceMember { workspace_id, .. }
            | Self::RemoveWorkspaceMember { workspace_id, .. }
            | Self::CreateAgent { workspace_id, .. }
            | Self::DeleteAgent { workspace_id, .. } => AggregateId::Workspace(*workspace_id),
            _ => AggregateId::Account(crate::decider::account_of(self)),
        }
    }
}

/// The outcome of a command, as sent back to the waiting request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Outcome {
    Accepted {
        /// The account, or the workspace for workspace commands.
        account_id: Uuid,
        /// The version of that aggregate after the command.
        version: u64,
        /// The event-log position the read models must include to show the result;
        /// absent when the account has no event yet in this process's view.
        position: Option<String>,
    },
    Rejected {
        rejection: Rejection,
    },
}

/// A record on the reply topic.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Reply {
    pub request_id: Uuid,
    pub command_id: Uuid,
    pub outcome: Outcome,
}
