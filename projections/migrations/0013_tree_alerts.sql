-- Alerts for budget tree nodes and USD windows (issue 16). A node's token windows and
-- every USD window (of a session or a node) rise through warning and critical at the
-- thresholds and to exhausted at their first refusal, once per window, as a session's
-- token windows always have.

-- Each window's level (reset with its day or month, as the token levels are).
ALTER TABLE account_budgets
    ADD COLUMN daily_alert       TEXT NOT NULL DEFAULT 'none',
    ADD COLUMN monthly_alert     TEXT NOT NULL DEFAULT 'none',
    ADD COLUMN total_alert       TEXT NOT NULL DEFAULT 'none',
    ADD COLUMN daily_usd_alert   TEXT NOT NULL DEFAULT 'none',
    ADD COLUMN monthly_usd_alert TEXT NOT NULL DEFAULT 'none',
    ADD COLUMN total_usd_alert   TEXT NOT NULL DEFAULT 'none';

ALTER TABLE session_token_budgets
    ADD COLUMN daily_usd_alert   TEXT NOT NULL DEFAULT 'none',
    ADD COLUMN monthly_usd_alert TEXT NOT NULL DEFAULT 'none',
    ADD COLUMN total_usd_alert   TEXT NOT NULL DEFAULT 'none';

-- An alert of a node names it (NULL: the session's own window; session_id is then the
-- session of the event that crossed the node's threshold). A USD alert has the dollar
-- amounts instead of tokens.
ALTER TABLE alert_outbox
    ADD COLUMN account    VARCHAR(255),
    ADD COLUMN unit       TEXT NOT NULL DEFAULT 'tokens' CHECK (unit IN ('tokens', 'usd')),
    ADD COLUMN used_usd   NUMERIC(30, 10),
    ADD COLUMN limit_usd  NUMERIC(30, 10),
    ALTER COLUMN used_tokens DROP NOT NULL,
    ALTER COLUMN limit_tokens DROP NOT NULL,
    ADD CHECK ((unit = 'tokens') = (used_tokens IS NOT NULL AND limit_tokens IS NOT NULL)),
    ADD CHECK ((unit = 'usd') = (used_usd IS NOT NULL AND limit_usd IS NOT NULL));

CREATE INDEX alert_outbox_account_idx ON alert_outbox (account, created_at)
    WHERE account IS NOT NULL;
