-- A posting in two calls. The ledger decides a batch in Python (paystream.ledger.domain)
-- against the account rows it loaded, and then writes it. Both steps used to take several
-- statements, each a round trip; each is now one call of a function here.
--
-- `ledger_lock` loads the accounts a batch touches. A row that may move against its normal
-- side (a debit to a wallet) needs a check against its lower limit, so it is locked and
-- waited for, in id order, so concurrent postings cannot deadlock. Only then, a row that can
-- only move on its normal side (a credit to a wallet) is locked too when it is free (SKIP
-- LOCKED, never waiting) and written in place; when another posting holds it (a hot
-- merchant), it is read without a lock and its changes go to balance_deltas (006). Every row
-- locked here has its deltas folded into it. Lock waits happen only in the first step, so
-- holding a row taken in the second step can never close a cycle of waits.
--
-- `ledger_write` writes a decided batch in a fixed order, so foreign keys always find what
-- they point at: account totals and balance deltas, transfers, entries, outbox rows. It
-- chains the entries with the encoding of paystream.ledger.chain (chain_entry_hash of 002):
-- the head of the lowest-numbered chain no other transaction holds is locked (SKIP LOCKED;
-- when all sixteen are in use, one is waited for), entry ids are drawn after that lock, so
-- within a chain ids, seqs and hashes follow one order, and the head moves to the last
-- entry. `paystream ledger verify` recomputes every hash in Python, so the two encodings are
-- checked against each other on every verify.
--
-- Before the functions: balance deltas are made to name their account's normal side, and
-- the database refuses one against it (below).
--
-- Both run with the caller's rights (not SECURITY DEFINER): the service role can do nothing
-- through them that it could not do with the statements they replace.
--
-- Generic plans. The ledger's statements are the same few, run again and again with arrays
-- of ids; PostgreSQL's default (plan_cache_mode = auto) kept planning them afresh on every
-- call, because a plan for a known array size looks cheaper than a generic one, and for a
-- batch of one transfer the planning cost more than the work (profiled with perf: the
-- backends spent their time in the planner). The ledger's role and both functions use
-- generic plans: one plan per statement and connection, kept. The ledger's statements
-- look rows up by key or by arrays of keys, which a generic plan serves as well.
ALTER ROLE {role} SET plan_cache_mode = force_generic_plan;

-- Balance deltas (006) may only add to an account's normal side: that is why a posting can
-- write them without locking the row for a limit check. The database holds them to it, so no
-- mistake upstream (a leg the posting did not announce as a debit, say) can take money past
-- a limit through a delta: each delta names its account's normal side, a foreign key checks
-- that against the account, and the other side's columns must be zero. A ledger that
-- already holds a delta against its account's side fails here on purpose: that delta was a
-- bug, and is for a person to look at before anything moves again.
ALTER TABLE accounts ADD CONSTRAINT accounts_id_side UNIQUE (id, normal_balance);
ALTER TABLE balance_deltas ADD COLUMN normal_balance text;
UPDATE balance_deltas d SET normal_balance = a.normal_balance FROM accounts a WHERE a.id = d.account_id;
ALTER TABLE balance_deltas
    ALTER COLUMN normal_balance SET NOT NULL,
    ADD CONSTRAINT deltas_name_their_side FOREIGN KEY (account_id, normal_balance)
        REFERENCES accounts (id, normal_balance),
    ADD CONSTRAINT deltas_only_add_on_the_normal_side CHECK (
        debits_posted >= 0 AND credits_posted >= 0 AND debits_pending >= 0 AND credits_pending >= 0
        AND ((normal_balance = 'credit' AND debits_posted = 0 AND debits_pending = 0)
             OR (normal_balance = 'debit' AND credits_posted = 0 AND credits_pending = 0)));

CREATE FUNCTION ledger_lock(ids text[], debited boolean[], credited boolean[], lock_all boolean,
                            only_tenant text)
RETURNS TABLE (id text, tenant_id text, currency text, normal_balance text,
               allow_overdraft boolean, debits_posted bigint, credits_posted bigint,
               debits_pending bigint, credits_pending bigint, lower_limit bigint,
               locked boolean, folded boolean)
LANGUAGE plpgsql SET search_path FROM CURRENT SET plan_cache_mode = force_generic_plan AS $$
#variable_conflict use_column
DECLARE
    v_must  text[];
    v_along text[];
    v_took  text[];
