-- A refunded plan order takes back exactly the time its grant added, once: the grant records the
-- span it added (NULL for grants made before this migration: the plan's duration is used then)
-- and when it was taken back.
ALTER TABLE plan_grants ADD COLUMN span_ms BIGINT;
ALTER TABLE plan_grants ADD COLUMN taken_back_at BIGINT;
