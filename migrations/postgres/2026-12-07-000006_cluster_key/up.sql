-- The key the nodes on this database sign their recorded broadcasts with (src/cluster/seal.rs):
-- a Redis client that cannot read the database cannot number a topic's events. Made by the
-- first node to start (`history::cluster_key`).
CREATE TABLE cluster_keys (
    name TEXT PRIMARY KEY NOT NULL,
    secret TEXT NOT NULL
);
