-- Re-screening (fraud/rescreen.py): a review opened only because a dependency was away
-- (screening_deadline, velocity_unavailable) is screened again at rescreen_at, backing off
-- with each attempt; NULL when it is for a human only.
ALTER TABLE reviews
    ADD COLUMN rescreen_at       timestamptz,
    ADD COLUMN rescreen_attempts integer NOT NULL DEFAULT 0;

CREATE INDEX reviews_rescreen ON reviews (rescreen_at)
    WHERE status = 'open' AND rescreen_at IS NOT NULL;

-- Faults switched on at run time for game days (PUT /internal/faults), shared by every copy
-- of the service: decision_delay_ms makes each screening decision wait that long.
CREATE TABLE faults (
    id                integer     PRIMARY KEY CHECK (id = 1),
    decision_delay_ms integer     NOT NULL DEFAULT 0 CHECK (decision_delay_ms BETWEEN 0 AND 600000),
    updated_at        timestamptz NOT NULL DEFAULT now()
);

INSERT INTO faults (id) VALUES (1);
