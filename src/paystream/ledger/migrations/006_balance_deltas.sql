-- Hot accounts. A leg on an account's normal side (a credit to a wallet) can never take the
-- account below its lower limit, so it needs no lock for a check. Such legs are not written
-- to the account row in the posting transaction: they are appended here, with no lock on the
-- row, so a thousand payers can pay one merchant at once without queueing on its row. The
-- next transaction that locks the account (to check a debit) folds its deltas into the row,
-- and the ledger's folder folds the rest in the background.
--
-- An account's totals are its row plus its deltas: `account_totals` is that sum, and every
-- reader of balances (API, verify, invariants) reads it.
CREATE TABLE balance_deltas (
    id              bigserial PRIMARY KEY,
    account_id      text   NOT NULL REFERENCES accounts (id),
    debits_posted   bigint NOT NULL DEFAULT 0,
    credits_posted  bigint NOT NULL DEFAULT 0,
    debits_pending  bigint NOT NULL DEFAULT 0,
    credits_pending bigint NOT NULL DEFAULT 0
);
CREATE INDEX balance_deltas_by_account ON balance_deltas (account_id, id);

CREATE VIEW account_totals AS
SELECT a.id, a.tenant_id, a.currency, a.kind, a.normal_balance, a.allow_overdraft, a.lower_limit,
       a.owner_user_id, a.metadata, a.created_at,
       a.debits_posted + coalesce(d.debits_posted, 0) AS debits_posted,
       a.credits_posted + coalesce(d.credits_posted, 0) AS credits_posted,
       a.debits_pending + coalesce(d.debits_pending, 0) AS debits_pending,
       a.credits_pending + coalesce(d.credits_pending, 0) AS credits_pending
FROM accounts a
LEFT JOIN LATERAL (
    SELECT sum(x.debits_posted)::bigint AS debits_posted,
           sum(x.credits_posted)::bigint AS credits_posted,
           sum(x.debits_pending)::bigint AS debits_pending,
           sum(x.credits_pending)::bigint AS credits_pending
    FROM balance_deltas x WHERE x.account_id = a.id
) d ON true;
