-- Budget trees (issue 16): a session may belong to an account path (tenant/team/user...);
-- each node of a tree may have token limits of its own, and a reservation must fit at the
-- session and at every node above it that has limits.

-- The session's account (NULL: none). It never changes once set.
ALTER TABLE session_token_budgets ADD COLUMN account VARCHAR(255);
CREATE INDEX session_token_budgets_account_idx ON session_token_budgets (account text_pattern_ops)
    WHERE account IS NOT NULL;

-- The reservation's account, and the node whose limit refused it (NULL: accepted, or the
-- session's own limit refused it).
ALTER TABLE reservations
    ADD COLUMN account    VARCHAR(255),
    ADD COLUMN refused_by VARCHAR(255);
-- What the fold loads for a tree: every accepted reservation of a tenant (first segment).
CREATE INDEX reservations_held_by_tenant_idx ON reservations (split_part(account, '/', 1))
    INCLUDE (tokens, expires_at) WHERE account IS NOT NULL AND status = 'accepted';

-- One row per node a session's events have touched: its limits (NULL: no BudgetSet, so it
-- does not limit) and the usage of every session under it in its current windows.
CREATE TABLE account_budgets (
    account               VARCHAR(255) PRIMARY KEY,
    daily_limit           BIGINT CHECK (daily_limit >= 0),
    monthly_limit         BIGINT CHECK (monthly_limit >= 0),
    hard_limit            BIGINT CHECK (hard_limit >= 0),
    warning_threshold     NUMERIC(5, 4),
    critical_threshold    NUMERIC(5, 4),
    budget_event          UUID,
    current_day           DATE         NOT NULL,
    tokens_used_today     BIGINT       NOT NULL CHECK (tokens_used_today >= 0),
    current_month         DATE         NOT NULL,
    tokens_used_month     BIGINT       NOT NULL CHECK (tokens_used_month >= 0),
    tokens_used_total     BIGINT       NOT NULL CHECK (tokens_used_total >= 0),
    reservations_accepted BIGINT       NOT NULL DEFAULT 0,
    reservations_rejected BIGINT       NOT NULL DEFAULT 0,
    created_at            TIMESTAMPTZ  NOT NULL,
    updated_at            TIMESTAMPTZ  NOT NULL,
    CHECK ((daily_limit IS NULL) = (budget_event IS NULL)
       AND (monthly_limit IS NULL) = (budget_event IS NULL)
       AND (hard_limit IS NULL) = (budget_event IS NULL))
);
-- A subtree: account = 'acme/research' OR account LIKE 'acme/research/%'.
CREATE INDEX account_budgets_prefix_idx ON account_budgets (account text_pattern_ops);

-- Rejections by a node name it (and the decision's metadata carries account and refused_by).
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
       || jsonb_strip_nulls(jsonb_build_object('account', r.account, 'refused_by', r.refused_by)),
       r.decided_at
  FROM reservations r
UNION ALL
-- The fold's notices.
SELECT n.event_id, n.action, n.integration_type, n.component_name, n.session_id, n.task_id,
       n.tokens_used, n.status, n.error_message, n.metadata, n.created_at
  FROM integration_notices n;
