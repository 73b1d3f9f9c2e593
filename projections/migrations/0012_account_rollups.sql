-- Budget tree rollups (issue 16): what the sessions under each node used, cost and
-- reserved, per day, so the reports, `top --by account` and the dashboard's tree read a
-- row per node and day (a month is its days: at most 31 rows of the primary key)
-- instead of scanning sessions. The fold adds to every node
-- of an event's account (the tenant, each team, the leaf) in the batch's transaction;
-- rows are dated as session_usage_daily dates them (the event's day in the partition's
-- zone), so a replay rebuilds them row for row.
CREATE TABLE account_usage_daily (
    account               VARCHAR(255)    NOT NULL,
    day                   DATE            NOT NULL,
    input_tokens          BIGINT          NOT NULL DEFAULT 0,
    output_tokens         BIGINT          NOT NULL DEFAULT 0,
    tokens_used           BIGINT          NOT NULL DEFAULT 0,
    usage_events          BIGINT          NOT NULL DEFAULT 0,
    cost_usd              NUMERIC(30, 10) NOT NULL DEFAULT 0,
    -- reservations of the sessions under the node, by how they were decided; `refused`
    -- counts those this node refused itself (its own limit was the one exhausted)
    reservations_accepted BIGINT          NOT NULL DEFAULT 0,
    reservations_rejected BIGINT          NOT NULL DEFAULT 0,
    reservations_refused  BIGINT          NOT NULL DEFAULT 0,
    PRIMARY KEY (account, day)
);

CREATE INDEX account_usage_daily_day_idx ON account_usage_daily (day);
