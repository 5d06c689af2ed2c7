//! Slack-style chat: rooms and members over REST; messages, threads, reactions, read receipts,
//! typing and presence on `channel:<id>`; thread replies on `thread:<id>`; mentions and unread
//! counts on `user:<id>`; WebRTC signaling on `voice:<id>`.
//!
//! - [`access`]: who may read a room, who is a member, what ends a membership; the channels
//!   and the REST routes all ask it.
//! - [`rest`] serves the `/api/channels` routes.
//! - [`room`] serves `channel:<id>` and `thread:<id>`.
//! - [`user`] serves `user:<id>`.
//! - [`voice`] serves `voice:<id>`.
//!
//! This module holds the queries they share. Everything is written in one transaction and
//! broadcast after it commits.

pub mod access;
pub mod rest;
pub mod room;
pub mod user;
pub mod voice;

use crate::accounts::User;
/// Chat's settings live with the apps' shared state; re-exported at their old path.
pub use crate::apps::state::{ChatConfig, RateLimiter};
use crate::store::schema::{mentions, messages, reactions, room_members, users};
use crate::store::{iso, DbConnection, StoreError};
pub(crate) use access::{access, membership, readable, Access, Room};
pub use access::{ends_membership, MEMBER_REMOVED};
use diesel::prelude::*;
use serde_json::{json, Value};
use std::collections::HashMap;

/// Messages the member has not read: newer than their read position, and not their own.
pub(crate) fn unread_count(
    c: &mut DbConnection,
    room_id: i64,
    user_id: i64,
) -> Result<i64, StoreError> {
    let last = room_members::table
        .filter(room_members::room_id.eq(room_id))
        .filter(room_members::user_id.eq(user_id))
        .select(room_members::last_read_id)
        .first::<i64>(c)
        .optional()?;
    let Some(last) = last else { return Ok(0) };
    Ok(messages::table
        .filter(messages::room_id.eq(room_id))
        .filter(messages::id.gt(last))
        .filter(messages::user_id.ne(user_id))
        .count()
        .get_result(c)?)
}

/// Every member's unread count in a room, in one statement.
pub(crate) fn unread_counts(
    c: &mut DbConnection,
    room_id: i64,
) -> Result<Vec<(i64, i64)>, StoreError> {
    Ok(room_members::table
        .left_join(
            messages::table.on(messages::room_id
                .eq(room_members::room_id)
                .and(messages::id.gt(room_members::last_read_id))
                .and(messages::user_id.ne(room_members::user_id))),
        )
        .filter(room_members::room_id.eq(room_id))
        .group_by(room_members::user_id)
        .select((
            room_members::user_id,
            diesel::dsl::count(messages::id.nullable()),
        ))
        .order(room_members::user_id)
        .load(c)?)
}

pub(crate) fn room_json(room: &Room, unread: i64) -> Value {
    json!({"id": room.id, "name": room.name, "private": room.private, "unread_count": unread})
}

pub(crate) fn member_ids(c: &mut DbConnection, room_id: i64) -> Result<Vec<i64>, StoreError> {
    Ok(room_members::table
        .filter(room_members::room_id.eq(room_id))
        .select(room_members::user_id)
        .order(room_members::user_id)
        .load(c)?)
}

type MessageRow = (i64, i64, i64, String, Option<i64>, i64, Option<i64>, String);

const MESSAGE_COLUMNS: (
    messages::id,
    messages::room_id,
    messages::user_id,
    messages::body,
    messages::parent_id,
    messages::inserted_at,
    messages::edited_at,
    users::name,
) = (
    messages::id,
    messages::room_id,
    messages::user_id,
    messages::body,
    messages::parent_id,
    messages::inserted_at,
    messages::edited_at,
    users::name,
);

/// `[{emoji, count, user_ids}]` for each message, emojis in the order first used.
fn reactions_of(c: &mut DbConnection, ids: &[i64]) -> Result<HashMap<i64, Vec<Value>>, StoreError> {
    let rows = reactions::table
        .filter(reactions::message_id.eq_any(ids))
        .order((reactions::inserted_at, reactions::user_id))
        .select((reactions::message_id, reactions::emoji, reactions::user_id))
        .load::<(i64, String, i64)>(c)?;
    let mut grouped: HashMap<i64, Vec<(String, Vec<i64>)>> = HashMap::new();
    for (msg, emoji, user) in rows {
        let list = grouped.entry(msg).or_default();
        match list.iter_mut().find(|(e, _)| *e == emoji) {
            Some((_, users)) => users.push(user),
            None => list.push((emoji, vec![user])),
        }
    }
    Ok(grouped
        .into_iter()
        .map(|(msg, list)| {
            let v = list
                .into_iter()
                .map(|(emoji, users)| json!({"emoji": emoji, "count": users.len(), "user_ids": users}))
                .collect();
            (msg, v)
        })
        .collect())
}

pub(crate) fn reactions_json(c: &mut DbConnection, id: i64) -> Result<Value, StoreError> {
    Ok(Value::Array(
        reactions_of(c, &[id])?.remove(&id).unwrap_or_default(),
    ))
}

