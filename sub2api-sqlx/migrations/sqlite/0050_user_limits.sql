-- Per-user limits over all of a user's keys (on top of each key's own): requests in flight at once
-- and requests per minute. NULL = unlimited.

ALTER TABLE users ADD COLUMN concurrency INTEGER;
ALTER TABLE users ADD COLUMN rpm INTEGER;
