//! The notifier: mails verification links, password-reset links and "your email address
//! was changed" notices over SMTP, at most once per event.
//!
//! It reads `accounts.events.v1` like a projection, from offsets stored in PostgreSQL under
//! the projection name `notifier`. Before a mail goes to the SMTP server, one transaction
//! stores a `mail_deliveries` row for the event and the offset after it. An event with a
//! row is never mailed again, so a crash between that commit and the SMTP exchange loses
//! the mail instead of sending it twice. Links whose token has expired are not mailed, and
//! a notifier without stored progress starts at the end of the log, so a recreated
//! database does not mail the history again.

use std::collections::HashMap;
use std::time::Duration;

use accounts_events::envelope::Decoded;
use accounts_events::{DomainEvent, RecordedEvent};
use accounts_platform::secrets::{link_context, SecretBox};
use accounts_platform::KafkaConfig;
use anyhow::{anyhow, Context};
use chrono::{DateTime, Utc};
use lettre::message::{Mailbox, MultiPart};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use rdkafka::consumer::StreamConsumer;
use rdkafka::message::Message as _;
use sqlx::PgPool;
use tokio::task::JoinHandle;
use uuid::Uuid;

/// The projection name under which the notifier stores its offsets.
pub const NOTIFIER: &str = "notifier";
/// Notices about a changed address older than this are not mailed when the notifier
/// catches up on an old log.
const NOTICE_MAX_AGE: chrono::Duration = chrono::Duration::hours(24);
/// Events without mail after which their offsets are stored.
const STORE_EVERY: u32 = 1000;
/// SMTP attempts per mail before it counts as failed.
const SEND_ATTEMPTS: u32 = 5;

/// Mail settings of `accounts-projector serve`.
#[derive(Clone, Debug, clap::Args)]
pub struct MailConfig {
    /// Host of the SMTP server the notifier hands mail to.
    #[arg(long, env = "SMTP_HOST", default_value = "127.0.0.1")]
    pub smtp_host: String,
    /// Port of the SMTP server; the connection is plain SMTP, meant for a local relay.
    #[arg(long, env = "SMTP_PORT", default_value_t = 2525)]
    pub smtp_port: u16,
    /// The sender of every mail.
    #[arg(
        long,
        env = "MAIL_FROM",
        default_value = "Account settings <no-reply@accounts.localhost>"
    )]
    pub from: String,
    /// The start of every link in a mail: the dashboard, whose pages post the link's token
    /// to the command API.
    #[arg(
        long,
        env = "MAIL_LINK_BASE_URL",
        default_value = "http://127.0.0.1:3000"
    )]
    pub link_base_url: String,
}

/// A mail ready to send.
#[derive(Debug)]
struct Mail {
    kind: &'static str,
    account_id: Uuid,
    recipient: String,
    subject: &'static str,
    text: String,
    html: String,
}

/// The mail an event calls for.
enum Planned {
    Send(Mail),
    /// A mail that is not sent, with the reason stored in its row.
    Skip(Mail, &'static str),
}

/// Starts the notifier on a task. The task ends with an error when the notifier fails.
pub async fn spawn_notifier(
    kafka: KafkaConfig,
    pool: PgPool,
    config: MailConfig,
    secrets: Option<SecretBox>,
) -> anyhow::Result<JoinHandle<anyhow::Result<()>>> {
    let from: Mailbox = config
        .from
        .parse()
        .with_context(|| format!("MAIL_FROM {:?} is not a valid mailbox", config.from))?;
    // Without stored progress (a new or recreated database) the notifier starts at the end
    // of the log: mail is about what happens now, and old links would be mailed again.
    let consumer =
        crate::assign_from_stored_offsets(&kafka, &pool, NOTIFIER, rdkafka::Offset::End).await?;
    let mailer = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&config.smtp_host)
        .port(config.smtp_port)
        .timeout(Some(Duration::from_secs(10)))
        .build();
    if secrets.is_none() {
        tracing::warn!("no ENCRYPTION_KEYS configured: mails with links cannot be written");
    }
    let notifier = Notifier {
        pool,
        topic: kafka.topics().events,
        config,
        from,
        mailer,
        secrets,
    };
    Ok(tokio::spawn(async move { notifier.run(consumer).await }))
}

