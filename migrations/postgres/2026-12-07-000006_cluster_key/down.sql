DROP TABLE cluster_keys;
