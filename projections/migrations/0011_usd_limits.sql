-- USD limits (issue 16): sessions and budget tree nodes may limit what their ApiCosts add
-- up to per day, per month and in all. A reservation priced by its producer holds its
-- price against those limits from its acceptance until its ApiCost (or release, or
-- expiry), so concurrent callers cannot overspend between a call and its bill.

-- Limits: NULL is no limit for that window. Spend: the ApiCost in the current windows
-- (a session's row created before this migration starts its counters at 0; a replay
-- counts its whole log).
ALTER TABLE session_token_budgets
    ADD COLUMN daily_usd_limit   NUMERIC(20, 10) CHECK (daily_usd_limit >= 0),
    ADD COLUMN monthly_usd_limit NUMERIC(20, 10) CHECK (monthly_usd_limit >= 0),
    ADD COLUMN total_usd_limit   NUMERIC(20, 10) CHECK (total_usd_limit >= 0),
    ADD COLUMN usd_used_today    NUMERIC(30, 10) NOT NULL DEFAULT 0,
    ADD COLUMN usd_used_month    NUMERIC(30, 10) NOT NULL DEFAULT 0,
    ADD COLUMN usd_used_total    NUMERIC(30, 10) NOT NULL DEFAULT 0;

ALTER TABLE account_budgets
    ADD COLUMN daily_usd_limit   NUMERIC(20, 10) CHECK (daily_usd_limit >= 0),
    ADD COLUMN monthly_usd_limit NUMERIC(20, 10) CHECK (monthly_usd_limit >= 0),
    ADD COLUMN total_usd_limit   NUMERIC(20, 10) CHECK (total_usd_limit >= 0),
    ADD COLUMN usd_used_today    NUMERIC(30, 10) NOT NULL DEFAULT 0,
    ADD COLUMN usd_used_month    NUMERIC(30, 10) NOT NULL DEFAULT 0,
    ADD COLUMN usd_used_total    NUMERIC(30, 10) NOT NULL DEFAULT 0;

ALTER TABLE reservations
    ADD COLUMN reserved_usd NUMERIC(20, 10),  -- the producer's price of the reservation
    ADD COLUMN price_source TEXT,
    ADD COLUMN usd_held     NUMERIC(20, 10),  -- reserved_usd while its USD hold is open
    ADD COLUMN settled_usd  NUMERIC(30, 10),  -- what its ApiCosts cost
    ADD COLUMN limit_usd    NUMERIC(30, 10),  -- a USD refusal: the refusing window's limit,
    ADD COLUMN used_usd     NUMERIC(30, 10),  --   what that level had used in it,
    ADD COLUMN held_usd     NUMERIC(30, 10);  --   and what it held

-- What the fold loads besides accepted reservations: open USD holds, of a batch's
-- sessions and of a tree's tenant.
CREATE INDEX reservations_usd_held_idx ON reservations (session_id)
    INCLUDE (usd_held, expires_at) WHERE usd_held IS NOT NULL;
CREATE INDEX reservations_usd_held_by_tenant_idx ON reservations (split_part(account, '/', 1))
    INCLUDE (usd_held, expires_at) WHERE account IS NOT NULL AND usd_held IS NOT NULL;

-- A refusal by a USD limit names the level and its numbers, in dollars to the cent
-- ("acme/research: monthly USD 500.00, used 498.20, held 1.50, requested 0.90"); the
-- decision's metadata carries the exact amounts.
CREATE OR REPLACE VIEW integration_logs AS
-- Each applied event: who sent it, its tokens, and its own fields (without the envelope)
-- with its place in the log.
SELECT e.event_id,
       (CASE e.event_type
            WHEN 'TokenUsed' THEN 'token_used'
            WHEN 'TokenReserved' THEN 'token_reserved'
            WHEN 'ApiCost' THEN 'api_cost'
            WHEN 'BudgetSet' THEN 'budget_set'
            WHEN 'DefaultsSet' THEN 'defaults_set'
            ELSE lower(e.event_type)
        END)::varchar(100) AS action,
       (e.payload -> 'source' ->> 'component')::varchar(50) AS integration_type,
       (e.payload -> 'source' ->> 'name')::varchar(100) AS component_name,
       e.session_id,
       e.task_id,
       (CASE
            WHEN e.event_type IN ('TokenUsed', 'ApiCost')
                THEN (e.payload ->> 'input_tokens')::bigint + (e.payload ->> 'output_tokens')::bigint
            WHEN e.event_type = 'TokenReserved' THEN (e.payload ->> 'tokens')::bigint
            ELSE 0
        END)::bigint AS tokens_used,
       'applied'::varchar(20) AS status,
       NULL::text AS error_message,
       (e.payload - ARRAY['event_id', 'event_type', 'schema_version', 'occurred_at',
                          'session_id', 'task_id', 'source'])
           || jsonb_build_object('topic', e.topic, 'partition', e.kafka_partition,
                                 'offset', e.kafka_offset) AS metadata,
       e.occurred_at AS created_at
  FROM usage_events e
