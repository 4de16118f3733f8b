-- Account profiles as the dashboard reads them.
CREATE TABLE accounts (
    account_id       UUID PRIMARY KEY,
    email            TEXT        NOT NULL,
    email_normalized TEXT        NOT NULL,
    email_verified   BOOLEAN     NOT NULL DEFAULT false,
    name             TEXT        NOT NULL,
    company_name     TEXT,
    industry         TEXT,
    business_phone   TEXT,
    version          BIGINT      NOT NULL,
    created_at       TIMESTAMPTZ NOT NULL,
    updated_at       TIMESTAMPTZ NOT NULL
);
