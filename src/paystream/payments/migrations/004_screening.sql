-- The screening decision each payment got first (approve, review, decline, or deadline when
-- fraud had not decided within the screening deadline): the first one wins, later ones
-- change nothing. Payments from before this migration count as screened, so the deadline
-- worker never sends an old payment that waits for the ledger to review.
ALTER TABLE payments
    ADD COLUMN screening text CHECK (screening IN ('approve', 'review', 'decline', 'deadline'));
UPDATE payments SET screening = 'approve' WHERE status IN ('processing', 'succeeded', 'failed');
UPDATE payments SET screening = 'review' WHERE status = 'requires_review';
UPDATE payments SET screening = 'decline' WHERE status = 'declined';

-- What the deadline worker looks for: payments still waiting for their screening.
CREATE INDEX payments_unscreened ON payments (created_at)
    WHERE status = 'processing' AND screening IS NULL;

-- Reviews the deadline opened, until fraud has them in its review queue (sent_at): fraud's
-- consumer may be far behind, so they go to fraud's internal API, retried until accepted.
CREATE TABLE deadline_reviews (
    payment_id text        PRIMARY KEY REFERENCES payments (id),
    tenant_id  text        NOT NULL,
    review_id  text        NOT NULL UNIQUE,
    payment    jsonb       NOT NULL,
    created_at timestamptz NOT NULL,
    sent_at    timestamptz
);

CREATE INDEX deadline_reviews_unsent ON deadline_reviews (created_at) WHERE sent_at IS NULL;
