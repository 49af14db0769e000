-- Training labels (issue 12, feedback): what people said of a payment after the fact.
-- source 'review': a reviewer's approve (0) or decline (1); 'report': a fraud report
-- (POST /v1/payments/{id}/fraud_report, chargeback-style, label 1). One of each per payment:
-- a repeated report is the first one.
CREATE TABLE labels (
    payment_id text        NOT NULL,
    source     text        NOT NULL CHECK (source IN ('review', 'report')),
    tenant_id  text        NOT NULL,
    label      smallint    NOT NULL CHECK (label IN (0, 1)),
    reason     text        NOT NULL,
    note       text,
    created_by text        NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (payment_id, source)
);
