-- Signed checkpoints of the hash chain of 002 (paystream.ledger.checkpoints): the chain's hash
-- at a seq, signed by an Ed25519 key kept outside the database, so a chain rewritten and
-- rehashed from scratch no longer matches. Written by `paystream ledger verify` as the
-- operator, never by the service: its role may read them, not write them.
CREATE TABLE checkpoints (
    seq       bigint      PRIMARY KEY CHECK (seq > 0),
    hash      bytea       NOT NULL CHECK (octet_length(hash) = 32),
    key_id    text        NOT NULL,
    signature bytea       NOT NULL,
    signed_at timestamptz NOT NULL DEFAULT now()
);
REVOKE INSERT, UPDATE, DELETE, TRUNCATE ON checkpoints FROM {role};
