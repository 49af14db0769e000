CREATE TABLE clients (
    id          text        PRIMARY KEY,
    tenant_id   text        NOT NULL,
    name        text        NOT NULL,
    secret_hash text        NOT NULL,
    scopes      text[]      NOT NULL,
    disabled    boolean     NOT NULL DEFAULT false,
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- Keys that sign access tokens; the newest active one signs, all unexpired ones verify.
CREATE TABLE signing_keys (
    kid         text        PRIMARY KEY,
    algorithm   text        NOT NULL,
    private_pem text        NOT NULL,
    public_jwk  jsonb       NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    retired_at  timestamptz
);

CREATE TABLE idempotency_keys (
    client_id     text        NOT NULL,
    key           text        NOT NULL,
    fingerprint   text        NOT NULL,
    state         text        NOT NULL CHECK (state IN ('running', 'done')),
    status_code   int,
    response_body bytea,
    response_type text,
    locked_until  timestamptz NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (client_id, key)
);

CREATE INDEX idempotency_keys_age ON idempotency_keys (created_at);
