-- Every billed request inserts one row here and deletes it when it settles. As a rowid table
-- keyed by `request_id` that is two B-trees (the table and its primary-key index) written twice
-- per request, and two more pages in every ledger commit's WAL frames. Keyed by the request id
-- itself (WITHOUT ROWID) it is one.
CREATE TABLE holds_by_request (
    request_id          TEXT    PRIMARY KEY,
    user_id             INTEGER NOT NULL REFERENCES users (id),
    group_id            INTEGER NOT NULL,
    amount              INTEGER NOT NULL,
    wallet_amount       INTEGER NOT NULL,
    subscription_id     INTEGER,
    subscription_amount INTEGER NOT NULL DEFAULT 0,
    instance_id         TEXT    NOT NULL,
    created_at          INTEGER NOT NULL,
    expires_at          INTEGER NOT NULL
) WITHOUT ROWID;
INSERT INTO holds_by_request (request_id, user_id, group_id, amount, wallet_amount,
                              subscription_id, subscription_amount, instance_id, created_at,
                              expires_at)
    SELECT request_id, user_id, group_id, amount, wallet_amount, subscription_id,
           subscription_amount, instance_id, created_at, expires_at
    FROM holds;
DROP TABLE holds;
ALTER TABLE holds_by_request RENAME TO holds;
