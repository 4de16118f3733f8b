//! Event types and their payloads.
//!
//! Each type has a name (the CloudEvents `type` attribute) and a schema version. A change to
//! a payload that old readers cannot ignore gets a new version, and readers upcast the old
//! versions they still find in the log.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// An event of either aggregate kind, as stored in the `data` of a record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DomainEvent {
    AccountRegistered(AccountRegistered),
    ProfileUpdated(ProfileUpdated),
    SessionStarted(SessionStarted),
    SessionsRevoked(SessionsRevoked),
    PasswordChanged(PasswordChanged),
    TotpEnrollmentStarted(TotpEnrollmentStarted),
    TotpEnabled(TotpEnabled),
    TotpStepUsed(TotpStepUsed),
    BackupCodeUsed(BackupCodeUsed),
    SecondFactorFailed(SecondFactorFailed),
    TotpDisabled(TotpDisabled),
    BackupCodesRegenerated(BackupCodesRegenerated),
    SessionVerified(SessionVerified),
    EmailClaimed(EmailClaimed),
    EmailVerificationRequested(EmailVerificationRequested),
    EmailVerified(EmailVerified),
    EmailChangeConfirmed(EmailChangeConfirmed),
    EmailChanged(EmailChanged),
    EmailChangeFailed(EmailChangeFailed),
    EmailChangeCancelled(EmailChangeCancelled),
    PasswordResetRequested(PasswordResetRequested),
    PasswordReset(PasswordReset),
    EmailReleased(EmailReleased),
    WorkspaceCreated(WorkspaceCreated),
    WorkspaceMemberAdded(WorkspaceMemberAdded),
    WorkspaceMemberRemoved(WorkspaceMemberRemoved),
    AgentCreated(AgentCreated),
    AgentDeleted(AgentDeleted),
    ProfilePictureChanged(ProfilePictureChanged),
    ProfilePictureRemoved(ProfilePictureRemoved),
    RoleGranted(RoleGranted),
    RoleRevoked(RoleRevoked),
}

/// An account was created. The password is present only as an argon2id PHC string.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AccountRegistered {
    pub account_id: Uuid,
    /// The address as the user typed it, `+tag` and case kept.
    pub email: String,
    /// The lower-cased address with an ASCII (punycode) domain, the uniqueness key.
    pub email_normalized: String,
    pub name: String,
    pub password_hash: String,
}

impl std::fmt::Debug for AccountRegistered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccountRegistered")
            .field("account_id", &self.account_id)
            .field("email", &self.email)
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// The profile after a change: every profile field with its new value, and the names of
/// the fields that changed. Carrying the whole profile keeps replays idempotent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ProfileUpdated {
    pub name: String,
    pub company_name: Option<String>,
    /// Identifier from the fixed industry list, such as `ai_agents`.
    pub industry: Option<String>,
    /// Business phone number in E.164 form, such as `+919988776655`.
    pub business_phone: Option<String>,
    pub changed: Vec<String>,
}

/// A session was opened after a successful sign-in. The token is present only as the
/// hex SHA-256 of its bytes.
///
/// Version 2 groups the client's user agent and IP address under `client`. Version 1
/// records carry them at the top level and are upcast on read.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SessionStarted {
    pub session_id: Uuid,
    pub token_sha256: String,
    pub expires_at: DateTime<Utc>,
    pub client: SessionClient,
    /// The proof of identity used, such as `password`.
    pub method: String,
}

/// The client that opened a session, as its request showed it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SessionClient {
    pub user_agent: Option<String>,
    pub ip: Option<String>,
}

/// Version 1 of [`SessionStarted`], as records written before version 2 carry it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "SessionStarted")]
pub struct SessionStartedV1 {
    pub session_id: Uuid,
    pub token_sha256: String,
    pub expires_at: DateTime<Utc>,
    pub user_agent: Option<String>,
    pub ip: Option<String>,
    pub method: String,
}

