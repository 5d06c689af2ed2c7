//! `channel:<id>` (a room) and `thread:<id>` (a message's replies).

use super::{
    access, ends_membership, history, membership, mention_count, mentioned, message,
    reactions_json, readable, thread, unread_count,
};
use crate::accounts::User;
use crate::apps::state::{current_user, AppState};
use crate::history::{latest_seq, position, since_param, Recorder};
use crate::store::schema::{mentions, messages, reactions, room_members};
use crate::store::{iso, now_ms, DbConnection, StoreError};
use crate::{async_trait, Channel, ChannelContext, Flow, Info, Payload, Reply, StopReason};
use actix_web::web;
use diesel::prelude::*;
use serde_json::{json, Map, Value};

fn reason(r: impl Into<String>) -> Payload {
    Payload::Json(json!({ "reason": r.into() }))
}

fn unauthorized() -> Payload {
    reason("unauthorized")
}

pub fn room_topic(id: i64) -> String {
    format!("channel:{id}")
}

pub fn thread_topic(id: i64) -> String {
    format!("thread:{id}")
}

pub fn user_topic(id: i64) -> String {
    format!("user:{id}")
}

/// The id after a topic's prefix.
pub(crate) fn topic_id(topic: &str, prefix: &str) -> Option<i64> {
    topic
        .strip_prefix(prefix)?
        .parse()
        .ok()
        .filter(|&id: &i64| id > 0)
}

/// After a write commits: what goes where.
#[derive(Default)]
struct Fanout {
    room: Vec<(String, String, Value)>,
    users: Vec<(i64, &'static str, Value)>,
    /// (thread topic, room topic): see [`Fanout::in_thread`].
    threads: Vec<(String, String)>,
}

impl Fanout {
    fn to(&mut self, topic: String, event: &str, payload: Value) {
        self.room.push((topic, event.to_owned(), payload));
    }

    /// An event on the stream of the thread under message `parent` of room `room_id`. A
    /// thread has a stream of its own, so on each node it is delivered only after what the
    /// room's stream had when this write was made: a removal from the room committed before
    /// it closes the removed user's thread channel first, wherever each arrives first.
    fn in_thread(&mut self, parent: i64, room_id: i64, event: &str, payload: Value) {
        let topic = thread_topic(parent);
        self.threads.push((topic.clone(), room_topic(room_id)));
        self.to(topic, event, payload);
    }

    /// Records every event on its topic's stream, in a few statements however many members
    /// they reach; they are broadcast once the write commits.
    fn record(self, c: &mut DbConnection, rec: &mut Recorder<'_>) -> Result<(), StoreError> {
        for (thread, room) in &self.threads {
            rec.deliver_after(thread, room);
        }
        let users = self
            .users
            .into_iter()
            .map(|(user, event, payload)| (user_topic(user), event.to_owned(), payload));
        rec.record_all(c, self.room.into_iter().chain(users).collect())?;
        Ok(())
    }
}

/// `unread_updated` for every member but `except`, whose unread count in the room changed.
fn unread_fanout(
    c: &mut DbConnection,
    room_id: i64,
    except: i64,
    out: &mut Fanout,
) -> Result<(), StoreError> {
    for (member, count) in super::unread_counts(c, room_id)?
        .into_iter()
        .filter(|&(m, _)| m != except)
    {
        out.users.push((
            member,
            "unread_updated",
            json!({"channel_id": room_id, "count": count}),
        ));
    }
    Ok(())
}

/// A room: history on join, messages and everything about them as pushes, presence.
pub struct RoomChannel {
    state: web::Data<AppState>,
    user: Option<User>,
    room_id: i64,
    typing: Option<tokio::task::AbortHandle>,
    status: &'static str,
    online_at: String,
}

struct AfterJoin;
struct TypingExpired;

impl RoomChannel {
    pub fn new(state: web::Data<AppState>) -> RoomChannel {
        RoomChannel {
            state,
            user: None,
            room_id: 0,
            typing: None,
            status: "online",
            online_at: String::new(),
        }
    }

    fn user(&self) -> &User {
        self.user.as_ref().expect("joined rooms have a user")
    }

    fn meta(&self) -> Value {
        json!({"online_at": self.online_at, "status": self.status})
    }

    fn stop_typing(&mut self, ctx: &mut ChannelContext) {
        if let Some(timer) = self.typing.take() {
            timer.abort();
            ctx.broadcast_from(
                "typing",
                json!({"user_id": self.user().id, "typing": false}),
            );
        }
    }

