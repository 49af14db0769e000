-- Refunds (a payment of kind 'refund' reversing part or all of a succeeded payment) and
-- payments across currencies (the destination receives destination_amount at exchange_rate).

ALTER TABLE payments
    ADD COLUMN refund_of            text   REFERENCES payments (id),
    ADD COLUMN amount_refunded      bigint NOT NULL DEFAULT 0,
    ADD COLUMN destination_amount   bigint CHECK (destination_amount > 0),
    ADD COLUMN destination_currency text,
    ADD COLUMN exchange_rate        numeric CHECK (exchange_rate > 0),
    ADD CONSTRAINT refunded_at_most_paid CHECK (amount_refunded BETWEEN 0 AND amount),
    ADD CONSTRAINT exchange_complete CHECK (
        (destination_currency IS NULL) = (destination_amount IS NULL)
        AND (destination_currency IS NULL) = (exchange_rate IS NULL));

ALTER TABLE payments DROP CONSTRAINT payments_kind_check;
ALTER TABLE payments ADD CONSTRAINT payments_kind_check
    CHECK (kind IN ('transfer', 'deposit', 'refund'));

-- A refund of a deposit sends the money back out: it has no destination wallet.
ALTER TABLE payments ALTER COLUMN destination_account_id DROP NOT NULL;
ALTER TABLE payments DROP CONSTRAINT payments_check;
ALTER TABLE payments ADD CONSTRAINT payment_accounts CHECK (
    (kind = 'deposit' AND source_account_id IS NULL AND destination_account_id IS NOT NULL)
    OR (kind = 'transfer' AND source_account_id IS NOT NULL AND destination_account_id IS NOT NULL)
    OR (kind = 'refund' AND source_account_id IS NOT NULL AND refund_of IS NOT NULL));

CREATE INDEX payments_refunds ON payments (refund_of) WHERE refund_of IS NOT NULL;
