-- Users' names and emails are personal data: kept sealed like card numbers (envelope
-- encryption, platform/crypto.py), found by a keyed blind index of the normalised email.
ALTER TABLE users
    ADD COLUMN email_index   bytea,
    ADD COLUMN kek_version   text,
    ADD COLUMN wrapped_dek   bytea,
    ADD COLUMN nonce         bytea,
    ADD COLUMN ciphertext    bytea,
    ALTER COLUMN email DROP NOT NULL,
    ALTER COLUMN name DROP NOT NULL;
ALTER TABLE users DROP CONSTRAINT users_tenant_id_email_key;
CREATE UNIQUE INDEX users_email_index ON users (tenant_id, email_index);
CREATE INDEX users_kek_version ON users (kek_version);