struct Notifier {
    pool: PgPool,
    topic: String,
    config: MailConfig,
    from: Mailbox,
    mailer: AsyncSmtpTransport<Tokio1Executor>,
    secrets: Option<SecretBox>,
}

impl Notifier {
    async fn run(&self, consumer: StreamConsumer) -> anyhow::Result<()> {
        // Offsets after events that need no mail, stored when the topic goes quiet or
        // after STORE_EVERY of them.
        let mut pending: HashMap<i32, i64> = HashMap::new();
        let mut unstored = 0_u32;
        loop {
            let message =
                match tokio::time::timeout(Duration::from_millis(200), consumer.recv()).await {
                    Ok(message) => message.context("failed to read the event topic")?,
                    Err(_) => {
                        // Quiet: store how far the events without mail got.
                        self.store_offsets(&pending).await?;
                        pending.clear();
                        unstored = 0;
                        continue;
                    }
                };
            let (partition, offset) = (message.partition(), message.offset());
            let recorded = match RecordedEvent::decode(message.payload().unwrap_or_default()) {
                Ok(Decoded::Event(recorded)) => Some(*recorded),
                Ok(Decoded::Unknown { .. }) => None,
                Err(error) => {
                    metrics::counter!("notifier_undecodable_events_total").increment(1);
                    tracing::error!(%error, partition, offset, "skipped undecodable event");
                    None
                }
            };
            drop(message);
            let planned = recorded
                .as_ref()
                .and_then(|recorded| self.plan(recorded, Utc::now()));
            match (recorded, planned) {
                (Some(recorded), Some(planned)) => {
                    pending.insert(partition, offset + 1);
                    self.deliver(&recorded, planned, &pending).await?;
                    pending.clear();
                    unstored = 0;
                }
                _ => {
                    pending.insert(partition, offset + 1);
                    unstored += 1;
                    if unstored >= STORE_EVERY {
                        self.store_offsets(&pending).await?;
                        pending.clear();
                        unstored = 0;
                    }
                }
            }
        }
    }

    /// Returns the mail an event calls for, if any.
    fn plan(&self, recorded: &RecordedEvent, now: DateTime<Utc>) -> Option<Planned> {
        let account_id = Uuid::parse_str(&recorded.meta.subject).ok()?;
        match &recorded.event {
            DomainEvent::EmailVerificationRequested(requested) => {
                let (kind, subject, path, intro) = if requested.purpose == "registration" {
                    (
                        "verify_email",
                        "Verify your email address",
                        "verify-email",
                        "Please confirm that this is your email address by opening this link:",
                    )
                } else {
                    (
                        "confirm_email_change",
                        "Confirm your new email address",
                        "confirm-email-change",
                        "You asked to use this address for your account. Open this link to confirm the change:",
                    )
                };
                Some(self.link_mail(LinkMail {
                    kind,
                    account_id,
                    recipient: &requested.email,
                    subject,
                    intro,
                    path,
                    sealed_token: &requested.token_ciphertext,
                    expires_at: requested.expires_at,
                    now,
                }))
            }
            DomainEvent::PasswordResetRequested(requested) => Some(self.link_mail(LinkMail {
                kind: "password_reset",
                account_id,
                recipient: &requested.email,
                subject: "Reset your password",
                intro: "Someone asked to reset the password of your account. If it was you, open this link to choose a new password:",
                path: "reset-password",
                sealed_token: &requested.token_ciphertext,
                expires_at: requested.expires_at,
                now,
            })),
            DomainEvent::EmailChanged(changed) => {
                let masked = mask_address(&changed.email);
                let text = format!(
                    "The email address of your account was changed to {masked}.\n\n\
                     If you did not make this change, reset your password and contact support.\n"
                );
                let html = format!(
                    "<p>The email address of your account was changed to {}.</p>\
                     <p>If you did not make this change, reset your password and contact support.</p>",
                    escape_html(&masked)
                );
                let mail = Mail {
                    kind: "email_changed_notice",
                    account_id,
                    recipient: changed.previous_email.clone(),
                    subject: "Your email address was changed",
                    text,
                    html,
                };
                if now - recorded.meta.time > NOTICE_MAX_AGE {
                    Some(Planned::Skip(mail, "stale"))
                } else {
                    Some(Planned::Send(mail))
                }
            }
            _ => None,
        }
    }