BEGIN
    SELECT coalesce(array_agg(a.id ORDER BY a.id) FILTER (WHERE m.must), '{}'),
           coalesce(array_agg(a.id ORDER BY a.id) FILTER (WHERE NOT m.must), '{}')
    INTO v_must, v_along
    FROM unnest(ids, debited, credited) AS w(id, debited, credited)
    JOIN accounts a ON a.id = w.id
    CROSS JOIN LATERAL (SELECT lock_all OR (a.normal_balance = 'credit' AND w.debited)
                               OR (a.normal_balance = 'debit' AND w.credited) AS must) AS m
    WHERE only_tenant IS NULL OR (a.tenant_id = only_tenant AND a.kind = 'wallet');

    PERFORM 1 FROM accounts a WHERE a.id = ANY (v_must) ORDER BY a.id FOR NO KEY UPDATE;
    SELECT coalesce(array_agg(x.id), '{}') INTO v_took
    FROM (SELECT a.id FROM accounts a WHERE a.id = ANY (v_along) ORDER BY a.id
          FOR NO KEY UPDATE SKIP LOCKED) AS x;
    v_must := v_must || v_took;

    IF NOT EXISTS (SELECT 1 FROM balance_deltas) THEN  -- nothing to fold (the usual case)
        RETURN QUERY
        WITH w AS (
            SELECT m.id, true AS locked FROM unnest(v_must) AS m(id)
            UNION ALL
            SELECT x.id, false FROM (SELECT unnest(v_along) EXCEPT SELECT unnest(v_took)) AS x(id))
        SELECT a.id, a.tenant_id, a.currency, a.normal_balance, a.allow_overdraft, a.debits_posted,
               a.credits_posted, a.debits_pending, a.credits_pending, a.lower_limit, w.locked, false
        FROM w JOIN accounts a ON a.id = w.id;
        RETURN;
    END IF;
    RETURN QUERY
    WITH folded AS (
        DELETE FROM balance_deltas d WHERE d.account_id = ANY (v_must)
        RETURNING d.account_id, d.debits_posted, d.credits_posted, d.debits_pending,
                  d.credits_pending),
    sums AS (
        SELECT f.account_id, sum(f.debits_posted) AS dp, sum(f.credits_posted) AS cp,
               sum(f.debits_pending) AS dq, sum(f.credits_pending) AS cq
        FROM folded f GROUP BY f.account_id)
    SELECT a.id, a.tenant_id, a.currency, a.normal_balance, a.allow_overdraft,
           a.debits_posted + coalesce(s.dp, 0)::bigint, a.credits_posted + coalesce(s.cp, 0)::bigint,
           a.debits_pending + coalesce(s.dq, 0)::bigint, a.credits_pending + coalesce(s.cq, 0)::bigint,
           a.lower_limit, true, s.account_id IS NOT NULL
    FROM accounts a LEFT JOIN sums s ON s.account_id = a.id
    WHERE a.id = ANY (v_must)
    UNION ALL
    SELECT a.id, a.tenant_id, a.currency, a.normal_balance, a.allow_overdraft, a.debits_posted,
           a.credits_posted, a.debits_pending, a.credits_pending, a.lower_limit, false, false
    FROM accounts a
    WHERE a.id IN (SELECT unnest(v_along) EXCEPT SELECT unnest(v_took));
END $$;

