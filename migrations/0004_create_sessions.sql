-- Sessions, found by the SHA-256 of their token. The token itself is never stored.
CREATE TABLE sessions (
    session_id   UUID PRIMARY KEY,
    account_id   UUID        NOT NULL,
    token_sha256 TEXT        NOT NULL UNIQUE,
    created_at   TIMESTAMPTZ NOT NULL,
    expires_at   TIMESTAMPTZ NOT NULL,
    user_agent   TEXT,
    ip           TEXT,
    revoked_at   TIMESTAMPTZ
);

CREATE INDEX sessions_account_id ON sessions (account_id);