    fn link_mail(&self, link: LinkMail<'_>) -> Planned {
        let mut mail = Mail {
            kind: link.kind,
            account_id: link.account_id,
            recipient: link.recipient.to_owned(),
            subject: link.subject,
            text: String::new(),
            html: String::new(),
        };
        if link.expires_at <= link.now {
            return Planned::Skip(mail, "expired");
        }
        let Some(secrets) = &self.secrets else {
            return Planned::Skip(mail, "no_encryption_key");
        };
        let token = match secrets
            .open(link.sealed_token, &link_context(&link.account_id))
            .map(String::from_utf8)
        {
            Ok(Ok(token)) => token,
            _ => return Planned::Skip(mail, "token_unreadable"),
        };
        let url = format!(
            "{}/{}?token={token}",
            self.config.link_base_url.trim_end_matches('/'),
            link.path
        );
        let expires = link.expires_at.format("%Y-%m-%d %H:%M UTC");
        mail.text = format!(
            "{}\n\n{url}\n\nThe link works once and expires at {expires}. \
             If you did not ask for this, ignore this mail.\n",
            link.intro
        );
        mail.html = format!(
            "<p>{}</p><p><a href=\"{url}\">{url}</a></p>\
             <p>The link works once and expires at {expires}. If you did not ask for this, ignore this mail.</p>",
            escape_html(link.intro),
            url = escape_html(&url)
        );
        Planned::Send(mail)
    }

    /// Stores the delivery row and the offsets, then sends the mail.
    async fn deliver(
        &self,
        recorded: &RecordedEvent,
        planned: Planned,
        offsets: &HashMap<i32, i64>,
    ) -> anyhow::Result<()> {
        let (mail, status) = match planned {
            Planned::Send(mail) => (mail, "sending"),
            Planned::Skip(mail, reason) => {
                tracing::info!(kind = mail.kind, event_id = %recorded.meta.event_id, reason, "mail not sent");
                (mail, "skipped")
            }
        };
        let event_id = recorded.meta.event_id;
        let mut transaction = self.pool.begin().await.context("failed to begin")?;
        let inserted = sqlx::query(
            "INSERT INTO mail_deliveries (event_id, account_id, kind, recipient, status) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (event_id) DO NOTHING",
        )
        .bind(event_id)
        .bind(mail.account_id)
        .bind(mail.kind)
        .bind(&mail.recipient)
        .bind(status)
        .execute(&mut *transaction)
        .await
        .context("failed to record the mail")?
        .rows_affected()
            == 1;
        store_offsets(&mut transaction, &self.topic, offsets).await?;
        transaction
            .commit()
            .await
            .context("failed to commit the mail record")?;
        if !inserted || status != "sending" {
            return Ok(());
        }

        let result = self.send(event_id, &mail).await;
        let (status, error) = match &result {
            Ok(()) => ("sent", None),
            Err(error) => ("failed", Some(format!("{error:#}"))),
        };
        metrics::counter!("notifier_mails_total", "kind" => mail.kind, "status" => status)
            .increment(1);
        if let Some(error) = &error {
            tracing::error!(kind = mail.kind, %event_id, error, "mail not delivered");
        }
        sqlx::query(
            "UPDATE mail_deliveries SET status = $2, error = $3, finished_at = now() WHERE event_id = $1",
        )
        .bind(event_id)
        .bind(status)
        .bind(error)
        .execute(&self.pool)
        .await
        .context("failed to record the mail's result")?;
        Ok(())
    }

