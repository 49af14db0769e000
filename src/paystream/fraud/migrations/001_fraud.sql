-- One decision per payment, whatever happens to the events that carried it.
CREATE TABLE decisions (
    payment_id text        PRIMARY KEY,
    tenant_id  text        NOT NULL,
    outcome    text        NOT NULL CHECK (outcome IN ('approve', 'decline', 'review')),
    reasons    text[]      NOT NULL DEFAULT '{}',
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE reviews (
    id          text        PRIMARY KEY,
    tenant_id   text        NOT NULL,
    payment_id  text        NOT NULL UNIQUE,
    status      text        NOT NULL CHECK (status IN ('open', 'approved', 'declined')),
    reasons     text[]      NOT NULL DEFAULT '{}',
    payment     jsonb       NOT NULL,
    amount      bigint      NOT NULL,
    currency    text        NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    decided_at  timestamptz,
    decided_by  text,
    note        text
);

CREATE INDEX reviews_queue ON reviews (tenant_id, status, id DESC);
