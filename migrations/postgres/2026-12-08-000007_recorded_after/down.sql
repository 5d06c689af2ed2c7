ALTER TABLE topic_events DROP COLUMN after_topic, DROP COLUMN after_seq;
