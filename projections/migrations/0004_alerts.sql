-- Threshold alerts: an outbox the fold writes in the batch's transaction, and what the
-- notifier did with each alert.
--
-- alert_outbox is a projection (replay rebuilds it row for row): one row per crossing of a
-- warning or critical threshold, or refusal at a limit, once per window and level. Its
-- alert_id is derived from the crossing event and the action, so receivers can dedupe.

CREATE TABLE alert_outbox (
    alert_id     UUID         PRIMARY KEY,
    event_id     UUID         NOT NULL,
    action       VARCHAR(100) NOT NULL,
    session_id   VARCHAR(255) NOT NULL,
    window_name  TEXT         NOT NULL CHECK (window_name IN ('daily', 'monthly', 'total')),
    level        TEXT         NOT NULL CHECK (level IN ('warning', 'critical', 'exhausted')),
    used_tokens  BIGINT       NOT NULL,
    limit_tokens BIGINT       NOT NULL,
    occurred_at  TIMESTAMPTZ  NOT NULL,
    created_at   TIMESTAMPTZ  NOT NULL
);

CREATE INDEX alert_outbox_created_idx ON alert_outbox (created_at);

-- Not a projection: replay keeps it, so an alert delivered once is never sent again.
CREATE TABLE alert_deliveries (
    alert_id         UUID        PRIMARY KEY,
    status           TEXT        NOT NULL
        CHECK (status IN ('pending', 'delivered', 'failed', 'suppressed')),
    attempts         INTEGER     NOT NULL DEFAULT 0,
    next_attempt_at  TIMESTAMPTZ,
    last_attempt_at  TIMESTAMPTZ,
    last_status_code INTEGER,
    last_error       TEXT,
    delivered_at     TIMESTAMPTZ
);

CREATE INDEX alert_deliveries_due_idx ON alert_deliveries (next_attempt_at)
    WHERE status = 'pending';
