//! One join of `realtime:<name>`, as Supabase Realtime's channel answers it: the join config
//! (`broadcast.self`/`ack`, `presence.key`/`enabled`, `private`), the user's `access_token`
//! checked at join, on every `access_token` push and when it expires, broadcasts relayed
//! verbatim (kind 3 in, kind 4 out), presence tracked under one key per join. Refusals and
//! shutdowns are worded as Realtime words them (`Code: message` join errors, `system`
//! messages), since clients show them.

use super::changes::{self, Subscription};
use super::rules::Access;
use super::{collections, follow, now, room, ApiKey, Realtime};
use crate::auth::supabase::{role, Claims, TokenError};
use crate::channel::{Channel, ChannelContext, Flow, Info, Reply, StopReason};
use crate::metrics::{RealtimeRefusal, REALTIME};
use crate::protocol::Payload;
use crate::pubsub::SubId;
use crate::store::cdc;
use async_trait::async_trait;
use serde_json::{json, Map, Value};
use std::sync::Arc;
use std::time::Duration;

/// Realtime re-checks a token at least this often, and when it expires.
const CONFIRM_EVERY: Duration = Duration::from_secs(5 * 60);

pub struct RealtimeChannel {
    realtime: Arc<Realtime>,
    name: String,
    private: bool,
    /// The PubSub topic of this channel's broadcasts and presence (see [`room`]).
    room: String,
    /// A private channel's subscription to its room, left out of its own broadcasts.
    room_sub: Option<SubId>,
    self_broadcast: bool,
    ack: bool,
    presence_key: String,
    /// The payload last tracked, to make an unchanged track a no-op.
    tracked: Option<Value>,
    /// The user's token (or the apikey) and its claims.
    token: String,
    access: Access,
    /// The token's claims and `role`, which decide which tables and rows it may follow.
    claims: Claims,
    role: String,
    /// Captured tables followed that have row-level security on (`schema.table`).
    rls_tables: Vec<String>,
    confirm: Option<tokio::task::AbortHandle>,
    /// The join's `postgres_changes` subscriptions, or why they cannot be served.
    changes: Result<Vec<Subscription>, String>,
    /// The last captured change delivered, so that none comes twice.
    seen: cdc::Seen,
}

/// Sent to the channel itself: push `presence_state` (after the join reply).
struct SyncPresence;
/// Sent to the channel itself: check the token again (expiry, at most every 5 minutes).
struct ConfirmToken;

/// A join error as Realtime words it: `{"reason": "<Code>: <message>"}`.
fn refusal(code: &str, message: impl std::fmt::Display) -> Payload {
    Payload::Json(json!({ "reason": format!("{code}: {message}") }))
}

/// A JSON boolean, or the strings `"true"` / `"false"` (Realtime's FlexibleBoolean).
fn flag(v: Option<&Value>) -> Option<bool> {
    match v? {
        Value::Bool(b) => Some(*b),
        Value::String(s) if s == "true" => Some(true),
        Value::String(s) if s == "false" => Some(false),
        _ => None,
    }
}

/// The `postgres_changes` a join asks for, echoed in order with their ids, and what they
/// parse to (or why one does not).
fn postgres_changes(
    config: &Map<String, Value>,
    max_pattern_bytes: usize,
) -> (Vec<Value>, Result<Vec<Subscription>, String>) {
    let Some(Value::Array(list)) = config.get("postgres_changes") else {
        return (Vec::new(), Ok(Vec::new()));
    };
    let echoed = list
        .iter()
        .filter(|p| p.is_object())
        .map(|p| {
            let mut p = p.clone();
            p["id"] = json!(changes::id_of(&p));
            p
        })
        .collect();
    let parsed = list
        .iter()
        .filter(|p| p.is_object())
        .map(|p| Subscription::parse(p, max_pattern_bytes))
        .collect();
    (echoed, parsed)
}

impl RealtimeChannel {
    pub fn new(realtime: Arc<Realtime>) -> RealtimeChannel {
        RealtimeChannel {
            realtime,
            name: String::new(),
            private: false,
            room: String::new(),
            room_sub: None,
            self_broadcast: false,
            ack: false,
            presence_key: String::new(),
            tracked: None,
            token: String::new(),
            access: Access::default(),
            claims: Claims::new(),
            role: String::new(),
            rls_tables: Vec::new(),
            confirm: None,
            changes: Ok(Vec::new()),
            seen: cdc::Seen::default(),
        }
    }

    /// A `system` message to this client (`extension` is `system` or `postgres_changes`).
    fn system(&self, ctx: &ChannelContext, extension: &str, status: &str, message: &str) {
        ctx.push(
            "system",
            json!({
                "channel": self.name,
                "extension": extension,
                "message": message,
                "status": status,
            }),
        );
    }

