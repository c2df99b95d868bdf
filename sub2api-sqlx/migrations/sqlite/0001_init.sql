-- sub2api-rs schema (SQLite). Money columns are INTEGER nano-USD; times are INTEGER unix ms.

CREATE TABLE groups (
    id                  INTEGER PRIMARY KEY,
    name                TEXT    NOT NULL UNIQUE,
    platform            TEXT    NOT NULL,
    rate_multiplier_ppm INTEGER NOT NULL,
    billing_mode        TEXT    NOT NULL DEFAULT 'wallet' CHECK (billing_mode IN ('wallet', 'subscription', 'both')),
    created_at          INTEGER NOT NULL,
    updated_at          INTEGER NOT NULL
);

CREATE TABLE accounts (
    id              INTEGER PRIMARY KEY,
    name            TEXT    NOT NULL UNIQUE,
    platform        TEXT    NOT NULL,
    kind            TEXT    NOT NULL,
    base_url        TEXT    NOT NULL,
    priority        INTEGER NOT NULL,
    concurrency     INTEGER NOT NULL,
    enabled         BOOLEAN NOT NULL DEFAULT TRUE,
    -- AES-256-GCM: 12-byte nonce || ciphertext+tag, under the store's master key.
    credentials     BLOB    NOT NULL,
    status          TEXT    NOT NULL DEFAULT 'ready' CHECK (status IN ('ready', 'cooling_down', 'disabled')),
    cooldown_until  INTEGER,
    status_reason   TEXT,
    created_at      INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL
);

CREATE TABLE account_groups (
    account_id INTEGER NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    group_id   INTEGER NOT NULL REFERENCES groups (id) ON DELETE CASCADE,
    PRIMARY KEY (account_id, group_id)
);
CREATE INDEX account_groups_group ON account_groups (group_id);

CREATE TABLE users (
    id         INTEGER PRIMARY KEY,
    email      TEXT    NOT NULL UNIQUE,
    enabled    BOOLEAN NOT NULL DEFAULT TRUE,
    created_at INTEGER NOT NULL
);

CREATE TABLE api_keys (
    id                INTEGER PRIMARY KEY,
    key_hash          BLOB    NOT NULL UNIQUE,
    user_id           INTEGER NOT NULL REFERENCES users (id),
    group_id          INTEGER NOT NULL REFERENCES groups (id),
    name              TEXT    NOT NULL,
    enabled           BOOLEAN NOT NULL DEFAULT TRUE,
    concurrency_limit INTEGER,
    rpm_limit         INTEGER,
    created_at        INTEGER NOT NULL
);
CREATE INDEX api_keys_user ON api_keys (user_id);

-- balance = SUM(ledger_entries.balance_delta), held = SUM(ledger_entries.held_delta) per user.
CREATE TABLE wallets (
    user_id    INTEGER PRIMARY KEY REFERENCES users (id),
    balance    INTEGER NOT NULL DEFAULT 0,
    held       INTEGER NOT NULL DEFAULT 0 CHECK (held >= 0),
    updated_at INTEGER NOT NULL
);

-- The append-only journal. `ref` is the idempotency key (credits) or request id (hold, settle,
-- release), unique per kind.
CREATE TABLE ledger_entries (
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
    UNIQUE (kind, ref)
);
CREATE INDEX ledger_entries_user ON ledger_entries (user_id, id);

CREATE TABLE holds (
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
);
CREATE INDEX holds_expires ON holds (expires_at);
CREATE INDEX holds_instance ON holds (instance_id);

