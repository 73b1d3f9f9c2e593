-- Indexes of the read models that 0005 did not create.

-- This month's totals over all sessions.
CREATE INDEX session_usage_monthly_month_idx ON session_usage_monthly (month);

-- A session's alerts, newest first.
CREATE INDEX alert_outbox_session_idx ON alert_outbox (session_id, created_at);

-- The audit trail: administrative events only (a partial index: nothing for the usage).
CREATE INDEX usage_events_audit_idx ON usage_events (occurred_at)
    WHERE event_type IN ('BudgetSet', 'DefaultsSet');
CREATE INDEX usage_events_session_audit_idx ON usage_events (session_id, occurred_at)
    WHERE event_type = 'BudgetSet';