    /// Ends the channel as Realtime does: a `system` error, then `phx_close` (no rejoin).
    fn shutdown(&self, ctx: &ChannelContext, message: &str) -> StopReason {
        log::info!("{}: closed: {message}", ctx.topic());
        self.system(ctx, "system", "error", message);
        StopReason::Normal
    }

    /// Verifies `token` and sets what it may do; schedules the next check.
    fn confirm_token(&mut self, ctx: &mut ChannelContext) -> Result<Claims, TokenError> {
        let now = now();
        let claims = self.realtime.keys.verify(&self.token, now)?;
        self.role = role(&claims).to_owned();
        self.claims = claims.clone();
        self.access = if self.private {
            self.realtime.rules.access(&self.name, &claims)
        } else {
            Access {
                read: true,
                write: true,
                presence: true,
            }
        };
        if let Some(t) = self.confirm.take() {
            t.abort();
        }
        let exp = claims.get("exp").and_then(Value::as_i64).unwrap_or(now);
        let until_exp = Duration::from_secs((exp - now).max(0) as u64);
        self.confirm = Some(ctx.send_after(CONFIRM_EVERY.min(until_exp), ConfirmToken));
        Ok(claims)
    }

    /// The socket's event budget; `false` (and counted) when spent.
    fn spend(&self, ctx: &ChannelContext) -> bool {
        let ok = ctx.assigns().get::<ApiKey>().is_some_and(ApiKey::spend);
        if !ok {
            REALTIME.refuse(RealtimeRefusal::Rate);
        }
        ok
    }

    fn broadcast(&self, payload: Payload, ctx: &ChannelContext) -> Reply {
        if !self.access.write {
            // As Realtime: a broadcast its policies refuse is dropped, unanswered.
            REALTIME.refuse(RealtimeRefusal::Unauthorized);
            return Reply::None;
        }
        let size = payload.encoded_len();
        if size > self.realtime.limits.max_payload_bytes {
            REALTIME.refuse(RealtimeRefusal::Size);
            return if self.ack {
                Reply::error(json!({
                    "reason": format!(
                        "payload_size_exceeded: {size} bytes, the limit is {}",
                        self.realtime.limits.max_payload_bytes
                    )
                }))
            } else {
                Reply::None
            };
        }
        REALTIME.relayed();
        let pubsub = ctx.endpoint().pubsub();
        match (self.self_broadcast, self.room_sub) {
            (true, _) => pubsub.broadcast(&self.room, "broadcast", payload),
            (false, Some(sub)) => pubsub.broadcast_from(sub, &self.room, "broadcast", payload),
            (false, None) => ctx.broadcast_from("broadcast", payload),
        }
        if self.ack {
            Reply::ok(json!({}))
        } else {
            Reply::None
        }
    }

    fn presence(&mut self, payload: Payload, ctx: &mut ChannelContext) -> Reply {
        let Payload::Json(Value::Object(p)) = payload else {
            return Reply::error(json!({"reason": "Presence payload must be a map"}));
        };
        let event = p
            .get("event")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_ascii_lowercase();
        match event.as_str() {
            "track" => {
                if !self.access.presence {
                    REALTIME.refuse(RealtimeRefusal::Unauthorized);
                    return Reply::error(json!({
                        "reason": format!(
                            "Unauthorized: You do not have permissions to track presence on this Channel topic: {}",
                            self.name
                        )
                    }));
                }
                let meta = p.get("payload").cloned().unwrap_or_else(|| json!({}));
                if !meta.is_object() {
                    return Reply::error(json!({"reason": "Presence track payload must be a map"}));
                }
                if crate::protocol::json_len(&meta) > self.realtime.limits.max_payload_bytes {
                    REALTIME.refuse(RealtimeRefusal::Size);
                    return Reply::Stop(self.shutdown(ctx, "Track message size exceeded"), None);
                }
                if self.tracked.as_ref() == Some(&meta) {
                    return Reply::ok(json!({}));
                }
                let room = self.room.clone();
                let result = match self.tracked {
                    Some(_) => ctx.update_presence_on(&room, &self.presence_key, meta.clone()),
                    None => ctx.track_on(&room, &self.presence_key, meta.clone()),
                };
                match result {
                    Ok(_) => {
                        self.tracked = Some(meta);
                        Reply::ok(json!({}))
                    }
                    Err(e) => Reply::error(json!({ "reason": format!("presence: {e}") })),
                }
            }
            "untrack" => {
                if self.tracked.take().is_some() {
                    let _ = ctx.untrack_on(&self.room.clone(), &self.presence_key);
                }
                Reply::ok(json!({}))
            }
            other => Reply::error(json!({
                "reason": format!("unknown presence event {other:?}: track or untrack")
            })),
        }
    }

