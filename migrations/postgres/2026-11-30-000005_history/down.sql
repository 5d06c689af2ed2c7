DROP TABLE topic_events;
DROP TABLE topic_seqs;
