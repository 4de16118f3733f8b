-- The history of every account for auditors, in order, with hashes, encrypted secrets and
-- tokens redacted. `data` is in the current schema version, so old records read upcast.
CREATE TABLE audit_events (
    account_id     UUID        NOT NULL,
    sequence       BIGINT      NOT NULL,
    event_id       UUID        NOT NULL,
    event_type     TEXT        NOT NULL,
    schema_version INTEGER     NOT NULL,
    time           TIMESTAMPTZ NOT NULL,
    actor          JSONB       NOT NULL,
    data           JSONB       NOT NULL,
    kafka_partition INTEGER    NOT NULL,
    kafka_offset   BIGINT      NOT NULL,
    PRIMARY KEY (account_id, sequence)
);

CREATE INDEX audit_events_time ON audit_events (account_id, time);

-- Roles that operators gave the account, such as 'auditor'.
ALTER TABLE accounts ADD COLUMN roles TEXT[] NOT NULL DEFAULT '{}';
