-- A node's reservation counts live in its days (account_usage_daily: accepted, and
-- refused by its own limit), which the reads sum. Kept on the node's row too, they made
-- every reservation rewrite the row of every node above its session, though nothing
-- else of the node changes when a reservation is decided or released. Both tables have
-- been written by the same fold since 0012, so the days hold the same counts.
ALTER TABLE account_budgets DROP COLUMN reservations_accepted;
ALTER TABLE account_budgets DROP COLUMN reservations_rejected;
