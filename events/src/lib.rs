//! The published contract of the accounts event store.
//!
//! Everything a consumer of `accounts.events.v1` needs: topic names, the partitioning
//! function, the CloudEvents record envelope, the event types with their schema versions,
//! and [`AccountState::evolve`], the fold that turns an account's events into its state.
//! This crate contains no business rules and performs no I/O, except the optional
//! `subscriber` module (feature `kafka`), a reader of `profiles.public.v1`.

pub mod envelope;
pub mod event;
pub mod industry;
pub mod public;
pub mod state;
#[cfg(feature = "kafka")]
pub mod subscriber;
pub mod topics;

pub use envelope::{
    Actor, ActorKind, DecodeError, Decoded, EventMeta, RecordedEvent, CONTENT_TYPE,
};
pub use event::{
    AccountRegistered, BackupCodeUsed, BackupCodesRegenerated, DomainEvent, EmailChangeCancelled,
    EmailChangeConfirmed, EmailChangeFailed, EmailChanged, EmailClaimed, EmailReleased,
    EmailVerificationRequested, EmailVerified, PasswordChanged, PasswordReset,
    PasswordResetRequested, ProfileUpdated, SecondFactorFailed, SessionStarted, SessionVerified,
    SessionsRevoked, TotpDisabled, TotpEnabled, TotpEnrollmentStarted, TotpStepUsed,
};
pub use event::{
    AgentCreated, AgentDeleted, ProfilePictureChanged, ProfilePictureRemoved, RoleGranted,
    RoleRevoked, SessionClient, SessionStartedV1, WorkspaceCreated, WorkspaceMemberAdded,
    WorkspaceMemberRemoved,
};
pub use industry::INDUSTRIES;
pub use public::{PublicProfile, PublicProfiles};
pub use state::{
    AccountState, AgentState, EmailClaimState, PendingEmail, PendingReset, Picture, SessionState,
    WorkspaceState,
};
pub use topics::{partition_for, AggregateId, Topics, DEFAULT_PARTITIONS};