    /// A new user token: verified as at join; a failure ends the channel. No reply, as in
    /// Realtime.
    fn access_token(&mut self, payload: Payload, ctx: &mut ChannelContext) -> Reply {
        let token = payload
            .json()
            .and_then(|p| p.get("access_token"))
            .and_then(Value::as_str)
            .map(str::to_owned);
        let Some(token) = token.filter(|t| !t.starts_with("sb_") && *t != self.token) else {
            return Reply::None;
        };
        let could_read = self.access.read;
        self.token = token;
        match self.confirm_token(ctx) {
            Ok(_) if could_read && !self.access.read => {
                let why = format!(
                    "You no longer have permission to read from this Channel topic: {}",
                    self.name
                );
                Reply::Stop(self.shutdown(ctx, &why), None)
            }
            Ok(_) => Reply::None,
            Err(e) => Reply::Stop(self.shutdown(ctx, &e.to_string()), None),
        }
    }
}

impl RealtimeChannel {
    /// Subscribes to the tables the join's `postgres_changes` name (the app's own, captured
    /// from PostgreSQL, or the Fawkes collections), then tells the client (`Subscribed to
    /// PostgreSQL`, or an error naming what cannot be served).
    async fn follow_changes(&mut self, ctx: &mut ChannelContext) {
        let subs = match &self.changes {
            Ok(subs) => subs.clone(),
            Err(why) => return self.refuse_changes(ctx, why.clone()),
        };
        let mut topics = Vec::with_capacity(subs.len());
        for s in &subs {
            match self.topic_of(s).await {
                Ok(t) => topics.push(t),
                Err(why) => return self.refuse_changes(ctx, why),
            }
        }
        let captured = topics.iter().any(|t| t.starts_with("postgres_changes:"));
        for t in topics {
            if t.starts_with("postgres_changes:") {
                // Only what some subscription wants reaches this channel's queue.
                let subs = subs.clone();
                ctx.subscribe_where(&t, move |b| {
                    b.payload
                        .json()
                        .is_some_and(|d| subs.iter().any(|s| s.wants_data(d)))
                });
            } else {
                ctx.subscribe(&t);
            }
        }
        if captured {
            // Told when capture loses changes (its slot dropped for holding back too much WAL).
            ctx.subscribe(cdc::RESETS);
        }
        self.system(ctx, "postgres_changes", "ok", "Subscribed to PostgreSQL");
    }

    fn refuse_changes(&mut self, ctx: &ChannelContext, why: String) {
        self.changes = Ok(Vec::new());
        self.system(ctx, "postgres_changes", "error", &why);
    }

    /// Where a subscription's changes are broadcast, if this token may follow them.
    async fn topic_of(&mut self, s: &Subscription) -> Result<String, String> {
        let t = follow::target(&self.realtime, s, &self.role).await?;
        if t.rls {
            self.rls_tables.push(t.table);
        }
        Ok(t.topic)
    }

    /// Whether row-level security lets this follower see a captured change.
    async fn may_see(&self, change: &changes::Change, data: &Value) -> bool {
        let table = format!("{}.{}", change.schema, change.table);
        let rls = self.rls_tables.contains(&table);
        follow::visible(&self.realtime, rls, change, data, &self.claims).await
    }

    /// A change, to this client if any of its subscriptions wants it.
    fn deliver_change(&self, change: Option<changes::Change>, ctx: &ChannelContext) {
        let (Ok(subs), Some(change)) = (&self.changes, change) else {
            return;
        };
        let ids: Vec<u32> = subs
            .iter()
            .filter(|s| s.wants(&change))
            .map(|s| s.id)
            .collect();
        if !ids.is_empty() {
            ctx.push("postgres_changes", change.payload(&ids));
        }
    }
}

