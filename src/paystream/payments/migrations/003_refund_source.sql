-- A refund of a payment across currencies is asked for, and counted, in the original's
-- currency (what the payer gets back), but it takes the money back from the payee's account
-- in the other currency. What it took there is known once the ledger has posted it (the
-- ledger rounds each refund's share so that all the refunds of a payment add up exactly),
-- and is kept here: source_amount in source_currency. Null for every other payment.
ALTER TABLE payments
    ADD COLUMN source_amount   bigint CHECK (source_amount > 0),
    ADD COLUMN source_currency text,
    ADD CONSTRAINT source_side_complete CHECK (
        (source_amount IS NULL) = (source_currency IS NULL)
        AND (source_amount IS NULL OR kind = 'refund'));
