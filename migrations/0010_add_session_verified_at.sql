-- The last password or second-factor check in each session, for actions that need one
-- within the last minutes. Sign-in is such a check; empty means the session's start.
ALTER TABLE sessions ADD COLUMN verified_at TIMESTAMPTZ;