    /// Runs a write for this room by a current member, then broadcasts what it produced.
    async fn write<F>(&self, f: F) -> Reply
    where
        F: FnOnce(&mut DbConnection, &User, i64, &mut Fanout) -> Result<Value, StoreError>
            + Send
            + 'static,
    {
        let (user, room) = (self.user().clone(), self.room_id);
        let result = self
            .state
            .history
            .write(&self.state.endpoint, move |c, rec| {
                membership(c, room, &user)?;
                let mut out = Fanout::default();
                let v = f(c, &user, room, &mut out)?;
                out.record(c, rec)?;
                Ok(v)
            })
            .await;
        match result {
            Ok(v) => Reply::ok(v),
            Err(e) => store_error(self.room_id, e),
        }
    }

    async fn new_message(&mut self, p: Map<String, Value>, ctx: &ChannelContext) -> Reply {
        let cfg = self.state.chat.clone();
        let body = match text(&p, "body", cfg.max_body) {
            Ok(b) => b,
            Err(r) => return Reply::error(reason(r)),
        };
        let parent = match p.get("parent_id") {
            None | Some(Value::Null) => None,
            Some(v) => match v.as_i64() {
                Some(id) => Some(id),
                None => return Reply::error(reason("parent_id must be a message id")),
            },
        };
        if let Err(ms) = self
            .state
            .chat_rate
            .take(self.user().id, cfg.rate_count, cfg.rate_window)
        {
            return Reply::error(json!({"reason": "rate_limited", "retry_after_ms": ms}));
        }
        // Who is in the room right now, for @here.
        let present: Vec<i64> = ctx
            .presence_list()
            .as_object()
            .map(|m| m.keys().filter_map(|k| k.parse().ok()).collect())
            .unwrap_or_default();
        self.write(move |c, user, room_id, out| {
            let a = access(c, room_id, user.id)?.ok_or(crate::apps::api::ApiError::NotFound)?;
            if let Some(pid) = parent {
                let parent_room = messages::table
                    .find(pid)
                    .filter(messages::parent_id.is_null())
                    .select(messages::room_id)
                    .first::<i64>(c)
                    .optional()?;
                if parent_room != Some(room_id) {
                    return Err(crate::apps::api::ApiError::invalid("parent_id", "is not a message of this room").into());
                }
            }
            let now = now_ms();
            let id = diesel::insert_into(messages::table)
                .values((
                    messages::room_id.eq(room_id),
                    messages::user_id.eq(user.id),
                    messages::body.eq(&body),
                    messages::parent_id.eq(parent),
                    messages::inserted_at.eq(now),
                ))
                .returning(messages::id)
                .get_result::<i64>(c)?;
            let msg = message(c, id)?.expect("just inserted");
            let who = mentioned(c, &body, &a, user, &present)?;
            super::insert_mentions(c, &who, room_id, id, now)?;
            for who in who {
                out.users.push((who, "mention", json!({"message": msg, "channel_id": room_id})));
            }
            match parent {
                None => out.to(room_topic(room_id), "new_message", msg.clone()),
                Some(pid) => {
                    out.in_thread(pid, room_id, "new_message", msg.clone());
                    let replies = messages::table
                        .filter(messages::parent_id.eq(pid))
                        .count()
                        .get_result::<i64>(c)?;
                    out.to(
                        room_topic(room_id),
                        "thread_updated",
                        json!({"message_id": pid, "reply_count": replies, "last_reply_at": iso(now)}),
                    );
                }
            }
            unread_fanout(c, room_id, user.id, out)?;
            Ok(msg)
        })
        .await
    }

    async fn edit_message(&mut self, p: Map<String, Value>) -> Reply {
        let body = match text(&p, "body", self.state.chat.max_body) {
            Ok(b) => b,
            Err(r) => return Reply::error(reason(r)),
        };
        let id = match id_field(&p, "id") {
            Ok(id) => id,
            Err(r) => return r,
        };
        self.write(move |c, user, room_id, out| {
            let (author, parent) = own_message(c, id, room_id)?;
            if author != user.id {
                return Err(crate::apps::api::ApiError::Forbidden.into());
            }
            diesel::update(messages::table.find(id))
                .set((messages::body.eq(&body), messages::edited_at.eq(now_ms())))
                .execute(c)?;
            let msg = message(c, id)?.expect("exists");
            out.to(room_topic(room_id), "message_updated", msg.clone());
            if let Some(pid) = parent {
                out.in_thread(pid, room_id, "message_updated", msg.clone());
            }
            Ok(msg)
        })
        .await
    }

