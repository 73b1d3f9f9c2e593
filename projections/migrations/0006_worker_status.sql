-- Not a projection (replay leaves it alone): each worker process says here that it is
-- alive and when it last applied a batch, for the health check and the overview.
CREATE TABLE worker_status (
    member          TEXT        PRIMARY KEY,
    group_id        TEXT        NOT NULL,
    host            TEXT        NOT NULL,
    pid             INTEGER     NOT NULL,
    started_at      TIMESTAMPTZ NOT NULL,
    seen_at         TIMESTAMPTZ NOT NULL,
    last_batch_at   TIMESTAMPTZ,
    events_applied  BIGINT      NOT NULL DEFAULT 0,
    batches         BIGINT      NOT NULL DEFAULT 0
);
