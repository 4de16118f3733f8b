//! Business rules: `decide` turns a command and the current state into events or a
//! rejection. It is pure: no I/O, and the time comes in as a parameter.

use accounts_events::{
    AccountRegistered, AccountState, BackupCodeUsed, BackupCodesRegenerated, DomainEvent,
    EmailChangeCancelled, EmailChangeConfirmed, EmailChangeFailed, EmailChanged, EmailClaimState,
    EmailClaimed, EmailReleased, EmailVerificationRequested, EmailVerified, PasswordChanged,
    PasswordReset, PasswordResetRequested, ProfileUpdated, SecondFactorFailed, SessionStarted,
    SessionVerified, SessionsRevoked, TotpDisabled, TotpEnabled, TotpEnrollmentStarted,
    TotpStepUsed,
};
use accounts_events::{
    AgentCreated, AgentDeleted, ProfilePictureRemoved, RoleGranted, RoleRevoked, SessionClient,
    WorkspaceCreated, WorkspaceMemberAdded, WorkspaceMemberRemoved, WorkspaceState,
};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::wire::{Command, FieldValue, ProfileChanges, RevokeScope, SecondFactor};

/// The reason a decider rejected a command. Each maps to one HTTP status and problem code.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Rejection {
    #[error("the account is at version {actual}, not {expected}")]
    VersionMismatch { expected: u64, actual: u64 },
    #[error("the email address is already in use")]
    EmailTaken,
    #[error("the account does not exist")]
    AccountNotFound,
    #[error("the credentials changed while the request was checked")]
    CredentialsChanged,
    #[error("two-factor authentication is already on")]
    MfaAlreadyEnabled,
    #[error("no TOTP enrollment waits for confirmation, or a newer one replaced it")]
    NoPendingEnrollment,
    #[error("this code or backup code was already used")]
    CodeAlreadyUsed,
    #[error("sign-in needs a second factor")]
    MfaRequired,
    #[error("two-factor authentication is off")]
    MfaNotEnabled,
    #[error("the second factor is locked until {until} after repeated wrong codes")]
    FactorLocked { until: DateTime<Utc> },
    #[error("the idempotency key was used before for another request")]
    IdempotencyKeyReused,
    #[error("the session does not exist or has ended")]
    SessionNotFound,
    #[error("the session expires in the past")]
    SessionAlreadyExpired,
    #[error("the command does not fit the aggregate it was sent to")]
    Misaddressed,
    #[error("the email link expired, was replaced by a newer one or was used")]
    EmailTokenInvalid,
    #[error("the password-reset link expired, was replaced by a newer one or was used")]
    ResetTokenInvalid,
    #[error("the new address is the account's current address")]
    EmailUnchanged,
    #[error("the address is already verified")]
    EmailAlreadyVerified,
    #[error("only the agent's owner or the workspace owner may delete the agent")]
    NotAgentOwner,
    #[error("the workspace does not exist")]
    WorkspaceNotFound,
    #[error("a workspace with this id exists")]
    WorkspaceExists,
    #[error("only the workspace owner may do this")]
    NotWorkspaceOwner,
    #[error("only members of the workspace may do this")]
    NotWorkspaceMember,
    #[error("the account is not a member of the workspace")]
    MemberNotFound,
    #[error("the owner cannot leave the workspace")]
    OwnerCannotLeave,
    #[error("the agent does not exist")]
    AgentNotFound,
}

/// The result of a command: the events to append, in order, with their aggregate, the next
/// step of a saga, and the reply to the waiting request.
#[derive(Debug, Default)]
pub struct Decision {
    pub events: Vec<(EventTarget, DomainEvent)>,
    /// A command for another aggregate, sent in the same transaction as the events.
    pub next: Option<Command>,
    pub answer: Answer,
}

/// The reply to the request that sent a command.
#[derive(Debug, Default, PartialEq, Eq)]
pub enum Answer {
    #[default]
    Accepted,
    /// The events are appended, and the reply gives the reason the goal was not reached.
    Rejected(Rejection),
    /// A later step of the saga replies.
    Later,
}

impl Decision {
    fn accepted(events: Vec<(EventTarget, DomainEvent)>) -> Self {
        Self {
            events,
            ..Self::default()
        }
    }
}

/// The purpose of a verification link for the account's own address.
pub const PURPOSE_REGISTRATION: &str = "registration";
/// The purpose of a verification link for a new address.
pub const PURPOSE_EMAIL_CHANGE: &str = "email_change";

