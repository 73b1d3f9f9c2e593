-- The ledger: one row per event ever applied to the projections. Its primary key on
-- event_id is what makes a redelivered or re-sent event count once: the store inserts
-- here first (ON CONFLICT DO NOTHING) and folds only the events that were new.
-- Every column comes from the event or its Kafka position, never from the clock, so a
-- replay rebuilds this table row for row.
CREATE TABLE usage_events (
    event_id        UUID         PRIMARY KEY,
    event_type      TEXT         NOT NULL
        CHECK (event_type IN ('BudgetSet', 'TokenReserved', 'TokenUsed', 'ApiCost')),
    session_id      VARCHAR(255) NOT NULL,
    task_id         VARCHAR(255),
    occurred_at     TIMESTAMPTZ  NOT NULL,
    payload         JSONB        NOT NULL,
    topic           TEXT         NOT NULL,
    kafka_partition INTEGER      NOT NULL CHECK (kafka_partition >= 0),
    kafka_offset    BIGINT       NOT NULL CHECK (kafka_offset >= 0)
);

CREATE INDEX usage_events_session_time_idx ON usage_events (session_id, occurred_at);

-- How far the projections have applied each partition: the offset of the next
-- message to apply. Written in the same transaction as the batch it covers.
CREATE TABLE partition_checkpoints (
    topic           TEXT    NOT NULL,
    kafka_partition INTEGER NOT NULL CHECK (kafka_partition >= 0),
    next_offset     BIGINT  NOT NULL CHECK (next_offset >= 0),
    PRIMARY KEY (topic, kafka_partition)
);
