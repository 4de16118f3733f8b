-- The next offset to read per topic partition, written in the same transaction as the
-- read-model rows of the events before it, so a restart resumes exactly where it stopped.
CREATE TABLE projection_offsets (
    projection  TEXT    NOT NULL,
    topic       TEXT    NOT NULL,
    partition   INTEGER NOT NULL,
    next_offset BIGINT  NOT NULL,
    updated_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (projection, topic, partition)
);
