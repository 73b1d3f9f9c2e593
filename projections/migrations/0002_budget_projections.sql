-- The projections the fold maintains. Every row is keyed by what it describes (session,
-- task, API, reservation, day, triggering event), never by a serial id, and every value
-- comes from events: a replay rebuilds these tables row for row.

-- One row per session: its limits and its usage in the current windows.
CREATE TABLE session_token_budgets (
    session_id          VARCHAR(255)  PRIMARY KEY,
    daily_limit         BIGINT        NOT NULL CHECK (daily_limit >= 0),
    monthly_limit       BIGINT        NOT NULL CHECK (monthly_limit >= 0),
    hard_limit          BIGINT        NOT NULL CHECK (hard_limit >= 0),
    warning_threshold   NUMERIC(5, 4) NOT NULL,
    critical_threshold  NUMERIC(5, 4) NOT NULL,
    -- 'default' until the session's first BudgetSet event, then 'event'
    budget_source       TEXT          NOT NULL CHECK (budget_source IN ('default', 'event')),
    current_day         DATE          NOT NULL,
    tokens_used_today   BIGINT        NOT NULL CHECK (tokens_used_today >= 0),
    current_month       DATE          NOT NULL,
    tokens_used_month   BIGINT        NOT NULL CHECK (tokens_used_month >= 0),
    tokens_used_total   BIGINT        NOT NULL CHECK (tokens_used_total >= 0),
    -- highest threshold crossed in the current window: 'none', 'warning' or 'critical'
    daily_alert         TEXT          NOT NULL,
    monthly_alert       TEXT          NOT NULL,
    total_alert         TEXT          NOT NULL,
    reservations_accepted BIGINT      NOT NULL DEFAULT 0,
    reservations_rejected BIGINT      NOT NULL DEFAULT 0,
    overage_tokens      BIGINT        NOT NULL DEFAULT 0,
    last_reset          TIMESTAMPTZ   NOT NULL,
    created_at          TIMESTAMPTZ   NOT NULL,
    updated_at          TIMESTAMPTZ   NOT NULL
);

-- Every reservation and what the fold decided about it.
CREATE TABLE reservations (
    reservation_id   UUID          PRIMARY KEY,
    event_id         UUID          NOT NULL,
    session_id       VARCHAR(255)  NOT NULL,
    task_id          VARCHAR(255),
    tokens           BIGINT        NOT NULL CHECK (tokens > 0),
    priority         TEXT          NOT NULL CHECK (priority IN ('low', 'normal', 'high', 'critical')),
    status           TEXT          NOT NULL
        CHECK (status IN ('pending', 'accepted', 'rejected', 'settled', 'released', 'expired')),
    reason           TEXT,
    available_tokens BIGINT        NOT NULL,
    limit_tokens     BIGINT        NOT NULL,
    requested_at     TIMESTAMPTZ   NOT NULL,
    decided_at       TIMESTAMPTZ   NOT NULL,
    expires_at       TIMESTAMPTZ   NOT NULL,
    settled_at       TIMESTAMPTZ,
    settled_tokens   BIGINT,
    overage_tokens   BIGINT        NOT NULL DEFAULT 0
);

-- What the reservation check sums: held tokens of a session.
CREATE INDEX reservations_held_idx ON reservations (session_id, expires_at)
    INCLUDE (tokens) WHERE status = 'accepted';

-- Per task: tokens granted by accepted reservations and tokens reported used.
CREATE TABLE task_token_allocations (
    session_id       VARCHAR(255) NOT NULL,
    task_id          VARCHAR(255) NOT NULL,
    allocated_tokens BIGINT       NOT NULL DEFAULT 0,
    tokens_used      BIGINT       NOT NULL DEFAULT 0,
    status           VARCHAR(50)  NOT NULL DEFAULT 'active',
    created_at       TIMESTAMPTZ  NOT NULL,
    completed_at     TIMESTAMPTZ,
    updated_at       TIMESTAMPTZ  NOT NULL,
    PRIMARY KEY (session_id, task_id)
);

-- Per session and external API: tokens, money and the provider's last rate-limit state.
CREATE TABLE external_api_tokens (
    session_id           VARCHAR(255)   NOT NULL,
    api_name             VARCHAR(100)   NOT NULL,
    requests             BIGINT         NOT NULL DEFAULT 0,
    input_tokens         BIGINT         NOT NULL DEFAULT 0,
    output_tokens        BIGINT         NOT NULL DEFAULT 0,
    cache_read_tokens    BIGINT         NOT NULL DEFAULT 0,
    cache_write_tokens   BIGINT         NOT NULL DEFAULT 0,
    tokens_used          BIGINT         NOT NULL DEFAULT 0,
    cost_usd             NUMERIC(30, 10) NOT NULL DEFAULT 0,
    last_used            TIMESTAMPTZ    NOT NULL,
    rate_limit_remaining BIGINT,
    rate_limit_reset     TIMESTAMPTZ,
    PRIMARY KEY (session_id, api_name)
);

-- Notable decisions and crossings, one row per (triggering event, action).
CREATE TABLE integration_logs (
    event_id         UUID         NOT NULL,
    action           VARCHAR(100) NOT NULL,
    integration_type VARCHAR(50)  NOT NULL,
    component_name   VARCHAR(100) NOT NULL,
    session_id       VARCHAR(255),
    task_id          VARCHAR(255),
    tokens_used      BIGINT       NOT NULL DEFAULT 0,
    status           VARCHAR(20)  NOT NULL,
    error_message    TEXT,
    metadata         JSONB,
    created_at       TIMESTAMPTZ  NOT NULL,
    PRIMARY KEY (event_id, action)
);

CREATE INDEX integration_logs_session_idx ON integration_logs (session_id, created_at);

-- Usage rollups by the session's calendar day and month (windows of the configured zone).
CREATE TABLE session_usage_daily (
    session_id    VARCHAR(255)    NOT NULL,
    day           DATE            NOT NULL,
    input_tokens  BIGINT          NOT NULL DEFAULT 0,
    output_tokens BIGINT          NOT NULL DEFAULT 0,
    tokens_used   BIGINT          NOT NULL DEFAULT 0,
    usage_events  BIGINT          NOT NULL DEFAULT 0,
    cost_usd      NUMERIC(30, 10) NOT NULL DEFAULT 0,
    PRIMARY KEY (session_id, day)
);

CREATE TABLE session_usage_monthly (
    session_id    VARCHAR(255)    NOT NULL,
    month         DATE            NOT NULL,
    input_tokens  BIGINT          NOT NULL DEFAULT 0,
    output_tokens BIGINT          NOT NULL DEFAULT 0,
    tokens_used   BIGINT          NOT NULL DEFAULT 0,
    usage_events  BIGINT          NOT NULL DEFAULT 0,
    cost_usd      NUMERIC(30, 10) NOT NULL DEFAULT 0,
    PRIMARY KEY (session_id, month)
);