CREATE TABLE usage_log (
    id                        INTEGER PRIMARY KEY,
    request_id                TEXT    NOT NULL UNIQUE,
    user_id                   INTEGER NOT NULL,
    key_id                    INTEGER NOT NULL,
    group_id                  INTEGER NOT NULL,
    account_id                INTEGER,
    model                     TEXT    NOT NULL,
    input_tokens              INTEGER NOT NULL,
    output_tokens             INTEGER NOT NULL,
    cache_creation_5m_tokens  INTEGER NOT NULL,
    cache_creation_1h_tokens  INTEGER NOT NULL,
    cache_read_tokens         INTEGER NOT NULL,
    web_search_requests       INTEGER NOT NULL,
    cost                      INTEGER NOT NULL,
    stream                    BOOLEAN NOT NULL,
    ending                    TEXT    NOT NULL,
    duration_ms               INTEGER NOT NULL,
    created_at                INTEGER NOT NULL
);
CREATE INDEX usage_log_user_time ON usage_log (user_id, created_at);
CREATE INDEX usage_log_key_time ON usage_log (key_id, created_at);
CREATE INDEX usage_log_time ON usage_log (created_at);

CREATE TABLE plans (
    id            INTEGER PRIMARY KEY,
    name          TEXT    NOT NULL UNIQUE,
    group_id      INTEGER NOT NULL REFERENCES groups (id),
    duration_days INTEGER NOT NULL,
    enabled       BOOLEAN NOT NULL DEFAULT TRUE,
    created_at    INTEGER NOT NULL
);

CREATE TABLE plan_windows (
    plan_id    INTEGER NOT NULL REFERENCES plans (id) ON DELETE CASCADE,
    idx        INTEGER NOT NULL,
    kind       TEXT    NOT NULL CHECK (kind IN ('rolling', 'day', 'week', 'month')),
    rolling_ms INTEGER NOT NULL,
    limit_amount  INTEGER NOT NULL,
    PRIMARY KEY (plan_id, idx)
);

CREATE TABLE subscriptions (
    id         INTEGER PRIMARY KEY,
    user_id    INTEGER NOT NULL REFERENCES users (id),
    plan_id    INTEGER NOT NULL REFERENCES plans (id),
    group_id   INTEGER NOT NULL REFERENCES groups (id),
    starts_at  INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    status     TEXT    NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'cancelled')),
    created_at INTEGER NOT NULL
);
CREATE INDEX subscriptions_user_group ON subscriptions (user_id, group_id, expires_at);

CREATE TABLE subscription_windows (
    subscription_id INTEGER NOT NULL REFERENCES subscriptions (id) ON DELETE CASCADE,
    idx             INTEGER NOT NULL,
    window_start    INTEGER,
    used            INTEGER NOT NULL DEFAULT 0,
    held            INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (subscription_id, idx)
);

CREATE TABLE redeem_codes (
    code          TEXT    PRIMARY KEY,
    batch_id      TEXT    NOT NULL,
    kind          TEXT    NOT NULL CHECK (kind IN ('balance', 'subscription')),
    value         INTEGER,
    plan_id       INTEGER REFERENCES plans (id),
    duration_days INTEGER,
    status        TEXT    NOT NULL DEFAULT 'unused' CHECK (status IN ('unused', 'used', 'disabled')),
    created_at    INTEGER NOT NULL,
    expires_at    INTEGER,
    used_by       INTEGER REFERENCES users (id),
    used_at       INTEGER
);
CREATE INDEX redeem_codes_batch ON redeem_codes (batch_id);

CREATE TABLE payment_orders (
    id                INTEGER PRIMARY KEY,
    out_trade_no      TEXT    NOT NULL UNIQUE,
    user_id           INTEGER NOT NULL REFERENCES users (id),
    provider          TEXT    NOT NULL,
    amount_minor      INTEGER NOT NULL,
    currency          TEXT    NOT NULL,
    credit            INTEGER NOT NULL,
    status            TEXT    NOT NULL CHECK (status IN ('pending', 'paid', 'failed', 'closed', 'refunded')),
    provider_trade_no TEXT    UNIQUE,
    kind              TEXT    NOT NULL CHECK (kind IN ('balance', 'plan')),
    plan_id           INTEGER REFERENCES plans (id),
    created_at        INTEGER NOT NULL,
    updated_at        INTEGER NOT NULL,
    expires_at        INTEGER,
    paid_at           INTEGER
);
CREATE INDEX payment_orders_user ON payment_orders (user_id, created_at);
