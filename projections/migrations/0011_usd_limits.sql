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
