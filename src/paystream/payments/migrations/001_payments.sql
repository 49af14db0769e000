CREATE TABLE payments (
    id                     text        PRIMARY KEY,
    tenant_id              text        NOT NULL,
    client_id              text        NOT NULL,
    kind                   text        NOT NULL CHECK (kind IN ('transfer', 'deposit')),
    status                 text        NOT NULL CHECK (status IN
                               ('processing', 'requires_review', 'succeeded', 'failed', 'declined')),
    amount                 bigint      NOT NULL CHECK (amount > 0),
    currency               text        NOT NULL,
    source_account_id      text,
    destination_account_id text        NOT NULL,
    failure_code           text,
    description            text,
    metadata               jsonb       NOT NULL DEFAULT '{}',
    idempotency_key        text,
    created_at             timestamptz NOT NULL DEFAULT now(),
    updated_at             timestamptz NOT NULL DEFAULT now(),
    CHECK ((kind = 'deposit') = (source_account_id IS NULL))
);

CREATE UNIQUE INDEX payments_idempotency ON payments (tenant_id, idempotency_key);
CREATE INDEX payments_by_tenant ON payments (tenant_id, id DESC);
CREATE INDEX payments_by_source ON payments (source_account_id, id DESC);
CREATE INDEX payments_by_destination ON payments (destination_account_id, id DESC);
CREATE INDEX payments_open ON payments (tenant_id, status, id DESC)
    WHERE status IN ('processing', 'requires_review');

-- The timeline of each payment: one row per status change.
CREATE TABLE payment_events (
    id           text        PRIMARY KEY,
    payment_id   text        NOT NULL REFERENCES payments (id),
    type         text        NOT NULL,
    status       text        NOT NULL,
    failure_code text,
    created_at   timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX payment_events_by_payment ON payment_events (payment_id, created_at, id);

-- What payments knows of accounts (tenant, currency and owner never change once created).
CREATE TABLE account_directory (
    account_id    text PRIMARY KEY,
    tenant_id     text NOT NULL,
    currency      text NOT NULL,
    owner_user_id text
);

CREATE INDEX account_directory_by_owner ON account_directory (tenant_id, owner_user_id);
