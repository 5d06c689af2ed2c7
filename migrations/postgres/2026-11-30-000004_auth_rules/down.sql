DROP INDEX api_tokens_revoked_seq;
ALTER TABLE api_tokens DROP COLUMN revoked_seq;
DROP INDEX users_external_id;
ALTER TABLE users DROP COLUMN external_id;
ALTER TABLE users DROP COLUMN admin;
ALTER TABLE collection_records DROP COLUMN owner;
ALTER TABLE collection_changes DROP COLUMN owner;
