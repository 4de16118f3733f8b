-- Password hashes and credential versions, read only by the command service to sign users in.
CREATE TABLE credentials (
    account_id         UUID PRIMARY KEY,
    email_normalized   TEXT   NOT NULL,
    password_hash      TEXT   NOT NULL,
    credential_version BIGINT NOT NULL,
    version            BIGINT NOT NULL
);

CREATE INDEX credentials_email_normalized ON credentials (email_normalized);
