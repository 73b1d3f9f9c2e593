-- Budget rows and rollup rows are rewritten by nearly every batch (usage counters, the
-- time of the last event). Room left free on each page lets PostgreSQL write the new
-- version of a row on the same page without a new index entry (a HOT update), which is
-- cheaper for every batch and keeps these tables from bloating. It applies to pages
-- written from now on; a table's old pages get it when it is rewritten (VACUUM FULL).
ALTER TABLE session_token_budgets SET (fillfactor = 70);
ALTER TABLE account_budgets SET (fillfactor = 70);
ALTER TABLE session_usage_daily SET (fillfactor = 70);
ALTER TABLE session_usage_monthly SET (fillfactor = 70);
ALTER TABLE session_usage_hourly SET (fillfactor = 70);
ALTER TABLE account_usage_daily SET (fillfactor = 70);
ALTER TABLE session_reservations_daily SET (fillfactor = 70);
