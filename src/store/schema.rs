//! The tables, shared by both backends (only types both support: BigInt, Integer, Text).

diesel::table! {
    users (id) {
        id -> BigInt,
        name -> Text,
        /// The name lower-cased: names are unique regardless of case.
        name_key -> Text,
        community_member -> Integer,
        inserted_at -> BigInt,
        /// The id the app that minted the user's Phoenix.Token or JWT knows them by.
        external_id -> Nullable<Text>,
        /// 0/1: admins pass every collection rule.
        admin -> Integer,
    }
}

diesel::table! {
    api_tokens (id) {
        id -> BigInt,
        user_id -> BigInt,
        /// SHA-256 of the token, hex. The token itself is never stored.
        token_hash -> Text,
        inserted_at -> BigInt,
        revoked_at -> Nullable<BigInt>,
        /// 1, 2, 3, ... in the order revocations commit (they are serialized).
        revoked_seq -> Nullable<BigInt>,
    }
}

diesel::table! {
    posts (id) {
        id -> BigInt,
        user_id -> BigInt,
        body -> Text,
        inserted_at -> BigInt,
        updated_at -> BigInt,
    }
}

diesel::table! {
    post_likes (post_id, user_id) {
        post_id -> BigInt,
        user_id -> BigInt,
        inserted_at -> BigInt,
    }
}

diesel::table! {
    comments (id) {
        id -> BigInt,
        post_id -> BigInt,
        user_id -> BigInt,
        body -> Text,
        inserted_at -> BigInt,
    }
}

diesel::joinable!(api_tokens -> users (user_id));
diesel::joinable!(posts -> users (user_id));
diesel::joinable!(comments -> users (user_id));
diesel::joinable!(comments -> posts (post_id));
diesel::joinable!(post_likes -> posts (post_id));
diesel::allow_tables_to_appear_in_same_query!(users, api_tokens, posts, post_likes, comments);

diesel::table! {
    collection_records (collection, id) {
        collection -> Text,
        id -> Text,
        /// The client's fields, a JSON object.
        data -> Text,
        created -> BigInt,
        updated -> BigInt,
        /// The user who created the record, for the `owner` rule; none for anonymous writes.
        owner -> Nullable<BigInt>,
    }
}

diesel::table! {
    rooms (id) {
        id -> BigInt,
        name -> Text,
        private -> Integer,
        inserted_at -> BigInt,
    }
}

diesel::table! {
    room_members (room_id, user_id) {
        room_id -> BigInt,
        user_id -> BigInt,
        admin -> Integer,
        /// The newest message id the member has read; 0 for none.
        last_read_id -> BigInt,
        inserted_at -> BigInt,
    }
}

diesel::table! {
    messages (id) {
        id -> BigInt,
        room_id -> BigInt,
        user_id -> BigInt,
        body -> Text,
        /// Set for a thread reply: the message it answers.
        parent_id -> Nullable<BigInt>,
        inserted_at -> BigInt,
        edited_at -> Nullable<BigInt>,
    }
}

diesel::table! {
    reactions (message_id, user_id, emoji) {
        message_id -> BigInt,
        user_id -> BigInt,
        emoji -> Text,
        inserted_at -> BigInt,
    }
}

diesel::table! {
    mentions (id) {
        id -> BigInt,
        user_id -> BigInt,
        room_id -> BigInt,
        message_id -> BigInt,
        read -> Integer,
        inserted_at -> BigInt,
    }
}

diesel::joinable!(messages -> users (user_id));
diesel::joinable!(room_members -> users (user_id));
diesel::joinable!(room_members -> rooms (room_id));
diesel::allow_tables_to_appear_in_same_query!(
    users,
    rooms,
    room_members,
    messages,
    reactions,
    mentions
);

diesel::table! {
    /// The key the nodes on this database sign their recorded broadcasts with.
    cluster_keys (name) {
        name -> Text,
        secret -> Text,
    }
}

diesel::table! {
    /// Each recorded topic's latest sequence number.
    topic_seqs (topic) {
        topic -> Text,
        seq -> BigInt,
    }
}

diesel::table! {
    /// Recorded events, kept by count and age per topic (see `history`).
    topic_events (topic, seq) {
        topic -> Text,
        seq -> BigInt,
        event -> Text,
        /// The broadcast payload, its `seq` included, as JSON.
        payload -> Text,
        inserted_at -> BigInt,
        /// When it stops being replayed and may be deleted (its topic's retention by age).
        expires_at -> BigInt,
        /// What it is delivered after on every node (`crate::pubsub::After`), if anything.
        after_topic -> Nullable<Text>,
        after_seq -> Nullable<BigInt>,
    }
}