    /// Hands the mail to the SMTP server, retrying with a growing pause when the server
    /// cannot be reached.
    async fn send(&self, event_id: Uuid, mail: &Mail) -> anyhow::Result<()> {
        let message = Message::builder()
            .from(self.from.clone())
            .to(recipient(&mail.recipient)?)
            .subject(mail.subject)
            .message_id(Some(format!("<{event_id}@accounts.localhost>")))
            .multipart(MultiPart::alternative_plain_html(
                mail.text.clone(),
                mail.html.clone(),
            ))
            .context("failed to build the mail")?;
        let mut pause = Duration::from_millis(250);
        for attempt in 1..=SEND_ATTEMPTS {
            match self.mailer.send(message.clone()).await {
                Ok(_) => return Ok(()),
                // A permanent rejection will not change on retry.
                Err(error) if error.is_permanent() => {
                    return Err(anyhow!(error).context("the SMTP server rejected the mail"))
                }
                Err(error) if attempt == SEND_ATTEMPTS => {
                    return Err(anyhow!(error).context("the SMTP server could not be reached"))
                }
                Err(error) => {
                    tracing::warn!(%error, attempt, "SMTP attempt failed; retrying");
                    tokio::time::sleep(pause).await;
                    pause *= 2;
                }
            }
        }
        Ok(())
    }

    async fn store_offsets(&self, offsets: &HashMap<i32, i64>) -> anyhow::Result<()> {
        if offsets.is_empty() {
            return Ok(());
        }
        let mut transaction = self.pool.begin().await.context("failed to begin")?;
        store_offsets(&mut transaction, &self.topic, offsets).await?;
        transaction
            .commit()
            .await
            .context("failed to store notifier offsets")
    }
}

struct LinkMail<'a> {
    kind: &'static str,
    account_id: Uuid,
    recipient: &'a str,
    subject: &'static str,
    intro: &'static str,
    path: &'static str,
    sealed_token: &'a str,
    expires_at: DateTime<Utc>,
    now: DateTime<Utc>,
}

async fn store_offsets(
    transaction: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    topic: &str,
    offsets: &HashMap<i32, i64>,
) -> anyhow::Result<()> {
    for (partition, next_offset) in offsets {
        sqlx::query(
            "INSERT INTO projection_offsets (projection, topic, partition, next_offset, updated_at) \
             VALUES ($1, $2, $3, $4, now()) \
             ON CONFLICT (projection, topic, partition) DO UPDATE \
             SET next_offset = GREATEST(projection_offsets.next_offset, EXCLUDED.next_offset), updated_at = now()",
        )
        .bind(NOTIFIER)
        .bind(topic)
        .bind(partition)
        .bind(next_offset)
        .execute(&mut **transaction)
        .await
        .context("failed to store notifier offsets")?;
    }
    Ok(())
}

/// Parses the recipient with its domain in ASCII form (punycode), which every SMTP server
/// accepts. The local part stays as typed.
///
/// NOTE: a non-ASCII local part needs an SMTP server with SMTPUTF8; aiosmtpd has none, and
/// such mail fails after its retries with a misleading "could not be reached".
fn recipient(address: &str) -> anyhow::Result<Mailbox> {
    let (local, domain) = address
        .rsplit_once('@')
        .ok_or_else(|| anyhow!("the recipient address has no @"))?;
    let domain = idna::domain_to_ascii(domain).context("the recipient domain is invalid")?;
    format!("{local}@{domain}")
        .parse()
        .context("the recipient address is invalid")
}

/// Shows the first character of the local part and the domain: `a***@example.com`.
fn mask_address(address: &str) -> String {
    match address.rsplit_once('@') {
        Some((local, domain)) => {
            let first: String = local.chars().take(1).collect();
            format!("{first}***@{domain}")
        }
        None => "***".to_owned(),
    }
}

fn escape_html(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => escaped.push_str("&amp;"),
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            '"' => escaped.push_str("&quot;"),
            '\'' => escaped.push_str("&#39;"),
            c => escaped.push(c),
        }
    }
    escaped
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mask_keeps_first_local_character() {
        assert_eq!(mask_address("alice+work@example.com"), "a***@example.com");
        assert_eq!(mask_address("no-at-sign"), "***");
    }

    #[test]
    fn escapes_markup() {
        assert_eq!(
            escape_html("<a href=\"x\">'&'</a>"),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
    }

    #[test]
    fn international_domains_are_sent_in_ascii() {
        let mailbox = recipient("user@bücher.example").unwrap();
        assert!(mailbox
            .email
            .to_string()
            .ends_with("@xn--bcher-kva.example"));
    }
}
