-- Generic collections: JSON records, a gap-free sequence number per collection, and a bounded
-- log of recent changes for replay after a reconnect.
CREATE TABLE collection_records (
    collection TEXT NOT NULL,
    id TEXT NOT NULL,
    data TEXT NOT NULL,
    created BIGINT NOT NULL,
    updated BIGINT NOT NULL,
    PRIMARY KEY (collection, id)
);
CREATE INDEX collection_records_created ON collection_records(collection, created);

CREATE TABLE collection_seqs (
    collection TEXT PRIMARY KEY NOT NULL,
    seq BIGINT NOT NULL
);

CREATE TABLE collection_changes (
    collection TEXT NOT NULL,
    seq BIGINT NOT NULL,
    action TEXT NOT NULL,
    record TEXT NOT NULL,
    PRIMARY KEY (collection, seq)
);
