-- The Kafka cluster each projection reads from. Stored offsets are meaningful only for that
-- cluster's log, so the projector refuses to continue a projection from another cluster.
CREATE TABLE projection_sources (
    projection TEXT NOT NULL,
    topic      TEXT NOT NULL,
    cluster_id TEXT NOT NULL,
    PRIMARY KEY (projection, topic)
);
