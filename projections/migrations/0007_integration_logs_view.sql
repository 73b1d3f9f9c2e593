-- integration_logs shows every integration action: one row per applied event (from the
-- ledger), one per reservation decision (from reservations), and the fold's notices
-- (threshold alerts, refusals at a limit, overage, late or unmatched settlements, clock
-- skew, duplicate reservation ids), which stay in a table of their own. A view costs the
-- pipeline nothing per event, and a replay rebuilds it with the tables under it.
--
-- Every column is computed from stored values, never from the session's settings (time
-- zone, date style), so the view reads the same for every reader and after every replay.

ALTER TABLE integration_logs RENAME TO integration_notices;
ALTER TABLE integration_notices RENAME CONSTRAINT integration_logs_pkey TO integration_notices_pkey;
ALTER INDEX integration_logs_session_idx RENAME TO integration_notices_session_idx;

-- The notices that said what the view now derives from the ledger and the reservations.
DELETE FROM integration_notices
 WHERE action IN ('budget_set', 'defaults_set', 'reservation_rejected');

CREATE VIEW integration_logs AS
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
           to_char(r.expires_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')),
       r.decided_at
  FROM reservations r
UNION ALL
-- The fold's notices.
SELECT n.event_id, n.action, n.integration_type, n.component_name, n.session_id, n.task_id,
       n.tokens_used, n.status, n.error_message, n.metadata, n.created_at
  FROM integration_notices n;
