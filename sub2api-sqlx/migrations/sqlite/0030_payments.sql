-- Payments: the full order lifecycle (PENDING -> PAID -> COMPLETED; EXPIRED, CANCELLED, FAILED;
-- REFUND_REQUESTED -> REFUNDED), the provider's own order id (a Stripe Checkout Session), and the
-- audit of refused notifications. SQLite cannot change a CHECK constraint: the table is rebuilt.

CREATE TABLE payment_orders_new (
    id                INTEGER PRIMARY KEY,
    out_trade_no      TEXT    NOT NULL UNIQUE,
    user_id           INTEGER NOT NULL REFERENCES users (id),
    provider          TEXT    NOT NULL,
    amount_minor      INTEGER NOT NULL,
    currency          TEXT    NOT NULL,
    credit            INTEGER NOT NULL,
    status            TEXT    NOT NULL CHECK (status IN ('pending', 'paid', 'completed', 'expired', 'cancelled',
                                                         'failed', 'closed', 'refund_requested', 'refunded')),
    provider_trade_no TEXT    UNIQUE,
    kind              TEXT    NOT NULL CHECK (kind IN ('balance', 'plan')),
    plan_id           INTEGER REFERENCES plans (id),
    created_at        INTEGER NOT NULL,
    updated_at        INTEGER NOT NULL,
    expires_at        INTEGER,
    paid_at           INTEGER,
    provider_order_id TEXT
);
INSERT INTO payment_orders_new (id, out_trade_no, user_id, provider, amount_minor, currency, credit, status,
                                provider_trade_no, kind, plan_id, created_at, updated_at, expires_at, paid_at)
SELECT id, out_trade_no, user_id, provider, amount_minor, currency, credit, status,
       provider_trade_no, kind, plan_id, created_at, updated_at, expires_at, paid_at
FROM payment_orders;
DROP TABLE payment_orders;
ALTER TABLE payment_orders_new RENAME TO payment_orders;
CREATE INDEX payment_orders_user ON payment_orders (user_id, created_at);
CREATE INDEX payment_orders_due ON payment_orders (status, expires_at);

CREATE TABLE payment_audit (
    id           INTEGER PRIMARY KEY,
    at           INTEGER NOT NULL,
    provider     TEXT    NOT NULL,
    out_trade_no TEXT,
    outcome      TEXT    NOT NULL,
    detail       TEXT    NOT NULL
);
