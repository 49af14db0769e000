CREATE TABLE endpoints (
    id          text        PRIMARY KEY,
    tenant_id   text        NOT NULL,
    url         text        NOT NULL,
    events      text[]      NOT NULL,
    secret      text        NOT NULL,
    description text,
    enabled     boolean     NOT NULL DEFAULT true,
    create_key  text,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX endpoints_by_tenant ON endpoints (tenant_id, id DESC);
CREATE UNIQUE INDEX endpoints_create_key ON endpoints (tenant_id, create_key);

-- One row per (endpoint, event): the body is fixed at enqueue time and re-signed per attempt.
CREATE TABLE deliveries (
    id              bigserial   PRIMARY KEY,
    event_id        text        NOT NULL,
    endpoint_id     text        NOT NULL REFERENCES endpoints (id),
    tenant_id       text        NOT NULL,
    event_type      text        NOT NULL,
    body            bytea       NOT NULL,
    status          text        NOT NULL DEFAULT 'pending'
                        CHECK (status IN ('pending', 'delivered', 'dead')),
    attempts        int         NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    last_status     int,
    last_error      text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    delivered_at    timestamptz,
    UNIQUE (endpoint_id, event_id)
);

CREATE INDEX deliveries_due ON deliveries (next_attempt_at) WHERE status = 'pending';

CREATE FUNCTION notify_deliveries() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify(TG_TABLE_SCHEMA || '_deliveries', '');
    RETURN NULL;
END $$;

CREATE TRIGGER deliveries_notify AFTER INSERT ON deliveries
    FOR EACH STATEMENT EXECUTE FUNCTION notify_deliveries();
