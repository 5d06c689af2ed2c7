-- Chat: rooms, members (with their read position), messages and thread replies, reactions,
-- and mention notifications.
CREATE TABLE rooms (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL,
    private INTEGER NOT NULL DEFAULT 0,
    inserted_at BIGINT NOT NULL
);

CREATE TABLE room_members (
    room_id BIGINT NOT NULL REFERENCES rooms(id) ON DELETE CASCADE,
    user_id BIGINT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    admin INTEGER NOT NULL DEFAULT 0,
    last_read_id BIGINT NOT NULL DEFAULT 0,
    inserted_at BIGINT NOT NULL,
    PRIMARY KEY (room_id, user_id)
);
CREATE INDEX room_members_user ON room_members(user_id);

CREATE TABLE messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    room_id BIGINT NOT NULL REFERENCES rooms(id) ON DELETE CASCADE,
    user_id BIGINT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    body TEXT NOT NULL,
    parent_id BIGINT REFERENCES messages(id) ON DELETE CASCADE,
    inserted_at BIGINT NOT NULL,
    edited_at BIGINT
);
CREATE INDEX messages_room ON messages(room_id, id);
CREATE INDEX messages_parent ON messages(parent_id);

CREATE TABLE reactions (
    message_id BIGINT NOT NULL REFERENCES messages(id) ON DELETE CASCADE,
    user_id BIGINT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    emoji TEXT NOT NULL,
    inserted_at BIGINT NOT NULL,
    PRIMARY KEY (message_id, user_id, emoji)
);

CREATE TABLE mentions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id BIGINT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    room_id BIGINT NOT NULL REFERENCES rooms(id) ON DELETE CASCADE,
    message_id BIGINT NOT NULL REFERENCES messages(id) ON DELETE CASCADE,
    read INTEGER NOT NULL DEFAULT 0,
    inserted_at BIGINT NOT NULL
);
CREATE INDEX mentions_user ON mentions(user_id, read);
