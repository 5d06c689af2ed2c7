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
    PRIMARY KEY (topic, seq)
);
