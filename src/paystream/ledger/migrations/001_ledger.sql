-- Accounts carry running totals; entries are the immutable truth they summarise.

CREATE TABLE accounts (
    id              text        PRIMARY KEY,
    tenant_id       text        NOT NULL,
    currency        text        NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    kind            text        NOT NULL CHECK (kind IN ('wallet', 'settlement')),
    normal_balance  text        NOT NULL CHECK (normal_balance IN ('debit', 'credit')),
    allow_overdraft boolean     NOT NULL,
    owner_user_id   text,
    metadata        jsonb       NOT NULL DEFAULT '{}',
    create_key      text,
    debits_posted   bigint      NOT NULL DEFAULT 0 CHECK (debits_posted >= 0),
    credits_posted  bigint      NOT NULL DEFAULT 0 CHECK (credits_posted >= 0),
    debits_pending  bigint      NOT NULL DEFAULT 0 CHECK (debits_pending >= 0),
    credits_pending bigint      NOT NULL DEFAULT 0 CHECK (credits_pending >= 0),
    created_at      timestamptz NOT NULL DEFAULT now(),
    -- An account that forbids overdraft never shows a negative available balance.
    CONSTRAINT no_forbidden_overdraft CHECK (
        allow_overdraft
        OR (normal_balance = 'credit' AND credits_posted - debits_posted - debits_pending >= 0)
        OR (normal_balance = 'debit' AND debits_posted - credits_posted - credits_pending >= 0)
    )
);

CREATE UNIQUE INDEX accounts_one_settlement ON accounts (tenant_id, currency) WHERE kind = 'settlement';
CREATE INDEX accounts_by_tenant ON accounts (tenant_id, id);
CREATE UNIQUE INDEX accounts_create_key ON accounts (tenant_id, create_key);

CREATE TABLE transfers (
    id           text        PRIMARY KEY,
    tenant_id    text        NOT NULL,
    external_ref text        NOT NULL,
    kind         text        NOT NULL,
    amount       bigint      NOT NULL CHECK (amount > 0),
    currency     text        NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    UNIQUE (tenant_id, external_ref)
);

CREATE TABLE entries (
    id          bigserial   PRIMARY KEY,
    transfer_id text        NOT NULL REFERENCES transfers (id),
    account_id  text        NOT NULL REFERENCES accounts (id),
    direction   text        NOT NULL CHECK (direction IN ('debit', 'credit')),
    amount      bigint      NOT NULL CHECK (amount > 0),
    currency    text        NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX entries_by_account ON entries (account_id, id DESC);
CREATE INDEX entries_by_transfer ON entries (transfer_id);

-- A payment the ledger refused: remembered so a replayed order is refused again, never posted.
CREATE TABLE rejections (
    tenant_id    text        NOT NULL,
    external_ref text        NOT NULL,
    code         text        NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, external_ref)
);

-- Entries and transfers are history: never updated, never deleted.
CREATE FUNCTION refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'ledger history is immutable: % on % refused', TG_OP, TG_TABLE_NAME
        USING ERRCODE = 'insufficient_privilege';
END $$;

CREATE TRIGGER entries_immutable BEFORE UPDATE OR DELETE ON entries
    FOR EACH ROW EXECUTE FUNCTION refuse_change();
CREATE TRIGGER entries_no_truncate BEFORE TRUNCATE ON entries
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_change();
CREATE TRIGGER transfers_immutable BEFORE UPDATE OR DELETE ON transfers
    FOR EACH ROW EXECUTE FUNCTION refuse_change();

REVOKE UPDATE, DELETE, TRUNCATE ON entries, transfers, rejections FROM {role};