    async fn delete_message(&mut self, p: Map<String, Value>) -> Reply {
        let id = match id_field(&p, "id") {
            Ok(id) => id,
            Err(r) => return r,
        };
        self.write(move |c, user, room_id, out| {
            let (author, parent) = own_message(c, id, room_id)?;
            let admin = access(c, room_id, user.id)?.is_some_and(|a| a.is_admin());
            if author != user.id && !admin {
                return Err(crate::apps::api::ApiError::Forbidden.into());
            }
            diesel::delete(mentions::table.filter(mentions::message_id.eq(id))).execute(c)?;
            diesel::delete(reactions::table.filter(reactions::message_id.eq(id))).execute(c)?;
            diesel::delete(messages::table.filter(messages::parent_id.eq(id))).execute(c)?;
            diesel::delete(messages::table.find(id)).execute(c)?;
            out.to(room_topic(room_id), "message_deleted", json!({"id": id}));
            if let Some(pid) = parent {
                out.in_thread(pid, room_id, "message_deleted", json!({"id": id}));
            }
            Ok(json!({"id": id}))
        })
        .await
    }

    async fn react(&mut self, p: Map<String, Value>) -> Reply {
        let emoji = match text(&p, "emoji", 32) {
            Ok(e) => e,
            Err(r) => return Reply::error(reason(r)),
        };
        let id = match id_field(&p, "message_id") {
            Ok(id) => id,
            Err(r) => return r,
        };
        self.write(move |c, user, room_id, out| {
            own_message(c, id, room_id)?;
            let mine = reactions::table
                .filter(reactions::message_id.eq(id))
                .filter(reactions::user_id.eq(user.id))
                .filter(reactions::emoji.eq(&emoji));
            if diesel::delete(mine).execute(c)? == 0 {
                diesel::insert_into(reactions::table)
                    .values((
                        reactions::message_id.eq(id),
                        reactions::user_id.eq(user.id),
                        reactions::emoji.eq(&emoji),
                        reactions::inserted_at.eq(now_ms()),
                    ))
                    .execute(c)?;
            }
            let payload = json!({"message_id": id, "reactions": reactions_json(c, id)?});
            out.to(room_topic(room_id), "reactions_updated", payload.clone());
            Ok(payload)
        })
        .await
    }

