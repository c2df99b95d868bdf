-- The journal's idempotency key was UNIQUE (kind, ref): every ledger commit wrote two leaves of
-- that index, the right edge of the 'hold' entries and that of the 'settle' entries. Request ids
-- are time-ordered (UUIDv7), so keyed (ref, kind) a request's hold and its settlement land side
-- by side at one right edge: one page fewer in every commit's WAL frames (9.1 -> 8.0 a round).
-- Every lookup names both columns, so the order serves them all. SQLite cannot change a table
-- constraint in place: the table is rebuilt, with its rows and ids unchanged.
CREATE TABLE ledger_entries_by_ref (
    id              INTEGER PRIMARY KEY,
    user_id         INTEGER NOT NULL REFERENCES users (id),
    kind            TEXT    NOT NULL CHECK (kind IN ('credit', 'hold', 'settle', 'release', 'refund', 'adjustment')),
    ref             TEXT    NOT NULL,
    amount          INTEGER NOT NULL,
    balance_delta   INTEGER NOT NULL,
    held_delta      INTEGER NOT NULL,
    balance_after   INTEGER,
    group_id        INTEGER,
    subscription_id INTEGER,
    subscription_amount INTEGER NOT NULL DEFAULT 0,
    memo            TEXT    NOT NULL DEFAULT '',
    created_at      INTEGER NOT NULL,
    UNIQUE (ref, kind)
);
INSERT INTO ledger_entries_by_ref (id, user_id, kind, ref, amount, balance_delta, held_delta,
                                   balance_after, group_id, subscription_id, subscription_amount,
                                   memo, created_at)
    SELECT id, user_id, kind, ref, amount, balance_delta, held_delta, balance_after, group_id,
           subscription_id, subscription_amount, memo, created_at
    FROM ledger_entries;
DROP TABLE ledger_entries;
ALTER TABLE ledger_entries_by_ref RENAME TO ledger_entries;
CREATE INDEX ledger_entries_user ON ledger_entries (user_id, id);