UNION ALL
-- Each reservation decision, at the log clock that decided it; rejections say why. The
-- source is looked up (by primary key) only for the rows read, not joined: a session's
-- latest rows are then read through its index on reservations alone.
SELECT r.event_id,
       (CASE WHEN r.status = 'rejected' THEN 'reservation_rejected'
             ELSE 'reservation_accepted' END)::varchar(100),
       (SELECT e.payload -> 'source' ->> 'component' FROM usage_events e
         WHERE e.event_id = r.event_id)::varchar(50),
       (SELECT e.payload -> 'source' ->> 'name' FROM usage_events e
         WHERE e.event_id = r.event_id)::varchar(100),
       r.session_id,
       r.task_id,
       r.tokens,
       (CASE WHEN r.status = 'rejected' THEN 'rejected' ELSE 'accepted' END)::varchar(20),
       CASE
           WHEN r.status <> 'rejected' THEN NULL
           WHEN r.reason = 'expired' THEN format(
               'expires_at %s is not after the log clock %s when it was decided: the '
               'producer''s clock is behind, or the event reached the worker after its '
               'time to live',
               to_char(r.expires_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
               to_char(r.decided_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'))
           WHEN r.limit_usd IS NOT NULL THEN format(
               '%s: %s USD %s, used %s, held %s, requested %s',
               coalesce(r.refused_by, 'session ' || quote_literal(r.session_id)),
               -- to the cent, or to a millionth below a cent (never "0.00" for a sum
               -- that is not zero); no function: replay drops its staging schema
               split_part(r.reason, '_', 1),
               round(r.limit_usd, CASE WHEN r.limit_usd <> 0 AND abs(r.limit_usd) < 0.01 THEN 6 ELSE 2 END),
               round(r.used_usd, CASE WHEN r.used_usd <> 0 AND abs(r.used_usd) < 0.01 THEN 6 ELSE 2 END),
               round(r.held_usd, CASE WHEN r.held_usd <> 0 AND abs(r.held_usd) < 0.01 THEN 6 ELSE 2 END),
               round(coalesce(r.reserved_usd, 0), CASE WHEN coalesce(r.reserved_usd, 0) <> 0 AND abs(coalesce(r.reserved_usd, 0)) < 0.01 THEN 6 ELSE 2 END))
           WHEN r.refused_by IS NOT NULL THEN format(
               '%s: requested %s tokens, %s available under its %s of %s',
               r.refused_by, r.tokens, r.available_tokens, replace(r.reason, '_', ' '),
               r.limit_tokens)
           ELSE format('requested %s tokens, %s available under the %s of %s',
                       r.tokens, r.available_tokens, replace(r.reason, '_', ' '),
                       r.limit_tokens)
       END,
       jsonb_build_object(
           'reservation_id', r.reservation_id::text,
           'requested', r.tokens,
           'available', r.available_tokens,
           'limit', r.limit_tokens,
           'reason', r.reason,
           'priority', r.priority,
           'expires_at',
           to_char(r.expires_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'))
       || jsonb_strip_nulls(jsonb_build_object(
              'account', r.account, 'refused_by', r.refused_by,
              'reserved_usd', r.reserved_usd::text, 'price_source', r.price_source,
              'settled_usd', r.settled_usd::text, 'limit_usd', r.limit_usd::text,
              'used_usd', r.used_usd::text, 'held_usd', r.held_usd::text)),
       r.decided_at
  FROM reservations r
UNION ALL
-- The fold's notices.
SELECT n.event_id, n.action, n.integration_type, n.component_name, n.session_id, n.task_id,
       n.tokens_used, n.status, n.error_message, n.metadata, n.created_at
  FROM integration_notices n;