/// The state a command is decided against.
#[derive(Clone, Copy)]
pub enum Target<'a> {
    /// Registration: the email claim and the account that would be created.
    Registration {
        claim: &'a EmailClaimState,
        account: &'a AccountState,
    },
    Account(&'a AccountState),
    /// A saga step addressed to the claim on an address.
    Claim(&'a EmailClaimState),
    Workspace(&'a WorkspaceState),
}

/// The aggregate an event belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventTarget {
    Account,
    EmailClaim,
    Workspace,
}

/// Decides a command against the state of its aggregate at `now`.
pub fn decide(
    target: Target<'_>,
    command: &Command,
    expected_version: Option<u64>,
    now: DateTime<Utc>,
) -> Result<Decision, Rejection> {
    match (target, command) {
        (
            Target::Account(account),
            Command::RequestEmailChange {
                email,
                email_normalized,
                token,
                ..
            },
        ) => {
            require_version(account, expected_version)?;
            if *email == account.email {
                return Err(Rejection::EmailUnchanged);
            }
            Ok(Decision::accepted(vec![(
                EventTarget::Account,
                DomainEvent::EmailVerificationRequested(EmailVerificationRequested {
                    email: email.clone(),
                    email_normalized: email_normalized.clone(),
                    purpose: PURPOSE_EMAIL_CHANGE.to_owned(),
                    token_sha256: token.token_sha256.clone(),
                    token_ciphertext: token.token_ciphertext.clone(),
                    expires_at: token.expires_at,
                }),
            )]))
        }
        (
            Target::Account(account),
            Command::ConfirmEmail {
                account_id,
                token_sha256,
            },
        ) => confirm_email(account, *account_id, token_sha256, now),
        (Target::Account(account), Command::RequestEmailVerification { token, .. }) => {
            require_version(account, expected_version)?;
            if account.email_verified {
                return Err(Rejection::EmailAlreadyVerified);
            }
            Ok(Decision::accepted(vec![(
                EventTarget::Account,
                DomainEvent::EmailVerificationRequested(EmailVerificationRequested {
                    email: account.email.clone(),
                    email_normalized: account.email_normalized.clone(),
                    purpose: PURPOSE_REGISTRATION.to_owned(),
                    token_sha256: token.token_sha256.clone(),
                    token_ciphertext: token.token_ciphertext.clone(),
                    expires_at: token.expires_at,
                }),
            )]))
        }
        (Target::Account(account), Command::CancelEmailChange { .. }) => {
            require_version(account, expected_version)?;
            // Cancelling when nothing is pending changes nothing, like a repeated DELETE.
            let Some(pending) = account
                .pending_email
                .as_ref()
                .filter(|pending| pending.purpose == PURPOSE_EMAIL_CHANGE)
                .map(|pending| pending.email.clone())
                .or_else(|| {
                    account
                        .claiming_email
                        .as_ref()
                        .map(|(email, _)| email.clone())
                })
            else {
                return Ok(Decision::default());
            };
            Ok(Decision::accepted(vec![(
                EventTarget::Account,
                DomainEvent::EmailChangeCancelled(EmailChangeCancelled { email: pending }),
            )]))
        }
        (
            Target::Claim(claim),
            Command::ClaimEmail {
                account_id,
                email,
                email_normalized,
            },
        ) => {
            let (events, next) = match claim.account_id {
                None => (
                    vec![(
                        EventTarget::EmailClaim,
                        DomainEvent::EmailClaimed(EmailClaimed {
                            email_normalized: email_normalized.clone(),
                            account_id: *account_id,
                        }),
                    )],
                    complete(*account_id, email, email_normalized),
                ),
                Some(holder) if holder == *account_id => {
                    (vec![], complete(*account_id, email, email_normalized))
                }
                Some(_) => (
                    vec![],
                    Command::AbortEmailChange {
                        account_id: *account_id,
                        email: email.clone(),
                    },
                ),
            };
            Ok(Decision {
                events,
                next: Some(next),
                answer: Answer::Later,
            })
        }
        (
            Target::Account(account),
            Command::CompleteEmailChange {
                account_id,
                email,
                email_normalized,
            },
        ) => {
            require_version(account, None)?;
            let waiting = account
                .claiming_email
                .as_ref()
                .is_some_and(|(_, claiming)| claiming == email_normalized);
            if !waiting {
                // The change was cancelled or replaced while the claim was taken: give the
                // claim back.
                let release = (account.email_normalized != *email_normalized).then(|| {
                    Command::ReleaseEmail {
                        account_id: *account_id,
                        email_normalized: email_normalized.clone(),
                    }
                });
                return Ok(Decision {
                    events: vec![],
                    next: release,
                    answer: Answer::Rejected(Rejection::EmailTokenInvalid),
                });
            }
            let release =
                (account.email_normalized != *email_normalized).then(|| Command::ReleaseEmail {
                    account_id: *account_id,
                    email_normalized: account.email_normalized.clone(),
                });
            Ok(Decision {
                events: vec![(
                    EventTarget::Account,
                    DomainEvent::EmailChanged(EmailChanged {
                        previous_email: account.email.clone(),
                        email: email.clone(),
                        email_normalized: email_normalized.clone(),
                    }),
                )],
                next: release,
                answer: Answer::Accepted,
            })
        }
        (Target::Account(account), Command::AbortEmailChange { email, .. }) => {
            require_version(account, None)?;
            let waiting = account
                .claiming_email
                .as_ref()
                .is_some_and(|(claiming, _)| claiming == email);
            let events = if waiting {
                vec![(
                    EventTarget::Account,
                    DomainEvent::EmailChangeFailed(EmailChangeFailed {
                        email: email.clone(),
                        reason: "email_taken".to_owned(),
                    }),
                )]
            } else {
                vec![]
            };
            Ok(Decision {
                events,
                next: None,
                answer: Answer::Rejected(Rejection::EmailTaken),
            })
        }
        (
            Target::Claim(claim),
            Command::ReleaseEmail {
                account_id,
                email_normalized,
            },
        ) => {
            let events = if claim.account_id == Some(*account_id) {
                vec![(
                    EventTarget::EmailClaim,
                    DomainEvent::EmailReleased(EmailReleased {
                        email_normalized: email_normalized.clone(),
                        account_id: *account_id,
                    }),
                )]
            } else {
                vec![]
            };
            Ok(Decision {
                events,
                next: None,
                answer: Answer::Later,
            })
        }
        (Target::Account(account), Command::RequestPasswordReset { token, .. }) => {
            require_version(account, expected_version)?;
            Ok(Decision::accepted(vec![(
                EventTarget::Account,
                DomainEvent::PasswordResetRequested(PasswordResetRequested {
                    email: account.email.clone(),
                    token_sha256: token.token_sha256.clone(),
                    token_ciphertext: token.token_ciphertext.clone(),
                    expires_at: token.expires_at,
                }),
            )]))
        }
        (
            Target::Account(account),
            Command::ResetPassword {
                token_sha256,
                password_hash,
                ..
            },
        ) => {
            require_version(account, expected_version)?;
            let valid = account
                .password_reset
                .as_ref()
                .is_some_and(|reset| reset.token_sha256 == *token_sha256 && reset.expires_at > now);
            if !valid {
                return Err(Rejection::ResetTokenInvalid);
            }
            let reset = DomainEvent::PasswordReset(PasswordReset {
                password_hash: password_hash.clone(),
                credential_version: account.credential_version + 1,
            });
            let sessions = active_sessions(account, now, None);
            Ok(Decision::accepted(
                std::iter::once((EventTarget::Account, reset))
                    .chain(revoke(sessions, "password_reset"))
                    .collect(),
            ))
        }
        (Target::Workspace(workspace), command) => {
            decide_workspace(workspace, command).map(|events| {
                Decision::accepted(
                    events
                        .into_iter()
                        .map(|event| (EventTarget::Workspace, event))
                        .collect(),
                )
            })
        }
        (target, command) => {
            decide_events(target, command, expected_version, now).map(Decision::accepted)
        }
    }
}

/// Decides a workspace command. Returns the events to append, none when the workspace
/// already is as requested.
fn decide_workspace(
    workspace: &WorkspaceState,
    command: &Command,
) -> Result<Vec<DomainEvent>, Rejection> {
    if let Command::CreateWorkspace {
        workspace_id,
        owner_id,
        name,
    } = command
    {
        if workspace.exists() {
            return Err(Rejection::WorkspaceExists);
        }
        return Ok(vec![DomainEvent::WorkspaceCreated(WorkspaceCreated {
            workspace_id: *workspace_id,
            name: name.clone(),
            owner_id: *owner_id,
        })]);
    }
    if !workspace.exists() {
        return Err(Rejection::WorkspaceNotFound);
    }
    let is_owner = |actor: &Uuid| workspace.owner_id == Some(*actor);
    match command {
        Command::AddWorkspaceMember {
            actor_id,
            account_id,
            ..
        } => {
            if !is_owner(actor_id) {
                return Err(Rejection::NotWorkspaceOwner);
            }
            if workspace.members.contains(account_id) {
                return Ok(vec![]);
            }
            Ok(vec![DomainEvent::WorkspaceMemberAdded(
                WorkspaceMemberAdded {
                    account_id: *account_id,
                },
            )])
        }
        Command::RemoveWorkspaceMember {
            actor_id,
            account_id,
            ..
        } => {
            if !is_owner(actor_id) && actor_id != account_id {
                return Err(Rejection::NotWorkspaceOwner);
            }
            if is_owner(account_id) {
                return Err(Rejection::OwnerCannotLeave);
            }
            if !workspace.members.contains(account_id) {
                return Err(Rejection::MemberNotFound);
            }
            // A former member's agents leave the workspace with them.
            let agents = workspace
                .agents
                .iter()
                .filter(|(_, agent)| agent.owner_id == *account_id)
                .map(|(agent_id, _)| {
                    DomainEvent::AgentDeleted(AgentDeleted {
                        agent_id: *agent_id,
                    })
                });
            Ok(std::iter::once(DomainEvent::WorkspaceMemberRemoved(
                WorkspaceMemberRemoved {
                    account_id: *account_id,
                },
            ))
            .chain(agents)
            .collect())
        }
        Command::CreateAgent {
            actor_id,
            agent_id,
            name,
            ..
        } => {
            if !workspace.members.contains(actor_id) {
                return Err(Rejection::NotWorkspaceMember);
            }
            if workspace.agents.contains_key(agent_id) {
                return Ok(vec![]);
            }
            Ok(vec![DomainEvent::AgentCreated(AgentCreated {
                agent_id: *agent_id,
                name: name.clone(),
                owner_id: *actor_id,
            })])
        }
        Command::DeleteAgent {
            actor_id, agent_id, ..
        } => {
            let agent = workspace
                .agents
                .get(agent_id)
                .ok_or(Rejection::AgentNotFound)?;
            if agent.owner_id != *actor_id && !is_owner(actor_id) {
                return Err(Rejection::NotAgentOwner);
            }
            Ok(vec![DomainEvent::AgentDeleted(AgentDeleted {
                agent_id: *agent_id,
            })])
        }
        _ => Err(Rejection::Misaddressed),
    }
}

/// Confirms a mailed link: verifies the account's own address, or starts the claim on a
/// new one.
fn confirm_email(
    account: &AccountState,
    account_id: Uuid,
    token_sha256: &str,
    now: DateTime<Utc>,
) -> Result<Decision, Rejection> {
    require_version(account, None)?;
    let pending = account
        .pending_email
        .as_ref()
        .filter(|pending| pending.token_sha256 == token_sha256 && pending.expires_at > now)
        .ok_or(Rejection::EmailTokenInvalid)?;
    if pending.purpose == PURPOSE_REGISTRATION {
        if pending.email != account.email {
            return Err(Rejection::EmailTokenInvalid);
        }
        return Ok(Decision::accepted(vec![(
            EventTarget::Account,
            DomainEvent::EmailVerified(EmailVerified {
                email: pending.email.clone(),
            }),
        )]));
    }
    if pending.email_normalized == account.email_normalized {
        // Only the spelling changes, and the claim is already the account's.
        return Ok(Decision::accepted(vec![(
            EventTarget::Account,
            DomainEvent::EmailChanged(EmailChanged {
                previous_email: account.email.clone(),
                email: pending.email.clone(),
                email_normalized: pending.email_normalized.clone(),
            }),
        )]));
    }
    Ok(Decision {
        events: vec![(
            EventTarget::Account,
            DomainEvent::EmailChangeConfirmed(EmailChangeConfirmed {
                email: pending.email.clone(),
                email_normalized: pending.email_normalized.clone(),
            }),
        )],
        next: Some(Command::ClaimEmail {
            account_id,
            email: pending.email.clone(),
            email_normalized: pending.email_normalized.clone(),
        }),
        answer: Answer::Later,
    })
}

fn complete(account_id: Uuid, email: &str, email_normalized: &str) -> Command {
    Command::CompleteEmailChange {
        account_id,
        email: email.to_owned(),
        email_normalized: email_normalized.to_owned(),
    }
}

/// Decides the commands that append events and reply at once.
fn decide_events(
    target: Target<'_>,
    command: &Command,
    expected_version: Option<u64>,
    now: DateTime<Utc>,
) -> Result<Vec<(EventTarget, DomainEvent)>, Rejection> {
    match (target, command) {
        (
            Target::Registration { claim, account },
            Command::RegisterAccount {
                account_id,
                email,
                email_normalized,
                name,
                password_hash,
                verification,
            },
        ) => {
            if claim.account_id.is_some() {
                return Err(Rejection::EmailTaken);
            }
            if account.exists() {
                // A UUIDv7 collision; the caller retries with a fresh id.
                return Err(Rejection::Misaddressed);
            }
            Ok([
                (
                    EventTarget::EmailClaim,
                    DomainEvent::EmailClaimed(EmailClaimed {
                        email_normalized: email_normalized.clone(),
                        account_id: *account_id,
                    }),
                ),
                (
                    EventTarget::Account,
                    DomainEvent::AccountRegistered(AccountRegistered {
                        account_id: *account_id,
                        email: email.clone(),
                        email_normalized: email_normalized.clone(),
                        name: name.clone(),
                        password_hash: password_hash.clone(),
                    }),
                ),
            ]
            .into_iter()
            .chain(verification.as_ref().map(|token| {
                (
                    EventTarget::Account,
                    DomainEvent::EmailVerificationRequested(EmailVerificationRequested {
                        email: email.clone(),
                        email_normalized: email_normalized.clone(),
                        purpose: PURPOSE_REGISTRATION.to_owned(),
                        token_sha256: token.token_sha256.clone(),
                        token_ciphertext: token.token_ciphertext.clone(),
                        expires_at: token.expires_at,
                    }),
                )
            }))
            .collect())
        }
        (Target::Account(account), Command::UpdateProfile { changes, .. }) => {
            require_version(account, expected_version)?;
            Ok(update_profile(account, changes)
                .map(|event| vec![(EventTarget::Account, DomainEvent::ProfileUpdated(event))])
                .unwrap_or_default())
        }
        (
            Target::Account(account),
            Command::StartSession {
                session_id,
                token_sha256,
                expires_at,
                user_agent,
                ip,
                credential_version,
                second_factor,
                ..
            },
        ) => {
            require_version(account, expected_version)?;
            if account.credential_version != *credential_version {
                return Err(Rejection::CredentialsChanged);
            }
            if *expires_at <= now {
                return Err(Rejection::SessionAlreadyExpired);
            }
            let (factor_event, method) = match (account.mfa_enabled(), second_factor) {
                (false, _) => (None, "password"),
                (true, None) => return Err(Rejection::MfaRequired),
                (true, Some(factor @ SecondFactor::Totp { .. })) => (
                    Some(use_second_factor(account, factor.clone(), now)?),
                    "password+totp",
                ),
                (true, Some(factor @ SecondFactor::BackupCode { .. })) => (
                    Some(use_second_factor(account, factor.clone(), now)?),
                    "password+backup_code",
                ),
            };
            let started = DomainEvent::SessionStarted(SessionStarted {
                session_id: *session_id,
                token_sha256: token_sha256.clone(),
                expires_at: *expires_at,
                client: SessionClient {
                    user_agent: user_agent.clone(),
                    ip: ip.clone(),
                },
                method: method.to_owned(),
            });
            Ok(factor_event
                .into_iter()
                .chain(std::iter::once(started))
                .map(|event| (EventTarget::Account, event))
                .collect())
        }
        (
            Target::Account(account),
            Command::RevokeSessions {
                scope,
                current_session,
                ..
            },
        ) => {
            require_version(account, expected_version)?;
            let (session_ids, reason) = match scope {
                RevokeScope::One { session_id } => {
                    let active = account
                        .sessions
                        .get(session_id)
                        .is_some_and(|session| session.is_active(now));
                    if !active {
                        return Err(Rejection::SessionNotFound);
                    }
                    let reason = if session_id == current_session {
                        "sign_out"
                    } else {
                        "revoked"
                    };
                    (vec![*session_id], reason)
                }
                RevokeScope::All => (active_sessions(account, now, None), "revoke_all"),
            };
            Ok(revoke(session_ids, reason).into_iter().collect())
        }
        (
            Target::Account(account),
            Command::ChangePassword {
                password_hash,
                credential_version,
                current_session,
                ..
            },
        ) => {
            require_version(account, expected_version)?;
            if account.credential_version != *credential_version {
                return Err(Rejection::CredentialsChanged);
            }
            let changed = DomainEvent::PasswordChanged(PasswordChanged {
                password_hash: password_hash.clone(),
                credential_version: credential_version + 1,
            });
            let others = active_sessions(account, now, Some(*current_session));
            Ok(std::iter::once((EventTarget::Account, changed))
                .chain(revoke(others, "password_changed"))
                .collect())
        }
        (
            Target::Account(account),
            Command::VerifySession {
                session_id,
                credential_version,
                second_factor,
                ..
            },
        ) => {
            require_version(account, expected_version)?;
            if !account
                .sessions
                .get(session_id)
                .is_some_and(|session| session.is_active(now))
            {
                return Err(Rejection::SessionNotFound);
            }
            if account.credential_version != *credential_version {
                return Err(Rejection::CredentialsChanged);
            }
            let used = match second_factor {
                Some(factor) => Some(use_second_factor(account, factor.clone(), now)?),
                None => None,
            };
            let method = if used.is_some() {
                "second_factor"
            } else {
                "password"
            };
            let verified = DomainEvent::SessionVerified(SessionVerified {
                session_id: *session_id,
                method: method.to_owned(),
            });
            Ok(used
                .into_iter()
                .chain(std::iter::once(verified))
                .map(|event| (EventTarget::Account, event))
                .collect())
        }
        (
            Target::Account(account),
            Command::DisableTotp {
                second_factor,
                credential_version,
                ..
            },
        ) => {
            require_version(account, expected_version)?;
            if !account.mfa_enabled() {
                return Err(Rejection::MfaNotEnabled);
            }
            if account.credential_version != *credential_version {
                return Err(Rejection::CredentialsChanged);
            }
            let used = use_second_factor(account, second_factor.clone(), now)?;
            let disabled = DomainEvent::TotpDisabled(TotpDisabled {
                credential_version: credential_version + 1,
            });
            Ok(vec![
                (EventTarget::Account, used),
                (EventTarget::Account, disabled),
            ])
        }
        (
            Target::Account(account),
            Command::RegenerateBackupCodes {
                step,
                backup_code_hashes,
                credential_version,
                ..
            },
        ) => {
            require_version(account, expected_version)?;
            if !account.mfa_enabled() {
                return Err(Rejection::MfaNotEnabled);
            }
            if account.credential_version != *credential_version {
                return Err(Rejection::CredentialsChanged);
            }
            let used = use_second_factor(account, SecondFactor::Totp { step: *step }, now)?;
            let regenerated = DomainEvent::BackupCodesRegenerated(BackupCodesRegenerated {
                backup_code_hashes: backup_code_hashes.clone(),
            });
            Ok(vec![
                (EventTarget::Account, used),
                (EventTarget::Account, regenerated),
            ])
        }
        (
            Target::Account(account),
            Command::RecordSecondFactorFailure {
                lock_after,
                base_lock_seconds,
                ..
            },
        ) => {
            require_version(account, expected_version)?;
            if !account.mfa_enabled() {
                return Ok(vec![]);
            }
            let failures = account.factor_failures.saturating_add(1);
            let locked_until = (failures >= *lock_after).then(|| {
                let doublings = (failures - lock_after).min(16);
                let seconds = base_lock_seconds
                    .saturating_mul(1 << doublings)
                    .min(MAX_LOCK_SECONDS);
                now + chrono::Duration::seconds(i64::try_from(seconds).unwrap_or(i64::MAX))
            });
            Ok(vec![(
                EventTarget::Account,
                DomainEvent::SecondFactorFailed(SecondFactorFailed {
                    failures,
                    locked_until,
                }),
            )])
        }
        (
            Target::Account(account),
            Command::StartTotpEnrollment {
                secret_ciphertext, ..
            },
        ) => {
            require_version(account, expected_version)?;
            if account.mfa_enabled() {
                return Err(Rejection::MfaAlreadyEnabled);
            }
            Ok(vec![(
                EventTarget::Account,
                DomainEvent::TotpEnrollmentStarted(TotpEnrollmentStarted {
                    secret_ciphertext: secret_ciphertext.clone(),
                }),
            )])
        }
        (
            Target::Account(account),
            Command::ConfirmTotp {
                secret_ciphertext,
                step,
                backup_code_hashes,
                credential_version,
                ..
            },
        ) => {
            require_version(account, expected_version)?;
            if account.mfa_enabled() {
                return Err(Rejection::MfaAlreadyEnabled);
            }
            if account.totp_pending.as_ref() != Some(secret_ciphertext) {
                return Err(Rejection::NoPendingEnrollment);
            }
            if account.credential_version != *credential_version {
                return Err(Rejection::CredentialsChanged);
            }
            if *step <= account.last_totp_step {
                return Err(Rejection::CodeAlreadyUsed);
            }
            Ok(vec![(
                EventTarget::Account,
                DomainEvent::TotpEnabled(TotpEnabled {
                    secret_ciphertext: secret_ciphertext.clone(),
                    backup_code_hashes: backup_code_hashes.clone(),
                    confirmed_step: *step,
                    credential_version: credential_version + 1,
                }),
            )])
        }
        (Target::Account(account), Command::GrantRole { role, .. }) => {
            require_version(account, expected_version)?;
            if account.roles.contains(role) {
                return Ok(vec![]);
            }
            Ok(vec![(
                EventTarget::Account,
                DomainEvent::RoleGranted(RoleGranted { role: role.clone() }),
            )])
        }
        (Target::Account(account), Command::RevokeRole { role, .. }) => {
            require_version(account, expected_version)?;
            if !account.roles.contains(role) {
                return Ok(vec![]);
            }
            Ok(vec![(
                EventTarget::Account,
                DomainEvent::RoleRevoked(RoleRevoked { role: role.clone() }),
            )])
        }
        (Target::Account(account), Command::ChangeProfilePicture { picture, .. }) => {
            require_version(account, expected_version)?;
            if account
                .picture
                .as_ref()
                .is_some_and(|current| current.sha256 == picture.sha256)
            {
                return Ok(vec![]);
            }
            Ok(vec![(
                EventTarget::Account,
                DomainEvent::ProfilePictureChanged(picture.clone()),
            )])
        }
        (Target::Account(account), Command::RemoveProfilePicture { .. }) => {
            require_version(account, expected_version)?;
            if account.picture.is_none() {
                return Ok(vec![]);
            }
            Ok(vec![(
                EventTarget::Account,
                DomainEvent::ProfilePictureRemoved(ProfilePictureRemoved {}),
            )])
        }
        _ => Err(Rejection::Misaddressed),
    }
}

/// Returns the event that uses up `factor`, or why it cannot be used: the factor is locked,
/// or the code's step or the backup code was used before.
fn use_second_factor(
    account: &AccountState,
    factor: SecondFactor,
    now: DateTime<Utc>,
) -> Result<DomainEvent, Rejection> {
    if let Some(until) = account.factor_locked_until.filter(|until| *until > now) {
        return Err(Rejection::FactorLocked { until });
    }
    match factor {
        SecondFactor::Totp { step } if step > account.last_totp_step => {
            Ok(DomainEvent::TotpStepUsed(TotpStepUsed { step }))
        }
        SecondFactor::BackupCode { index, hash } if matches!(account.backup_codes.get(index), Some(Some(stored)) if *stored == hash) => {
            Ok(DomainEvent::BackupCodeUsed(BackupCodeUsed { index }))
        }
        _ => Err(Rejection::CodeAlreadyUsed),
    }
}

/// Maximum second-factor lock in seconds, however many failures came before.
const MAX_LOCK_SECONDS: u64 = 3600;

/// Returns the ids of the sessions active at `now`, leaving out `except`.
fn active_sessions(account: &AccountState, now: DateTime<Utc>, except: Option<Uuid>) -> Vec<Uuid> {
    account
        .sessions
        .iter()
        .filter(|(id, session)| Some(**id) != except && session.is_active(now))
        .map(|(id, _)| *id)
        .collect()
}

/// Returns the revocation event, or nothing when there is no session to end.
fn revoke(session_ids: Vec<Uuid>, reason: &str) -> Option<(EventTarget, DomainEvent)> {
    if session_ids.is_empty() {
        return None;
    }
    Some((
        EventTarget::Account,
        DomainEvent::SessionsRevoked(SessionsRevoked {
            session_ids,
            reason: reason.to_owned(),
        }),
    ))
}

fn require_version(account: &AccountState, expected: Option<u64>) -> Result<(), Rejection> {
    if !account.exists() {
        return Err(Rejection::AccountNotFound);
    }
    match expected {
        Some(expected) if expected != account.version => Err(Rejection::VersionMismatch {
            expected,
            actual: account.version,
        }),
        _ => Ok(()),
    }
}

/// Returns the profile after `changes`, or `None` when nothing would change.
fn update_profile(account: &AccountState, changes: &ProfileChanges) -> Option<ProfileUpdated> {
    let mut changed = Vec::new();
    let name = pick(&mut changed, "name", &account.name, changes.name.as_ref());
    let company_name = pick_optional(
        &mut changed,
        "company_name",
        &account.company_name,
        changes.company_name.as_ref(),
    );
    let industry = pick_optional(
        &mut changed,
        "industry",
        &account.industry,
        changes.industry.as_ref(),
    );
    let business_phone = pick_optional(
        &mut changed,
        "business_phone",
        &account.business_phone,
        changes.business_phone.as_ref(),
    );
    if changed.is_empty() {
        return None;
    }
    Some(ProfileUpdated {
        name,
        company_name,
        industry,
        business_phone,
        changed,
    })
}

fn pick(changed: &mut Vec<String>, field: &str, current: &str, new: Option<&String>) -> String {
    match new {
        Some(new) if new != current => {
            changed.push(field.to_owned());
            new.clone()
        }
        _ => current.to_owned(),
    }
}

fn pick_optional(
    changed: &mut Vec<String>,
    field: &str,
    current: &Option<String>,
    new: Option<&FieldValue>,
) -> Option<String> {
    match new {
        Some(FieldValue { value }) if value != current => {
            changed.push(field.to_owned());
            value.clone()
        }
        _ => current.clone(),
    }
}

/// Returns the account a command is addressed to, or for a workspace command the account
/// that issues it.
pub fn account_of(command: &Command) -> Uuid {
    match command {
        Command::RegisterAccount { account_id, .. }
        | Command::UpdateProfile { account_id, .. }
        | Command::StartSession { account_id, .. }
        | Command::RevokeSessions { account_id, .. }
        | Command::ChangePassword { account_id, .. }
        | Command::StartTotpEnrollment { account_id, .. }
        | Command::ConfirmTotp { account_id, .. }
        | Command::RecordSecondFactorFailure { account_id, .. }
        | Command::DisableTotp { account_id, .. }
        | Command::VerifySession { account_id, .. }
        | Command::RegenerateBackupCodes { account_id, .. }
        | Command::RequestEmailChange { account_id, .. }
        | Command::ConfirmEmail { account_id, .. }
        | Command::CancelEmailChange { account_id }
        | Command::RequestEmailVerification { account_id, .. }
        | Command::ClaimEmail { account_id, .. }
        | Command::CompleteEmailChange { account_id, .. }
        | Command::AbortEmailChange { account_id, .. }
        | Command::ReleaseEmail { account_id, .. }
        | Command::RequestPasswordReset { account_id, .. }
        | Command::ResetPassword { account_id, .. }
        | Command::ChangeProfilePicture { account_id, .. }
        | Command::RemoveProfilePicture { account_id }
        | Command::GrantRole { account_id, .. }
        | Command::RevokeRole { account_id, .. } => *account_id,
        Command::CreateWorkspace { owner_id, .. } => *owner_id,
        Command::AddWorkspaceMember { actor_id, .. }
        | Command::RemoveWorkspaceMember { actor_id, .. }
        | Command::CreateAgent { actor_id, .. }
        | Command::DeleteAgent { actor_id, .. } => *actor_id,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use accounts_events::{Actor, ActorKind, EventMeta, RecordedEvent};
    use chrono::TimeZone;

    /// Returns the events of `super::decide`, for the rules that reply at once.
    fn decide(
        target: Target<'_>,
        command: &Command,
        expected_version: Option<u64>,
        now: DateTime<Utc>,
    ) -> Result<Vec<(EventTarget, DomainEvent)>, Rejection> {
        super::decide(target, command, expected_version, now).map(|decision| decision.events)
    }

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 12, 4, 12, 0, 0).unwrap()
    }

    fn given(events: &[DomainEvent]) -> AccountState {
        let mut state = AccountState::default();
        for (index, event) in events.iter().enumerate() {
            state.evolve(&RecordedEvent {
                meta: EventMeta {
                    event_id: Uuid::now_v7(),
                    source: "test".into(),
                    time: now(),
                    subject: "account".into(),
                    aggregate_type: "account".into(),
                    sequence: index as u64 + 1,
                    command_id: Uuid::now_v7(),
                    correlation_id: Uuid::now_v7(),
                    causation_id: Uuid::now_v7(),
                    actor: Actor {
                        kind: ActorKind::Anonymous,
                        id: None,
                        ip: None,
                        user_agent: None,
                    },
                    request_digest: None,
                    previous_hash: None,
                },
                event: event.clone(),
            });
        }
        state
    }

    fn registered() -> DomainEvent {
        DomainEvent::AccountRegistered(AccountRegistered {
            account_id: Uuid::nil(),
            email: "Zoe@Example.com".into(),
            email_normalized: "zoe@example.com".into(),
            name: "Zoë Müller".into(),
            password_hash: "$argon2id$stub".into(),
        })
    }

    fn update(changes: ProfileChanges) -> Command {
        Command::UpdateProfile {
            account_id: Uuid::nil(),
            changes,
        }
    }

    fn set(value: &str) -> Option<FieldValue> {
        Some(FieldValue {
            value: Some(value.into()),
        })
    }

    #[test]
    fn profile_update_emits_full_profile() {
        let state = given(&[registered()]);
        let command = update(ProfileChanges {
            company_name: set("My company"),
            ..Default::default()
        });
        let events = decide(Target::Account(&state), &command, Some(1), now()).unwrap();
        let [(EventTarget::Account, DomainEvent::ProfileUpdated(updated))] = events.as_slice()
        else {
            panic!("unexpected events {events:?}");
        };
        assert_eq!(updated.name, "Zoë Müller");
        assert_eq!(updated.company_name.as_deref(), Some("My company"));
        assert_eq!(updated.changed, vec!["company_name".to_owned()]);
    }

    #[test]
    fn profile_update_without_change_emits_nothing() {
        let state = given(&[registered()]);
        let command = update(ProfileChanges {
            name: Some("Zoë Müller".into()),
            ..Default::default()
        });
        assert_eq!(
            decide(Target::Account(&state), &command, None, now()),
            Ok(vec![])
        );
    }

    #[test]
    fn profile_update_with_stale_version_is_rejected() {
        let state = given(&[registered()]);
        let command = update(ProfileChanges {
            name: Some("New".into()),
            ..Default::default()
        });
        assert_eq!(
            decide(Target::Account(&state), &command, Some(0), now()),
            Err(Rejection::VersionMismatch {
                expected: 0,
                actual: 1
            })
        );
    }

    #[test]
    fn clearing_a_field_is_a_change() {
        let state = given(&[
            registered(),
            DomainEvent::ProfileUpdated(ProfileUpdated {
                name: "Zoë Müller".into(),
                company_name: Some("My company".into()),
                industry: None,
                business_phone: None,
                changed: vec!["company_name".into()],
            }),
        ]);
        let command = update(ProfileChanges {
            company_name: Some(FieldValue { value: None }),
            ..Default::default()
        });
        let events = decide(Target::Account(&state), &command, Some(2), now()).unwrap();
        assert_eq!(events.len(), 1);
    }

    #[test]
    fn update_of_missing_account_is_rejected() {
        let state = AccountState::default();
        let command = update(ProfileChanges {
            name: Some("New".into()),
            ..Default::default()
        });
        assert_eq!(
            decide(Target::Account(&state), &command, None, now()),
            Err(Rejection::AccountNotFound)
        );
    }

    #[test]
    fn registration_claims_the_address() {
        let claim = EmailClaimState::default();
        let account = AccountState::default();
        let command = Command::RegisterAccount {
            account_id: Uuid::nil(),
            email: "Zoe@Example.com".into(),
            email_normalized: "zoe@example.com".into(),
            name: "Zoë".into(),
            password_hash: "$argon2id$stub".into(),
            verification: None,
        };
        let events = decide(
            Target::Registration {
                claim: &claim,
                account: &account,
            },
            &command,
            None,
            now(),
        )
        .unwrap();
        assert_eq!(events.len(), 2);
        assert_eq!(events[0].0, EventTarget::EmailClaim);
        assert_eq!(events[1].0, EventTarget::Account);

        let taken = EmailClaimState {
            account_id: Some(Uuid::now_v7()),
            version: 1,
        };
        assert_eq!(
            decide(
                Target::Registration {
                    claim: &taken,
                    account: &account
                },
                &command,
                None,
                now()
            ),
            Err(Rejection::EmailTaken)
        );
    }

    fn start_session(credential_version: u64, expires_at: DateTime<Utc>) -> Command {
        Command::StartSession {
            account_id: Uuid::nil(),
            session_id: Uuid::now_v7(),
            token_sha256: "00".into(),
            expires_at,
            user_agent: None,
            ip: None,
            credential_version,
            second_factor: None,
        }
    }

    #[test]
    fn session_needs_current_credentials() {
        let state = given(&[registered()]);
        let later = now() + chrono::Duration::hours(1);
        assert!(decide(
            Target::Account(&state),
            &start_session(1, later),
            None,
            now()
        )
        .is_ok());
        assert_eq!(
            decide(
                Target::Account(&state),
                &start_session(0, later),
                None,
                now()
            ),
            Err(Rejection::CredentialsChanged)
        );
    }

    #[test]
    fn session_expiring_now_is_rejected() {
        let state = given(&[registered()]);
        assert_eq!(
            decide(
                Target::Account(&state),
                &start_session(1, now()),
                None,
                now()
            ),
            Err(Rejection::SessionAlreadyExpired)
        );
        let one_second_later = now() + chrono::Duration::seconds(1);
        assert!(decide(
            Target::Account(&state),
            &start_session(1, one_second_later),
            None,
            now()
        )
        .is_ok());
    }

    fn session_started(session_id: Uuid, expires_at: DateTime<Utc>) -> DomainEvent {
        DomainEvent::SessionStarted(SessionStarted {
            session_id,
            token_sha256: "00".into(),
            expires_at,
            client: SessionClient::default(),
            method: "password".into(),
        })
    }

    fn revoke_command(scope: RevokeScope, current_session: Uuid) -> Command {
        Command::RevokeSessions {
            account_id: Uuid::nil(),
            scope,
            current_session,
        }
    }

    #[test]
    fn revoke_all_ends_every_active_session() {
        let (a, b, expired) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
        let later = now() + chrono::Duration::hours(1);
        let state = given(&[
            registered(),
            session_started(a, later),
            session_started(b, later),
            session_started(expired, now()),
        ]);
        let events = decide(
            Target::Account(&state),
            &revoke_command(RevokeScope::All, a),
            None,
            now(),
        )
        .unwrap();
        let [(_, DomainEvent::SessionsRevoked(revoked))] = events.as_slice() else {
            panic!("unexpected events {events:?}");
        };
        assert_eq!(revoked.session_ids, vec![a, b]);
        assert_eq!(revoked.reason, "revoke_all");
    }

    #[test]
    fn revoking_an_ended_session_is_not_found() {
        let a = Uuid::now_v7();
        let later = now() + chrono::Duration::hours(1);
        let mut state = given(&[registered(), session_started(a, later)]);
        let scope = RevokeScope::One { session_id: a };
        let events = decide(
            Target::Account(&state),
            &revoke_command(scope, a),
            None,
            now(),
        )
        .unwrap();
        assert_eq!(events.len(), 1);

        state.sessions.get_mut(&a).unwrap().revoked_at = Some(now());
        assert_eq!(
            decide(
                Target::Account(&state),
                &revoke_command(scope, a),
                None,
                now()
            ),
            Err(Rejection::SessionNotFound)
        );
        let unknown = RevokeScope::One {
            session_id: Uuid::now_v7(),
        };
        assert_eq!(
            decide(
                Target::Account(&state),
                &revoke_command(unknown, a),
                None,
                now()
            ),
            Err(Rejection::SessionNotFound)
        );
    }

    #[test]
    fn password_change_keeps_only_current_session() {
        let (current, other) = (Uuid::now_v7(), Uuid::now_v7());
        let later = now() + chrono::Duration::hours(1);
        let state = given(&[
            registered(),
            session_started(current, later),
            session_started(other, later),
        ]);
        let command = Command::ChangePassword {
            account_id: Uuid::nil(),
            password_hash: "$argon2id$new".into(),
            credential_version: 1,
            current_session: current,
        };
        let events = decide(Target::Account(&state), &command, None, now()).unwrap();
        let [(_, DomainEvent::PasswordChanged(changed)), (_, DomainEvent::SessionsRevoked(revoked))] =
            events.as_slice()
        else {
            panic!("unexpected events {events:?}");
        };
        assert_eq!(changed.credential_version, 2);
        assert_eq!(revoked.session_ids, vec![other]);
        assert_eq!(revoked.reason, "password_changed");
    }

    #[test]
    fn password_change_on_stale_credentials_is_rejected() {
        let state = given(&[registered()]);
        let command = Command::ChangePassword {
            account_id: Uuid::nil(),
            password_hash: "$argon2id$new".into(),
            credential_version: 0,
            current_session: Uuid::now_v7(),
        };
        assert_eq!(
            decide(Target::Account(&state), &command, None, now()),
            Err(Rejection::CredentialsChanged)
        );
    }

    fn totp_enabled(step: u64) -> DomainEvent {
        DomainEvent::TotpEnabled(TotpEnabled {
            secret_ciphertext: "v1:k:n:c".into(),
            backup_code_hashes: vec!["h0".into(), "h1".into()],
            confirmed_step: step,
            credential_version: 2,
        })
    }

    fn mfa_session(factor: SecondFactor) -> Command {
        let later = now() + chrono::Duration::hours(1);
        match start_session(2, later) {
            Command::StartSession {
                account_id,
                session_id,
                token_sha256,
                expires_at,
                user_agent,
                ip,
                credential_version,
                ..
            } => Command::StartSession {
                account_id,
                session_id,
                token_sha256,
                expires_at,
                user_agent,
                ip,
                credential_version,
                second_factor: Some(factor),
            },
            other => other,
        }
    }

    #[test]
    fn mfa_session_needs_a_second_factor() {
        let state = given(&[registered(), totp_enabled(100)]);
        let later = now() + chrono::Duration::hours(1);
        assert_eq!(
            decide(
                Target::Account(&state),
                &start_session(2, later),
                None,
                now()
            ),
            Err(Rejection::MfaRequired)
        );
    }

    #[test]
    fn totp_step_is_used_once() {
        let mut state = given(&[registered(), totp_enabled(100)]);
        assert_eq!(
            decide(
                Target::Account(&state),
                &mfa_session(SecondFactor::Totp { step: 100 }),
                None,
                now()
            ),
            Err(Rejection::CodeAlreadyUsed)
        );
        let events = decide(
            Target::Account(&state),
            &mfa_session(SecondFactor::Totp { step: 101 }),
            None,
            now(),
        )
        .unwrap();
        assert!(matches!(
            events[0].1,
            DomainEvent::TotpStepUsed(TotpStepUsed { step: 101 })
        ));
        assert!(
            matches!(&events[1].1, DomainEvent::SessionStarted(started) if started.method == "password+totp")
        );

        state.last_totp_step = 101;
        assert_eq!(
            decide(
                Target::Account(&state),
                &mfa_session(SecondFactor::Totp { step: 101 }),
                None,
                now()
            ),
            Err(Rejection::CodeAlreadyUsed)
        );
    }

    #[test]
    fn backup_code_is_used_once() {
        let mut state = given(&[registered(), totp_enabled(100)]);
        let events = decide(
            Target::Account(&state),
            &mfa_session(SecondFactor::BackupCode {
                index: 1,
                hash: "h1".into(),
            }),
            None,
            now(),
        )
        .unwrap();
        assert!(matches!(
            events[0].1,
            DomainEvent::BackupCodeUsed(BackupCodeUsed { index: 1 })
        ));

        let stale = SecondFactor::BackupCode {
            index: 0,
            hash: "replaced".into(),
        };
        assert_eq!(
            decide(Target::Account(&state), &mfa_session(stale), None, now()),
            Err(Rejection::CodeAlreadyUsed)
        );

        state.backup_codes[1] = None;
        for index in [1, 2] {
            assert_eq!(
                decide(
                    Target::Account(&state),
                    &mfa_session(SecondFactor::BackupCode {
                        index,
                        hash: format!("h{index}")
                    }),
                    None,
                    now()
                ),
                Err(Rejection::CodeAlreadyUsed),
                "index {index}"
            );
        }
    }

    #[test]
    fn confirmation_needs_the_pending_secret() {
        let state = given(&[
            registered(),
            DomainEvent::TotpEnrollmentStarted(TotpEnrollmentStarted {
                secret_ciphertext: "newer".into(),
            }),
        ]);
        let confirm = |secret: &str| Command::ConfirmTotp {
            account_id: Uuid::nil(),
            secret_ciphertext: secret.into(),
            step: 5,
            backup_code_hashes: vec![],
            credential_version: 1,
        };
        assert_eq!(
            decide(Target::Account(&state), &confirm("older"), None, now()),
            Err(Rejection::NoPendingEnrollment)
        );
        let events = decide(Target::Account(&state), &confirm("newer"), None, now()).unwrap();
        assert!(
            matches!(&events[0].1, DomainEvent::TotpEnabled(enabled) if enabled.credential_version == 2)
        );
    }

    #[test]
    fn lock_starts_at_threshold_and_doubles() {
        let mut state = given(&[registered(), totp_enabled(100)]);
        let record = Command::RecordSecondFactorFailure {
            account_id: Uuid::nil(),
            lock_after: 3,
            base_lock_seconds: 30,
        };
        let mut locks = Vec::new();
        for _ in 0..5 {
            let events = decide(Target::Account(&state), &record, None, now()).unwrap();
            let [(_, DomainEvent::SecondFactorFailed(failed))] = events.as_slice() else {
                panic!("unexpected events {events:?}");
            };
            locks.push(
                failed
                    .locked_until
                    .map(|until| (until - now()).num_seconds()),
            );
            state.factor_failures = failed.failures;
            state.factor_locked_until = failed.locked_until;
        }
        assert_eq!(locks, vec![None, None, Some(30), Some(60), Some(120)]);

        let locked = decide(
            Target::Account(&state),
            &mfa_session(SecondFactor::Totp { step: 101 }),
            None,
            now(),
        );
        assert!(matches!(locked, Err(Rejection::FactorLocked { .. })));
        let after = now() + chrono::Duration::seconds(121);
        assert!(decide(
            Target::Account(&state),
            &mfa_session(SecondFactor::Totp { step: 101 }),
            None,
            after
        )
        .is_ok());
    }

    fn mail_token(hash: &str, expires_at: DateTime<Utc>) -> crate::wire::MailToken {
        crate::wire::MailToken {
            token_sha256: hash.into(),
            token_ciphertext: "v1:test:nonce:ciphertext".into(),
            expires_at,
        }
    }

    fn change_requested(hash: &str, expires_at: DateTime<Utc>) -> DomainEvent {
        DomainEvent::EmailVerificationRequested(EmailVerificationRequested {
            email: "New@Example.com".into(),
            email_normalized: "new@example.com".into(),
            purpose: PURPOSE_EMAIL_CHANGE.into(),
            token_sha256: hash.into(),
            token_ciphertext: "v1:test:nonce:ciphertext".into(),
            expires_at,
        })
    }

    fn confirm_email(hash: &str) -> Command {
        Command::ConfirmEmail {
            account_id: Uuid::nil(),
            token_sha256: hash.into(),
        }
    }

    #[test]
    fn confirm_change_starts_claim() {
        let state = given(&[
            registered(),
            change_requested("newer", now() + chrono::Duration::hours(1)),
        ]);
        let decision = super::decide(
            Target::Account(&state),
            &confirm_email("newer"),
            None,
            now(),
        )
        .unwrap();
        assert_eq!(decision.answer, Answer::Later);
        assert!(matches!(
            decision.events.as_slice(),
            [(_, DomainEvent::EmailChangeConfirmed(_))]
        ));
        assert!(matches!(
            decision.next,
            Some(Command::ClaimEmail { ref email_normalized, .. }) if email_normalized == "new@example.com"
        ));
    }

    #[test]
    fn only_the_latest_unexpired_link_confirms() {
        let state = given(&[
            registered(),
            change_requested("older", now() + chrono::Duration::hours(1)),
            change_requested("newer", now() + chrono::Duration::hours(1)),
        ]);
        assert_eq!(
            decide(
                Target::Account(&state),
                &confirm_email("older"),
                None,
                now()
            ),
            Err(Rejection::EmailTokenInvalid)
        );
        let expired = given(&[registered(), change_requested("newer", now())]);
        assert_eq!(
            decide(
                Target::Account(&expired),
                &confirm_email("newer"),
                None,
                now()
            ),
            Err(Rejection::EmailTokenInvalid)
        );
    }

    #[test]
    fn claim_of_another_account_aborts() {
        let claim = EmailClaimState {
            account_id: Some(Uuid::now_v7()),
            version: 1,
        };
        let command = Command::ClaimEmail {
            account_id: Uuid::nil(),
            email: "New@Example.com".into(),
            email_normalized: "new@example.com".into(),
        };
        let decision = super::decide(Target::Claim(&claim), &command, None, now()).unwrap();
        assert!(decision.events.is_empty());
        assert!(matches!(
            decision.next,
            Some(Command::AbortEmailChange { .. })
        ));

        let free = EmailClaimState::default();
        let decision = super::decide(Target::Claim(&free), &command, None, now()).unwrap();
        assert!(matches!(
            decision.events.as_slice(),
            [(EventTarget::EmailClaim, DomainEvent::EmailClaimed(_))]
        ));
        assert!(matches!(
            decision.next,
            Some(Command::CompleteEmailChange { .. })
        ));
    }

    #[test]
    fn completing_a_cancelled_change_gives_the_claim_back() {
        let state = given(&[registered()]);
        let command = Command::CompleteEmailChange {
            account_id: Uuid::nil(),
            email: "New@Example.com".into(),
            email_normalized: "new@example.com".into(),
        };
        let decision = super::decide(Target::Account(&state), &command, None, now()).unwrap();
        assert!(decision.events.is_empty());
        assert_eq!(
            decision.answer,
            Answer::Rejected(Rejection::EmailTokenInvalid)
        );
        assert!(matches!(
            decision.next,
            Some(Command::ReleaseEmail { ref email_normalized, .. }) if email_normalized == "new@example.com"
        ));
    }

    #[test]
    fn reset_link_void_after_password_change() {
        let requested = |hash: &str| {
            DomainEvent::PasswordResetRequested(PasswordResetRequested {
                email: "zoe@example.com".into(),
                token_sha256: hash.into(),
                token_ciphertext: "v1:test:nonce:ciphertext".into(),
                expires_at: now() + chrono::Duration::hours(1),
            })
        };
        let reset = Command::ResetPassword {
            account_id: Uuid::nil(),
            token_sha256: "token".into(),
            password_hash: "$argon2id$new".into(),
        };
        let state = given(&[registered(), requested("token")]);
        let events = decide(Target::Account(&state), &reset, None, now()).unwrap();
        assert!(matches!(events[0].1, DomainEvent::PasswordReset(_)));

        let changed = DomainEvent::PasswordChanged(PasswordChanged {
            password_hash: "$argon2id$other".into(),
            credential_version: 2,
        });
        let state = given(&[registered(), requested("token"), changed]);
        assert_eq!(
            decide(Target::Account(&state), &reset, None, now()),
            Err(Rejection::ResetTokenInvalid)
        );
        let request = Command::RequestPasswordReset {
            account_id: Uuid::nil(),
            token: mail_token("token", now()),
        };
        assert_eq!(
            decide(
                Target::Account(&AccountState::default()),
                &request,
                None,
                now()
            ),
            Err(Rejection::AccountNotFound)
        );
    }
}
