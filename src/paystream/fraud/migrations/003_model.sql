-- The fraud model (fraud/model.py, fraud/features.py).
-- payment_facts: every screened payment as the features saw it, written with its decision:
-- the feature state in Redis is rebuilt from it by replay when Redis has lost it.
CREATE TABLE payment_facts (
    payment_id   text    PRIMARY KEY,
    subject      text    NOT NULL,
    counterparty text,
    amount       bigint  NOT NULL,
    is_deposit   boolean NOT NULL,
    at_ms        bigint  NOT NULL
);

CREATE INDEX payment_facts_at ON payment_facts (at_ms, payment_id);

-- What the model said of a payment, whether it decided (mode 'on') or not ('shadow').
CREATE TABLE model_scores (
    payment_id    text             PRIMARY KEY,
    mode          text             NOT NULL CHECK (mode IN ('on', 'shadow')),
    model_version text             NOT NULL,
    score         double precision NOT NULL,
    model_outcome text             NOT NULL CHECK (model_outcome IN ('approve', 'decline', 'review')),
    top_features  text[]           NOT NULL DEFAULT '{}',
    created_at    timestamptz      NOT NULL DEFAULT now()
);

-- A review shows the model's score and version beside its reasons.
ALTER TABLE reviews
    ADD COLUMN score         double precision,
    ADD COLUMN model_version text;
