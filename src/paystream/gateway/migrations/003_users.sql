-- Wallet end users (sign in with a password) and their refresh tokens.
CREATE TABLE users (
    id              text        PRIMARY KEY,
    tenant_id       text        NOT NULL,
    email           text        NOT NULL,
    name            text        NOT NULL,
    password_hash   text        NOT NULL,
    failed_logins   int         NOT NULL DEFAULT 0,
    locked_until    timestamptz,
    created_at      timestamptz NOT NULL DEFAULT now(),
    UNIQUE (tenant_id, email)
);

-- Only a hash of each refresh token is kept. Every use rotates it: the used token is
-- marked, a new one of the same family issued; a used token presented again means it was
-- stolen, and the whole family is revoked.
CREATE TABLE refresh_tokens (
    id          text        PRIMARY KEY,
    token_hash  bytea       NOT NULL UNIQUE,
    family_id   text        NOT NULL,
    user_id     text        NOT NULL REFERENCES users (id),
    client_id   text        NOT NULL,
    tenant_id   text        NOT NULL,
    scopes      text[]      NOT NULL,
    expires_at  timestamptz NOT NULL,
    used_at     timestamptz,
    revoked_at  timestamptz,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX refresh_tokens_family ON refresh_tokens (family_id);