impl From<SessionStartedV1> for SessionStarted {
    fn from(v1: SessionStartedV1) -> Self {
        Self {
            session_id: v1.session_id,
            token_sha256: v1.token_sha256,
            expires_at: v1.expires_at,
            client: SessionClient {
                user_agent: v1.user_agent,
                ip: v1.ip,
            },
            method: v1.method,
        }
    }
}

impl std::fmt::Debug for SessionStarted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionStarted")
            .field("session_id", &self.session_id)
            .field("expires_at", &self.expires_at)
            .field("method", &self.method)
            .finish_non_exhaustive()
    }
}

/// Sessions were ended: signed out, revoked one by one or all at once, or revoked because
/// the password changed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SessionsRevoked {
    pub session_ids: Vec<Uuid>,
    /// `sign_out`, `revoked`, `revoke_all` or `password_changed`.
    pub reason: String,
}

/// The password was replaced. It is present only as an argon2id PHC string.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PasswordChanged {
    pub password_hash: String,
    /// The credential version after the change.
    pub credential_version: u64,
}

impl std::fmt::Debug for PasswordChanged {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PasswordChanged")
            .field("credential_version", &self.credential_version)
            .finish_non_exhaustive()
    }
}

/// A TOTP factor was generated and waits for confirmation with a valid code. The secret
/// is present only encrypted (`v1:<key id>:<nonce>:<ciphertext>`, AES-256-GCM).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TotpEnrollmentStarted {
    pub secret_ciphertext: String,
}

/// The pending TOTP factor was confirmed: sign-in now needs a code or a backup code.
/// Backup codes are present only as hex SHA-256 hashes.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TotpEnabled {
    pub secret_ciphertext: String,
    pub backup_code_hashes: Vec<String>,
    /// The 30-second step of the confirming code; it and earlier steps are used up.
    pub confirmed_step: u64,
    pub credential_version: u64,
}

/// A TOTP code was accepted; its step and earlier steps can never be used again.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TotpStepUsed {
    pub step: u64,
}

/// A backup code was accepted and is used up.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BackupCodeUsed {
    /// Position of the code in the list of the last `TotpEnabled`.
    pub index: usize,
}

/// A wrong TOTP or backup code was entered at sign-in. From a threshold on, the factor is
/// locked until `locked_until`, for a delay that doubles with each further failure.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SecondFactorFailed {
    /// Consecutive failures, this one included.
    pub failures: u32,
    pub locked_until: Option<DateTime<Utc>>,
}

/// Two-factor authentication was turned off; the secret and backup codes are void.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TotpDisabled {
    pub credential_version: u64,
}

/// New backup codes replaced the old ones, which are void. Present only as SHA-256 hashes.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BackupCodesRegenerated {
    pub backup_code_hashes: Vec<String>,
}

/// The user of a session proved again who they are, for actions that need a recent check.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SessionVerified {
    pub session_id: Uuid,
    /// `password` or `totp`.
    pub method: String,
}

macro_rules! redacted_debug {
    ($($type:ident),*) => {$(
        impl std::fmt::Debug for $type {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.debug_struct(stringify!($type)).finish_non_exhaustive()
            }
        }
    )*};
}
redacted_debug!(
    TotpEnrollmentStarted,
    TotpEnabled,
    BackupCodesRegenerated,
    PasswordResetRequested
);

/// An email address was claimed by an account, making it unavailable to others.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EmailClaimed {
    pub email_normalized: String,
    pub account_id: Uuid,
}

/// The claim on an address was given up after the account moved to another address.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EmailReleased {
    pub email_normalized: String,
    pub account_id: Uuid,
}

/// A link to prove control of an address was mailed to it. The token in the link is
/// present only as its hex SHA-256, and sealed (AES-256-GCM) for the notifier that mails it.
/// A newer request voids the token of an older one.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EmailVerificationRequested {
    /// The address to verify, as the user typed it.
    pub email: String,
    pub email_normalized: String,
    /// `registration` for the address the account signed up with, `email_change` for a new
    /// address that replaces it once verified.
    pub purpose: String,
    pub token_sha256: String,
    pub token_ciphertext: String,
    pub expires_at: DateTime<Utc>,
}