CREATE FUNCTION ledger_write(
    acc_ids text[], acc_dp bigint[], acc_cp bigint[], acc_dq bigint[], acc_cq bigint[],
    delta_ids text[], delta_dp bigint[], delta_cp bigint[], delta_dq bigint[], delta_cq bigint[],
    t_ids text[], t_tenants text[], t_refs text[], t_kinds text[], t_amounts bigint[],
    t_currencies text[], t_phases text[], t_pending text[], t_refund_of text[], t_metadata text[],
    e_transfers text[], e_accounts text[], e_directions text[], e_amounts bigint[],
    e_currencies text[],
    o_ids text[], o_subjects text[], o_bodies bytea[],
    written_at timestamptz
) RETURNS void LANGUAGE plpgsql SET search_path FROM CURRENT SET plan_cache_mode = force_generic_plan AS $$
DECLARE
    n_entries  int := coalesce(cardinality(e_transfers), 0);
    v_chain    smallint;
    v_seq      bigint;
    v_hash     bytea;
    v_ids      bigint[];
    v_sequence regclass;
    v_seqs     bigint[] := '{}';
    v_prevs    bytea[] := '{}';
    v_hashes   bytea[] := '{}';
    v_version  bytea := convert_to(chain_field('ledger-entry-v1'), 'UTF8');
    v_stamp    bytea := convert_to(chain_field(
        to_char(written_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')), 'UTF8');
    v_transfer bytea;
    v_account  bytea;
    v_currency bytea;
BEGIN
    IF coalesce(cardinality(acc_ids), 0) > 0 THEN
        UPDATE accounts a SET debits_posted = v.dp, credits_posted = v.cp,
                              debits_pending = v.dq, credits_pending = v.cq
        FROM unnest(acc_ids, acc_dp, acc_cp, acc_dq, acc_cq) AS v(id, dp, cp, dq, cq)
        WHERE a.id = v.id;
    END IF;
    IF coalesce(cardinality(delta_ids), 0) > 0 THEN
        -- The side comes from the account row (a LEFT JOIN: an unknown account fails on
        -- NOT NULL instead of dropping its delta); the CHECK above does the rest.
        INSERT INTO balance_deltas (account_id, normal_balance, debits_posted, credits_posted,
                                    debits_pending, credits_pending)
        SELECT v.id, a.normal_balance, v.dp, v.cp, v.dq, v.cq
        FROM unnest(delta_ids, delta_dp, delta_cp, delta_dq, delta_cq) AS v(id, dp, cp, dq, cq)
        LEFT JOIN accounts a ON a.id = v.id;
    END IF;
    IF coalesce(cardinality(t_ids), 0) > 0 THEN
        INSERT INTO transfers (id, tenant_id, external_ref, kind, amount, currency, phase,
                               pending_id, refund_of, metadata, created_at)
        SELECT v.i, v.t, v.r, v.k, v.a, v.c, v.p, v.h, v.f, v.m::jsonb, written_at
        FROM unnest(t_ids, t_tenants, t_refs, t_kinds, t_amounts, t_currencies, t_phases,
                    t_pending, t_refund_of, t_metadata) AS v(i, t, r, k, a, c, p, h, f, m);
    END IF;
    IF n_entries > 0 THEN
        SELECT h.chain, h.seq, h.hash INTO v_chain, v_seq, v_hash
        FROM chain_head h ORDER BY h.chain LIMIT 1 FOR UPDATE SKIP LOCKED;
        IF NOT FOUND THEN  -- every chain is in use: wait for one, picked at random
            -- Drawn once, into a variable: random() in the WHERE clause would be drawn
            -- again for every row, and could match none.
            v_chain := floor(random() * (SELECT count(*) FROM chain_head))::smallint;
            SELECT h.chain, h.seq, h.hash INTO STRICT v_chain, v_seq, v_hash
            FROM chain_head h WHERE h.chain = v_chain FOR UPDATE;
        END IF;
        -- The sequence named once: pg_get_serial_sequence per row costs more than nextval.
        v_sequence := pg_get_serial_sequence('entries', 'id')::regclass;
        SELECT array_agg(nextval(v_sequence) ORDER BY g) INTO v_ids
        FROM generate_series(1, n_entries) AS g;
        -- chain_entry_hash (002) written out: each field as its UTF-8 length, ':' and its text.
        -- Numbers and directions are ASCII, so their length in characters is their length
        -- in bytes; the text fields are measured as UTF-8.
        FOR i IN 1 .. n_entries LOOP
            v_seq := v_seq + 1;
            v_transfer := convert_to(e_transfers[i], 'UTF8');
            v_account := convert_to(e_accounts[i], 'UTF8');
            v_currency := convert_to(e_currencies[i], 'UTF8');
            v_prevs[i] := v_hash;
            v_hash := sha256(
                v_hash || v_version
                || convert_to(length(v_seq::text) || ':' || v_seq
                              || length(v_ids[i]::text) || ':' || v_ids[i]
                              || octet_length(v_transfer) || ':', 'UTF8') || v_transfer
                || convert_to(octet_length(v_account) || ':', 'UTF8') || v_account
                || convert_to(length(e_directions[i]) || ':' || e_directions[i]
                              || length(e_amounts[i]::text) || ':' || e_amounts[i]
                              || octet_length(v_currency) || ':', 'UTF8') || v_currency
                || v_stamp);
            v_seqs[i] := v_seq;
            v_hashes[i] := v_hash;
        END LOOP;
        INSERT INTO entries (id, transfer_id, account_id, direction, amount, currency, seq,
                             prev_hash, hash, created_at, chain)
        SELECT v.*, written_at, v_chain
        FROM unnest(v_ids, e_transfers, e_accounts, e_directions, e_amounts, e_currencies,
                    v_seqs, v_prevs, v_hashes) AS v;
        UPDATE chain_head SET seq = v_seq, hash = v_hash WHERE chain = v_chain;
    END IF;
    IF coalesce(cardinality(o_ids), 0) > 0 THEN
        INSERT INTO outbox (event_id, subject, body)
        SELECT * FROM unnest(o_ids, o_subjects, o_bodies);
    END IF;
END $$;
