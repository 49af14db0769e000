-- Limits, multi-leg and multi-currency transfers, holds (two-phase transfers) and refunds.

-- Exchange accounts: one per tenant and currency, the middle of a four-leg exchange.
ALTER TABLE accounts DROP CONSTRAINT accounts_kind_check;
ALTER TABLE accounts ADD CONSTRAINT accounts_kind_check
    CHECK (kind IN ('wallet', 'settlement', 'exchange'));
CREATE UNIQUE INDEX accounts_one_exchange ON accounts (tenant_id, currency) WHERE kind = 'exchange';

-- The least available balance an account may show, in its normal direction: 0 forbids
-- overdraft, a negative number is a credit line, NULL is no limit (overdraft accounts only).
ALTER TABLE accounts ADD COLUMN lower_limit bigint;
UPDATE accounts SET lower_limit = 0 WHERE NOT allow_overdraft;
ALTER TABLE accounts DROP CONSTRAINT no_forbidden_overdraft;
ALTER TABLE accounts ADD CONSTRAINT lower_limit_matches_overdraft CHECK (
    (allow_overdraft AND (lower_limit IS NULL OR lower_limit < 0))
    OR (NOT allow_overdraft AND lower_limit = 0)
);
ALTER TABLE accounts ADD CONSTRAINT within_lower_limit CHECK (
    lower_limit IS NULL
    OR (normal_balance = 'credit' AND credits_posted - debits_posted - debits_pending >= lower_limit)
    OR (normal_balance = 'debit' AND debits_posted - credits_posted - credits_pending >= lower_limit)
);

-- A transfer's phase: posted in one step, a hold (pending), or the action that closed a hold.
-- Only posted and post_pending transfers have entries; the others move pending totals.
ALTER TABLE transfers
    ADD COLUMN phase      text  NOT NULL DEFAULT 'posted'
        CHECK (phase IN ('posted', 'pending', 'post_pending', 'void_pending', 'expire_pending')),
    ADD COLUMN pending_id text  REFERENCES transfers (id),
    ADD COLUMN refund_of  text  REFERENCES transfers (id),
    ADD COLUMN metadata   jsonb NOT NULL DEFAULT '{}',
    ADD CONSTRAINT closes_a_hold CHECK ((pending_id IS NOT NULL) = (phase LIKE '%\_pending')),
    ADD CONSTRAINT refunds_post CHECK (refund_of IS NULL OR phase = 'posted');
-- An external ref names one transfer (posted or pending) per tenant; the transfer that
-- closes a hold carries the hold's ref and is unique by the hold it closes instead.
ALTER TABLE transfers DROP CONSTRAINT transfers_tenant_id_external_ref_key;
CREATE UNIQUE INDEX transfers_by_ref ON transfers (tenant_id, external_ref)
    WHERE phase IN ('posted', 'pending');
-- A hold is closed at most once: one post, void or expiry.
CREATE UNIQUE INDEX transfers_one_close ON transfers (pending_id) WHERE pending_id IS NOT NULL;
CREATE INDEX transfers_refunds ON transfers (refund_of) WHERE refund_of IS NOT NULL;

-- The open state of each pending transfer. Its legs are fixed; only its status moves, once,
-- away from 'pending', naming the transfer that closed it. `paystream ledger verify` checks
-- the status against that transfer and the accounts' pending totals against the open holds.
CREATE TABLE holds (
    transfer_id       text        PRIMARY KEY REFERENCES transfers (id),
    tenant_id         text        NOT NULL,
    debit_account_id  text        NOT NULL REFERENCES accounts (id),
    credit_account_id text        NOT NULL REFERENCES accounts (id),
    amount            bigint      NOT NULL CHECK (amount > 0),
    currency          text        NOT NULL,
    status            text        NOT NULL DEFAULT 'pending'
        CHECK (status IN ('pending', 'posted', 'voided', 'expired')),
    closed_by         text        REFERENCES transfers (id),
    expires_at        timestamptz,
    created_at        timestamptz NOT NULL DEFAULT now(),
    CHECK ((status = 'pending') = (closed_by IS NULL))
);
CREATE INDEX holds_due ON holds (expires_at) WHERE status = 'pending' AND expires_at IS NOT NULL;

CREATE FUNCTION hold_closes_once() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.status <> 'pending'
       OR (NEW.transfer_id, NEW.tenant_id, NEW.debit_account_id, NEW.credit_account_id,
           NEW.amount, NEW.currency, NEW.expires_at, NEW.created_at)
          IS DISTINCT FROM
          (OLD.transfer_id, OLD.tenant_id, OLD.debit_account_id, OLD.credit_account_id,
           OLD.amount, OLD.currency, OLD.expires_at, OLD.created_at) THEN
        RAISE EXCEPTION 'a hold only moves from pending to closed, once'
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN NEW;
END $$;

CREATE TRIGGER holds_close_once BEFORE UPDATE ON holds
    FOR EACH ROW EXECUTE FUNCTION hold_closes_once();
CREATE TRIGGER holds_kept BEFORE DELETE ON holds
    FOR EACH ROW EXECUTE FUNCTION refuse_change();

REVOKE DELETE, TRUNCATE ON holds FROM {role};
