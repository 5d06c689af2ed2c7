-- Sign-in with an app's own tokens: a user may carry the app's id for them (Phoenix.Token data,
-- JWT sub). Admins pass every collection rule. Records and logged changes keep their creator,
-- for the `owner` rule.
ALTER TABLE users ADD COLUMN external_id TEXT;
ALTER TABLE users ADD COLUMN admin INTEGER NOT NULL DEFAULT 0;
CREATE UNIQUE INDEX users_external_id ON users(external_id);
ALTER TABLE collection_records ADD COLUMN owner BIGINT;
ALTER TABLE collection_changes ADD COLUMN owner BIGINT;
-- Revocations in commit order, for the servers that watch them (timestamps from other
-- processes can commit out of order).
ALTER TABLE api_tokens ADD COLUMN revoked_seq BIGINT;
CREATE INDEX api_tokens_revoked_seq ON api_tokens(revoked_seq);