/// The account's own address was verified through the mailed link.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EmailVerified {
    pub email: String,
}

/// The link to a new address was confirmed. The account waits for the claim on the new
/// address, which ends in `EmailChanged` or `EmailChangeFailed`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EmailChangeConfirmed {
    pub email: String,
    pub email_normalized: String,
}

/// The account's address was replaced by a verified new one.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EmailChanged {
    pub previous_email: String,
    pub email: String,
    pub email_normalized: String,
}

/// A confirmed change did not apply; the address stays as it was.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EmailChangeFailed {
    pub email: String,
    /// `email_taken` when the address belongs to another account.
    pub reason: String,
}

/// The user cancelled a pending change; its link is void.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EmailChangeCancelled {
    pub email: String,
}

/// A password-reset link was mailed to the account's address. The token is present only
/// as its hex SHA-256, and sealed for the notifier. A newer request voids the older token.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PasswordResetRequested {
    /// The address the link is mailed to: the account's address at the time.
    pub email: String,
    pub token_sha256: String,
    pub token_ciphertext: String,
    pub expires_at: DateTime<Utc>,
}

/// The password was set through a reset link. It is present only as an argon2id PHC string.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PasswordReset {
    pub password_hash: String,
    /// The credential version after the reset.
    pub credential_version: u64,
}

impl std::fmt::Debug for EmailVerificationRequested {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmailVerificationRequested")
            .field("email", &self.email)
            .field("purpose", &self.purpose)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for PasswordReset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PasswordReset")
            .field("credential_version", &self.credential_version)
            .finish_non_exhaustive()
    }
}

/// A workspace was created; its owner is its first member.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WorkspaceCreated {
    pub workspace_id: Uuid,
    pub name: String,
    pub owner_id: Uuid,
}

/// An account became a member of the workspace.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WorkspaceMemberAdded {
    pub account_id: Uuid,
}

/// An account stopped being a member of the workspace.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WorkspaceMemberRemoved {
    pub account_id: Uuid,
}

/// A member created an agent in the workspace and owns it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AgentCreated {
    pub agent_id: Uuid,
    pub name: String,
    pub owner_id: Uuid,
}

/// An agent was deleted from the workspace.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AgentDeleted {
    pub agent_id: Uuid,
}

/// The account's profile picture was replaced. The image bytes are stored outside Kafka,
/// addressed by `sha256`; the event carries what describes them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ProfilePictureChanged {
    /// `image/jpeg`, `image/png` or `image/gif`, detected from the content.
    pub content_type: String,
    /// Size in bytes of the uploaded file.
    pub size: u64,
    pub width: u32,
    pub height: u32,
    /// Hex SHA-256 of the uploaded file.
    pub upload_sha256: String,
    /// Hex SHA-256 of the 200x200 rendition that is served, its storage key.
    pub sha256: String,
}

/// The account's profile picture was removed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ProfilePictureRemoved {}

/// An operator gave the account a role, such as `auditor`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RoleGranted {
    pub role: String,
}

/// An operator took a role away from the account.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RoleRevoked {
    pub role: String,
}

/// Payload fields that hold a hash, an encrypted secret or a token.
pub const REDACTED_FIELDS: &[&str] = &[
    "password_hash",
    "token_sha256",
    "token_ciphertext",
    "secret_ciphertext",
    "backup_code_hashes",
];

/// The text that replaces a redacted value.
pub const REDACTED: &str = "[redacted]";

fn redact(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::String(text) => *text = REDACTED.to_owned(),
        serde_json::Value::Array(items) => items.iter_mut().for_each(redact),
        _ => {}
    }
}

/// Error decoding an event payload of a known type.
#[derive(Debug, thiserror::Error)]
pub enum PayloadError {
    #[error("event type {event_type} has no schema version {version}")]
    UnknownVersion { event_type: String, version: u32 },
    #[error("invalid {event_type} payload: {source}")]
    Invalid {
        event_type: String,
        #[source]
        source: serde_json::Error,
    },
}

