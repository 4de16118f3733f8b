-- When each session was last used, for idle expiry. The services write it, at most once a
-- minute per session; it is not derived from events, so rebuilding the projections keeps it.
CREATE TABLE session_activity (
    session_id   UUID PRIMARY KEY,
    last_seen_at TIMESTAMPTZ NOT NULL
);
