-- The new address of an email change while its mailed link waits to be opened.
ALTER TABLE accounts ADD COLUMN pending_email TEXT;

CREATE INDEX accounts_email_normalized ON accounts (email_normalized);

-- One row per event the notifier mails, written before the mail goes to the SMTP server.
-- An event with a row is never mailed again, so a crash loses a mail rather than sending it
-- twice. status: sending, sent, failed, or skipped (its link expired before it was mailed).
CREATE TABLE mail_deliveries (
    event_id     UUID PRIMARY KEY,
    account_id   UUID        NOT NULL,
    kind         TEXT        NOT NULL,
    recipient    TEXT        NOT NULL,
    status       TEXT        NOT NULL,
    attempted_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    finished_at  TIMESTAMPTZ,
    error        TEXT
);