    async fn mark_read(&mut self, p: Map<String, Value>) -> Reply {
        let id = match id_field(&p, "message_id") {
            Ok(id) => id,
            Err(r) => return r,
        };
        self.write(move |c, user, room_id, out| {
            own_message(c, id, room_id)?;
            let a = access(c, room_id, user.id)?.ok_or(crate::apps::api::ApiError::NotFound)?;
            let last = a.last_read_id.max(id);
            diesel::update(
                room_members::table
                    .filter(room_members::room_id.eq(room_id))
                    .filter(room_members::user_id.eq(user.id)),
            )
            .set(room_members::last_read_id.eq(last))
            .execute(c)?;
            diesel::update(
                mentions::table
                    .filter(mentions::user_id.eq(user.id))
                    .filter(mentions::room_id.eq(room_id))
                    .filter(mentions::message_id.le(id)),
            )
            .set(mentions::read.eq(1))
            .execute(c)?;
            out.to(room_topic(room_id), "read_receipt", json!({"user_id": user.id, "message_id": id}));
            let count = unread_count(c, room_id, user.id)?;
            out.users.push((user.id, "unread_updated", json!({"channel_id": room_id, "count": count})));
            Ok(json!({"last_read_id": last, "unread_count": count, "mentions": mention_count(c, user.id)?}))
        })
        .await
    }
}

/// The error reply for a failed read or write: the app's own reason, or "internal error".
fn store_error(room_id: i64, e: StoreError) -> Reply {
    match e {
        StoreError::Refused(r) => Reply::error(reason(r.to_string())),
        e => {
            log::error!("chat room {room_id}: {e}");
            Reply::error(reason("internal error"))
        }
    }
}

/// The author and parent of a message of this room, or "not found".
fn own_message(
    c: &mut DbConnection,
    id: i64,
    room_id: i64,
) -> Result<(i64, Option<i64>), StoreError> {
    messages::table
        .find(id)
        .filter(messages::room_id.eq(room_id))
        .select((messages::user_id, messages::parent_id))
        .first::<(i64, Option<i64>)>(c)
        .optional()?
        .ok_or_else(|| {
            crate::apps::api::ApiError::invalid("message", "not found in this room").into()
        })
}

/// A required message id field.
fn id_field(p: &Map<String, Value>, field: &str) -> Result<i64, Reply> {
    p.get(field)
        .and_then(Value::as_i64)
        .ok_or_else(|| Reply::error(reason(format!("{field} must be a message id"))))
}

/// A required, non-blank string of at most `max` characters.
fn text(p: &Map<String, Value>, field: &str, max: usize) -> Result<String, String> {
    match p.get(field) {
        Some(Value::String(s)) if s.trim().is_empty() => Err(format!("{field} can't be blank")),
        Some(Value::String(s)) if s.chars().count() > max => {
            Err(format!("{field} should be at most {max} character(s)"))
        }
        Some(Value::String(s)) if s.contains('\0') => {
            Err(format!("{field} {}", crate::store::NUL_REFUSED))
        }
        Some(Value::String(s)) => Ok(s.clone()),
        None | Some(Value::Null) => Err(format!("{field} can't be blank")),
        Some(_) => Err(format!("{field} must be a string")),
    }
}

#[async_trait(?Send)]
impl Channel for RoomChannel {
    async fn join(
        &mut self,
        topic: &str,
        params: Payload,
        ctx: &mut ChannelContext,
    ) -> Result<Payload, Payload> {
        let user = current_user(ctx).ok_or_else(unauthorized)?;
        let room_id = topic_id(topic, "channel:").ok_or_else(unauthorized)?;
        let since = since_param(&params).map_err(reason)?;
        // Listen for a removal before checking access: one that lands in between is not missed.
        // It comes in the room's own stream; the join reply's seq says which are past.
        ctx.stop_on_recorded(topic, ends_membership(user.id));
        let (u, t) = (user.clone(), topic.to_owned());
        let (reply, pos) = self
            .state
            .store
            .read(move |c| {
                let a = readable(c, room_id, &u)?;
                let last = a.member.map(|_| a.last_read_id);
                let reply =
                    json!({"messages": history(c, room_id, None, 50)?, "last_read_id": last});
                Ok((reply, position(c, &t, since)?))
            })
            .await
            .map_err(|_| unauthorized())?;
        self.user = Some(user);
        self.room_id = room_id;
        ctx.send_self(AfterJoin);
        Ok(pos.join_reply(ctx, reply))
    }

    async fn handle_info(&mut self, info: Info, ctx: &mut ChannelContext) -> Flow {
        if let Info::Message(m) = info {
            if m.is::<AfterJoin>() {
                self.online_at = chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string();
                let key = self.user().id.to_string();
                if let Err(e) = ctx.track(&key, self.meta()) {
                    return Flow::Stop(StopReason::Crash(e.to_string()));
                }
                ctx.push("presence_state", ctx.presence_list());
            } else if m.is::<TypingExpired>() {
                self.stop_typing(ctx);
            }
        }
        Flow::Continue
    }

