-- Rollups the read models (dashboard, reports, the HTTP API) read, so that no dashboard
-- query scans the ledger. The fold adds to them in the batch's transaction; every value
-- comes from the events and the log, so a replay rebuilds them row for row.

-- Top sessions of a day.
CREATE INDEX session_usage_daily_day_idx ON session_usage_daily (day);

-- Usage per session and UTC hour of the event (as the daily rollup dates it).
CREATE TABLE session_usage_hourly (
    session_id    VARCHAR(255)    NOT NULL,
    hour          TIMESTAMPTZ     NOT NULL,
    input_tokens  BIGINT          NOT NULL DEFAULT 0,
    output_tokens BIGINT          NOT NULL DEFAULT 0,
    tokens_used   BIGINT          NOT NULL DEFAULT 0,
    usage_events  BIGINT          NOT NULL DEFAULT 0,
    cost_usd      NUMERIC(30, 10) NOT NULL DEFAULT 0,
    PRIMARY KEY (session_id, hour)
);

CREATE INDEX session_usage_hourly_hour_idx ON session_usage_hourly (hour);

-- ApiCost per day, API and model (all sessions).
CREATE TABLE api_usage_daily (
    day                DATE            NOT NULL,
    api_name           VARCHAR(100)    NOT NULL,
    model              VARCHAR(200)    NOT NULL,
    requests           BIGINT          NOT NULL DEFAULT 0,
    input_tokens       BIGINT          NOT NULL DEFAULT 0,
    output_tokens      BIGINT          NOT NULL DEFAULT 0,
    cache_read_tokens  BIGINT          NOT NULL DEFAULT 0,
    cache_write_tokens BIGINT          NOT NULL DEFAULT 0,
    cost_usd           NUMERIC(30, 10) NOT NULL DEFAULT 0,
    PRIMARY KEY (day, api_name, model)
);

-- TokenUsed per day, integration (the source component) and model (all sessions).
CREATE TABLE model_usage_daily (
    day           DATE         NOT NULL,
    component     VARCHAR(50)  NOT NULL,
    model         VARCHAR(200) NOT NULL,
    usage_events  BIGINT       NOT NULL DEFAULT 0,
    input_tokens  BIGINT       NOT NULL DEFAULT 0,
    output_tokens BIGINT       NOT NULL DEFAULT 0,
    PRIMARY KEY (day, component, model)
);

-- Reservations per session and the day they were requested: how each was decided and
-- ended. `expired` counts what the fold has marked expired; a read model adds those whose
-- expires_at has passed since.
CREATE TABLE session_reservations_daily (
    session_id      VARCHAR(255) NOT NULL,
    day             DATE         NOT NULL,
    accepted        BIGINT       NOT NULL DEFAULT 0,
    rejected        BIGINT       NOT NULL DEFAULT 0,
    settled         BIGINT       NOT NULL DEFAULT 0,
    released        BIGINT       NOT NULL DEFAULT 0,
    expired         BIGINT       NOT NULL DEFAULT 0,
    reserved_tokens BIGINT       NOT NULL DEFAULT 0,
    settled_tokens  BIGINT       NOT NULL DEFAULT 0,
    PRIMARY KEY (session_id, day)
);

CREATE INDEX session_reservations_daily_day_idx ON session_reservations_daily (day);

-- The whole pipeline per minute of the log clock (record timestamps): events applied,
-- tokens, cost and decisions. "Events applied in the last minute" reads it.
CREATE TABLE system_usage_minutely (
    minute                TIMESTAMPTZ     PRIMARY KEY,
    events_applied        BIGINT          NOT NULL DEFAULT 0,
    tokens_used           BIGINT          NOT NULL DEFAULT 0,
    cost_usd              NUMERIC(30, 10) NOT NULL DEFAULT 0,
    reservations_accepted BIGINT          NOT NULL DEFAULT 0,
    reservations_rejected BIGINT          NOT NULL DEFAULT 0
);

-- Recent decisions, all sessions and per session.
CREATE INDEX reservations_decided_idx ON reservations (decided_at);
CREATE INDEX reservations_session_decided_idx ON reservations (session_id, decided_at);
