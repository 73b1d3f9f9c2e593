-- Time from the log, and what decides put into the log.
--
-- The fold decides window roll-over and reservation expiry on each partition's log
-- clock (the latest record timestamp applied from it), never on an event's occurred_at,
-- which its producer sets. The ledger keeps each event's record timestamp, so that a
-- replay from the ledger decides exactly as the live worker did, and flags an event whose
-- occurred_at ran too far ahead of the log clock (it was counted at the log clock).

ALTER TABLE usage_events ADD COLUMN log_time TIMESTAMPTZ;
UPDATE usage_events SET log_time = occurred_at;
ALTER TABLE usage_events ALTER COLUMN log_time SET NOT NULL;
ALTER TABLE usage_events ADD COLUMN clock_skewed BOOLEAN NOT NULL DEFAULT false;

ALTER TABLE usage_events DROP CONSTRAINT usage_events_event_type_check;
ALTER TABLE usage_events ADD CONSTRAINT usage_events_event_type_check
    CHECK (event_type IN ('BudgetSet', 'TokenReserved', 'TokenUsed', 'ApiCost', 'DefaultsSet'));

-- Log order: what a replay from the ledger reads, and what replay checks the log against.
CREATE INDEX usage_events_log_position_idx ON usage_events (topic, kafka_partition, kafka_offset);

-- The log clock of each partition: only moves forward.
ALTER TABLE partition_checkpoints ADD COLUMN log_clock TIMESTAMPTZ;

-- The DefaultsSet in force in each partition: the limits of sessions without a BudgetSet,
-- the windows' time zone and the allowed clock skew. `tokenquota init` writes a DefaultsSet
-- to every partition, so replay decides the same whatever its own configuration says.
CREATE TABLE partition_defaults (
    topic              TEXT          NOT NULL,
    kafka_partition    INTEGER       NOT NULL CHECK (kafka_partition >= 0),
    event_id           UUID          NOT NULL,
    daily_limit        BIGINT        NOT NULL CHECK (daily_limit >= 0),
    monthly_limit      BIGINT        NOT NULL CHECK (monthly_limit >= 0),
    hard_limit         BIGINT        NOT NULL CHECK (hard_limit >= 0),
    warning_threshold  NUMERIC(5, 4) NOT NULL,
    critical_threshold NUMERIC(5, 4) NOT NULL,
    timezone           TEXT          NOT NULL,
    max_clock_skew_ms  BIGINT        NOT NULL CHECK (max_clock_skew_ms >= 0),
    set_at             TIMESTAMPTZ   NOT NULL,
    PRIMARY KEY (topic, kafka_partition)
);
