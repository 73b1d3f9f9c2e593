-- Not a projection (replay leaves it alone): how far an operator has looked through the
-- dead-letter topic. The health check and the overview count only what came after, so a
-- reviewed dead letter stops making the pipeline read as degraded.
CREATE TABLE dlq_reviews (
    topic            TEXT        NOT NULL,
    kafka_partition  INTEGER     NOT NULL,
    reviewed_to      BIGINT      NOT NULL CHECK (reviewed_to >= 0),
    reviewed_at      TIMESTAMPTZ NOT NULL,
    actor            TEXT        NOT NULL,
    PRIMARY KEY (topic, kafka_partition)
);