    async fn handle_in(
        &mut self,
        event: &str,
        payload: Payload,
        ctx: &mut ChannelContext,
    ) -> Reply {
        let p = match payload {
            Payload::Json(Value::Object(m)) => m,
            _ => return Reply::error(reason("payload must be a JSON object")),
        };
        // Pushes that query the database spend the socket's budget (new_message has a rate of
        // its own, per user).
        const COSTLY: &[&str] = &[
            "edit_message",
            "delete_message",
            "react",
            "mark_read",
            "load_history",
            "typing_start",
        ];
        if COSTLY.contains(&event) {
            if let Err(p) = ctx.spend_costly_push() {
                return Reply::error(p);
            }
        }
        match event {
            "new_message" => self.new_message(p, ctx).await,
            "edit_message" => self.edit_message(p).await,
            "delete_message" => self.delete_message(p).await,
            "react" => self.react(p).await,
            "mark_read" => self.mark_read(p).await,
            "load_history" => {
                let before = p.get("before").and_then(Value::as_i64);
                let limit = match p.get("limit") {
                    None | Some(Value::Null) => 50,
                    Some(v) => match v.as_i64().filter(|l| (1..=100).contains(l)) {
                        Some(l) => l,
                        None => return Reply::error(reason("limit must be between 1 and 100")),
                    },
                };
                let (room, user) = (self.room_id, self.user().clone());
                match self
                    .state
                    .store
                    .run(move |c| {
                        readable(c, room, &user)?;
                        history(c, room, before, limit)
                    })
                    .await
                {
                    Ok(m) => {
                        let reply = Payload::Json(json!({ "messages": m }));
                        ctx.charge_reply_bytes(reply.encoded_len());
                        Reply::ok(reply)
                    }
                    Err(e) => store_error(self.room_id, e),
                }
            }
            "typing_start" => {
                let (room, user) = (self.room_id, self.user().clone());
                let member = self
                    .state
                    .store
                    .run(move |c| membership(c, room, &user))
                    .await;
                if let Err(e) = member {
                    return store_error(self.room_id, e);
                }
                if let Some(t) = self.typing.take() {
                    t.abort();
                } else {
                    ctx.broadcast_from(
                        "typing",
                        json!({"user_id": self.user().id, "typing": true}),
                    );
                }
                self.typing = Some(ctx.send_after(self.state.chat.typing_timeout, TypingExpired));
                Reply::ok(Payload::empty())
            }
            "typing_stop" => {
                self.stop_typing(ctx);
                Reply::ok(Payload::empty())
            }
            "set_status" => {
                self.status = match p.get("status").and_then(Value::as_str) {
                    Some("online") => "online",
                    Some("away") => "away",
                    Some("busy") => "busy",
                    _ => return Reply::error(reason("status must be online, away or busy")),
                };
                let key = self.user().id.to_string();
                match ctx.update_presence(&key, self.meta()) {
                    Ok(_) => Reply::ok(Payload::empty()),
                    Err(e) => Reply::error(reason(e.to_string())),
                }
            }
            other => Reply::error(reason(format!("unknown event {other:?}"))),
        }
    }

    async fn terminate(&mut self, _: &StopReason, ctx: &mut ChannelContext) {
        // A typist who leaves or disconnects stops typing.
        self.stop_typing(ctx);
    }
}

/// `thread:<message id>`: the parent and its replies; new replies arrive as `new_message`.
pub struct ThreadChannel {
    pub state: web::Data<AppState>,
}

#[async_trait(?Send)]
impl Channel for ThreadChannel {
    async fn join(
        &mut self,
        topic: &str,
        params: Payload,
        ctx: &mut ChannelContext,
    ) -> Result<Payload, Payload> {
        let user = current_user(ctx).ok_or_else(unauthorized)?;
        let parent = topic_id(topic, "thread:").ok_or_else(unauthorized)?;
        let since = since_param(&params).map_err(reason)?;
        // A thread's room never changes: find it, listen for a removal from it, and only then
        // check access, so a removal that lands in between is not missed.
        let room = self
            .state
            .store
            .run(move |c| {
                Ok(messages::table
                    .find(parent)
                    .filter(messages::parent_id.is_null())
                    .select(messages::room_id)
                    .first::<i64>(c)?)
            })
            .await
            .map_err(|_| unauthorized())?;
        let room_stream = room_topic(room);
        ctx.stop_on_recorded(&room_stream, ends_membership(user.id));
        let (t, r) = (topic.to_owned(), room_stream.clone());
        let (reply, pos, room_seq) = self
            .state
            .store
            .read(move |c| {
                readable(c, room, &user)?;
                let reply = json!({ "messages": thread(c, parent)? });
                Ok((reply, position(c, &t, since)?, latest_seq(c, &r)?))
            })
            .await
            .map_err(|_| unauthorized())?;
        ctx.stop_covered_through(&room_stream, room_seq);
        Ok(pos.join_reply(ctx, reply))
    }

    async fn handle_in(&mut self, event: &str, _: Payload, _: &mut ChannelContext) -> Reply {
        Reply::error(reason(format!(
            "unknown event {event:?}: reply with new_message and a parent_id on the room"
        )))
    }
}

/// Reads a user's unread counts and mentions, for `user:<id>`.
pub(crate) fn user_summary(c: &mut DbConnection, user_id: i64) -> Result<Value, StoreError> {
    let rooms: Vec<i64> = room_members::table
        .filter(room_members::user_id.eq(user_id))
        .order(room_members::room_id)
        .select(room_members::room_id)
        .load(c)?;
    let mut unread = Map::new();
    for r in rooms {
        unread.insert(r.to_string(), json!(unread_count(c, r, user_id)?));
    }
    Ok(json!({"unread": unread, "mentions": mention_count(c, user_id)?}))
}
