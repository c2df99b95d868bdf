-- Per-account options (model mapping and allowlist, proxy, vendor account ids) as JSON, and OAuth
-- authorizations started by an operator and not yet exchanged (their PKCE verifier).

ALTER TABLE accounts ADD COLUMN options TEXT NOT NULL DEFAULT '{}';

CREATE TABLE oauth_pending (
    state      TEXT   PRIMARY KEY,
    data       TEXT   NOT NULL,
    created_at BIGINT NOT NULL
);
