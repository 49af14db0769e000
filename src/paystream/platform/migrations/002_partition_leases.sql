-- Who consumes which partition (platform/leases.py): one owner per (consumer, partition),
-- with an epoch that grows on every change of hands. A consumer's transaction takes the
-- row FOR KEY SHARE and checks owner and epoch, so a copy that lost a partition cannot
-- commit work for it, and nobody can take a partition while its owner commits.

CREATE TABLE partition_leases (
    consumer   text        NOT NULL,
    partition  integer     NOT NULL,
    owner      text,
    epoch      bigint      NOT NULL DEFAULT 0,
    expires_at timestamptz NOT NULL DEFAULT '-infinity',
    PRIMARY KEY (consumer, partition)
);

-- The copies that consume, so each can take its fair share of the partitions.
CREATE TABLE consumer_members (
    consumer text        NOT NULL,
    member   text        NOT NULL,
    seen_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, member)
);
