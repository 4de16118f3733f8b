-- Workspaces with their members and agents. The dashboard reads them joined with the
-- accounts table, so every list shows each member's and owner's current profile.
CREATE TABLE workspaces (
    workspace_id UUID PRIMARY KEY,
    name         TEXT        NOT NULL,
    owner_id     UUID        NOT NULL,
    version      BIGINT      NOT NULL,
    created_at   TIMESTAMPTZ NOT NULL
);

CREATE TABLE workspace_members (
    workspace_id UUID        NOT NULL,
    account_id   UUID        NOT NULL,
    added_at     TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (workspace_id, account_id)
);

CREATE INDEX workspace_members_account ON workspace_members (account_id);

CREATE TABLE agents (
    agent_id     UUID PRIMARY KEY,
    workspace_id UUID        NOT NULL,
    name         TEXT        NOT NULL,
    owner_id     UUID        NOT NULL,
    created_at   TIMESTAMPTZ NOT NULL
);

CREATE INDEX agents_workspace ON agents (workspace_id);
CREATE INDEX agents_owner ON agents (owner_id);

-- Picture renditions, addressed by the SHA-256 of their bytes. The command service stores
-- one before it sends the command whose event names it, so events never carry image bytes.
CREATE TABLE pictures (
    sha256       TEXT PRIMARY KEY,
    content_type TEXT        NOT NULL,
    bytes        BYTEA       NOT NULL,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now()
);

ALTER TABLE accounts ADD COLUMN picture_sha256 TEXT;
