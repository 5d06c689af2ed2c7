CREATE TABLE collection_seqs (
    collection TEXT PRIMARY KEY NOT NULL,
    seq BIGINT NOT NULL
);
CREATE TABLE collection_changes (
    collection TEXT NOT NULL,
    seq BIGINT NOT NULL,
    action TEXT NOT NULL,
    record TEXT NOT NULL,
    owner BIGINT,
    PRIMARY KEY (collection, seq)
);
DROP TABLE topic_events;
DROP TABLE topic_seqs;
