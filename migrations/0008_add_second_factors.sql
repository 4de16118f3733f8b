-- Second factors, read only by the command service. Secrets are AES-256-GCM ciphertexts and
-- backup codes SHA-256 hashes; backup_codes_used lists the 0-based indexes of used codes.
ALTER TABLE credentials
    ADD COLUMN totp_pending       TEXT,
    ADD COLUMN totp_secret        TEXT,
    ADD COLUMN last_totp_step     BIGINT    NOT NULL DEFAULT 0,
    ADD COLUMN backup_code_hashes TEXT[]    NOT NULL DEFAULT '{}',
    ADD COLUMN backup_codes_used  INTEGER[] NOT NULL DEFAULT '{}';
