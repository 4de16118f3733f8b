-- When the password last changed; empty until the first change after registration.
ALTER TABLE credentials ADD COLUMN password_changed_at TIMESTAMPTZ;