fn render(c: &mut DbConnection, rows: Vec<MessageRow>) -> Result<Vec<Value>, StoreError> {
    let ids: Vec<i64> = rows.iter().map(|r| r.0).collect();
    let mut reacts = reactions_of(c, &ids)?;
    let replies: HashMap<i64, i64> = messages::table
        .filter(messages::parent_id.eq_any(&ids))
        .group_by(messages::parent_id)
        .select((
            messages::parent_id.assume_not_null(),
            diesel::dsl::count_star(),
        ))
        .load::<(i64, i64)>(c)?
        .into_iter()
        .collect();
    Ok(rows
        .into_iter()
        .map(
            |(id, room_id, user_id, body, parent_id, inserted, edited, author)| {
                json!({
                    "id": id,
                    "room_id": room_id,
                    "user_id": user_id,
                    "author_name": author,
                    "body": body,
                    "parent_id": parent_id,
                    "reply_count": replies.get(&id).copied().unwrap_or(0),
                    "reactions": reacts.remove(&id).unwrap_or_default(),
                    "inserted_at": iso(inserted),
                    "edited_at": edited.map(iso),
                })
            },
        )
        .collect())
}

pub(crate) fn message(c: &mut DbConnection, id: i64) -> Result<Option<Value>, StoreError> {
    let row = messages::table
        .inner_join(users::table)
        .filter(messages::id.eq(id))
        .select(MESSAGE_COLUMNS)
        .first::<MessageRow>(c)
        .optional()?;
    Ok(match row {
        Some(r) => Some(render(c, vec![r])?.remove(0)),
        None => None,
    })
}

/// A room's top-level messages before `before` (all if `None`), the newest `limit`, oldest first.
pub(crate) fn history(
    c: &mut DbConnection,
    room_id: i64,
    before: Option<i64>,
    limit: i64,
) -> Result<Vec<Value>, StoreError> {
    let mut q = messages::table
        .inner_join(users::table)
        .filter(messages::room_id.eq(room_id))
        .filter(messages::parent_id.is_null())
        .order(messages::id.desc())
        .limit(limit)
        .select(MESSAGE_COLUMNS)
        .into_boxed();
    if let Some(b) = before {
        q = q.filter(messages::id.lt(b));
    }
    let mut rows = q.load::<MessageRow>(c)?;
    rows.reverse();
    render(c, rows)
}

/// A thread: the parent, then its replies oldest first.
pub(crate) fn thread(c: &mut DbConnection, parent: i64) -> Result<Vec<Value>, StoreError> {
    let rows = messages::table
        .inner_join(users::table)
        .filter(messages::id.eq(parent).or(messages::parent_id.eq(parent)))
        .order(messages::id)
        .select(MESSAGE_COLUMNS)
        .load::<MessageRow>(c)?;
    render(c, rows)
}

/// Stores one mention of message `message_id` for each of `users`, in one statement however many
/// (`@everyone` in a large room).
pub(crate) fn insert_mentions(
    c: &mut DbConnection,
    users: &[i64],
    room_id: i64,
    message_id: i64,
    now: i64,
) -> Result<(), StoreError> {
    use diesel::sql_types::{Array, BigInt, Text};
    if users.is_empty() {
        return Ok(());
    }
    match c {
        DbConnection::Sqlite(c) => diesel::sql_query(
            "INSERT INTO mentions (user_id, room_id, message_id, inserted_at) \
             SELECT value, ?, ?, ? FROM json_each(?)",
        )
        .bind::<BigInt, _>(room_id)
        .bind::<BigInt, _>(message_id)
        .bind::<BigInt, _>(now)
        .bind::<Text, _>(serde_json::to_string(users).unwrap_or_default())
        .execute(c)?,
        DbConnection::Postgres(c) => diesel::sql_query(
            "INSERT INTO mentions (user_id, room_id, message_id, inserted_at) \
             SELECT u, $2, $3, $4 FROM unnest($1) AS u",
        )
        .bind::<Array<BigInt>, _>(users)
        .bind::<BigInt, _>(room_id)
        .bind::<BigInt, _>(message_id)
        .bind::<BigInt, _>(now)
        .execute(c)?,
    };
    Ok(())
}

/// Who a body mentions: `@name` users who may read the room, `@everyone` (every member) and
/// `@here` (the members in `present`). Never the author.
pub(crate) fn mentioned(
    c: &mut DbConnection,
    body: &str,
    access: &Access,
    author: &User,
    present: &[i64],
) -> Result<Vec<i64>, StoreError> {
    let mut out: Vec<i64> = Vec::new();
    let (mut everyone, mut here) = (false, false);
    let mut names: Vec<String> = Vec::new();
    for word in body
        .split(|ch: char| !(ch.is_alphanumeric() || matches!(ch, '@' | '_' | '-' | '.')))
        .filter_map(|w| w.strip_prefix('@'))
        .map(|w| w.trim_end_matches('.'))
    {
        match word {
            "everyone" => everyone = true,
            "here" => here = true,
            name => names.push(name.to_lowercase()),
        }
    }
    if everyone || here {
        let members = member_ids(c, access.room.id)?;
        if here {
            out.extend(present.iter().filter(|p| members.contains(p)));
        }
        if everyone {
            out.extend(members);
        }
    }
    if !names.is_empty() {
        // Every named user, and whether they are a member, in one query.
        let named = users::table
            .left_join(
                room_members::table.on(room_members::user_id
                    .eq(users::id)
                    .and(room_members::room_id.eq(access.room.id))),
            )
            .filter(users::name_key.eq_any(&names))
            .select((users::id, room_members::user_id.nullable()))
            .load::<(i64, Option<i64>)>(c)?;
        out.extend(
            named
                .into_iter()
                .filter(|(_, member)| member.is_some() || !access.room.private)
                .map(|(id, _)| id),
        );
    }
    out.sort_unstable();
    out.dedup();
    out.retain(|&u| u != author.id);
    Ok(out)
}

/// Unread mentions of a user.
pub(crate) fn mention_count(c: &mut DbConnection, user_id: i64) -> Result<i64, StoreError> {
    Ok(mentions::table
        .filter(mentions::user_id.eq(user_id))
        .filter(mentions::read.eq(0))
        .count()
        .get_result(c)?)
}