impl DomainEvent {
    pub const ACCOUNT_REGISTERED: &'static str = "accounts.AccountRegistered";
    pub const PROFILE_UPDATED: &'static str = "accounts.ProfileUpdated";
    pub const SESSION_STARTED: &'static str = "accounts.SessionStarted";
    pub const SESSIONS_REVOKED: &'static str = "accounts.SessionsRevoked";
    pub const PASSWORD_CHANGED: &'static str = "accounts.PasswordChanged";
    pub const TOTP_ENROLLMENT_STARTED: &'static str = "accounts.TotpEnrollmentStarted";
    pub const TOTP_ENABLED: &'static str = "accounts.TotpEnabled";
    pub const TOTP_STEP_USED: &'static str = "accounts.TotpStepUsed";
    pub const BACKUP_CODE_USED: &'static str = "accounts.BackupCodeUsed";
    pub const SECOND_FACTOR_FAILED: &'static str = "accounts.SecondFactorFailed";
    pub const TOTP_DISABLED: &'static str = "accounts.TotpDisabled";
    pub const BACKUP_CODES_REGENERATED: &'static str = "accounts.BackupCodesRegenerated";
    pub const SESSION_VERIFIED: &'static str = "accounts.SessionVerified";
    pub const EMAIL_CLAIMED: &'static str = "accounts.EmailClaimed";
    pub const EMAIL_VERIFICATION_REQUESTED: &'static str = "accounts.EmailVerificationRequested";
    pub const EMAIL_VERIFIED: &'static str = "accounts.EmailVerified";
    pub const EMAIL_CHANGE_CONFIRMED: &'static str = "accounts.EmailChangeConfirmed";
    pub const EMAIL_CHANGED: &'static str = "accounts.EmailChanged";
    pub const EMAIL_CHANGE_FAILED: &'static str = "accounts.EmailChangeFailed";
    pub const EMAIL_CHANGE_CANCELLED: &'static str = "accounts.EmailChangeCancelled";
    pub const PASSWORD_RESET_REQUESTED: &'static str = "accounts.PasswordResetRequested";
    pub const PASSWORD_RESET: &'static str = "accounts.PasswordReset";
    pub const EMAIL_RELEASED: &'static str = "accounts.EmailReleased";
    pub const WORKSPACE_CREATED: &'static str = "accounts.WorkspaceCreated";
    pub const WORKSPACE_MEMBER_ADDED: &'static str = "accounts.WorkspaceMemberAdded";
    pub const WORKSPACE_MEMBER_REMOVED: &'static str = "accounts.WorkspaceMemberRemoved";
    pub const AGENT_CREATED: &'static str = "accounts.AgentCreated";
    pub const AGENT_DELETED: &'static str = "accounts.AgentDeleted";
    pub const PROFILE_PICTURE_CHANGED: &'static str = "accounts.ProfilePictureChanged";
    pub const PROFILE_PICTURE_REMOVED: &'static str = "accounts.ProfilePictureRemoved";
    pub const ROLE_GRANTED: &'static str = "accounts.RoleGranted";
    pub const ROLE_REVOKED: &'static str = "accounts.RoleRevoked";

