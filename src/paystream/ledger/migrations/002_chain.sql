-- The ledger's history as a hash chain, so a rewrite that gets past the triggers of 001
-- (a superuser, a restored backup, replica mode) is still detected by `paystream ledger verify`.
--
-- Every entry gets `seq` (its place in one global, gapless order), `prev_hash` (the hash of
-- entry seq-1, 32 zero bytes for seq 1) and `hash` = sha256(prev_hash || canonical fields).
-- The store computes hashes in Python (paystream.ledger.chain); chain_entry_hash below is the
-- same function in SQL, used only to chain rows that predate this migration. Both must agree:
-- tests/integration/test_ledger_chain.py checks that they do.
--
-- Existing rows are chained here, in (created_at, id) order, so verification covers all of
-- history and every entry has a seq. The columns stay nullable only so that this migration
-- can add them to a populated table; verify reports any entry without a seq as broken.

ALTER TABLE entries
    ADD COLUMN seq       bigint,
    ADD COLUMN prev_hash bytea,
    ADD COLUMN hash      bytea;

CREATE UNIQUE INDEX entries_by_seq ON entries (seq);

-- The end of the chain: one row, locked FOR UPDATE by each posting batch, so batches append
-- one after another (the ledger posts from one consumer, so the lock is never contended).
CREATE TABLE chain_head (
    one  boolean PRIMARY KEY DEFAULT true CHECK (one),
    seq  bigint  NOT NULL CHECK (seq >= 0),
    hash bytea   NOT NULL CHECK (octet_length(hash) = 32)
);
INSERT INTO chain_head (seq, hash) VALUES (0, decode(repeat('00', 32), 'hex'));
REVOKE INSERT, DELETE, TRUNCATE ON chain_head FROM {role};

-- A field of the canonical encoding: its UTF-8 length, a colon, the text (unambiguous).
CREATE FUNCTION chain_field(v text) RETURNS text LANGUAGE sql IMMUTABLE STRICT AS $$
    SELECT octet_length(convert_to(v, 'UTF8'))::text || ':' || v
$$;

-- Same as paystream.ledger.chain.entry_hash.
CREATE FUNCTION chain_entry_hash(
    prev_hash bytea, seq bigint, id bigint, transfer_id text, account_id text,
    direction text, amount bigint, currency text, created_at timestamptz
) RETURNS bytea LANGUAGE sql STABLE STRICT SET search_path FROM CURRENT AS $$
    SELECT sha256(prev_hash || convert_to(
        chain_field('ledger-entry-v1') || chain_field(seq::text) || chain_field(id::text)
        || chain_field(transfer_id) || chain_field(account_id) || chain_field(direction)
        || chain_field(amount::text) || chain_field(currency)
        || chain_field(to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')),
        'UTF8'))
$$;

-- Appends every entry without a seq to the chain, in (created_at, id) order; returns how many.
-- Updates entries, so the caller disables entries_immutable around it (only a migration does).
CREATE FUNCTION chain_unchained_entries() RETURNS bigint LANGUAGE plpgsql
SET search_path FROM CURRENT AS $$
DECLARE
    head_seq  bigint;
    head_hash bytea;
    e         record;
    n         bigint := 0;
BEGIN
    SELECT h.seq, h.hash INTO head_seq, head_hash FROM chain_head h FOR UPDATE;
    FOR e IN SELECT * FROM entries WHERE entries.seq IS NULL ORDER BY created_at, id LOOP
        head_seq := head_seq + 1;
        UPDATE entries SET seq = head_seq, prev_hash = head_hash,
            hash = chain_entry_hash(head_hash, head_seq, e.id, e.transfer_id, e.account_id,
                                    e.direction, e.amount, e.currency, e.created_at)
        WHERE entries.id = e.id
        RETURNING entries.hash INTO head_hash;
        n := n + 1;
    END LOOP;
    UPDATE chain_head SET seq = head_seq, hash = head_hash;
    RETURN n;
END $$;
REVOKE EXECUTE ON FUNCTION chain_unchained_entries() FROM PUBLIC, {role};

ALTER TABLE entries DISABLE TRIGGER entries_immutable;
SELECT chain_unchained_entries();
ALTER TABLE entries ENABLE TRIGGER entries_immutable;
