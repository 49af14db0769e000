-- One record per state-changing request and per sign-in or admin action: who, what, when,
-- from where, on which object, and the outcome. Rows are appended by the request, then
-- chained in order by the gateway's chainer (chain_seq, prev_hash, hash); once chained a
-- row can never change, and no row can be deleted.
CREATE TABLE audit_log (
    id             bigserial   PRIMARY KEY,
    at             timestamptz NOT NULL DEFAULT clock_timestamp(),
    tenant_id      text,
    actor          text        NOT NULL,
    user_id        text,
    source         text        NOT NULL,
    action         text        NOT NULL,
    object_id      text,
    outcome        int         NOT NULL,
    correlation_id text,
    chain_seq      bigint      UNIQUE,
    prev_hash      bytea,
    hash           bytea
);

CREATE INDEX audit_log_unchained ON audit_log (id) WHERE hash IS NULL;

CREATE TABLE audit_head (
    one  boolean PRIMARY KEY DEFAULT true CHECK (one),
    seq  bigint  NOT NULL,
    hash bytea   NOT NULL
);
INSERT INTO audit_head (seq, hash) VALUES (0, decode(repeat('00', 32), 'hex'));

CREATE FUNCTION audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' OR TG_OP = 'TRUNCATE' THEN
        RAISE EXCEPTION 'the audit log is append-only: % refused', TG_OP
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF OLD.hash IS NOT NULL
       OR (NEW.id, NEW.at, NEW.tenant_id, NEW.actor, NEW.user_id, NEW.source, NEW.action,
           NEW.object_id, NEW.outcome, NEW.correlation_id)
          IS DISTINCT FROM
          (OLD.id, OLD.at, OLD.tenant_id, OLD.actor, OLD.user_id, OLD.source, OLD.action,
           OLD.object_id, OLD.outcome, OLD.correlation_id) THEN
        RAISE EXCEPTION 'the audit log is append-only: a record cannot change'
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN NEW;
END $$;

CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_append_only();
CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION audit_append_only();

REVOKE DELETE, TRUNCATE ON audit_log, audit_head FROM {role};