    /// Every event type this code reads and writes.
    pub const TYPES: &'static [&'static str] = &[
        Self::ACCOUNT_REGISTERED,
        Self::PROFILE_UPDATED,
        Self::SESSION_STARTED,
        Self::SESSIONS_REVOKED,
        Self::PASSWORD_CHANGED,
        Self::TOTP_ENROLLMENT_STARTED,
        Self::TOTP_ENABLED,
        Self::TOTP_STEP_USED,
        Self::BACKUP_CODE_USED,
        Self::SECOND_FACTOR_FAILED,
        Self::TOTP_DISABLED,
        Self::BACKUP_CODES_REGENERATED,
        Self::SESSION_VERIFIED,
        Self::EMAIL_CLAIMED,
        Self::EMAIL_VERIFICATION_REQUESTED,
        Self::EMAIL_VERIFIED,
        Self::EMAIL_CHANGE_CONFIRMED,
        Self::EMAIL_CHANGED,
        Self::EMAIL_CHANGE_FAILED,
        Self::EMAIL_CHANGE_CANCELLED,
        Self::PASSWORD_RESET_REQUESTED,
        Self::PASSWORD_RESET,
        Self::EMAIL_RELEASED,
        Self::WORKSPACE_CREATED,
        Self::WORKSPACE_MEMBER_ADDED,
        Self::WORKSPACE_MEMBER_REMOVED,
        Self::AGENT_CREATED,
        Self::AGENT_DELETED,
        Self::PROFILE_PICTURE_CHANGED,
        Self::PROFILE_PICTURE_REMOVED,
        Self::ROLE_GRANTED,
        Self::ROLE_REVOKED,
    ];

    /// Returns the JSON Schema of the `data` of `event_type`, in its current version.
    pub fn data_schema(event_type: &str) -> Option<schemars::Schema> {
        let schema = match event_type {
            Self::ACCOUNT_REGISTERED => schemars::schema_for!(AccountRegistered),
            Self::PROFILE_UPDATED => schemars::schema_for!(ProfileUpdated),
            Self::SESSION_STARTED => schemars::schema_for!(SessionStarted),
            Self::SESSIONS_REVOKED => schemars::schema_for!(SessionsRevoked),
            Self::PASSWORD_CHANGED => schemars::schema_for!(PasswordChanged),
            Self::TOTP_ENROLLMENT_STARTED => schemars::schema_for!(TotpEnrollmentStarted),
            Self::TOTP_ENABLED => schemars::schema_for!(TotpEnabled),
            Self::TOTP_STEP_USED => schemars::schema_for!(TotpStepUsed),
            Self::BACKUP_CODE_USED => schemars::schema_for!(BackupCodeUsed),
            Self::SECOND_FACTOR_FAILED => schemars::schema_for!(SecondFactorFailed),
            Self::TOTP_DISABLED => schemars::schema_for!(TotpDisabled),
            Self::BACKUP_CODES_REGENERATED => schemars::schema_for!(BackupCodesRegenerated),
            Self::SESSION_VERIFIED => schemars::schema_for!(SessionVerified),
            Self::EMAIL_CLAIMED => schemars::schema_for!(EmailClaimed),
            Self::EMAIL_VERIFICATION_REQUESTED => schemars::schema_for!(EmailVerificationRequested),
            Self::EMAIL_VERIFIED => schemars::schema_for!(EmailVerified),
            Self::EMAIL_CHANGE_CONFIRMED => schemars::schema_for!(EmailChangeConfirmed),
            Self::EMAIL_CHANGED => schemars::schema_for!(EmailChanged),
            Self::EMAIL_CHANGE_FAILED => schemars::schema_for!(EmailChangeFailed),
            Self::EMAIL_CHANGE_CANCELLED => schemars::schema_for!(EmailChangeCancelled),
            Self::PASSWORD_RESET_REQUESTED => schemars::schema_for!(PasswordResetRequested),
            Self::PASSWORD_RESET => schemars::schema_for!(PasswordReset),
            Self::EMAIL_RELEASED => schemars::schema_for!(EmailReleased),
            Self::WORKSPACE_CREATED => schemars::schema_for!(WorkspaceCreated),
            Self::WORKSPACE_MEMBER_ADDED => schemars::schema_for!(WorkspaceMemberAdded),
            Self::WORKSPACE_MEMBER_REMOVED => schemars::schema_for!(WorkspaceMemberRemoved),
            Self::AGENT_CREATED => schemars::schema_for!(AgentCreated),
            Self::AGENT_DELETED => schemars::schema_for!(AgentDeleted),
            Self::PROFILE_PICTURE_CHANGED => schemars::schema_for!(ProfilePictureChanged),
            Self::PROFILE_PICTURE_REMOVED => schemars::schema_for!(ProfilePictureRemoved),
            Self::ROLE_GRANTED => schemars::schema_for!(RoleGranted),
            Self::ROLE_REVOKED => schemars::schema_for!(RoleRevoked),
            _ => return None,
        };
        Some(schema)
    }

    /// Returns the CloudEvents `type` of this event.
    pub fn event_type(&self) -> &'static str {
        match self {
            Self::AccountRegistered(_) => Self::ACCOUNT_REGISTERED,
            Self::ProfileUpdated(_) => Self::PROFILE_UPDATED,
            Self::SessionStarted(_) => Self::SESSION_STARTED,
            Self::SessionsRevoked(_) => Self::SESSIONS_REVOKED,
            Self::PasswordChanged(_) => Self::PASSWORD_CHANGED,
            Self::TotpEnrollmentStarted(_) => Self::TOTP_ENROLLMENT_STARTED,
            Self::TotpEnabled(_) => Self::TOTP_ENABLED,
            Self::TotpStepUsed(_) => Self::TOTP_STEP_USED,
            Self::BackupCodeUsed(_) => Self::BACKUP_CODE_USED,
            Self::SecondFactorFailed(_) => Self::SECOND_FACTOR_FAILED,
            Self::TotpDisabled(_) => Self::TOTP_DISABLED,
            Self::BackupCodesRegenerated(_) => Self::BACKUP_CODES_REGENERATED,
            Self::SessionVerified(_) => Self::SESSION_VERIFIED,
            Self::EmailClaimed(_) => Self::EMAIL_CLAIMED,
            Self::EmailVerificationRequested(_) => Self::EMAIL_VERIFICATION_REQUESTED,
            Self::EmailVerified(_) => Self::EMAIL_VERIFIED,
            Self::EmailChangeConfirmed(_) => Self::EMAIL_CHANGE_CONFIRMED,
            Self::EmailChanged(_) => Self::EMAIL_CHANGED,
            Self::EmailChangeFailed(_) => Self::EMAIL_CHANGE_FAILED,
            Self::EmailChangeCancelled(_) => Self::EMAIL_CHANGE_CANCELLED,
            Self::PasswordResetRequested(_) => Self::PASSWORD_RESET_REQUESTED,
            Self::PasswordReset(_) => Self::PASSWORD_RESET,
            Self::EmailReleased(_) => Self::EMAIL_RELEASED,
            Self::WorkspaceCreated(_) => Self::WORKSPACE_CREATED,
            Self::WorkspaceMemberAdded(_) => Self::WORKSPACE_MEMBER_ADDED,
            Self::WorkspaceMemberRemoved(_) => Self::WORKSPACE_MEMBER_REMOVED,
            Self::AgentCreated(_) => Self::AGENT_CREATED,
            Self::AgentDeleted(_) => Self::AGENT_DELETED,
            Self::ProfilePictureChanged(_) => Self::PROFILE_PICTURE_CHANGED,
            Self::ProfilePictureRemoved(_) => Self::PROFILE_PICTURE_REMOVED,
            Self::RoleGranted(_) => Self::ROLE_GRANTED,
            Self::RoleRevoked(_) => Self::ROLE_REVOKED,
        }
    }

    /// Returns the schema version this code writes for the event's type.
    pub fn schema_version(&self) -> u32 {
        Self::current_version(self.event_type())
    }

    /// Returns the schema version this code writes for `event_type`.
    pub fn current_version(event_type: &str) -> u32 {
        match event_type {
            Self::SESSION_STARTED => 2,
            _ => 1,
        }
    }

    /// Returns true when `event_type` is a type this code can read.
    pub fn is_known_type(event_type: &str) -> bool {
        Self::TYPES.contains(&event_type)
    }

    /// Returns the payload as JSON with every hash, encrypted secret and token replaced by
    /// `"[redacted]"`, keeping the JSON types, so the result still decodes with
    /// [`DomainEvent::from_data`].
    pub fn redacted_data(&self) -> serde_json::Result<serde_json::Value> {
        let mut data = self.to_data()?;
        if let serde_json::Value::Object(fields) = &mut data {
            for (name, value) in fields.iter_mut() {
                if REDACTED_FIELDS.contains(&name.as_str()) {
                    redact(value);
                }
            }
        }
        Ok(data)
    }

    /// Serialises the payload into the JSON stored as the record's `data`.
    pub fn to_data(&self) -> serde_json::Result<serde_json::Value> {
        match self {
            Self::AccountRegistered(payload) => serde_json::to_value(payload),
            Self::ProfileUpdated(payload) => serde_json::to_value(payload),
            Self::SessionStarted(payload) => serde_json::to_value(payload),
            Self::SessionsRevoked(payload) => serde_json::to_value(payload),
            Self::PasswordChanged(payload) => serde_json::to_value(payload),
            Self::TotpEnrollmentStarted(payload) => serde_json::to_value(payload),
            Self::TotpEnabled(payload) => serde_json::to_value(payload),
            Self::TotpStepUsed(payload) => serde_json::to_value(payload),
            Self::BackupCodeUsed(payload) => serde_json::to_value(payload),
            Self::SecondFactorFailed(payload) => serde_json::to_value(payload),
            Self::TotpDisabled(payload) => serde_json::to_value(payload),
            Self::BackupCodesRegenerated(payload) => serde_json::to_value(payload),
            Self::SessionVerified(payload) => serde_json::to_value(payload),
            Self::EmailClaimed(payload) => serde_json::to_value(payload),
            Self::EmailVerificationRequested(payload) => serde_json::to_value(payload),
            Self::EmailVerified(payload) => serde_json::to_value(payload),
            Self::EmailChangeConfirmed(payload) => serde_json::to_value(payload),
            Self::EmailChanged(payload) => serde_json::to_value(payload),
            Self::EmailChangeFailed(payload) => serde_json::to_value(payload),
            Self::EmailChangeCancelled(payload) => serde_json::to_value(payload),
            Self::PasswordResetRequested(payload) => serde_json::to_value(payload),
            Self::PasswordReset(payload) => serde_json::to_value(payload),
            Self::EmailReleased(payload) => serde_json::to_value(payload),
            Self::WorkspaceCreated(payload) => serde_json::to_value(payload),
            Self::WorkspaceMemberAdded(payload) => serde_json::to_value(payload),
            Self::WorkspaceMemberRemoved(payload) => serde_json::to_value(payload),
            Self::AgentCreated(payload) => serde_json::to_value(payload),
            Self::AgentDeleted(payload) => serde_json::to_value(payload),
            Self::ProfilePictureChanged(payload) => serde_json::to_value(payload),
            Self::ProfilePictureRemoved(payload) => serde_json::to_value(payload),
            Self::RoleGranted(payload) => serde_json::to_value(payload),
            Self::RoleRevoked(payload) => serde_json::to_value(payload),
        }
    }

    /// Decodes the payload of a known type, upcasting older schema versions.
    /// Returns `Ok(None)` for a type this code does not know.
    pub fn from_data(
        event_type: &str,
        version: u32,
        data: serde_json::Value,
    ) -> Result<Option<Self>, PayloadError> {
        if !Self::is_known_type(event_type) {
            return Ok(None);
        }
        let invalid = |source| PayloadError::Invalid {
            event_type: event_type.to_owned(),
            source,
        };
        if event_type == Self::SESSION_STARTED && version == 1 {
            let v1: SessionStartedV1 = serde_json::from_value(data).map_err(invalid)?;
            return Ok(Some(Self::SessionStarted(v1.into())));
        }
        if version != Self::current_version(event_type) {
            return Err(PayloadError::UnknownVersion {
                event_type: event_type.to_owned(),
                version,
            });
        }
        let event = match event_type {
            Self::ACCOUNT_REGISTERED => {
                Self::AccountRegistered(serde_json::from_value(data).map_err(invalid)?)
            }
            Self::PROFILE_UPDATED => {
                Self::ProfileUpdated(serde_json::from_value(data).map_err(invalid)?)
            }
            Self::SESSION_STARTED => {
                Self::SessionStarted(serde_json::from_value(data).map_err(invalid)?)
            }
            Self::SESSIONS_REVOKED => {
                Self::SessionsRevoked(serde_json::from_value(data).map_err(invalid)?)
            }
            Self::PASSWORD_CHANGED => {
                Self::PasswordChanged(serde_json::from_value(data).map_err(invalid)?)
            }
            Self::TOTP_ENROLLMENT_STARTED => {
                Self::TotpEnrollmentStarted(serde_json::from_value(data).map_err(invalid)?)
            }
            Self::TOTP_ENABLED => Self::TotpEnabled(serde_json::from_value(data).map_err(invalid)?),
            Self::TOTP_STEP_USED => {
                Self::TotpStepUsed(serde_json::from_value(data).map_err(invalid)?)
            }
            Self::BACKUP_CODE_USED => {
                Self::BackupCodeUsed(serde_json::from_value(data).map_err(invalid)?)
            }
            Self::SECOND_FACTOR_FAILED => {
                Self::SecondFactorFailed(serde_json::from_value(data).map_err(invalid)?)
            }
            Self::TOTP_DISABLED => {
                Self::TotpDisabled(serde_json::from_value(data).map_err(invalid)?)
            }
            Self::BACKUP_CODES_REGENERATED => {
                Self::BackupCodesRegenerated(serde_json::from_value(data).map_err(invalid)?)
            }
            Self::SESSION_VERIFIED => {
                Self::SessionVerified(serde_json::from_value(data).map_err(invalid)?)
            }
            Self::EMAIL_CLAIMED => {
                Self::EmailClaimed(serde_json::from_value(data).map_err(invalid)?)
            }
            Self::EMAIL_VERIFICATION_REQUESTED => {
                Self::EmailVerificationRequested(serde_json::from_value(data).map_err(invalid)?)
            }
            Self::EMAIL_VERIFIED => {
                Self::EmailVerified(serde_json::from_value(data).map_err(invalid)?)
            }
            Self::EMAIL_CHANGE_CONFIRMED => {
                Self::EmailChangeConfirmed(serde_json::from_value(data).map_err(invalid)?)
            }
            Self::EMAIL_CHANGED => {
                Self::EmailChanged(serde_json::from_value(data).map_err(invalid)?)
            }
            Self::EMAIL_CHANGE_FAILED => {
                Self::EmailChangeFailed(serde_json::from_value(data).map_err(invalid)?)
            }
            Self::EMAIL_CHANGE_CANCELLED => {
                Self::EmailChangeCancelled(serde_json::from_value(data).map_err(invalid)?)
            }
            Self::PASSWORD_RESET_REQUESTED => {
                Self::PasswordResetRequested(serde_json::from_value(data).map_err(invalid)?)
            }
            Self::PASSWORD_RESET => {
                Self::PasswordReset(serde_json::from_value(data).map_err(invalid)?)
            }
            Self::EMAIL_RELEASED => {
                Self::EmailReleased(serde_json::from_value(data).map_err(invalid)?)
            }
            Self::WORKSPACE_CREATED => {
                Self::WorkspaceCreated(serde_json::from_value(data).map_err(invalid)?)
            }
            Self::WORKSPACE_MEMBER_ADDED => {
                Self::WorkspaceMemberAdded(serde_json::from_value(data).map_err(invalid)?)
            }
            Self::WORKSPACE_MEMBER_REMOVED => {
                Self::WorkspaceMemberRemoved(serde_json::from_value(data).map_err(invalid)?)
            }
            Self::AGENT_CREATED => {
                Self::AgentCreated(serde_json::from_value(data).map_err(invalid)?)
            }
            Self::AGENT_DELETED => {
                Self::AgentDeleted(serde_json::from_value(data).map_err(invalid)?)
            }
            Self::PROFILE_PICTURE_CHANGED => {
                Self::ProfilePictureChanged(serde_json::from_value(data).map_err(invalid)?)
            }
            Self::PROFILE_PICTURE_REMOVED => {
                Self::ProfilePictureRemoved(serde_json::from_value(data).map_err(invalid)?)
            }
            Self::ROLE_GRANTED => Self::RoleGranted(serde_json::from_value(data).map_err(invalid)?),
            Self::ROLE_REVOKED => Self::RoleRevoked(serde_json::from_value(data).map_err(invalid)?),
            _ => return Ok(None),
        };
        Ok(Some(event))
    }
}