#[async_trait(?Send)]
impl Channel for RealtimeChannel {
    async fn join(
        &mut self,
        topic: &str,
        params: Payload,
        ctx: &mut ChannelContext,
    ) -> Result<Payload, Payload> {
        let name = topic.strip_prefix("realtime:").unwrap_or_default();
        if name.is_empty() {
            return Err(refusal(
                "TopicNameRequired",
                "You must provide a topic name",
            ));
        }
        let Some(key) = ctx.assigns().get::<ApiKey>() else {
            return Err(refusal(
                "MissingAPIKey",
                "API key is missing or not a valid string",
            ));
        };
        let empty = Map::new();
        let params = params.json().and_then(Value::as_object).unwrap_or(&empty);
        let config = params
            .get("config")
            .and_then(Value::as_object)
            .unwrap_or(&empty);
        let section = |name: &str| config.get(name).and_then(Value::as_object);
        let broadcast = section("broadcast");
        let presence = section("presence");
        self.name = name.to_owned();
        self.private = flag(config.get("private")).unwrap_or(false);
        self.room = room(name, self.private);
        self.self_broadcast = flag(broadcast.and_then(|b| b.get("self"))).unwrap_or(false);
        self.ack = flag(broadcast.and_then(|b| b.get("ack"))).unwrap_or(false);
        self.presence_key = presence
            .and_then(|p| p.get("key"))
            .and_then(Value::as_str)
            .filter(|k| !k.is_empty())
            .map_or_else(|| uuid::Uuid::new_v4().to_string(), str::to_owned);
        let presence_enabled = flag(presence.and_then(|p| p.get("enabled"))).unwrap_or(false);
        // The user's token, else the apikey; `sb_…` keys stand for the apikey.
        let token = ["access_token", "user_token"]
            .iter()
            .find_map(|k| params.get(*k).and_then(Value::as_str))
            .filter(|t| !t.starts_with("sb_"))
            .unwrap_or(&key.token);
        self.token = token.to_owned();
        if let Err(e) = self.confirm_token(ctx) {
            let code = match e {
                TokenError::Malformed => "MalformedJWT",
                TokenError::Signature => "JwtSignatureError",
                TokenError::Expired(_) | TokenError::MissingClaims => "InvalidJWTToken",
            };
            REALTIME.refuse(RealtimeRefusal::Token);
            return Err(refusal(code, e));
        }
        if !self.access.read {
            REALTIME.refuse(RealtimeRefusal::Unauthorized);
            return Err(refusal(
                "Unauthorized",
                format!(
                    "You do not have permissions to read from this Channel topic: {}",
                    self.name
                ),
            ));
        }
        if self.private {
            // The room lives on a topic of its own; the client's topic carries nothing.
            ctx.leave_own_topic();
            self.room_sub = Some(ctx.subscribe(&self.room.clone()));
        }
        let (changes, parsed) =
            postgres_changes(config, self.realtime.limits.max_filter_pattern_bytes);
        self.changes = parsed;
        if !changes.is_empty() {
            // As Realtime: joined at once, then told with a `system` message whether the
            // subscriptions are in place.
            ctx.send_self(FollowChanges);
        }
        if presence_enabled {
            ctx.send_self(SyncPresence);
        }
        Ok(Payload::Json(json!({ "postgres_changes": changes })))
    }

    async fn handle_in(
        &mut self,
        event: &str,
        payload: Payload,
        ctx: &mut ChannelContext,
    ) -> Reply {
        if !self.spend(ctx) {
            return Reply::Stop(self.shutdown(ctx, "Too many messages per second"), None);
        }
        match event {
            "broadcast" => self.broadcast(payload, ctx),
            "presence" => self.presence(payload, ctx),
            "access_token" => self.access_token(payload, ctx),
            // Realtime logs other events and answers nothing.
            other => {
                log::debug!("{}: unexpected event {other:?}", ctx.topic());
                Reply::None
            }
        }
    }

    async fn handle_info(&mut self, info: Info, ctx: &mut ChannelContext) -> Flow {
        match info {
            Info::Broadcast(b) if b.topic.starts_with("collection:") => {
                let change = (b.payload.json())
                    .and_then(|p| collections::change(&b.topic["collection:".len()..], p));
                self.deliver_change(change, ctx)
            }
            Info::Broadcast(b) if b.topic == cdc::RESETS => {
                let why = b.payload.json().and_then(|p| p.get("reason")?.as_str());
                let why = why.unwrap_or("change capture lost changes");
                self.system(ctx, "postgres_changes", "error", why);
            }
            Info::Broadcast(b) if b.topic.starts_with("postgres_changes:") => {
                let Some(data) = b.payload.json() else {
                    return Flow::Continue;
                };
                if !self.seen.first_time(data) {
                    return Flow::Continue;
                }
                let change = changes::Change::from_data(data);
                if let Some(c) = &change {
                    if !self.may_see(c, data).await {
                        return Flow::Continue;
                    }
                }
                self.deliver_change(change, ctx)
            }
            // A private room's broadcasts and presence diffs, under the client's topic.
            Info::Broadcast(b) => ctx.push(&b.event, b.payload.clone()),
            Info::Message(m) if m.is::<SyncPresence>() => {
                let state = ctx.endpoint().presence().list(&self.room);
                ctx.push("presence_state", state);
            }
            Info::Message(m) if m.is::<ConfirmToken>() => {
                if let Err(e) = self.confirm_token(ctx) {
                    return Flow::Stop(self.shutdown(ctx, &e.to_string()));
                }
            }
            Info::Message(m) if m.is::<FollowChanges>() => self.follow_changes(ctx).await,
            _ => {}
        }
        Flow::Continue
    }
}

/// Sent to the channel itself: subscribe to the tables its join asked for, and say so.
struct FollowChanges;
