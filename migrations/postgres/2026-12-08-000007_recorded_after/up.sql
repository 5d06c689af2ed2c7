-- What a recorded event is delivered after on every node (src/pubsub.rs `After`): the topic and
-- the seq its write saw there (a thread's reply after its room's stream, removals included).
-- Kept so that an event filled from the change log keeps its place too.
ALTER TABLE topic_events ADD COLUMN after_topic TEXT, ADD COLUMN after_seq BIGINT;
