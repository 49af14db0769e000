-- Sixteen hash chains instead of one, so postings on unrelated accounts no longer wait for
-- each other. A posting appends its entries to the lowest-numbered chain no other posting
-- holds at that moment (FOR UPDATE SKIP LOCKED), so a lone writer keeps to chain 0 and
-- concurrent writers spread out instead of queueing behind one lock until commit.
-- Existing entries and checkpoints belong to chain 0. The entry hash (002) is unchanged:
-- each chain links from genesis by its own seq, and an entry moved from one chain to another
-- leaves a gap in one and a stray seq in the other, which verify reports.

ALTER TABLE chain_head DROP COLUMN one;
ALTER TABLE chain_head ADD COLUMN chain smallint NOT NULL DEFAULT 0 CHECK (chain BETWEEN 0 AND 15);
ALTER TABLE chain_head ADD PRIMARY KEY (chain);
INSERT INTO chain_head (chain, seq, hash)
    SELECT g, 0, decode(repeat('00', 32), 'hex') FROM generate_series(1, 15) AS g;

ALTER TABLE entries ADD COLUMN chain smallint NOT NULL DEFAULT 0;
DROP INDEX entries_by_seq;
CREATE UNIQUE INDEX entries_by_chain_seq ON entries (chain, seq);

ALTER TABLE checkpoints ADD COLUMN chain smallint NOT NULL DEFAULT 0;
ALTER TABLE checkpoints DROP CONSTRAINT checkpoints_pkey;
ALTER TABLE checkpoints ADD PRIMARY KEY (chain, seq);

-- 002's function for chaining rows that predate the chain, kept to chain 0.
CREATE OR REPLACE FUNCTION chain_unchained_entries() RETURNS bigint LANGUAGE plpgsql
SET search_path FROM CURRENT AS $$
DECLARE
    head_seq  bigint;
    head_hash bytea;
    e         record;
    n         bigint := 0;
BEGIN
    SELECT h.seq, h.hash INTO head_seq, head_hash FROM chain_head h WHERE h.chain = 0 FOR UPDATE;
    FOR e IN SELECT * FROM entries WHERE entries.seq IS NULL ORDER BY created_at, id LOOP
        head_seq := head_seq + 1;
        UPDATE entries SET seq = head_seq, prev_hash = head_hash, chain = 0,
            hash = chain_entry_hash(head_hash, head_seq, e.id, e.transfer_id, e.account_id,
                                    e.direction, e.amount, e.currency, e.created_at)
        WHERE entries.id = e.id
        RETURNING entries.hash INTO head_hash;
        n := n + 1;
    END LOOP;
    UPDATE chain_head SET seq = head_seq, hash = head_hash WHERE chain = 0;
    RETURN n;
END $$;
REVOKE EXECUTE ON FUNCTION chain_unchained_entries() FROM PUBLIC, {role};
