-- Consecutive wrong second-factor codes and the lock they set.
ALTER TABLE credentials
    ADD COLUMN mfa_failures     INTEGER NOT NULL DEFAULT 0,
    ADD COLUMN mfa_locked_until TIMESTAMPTZ;
