-- Plans can be bought: an optional price (minor units of `currency`; both NULL: not for sale), and
-- the plan grants made by paid orders, one per order, so a repeated notification extends nothing.

ALTER TABLE plans ADD COLUMN price_minor INTEGER;
ALTER TABLE plans ADD COLUMN currency TEXT;

CREATE TABLE plan_grants (
    grant_key       TEXT    PRIMARY KEY,
    subscription_id INTEGER REFERENCES subscriptions (id),
    created_at      INTEGER NOT NULL
);
