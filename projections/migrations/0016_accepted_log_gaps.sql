-- Not a projection (replay leaves it alone): every time an operator moved a partition's
-- checkpoint past offsets that were gone from the log and never applied (retention or
-- delete-records removed them first), with `tokenquota checkpoints accept-gap`. The
-- events at offsets from_offset to to_offset - 1 are lost to the projections; a replay
-- cannot bring them back either. Keyed by where the checkpoint was: it only moves forward.
CREATE TABLE accepted_log_gaps (
    topic            TEXT        NOT NULL,
    kafka_partition  INTEGER     NOT NULL CHECK (kafka_partition >= 0),
    from_offset      BIGINT      NOT NULL CHECK (from_offset >= 0),
    to_offset        BIGINT      NOT NULL,
    accepted_at      TIMESTAMPTZ NOT NULL,
    actor            TEXT        NOT NULL,
    PRIMARY KEY (topic, kafka_partition, from_offset),
    CHECK (to_offset > from_offset)
);
