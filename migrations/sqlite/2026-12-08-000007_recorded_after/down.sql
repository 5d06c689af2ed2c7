ALTER TABLE topic_events DROP COLUMN after_seq;
ALTER TABLE topic_events DROP COLUMN after_topic;
