-- Recorded topics: each topic's events numbered 1, 2, 3, ... for replay after a reconnect.
CREATE TABLE topic_seqs (
    topic TEXT PRIMARY KEY NOT NULL,
    seq BIGINT NOT NULL
);

CREATE TABLE topic_events (
    topic TEXT NOT NULL,
    seq BIGINT NOT NULL,
    event TEXT NOT NULL,
    payload TEXT NOT NULL,
    inserted_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    PRIMARY KEY (topic, seq)
);
CREATE INDEX topic_events_expires_at ON topic_events(expires_at);

-- Collections' change logs become their topics' streams (`collection:<name>`, event `change`).
INSERT INTO topic_seqs (topic, seq) SELECT 'collection:' || collection, seq FROM collection_seqs;
INSERT INTO topic_events (topic, seq, event, payload, inserted_at, expires_at)
    SELECT 'collection:' || collection, seq, 'change', json_build_object('action', action, 'record', record::json, 'owner', owner, 'seq', seq)::text, 0, 9223372036854775807 FROM collection_changes;
DROP TABLE collection_changes;
DROP TABLE collection_seqs;
