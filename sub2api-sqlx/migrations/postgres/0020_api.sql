-- The admin and user API: logins, key rules and quotas, sessions, settings, per-user rates.

ALTER TABLE users ADD COLUMN password_hash TEXT;
ALTER TABLE users ADD COLUMN is_admin BOOLEAN NOT NULL DEFAULT FALSE;

-- `hint` shows a key without revealing it; `quota`/`quota_used` are nano-USD; `ip_allowlist` is a
-- comma-separated list of IPs and CIDR blocks (empty = anywhere).
ALTER TABLE api_keys ADD COLUMN hint TEXT NOT NULL DEFAULT '';
ALTER TABLE api_keys ADD COLUMN quota BIGINT;
ALTER TABLE api_keys ADD COLUMN quota_used BIGINT NOT NULL DEFAULT 0;
ALTER TABLE api_keys ADD COLUMN expires_at BIGINT;
ALTER TABLE api_keys ADD COLUMN ip_allowlist TEXT NOT NULL DEFAULT '';

-- Quota held by requests in flight; an expired row no longer counts (a crashed process never
-- strands quota).
CREATE TABLE key_quota_holds (
    request_id TEXT    PRIMARY KEY,
    key_id     BIGINT NOT NULL REFERENCES api_keys (id) ON DELETE CASCADE,
    amount     BIGINT NOT NULL,
    expires_at BIGINT NOT NULL
);
CREATE INDEX key_quota_holds_key ON key_quota_holds (key_id, expires_at);

-- Login sessions: the SHA-256 of the token only.
CREATE TABLE sessions (
    token_hash BYTEA   PRIMARY KEY,
    user_id    BIGINT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL
);
CREATE INDEX sessions_user ON sessions (user_id);

-- Operator settings; values are JSON.
CREATE TABLE settings (
    name       TEXT    PRIMARY KEY,
    value      TEXT    NOT NULL,
    updated_at BIGINT NOT NULL
);

-- A user's own price multiplier in a group (overrides the group's).
CREATE TABLE group_user_rates (
    group_id            BIGINT NOT NULL REFERENCES groups (id) ON DELETE CASCADE,
    user_id             BIGINT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    rate_multiplier_ppm BIGINT NOT NULL,
    PRIMARY KEY (group_id, user_id)
);
