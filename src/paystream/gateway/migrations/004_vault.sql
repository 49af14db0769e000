-- The card vault. The number exists only sealed (AES-256-GCM under its own data key,
-- wrapped by a versioned key-encryption key); the fingerprint is a keyed HMAC of it, so
-- duplicates can be found without the number. The CVC is never stored.
CREATE TABLE cards (
    id            text        PRIMARY KEY,
    tenant_id     text        NOT NULL,
    owner_user_id text,
    brand         text        NOT NULL,
    last4         text        NOT NULL CHECK (last4 ~ '^[0-9]{4}$'),
    exp_month     int         NOT NULL CHECK (exp_month BETWEEN 1 AND 12),
    exp_year      int         NOT NULL,
    fingerprint   bytea       NOT NULL,
    kek_version   text        NOT NULL,
    wrapped_dek   bytea       NOT NULL,
    nonce         bytea       NOT NULL,
    ciphertext    bytea       NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX cards_fingerprint ON cards (tenant_id, fingerprint);
CREATE INDEX cards_kek_version ON cards (kek_version);
