DROP TABLE collection_changes;
DROP TABLE collection_seqs;
DROP TABLE collection_records;
