//! The app-facing API: a [`Channel`] handles one topic for one socket, the way a Phoenix channel
//! module does; a [`Router`] maps topic patterns to channels.
//!
//! A channel's callbacks run one at a time on its socket's task, in the order the client's
//! frames arrived, so a channel needs no locking of its own state. Callbacks may await (a
//! database call, say); the socket handles its next frame when the callback returns.

// Defined with the mailbox that carries it; part of a channel's API all the same.
pub use crate::connection::Info;
use crate::connection::{ChannelId, Connection, Mail};
use crate::hub::Endpoint;
use crate::presence::PresenceError;
use crate::protocol::{Outbound, Payload, Ref};
use crate::pubsub::{encode_frame, Broadcast, Dispatch, SubId, Subscriber};
use async_trait::async_trait;
use std::any::{Any, TypeId};
use std::borrow::Cow;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

/// What a channel does with a client's event.
#[derive(Debug)]
pub enum Reply {
    /// Answer nothing (the client's push may time out; Phoenix allows it).
    None,
    /// `{"status": status, "response": payload}`; `ok` and `error` are the usual statuses.
    Status(Cow<'static, str>, Payload),
    /// Stop the channel, optionally replying first.
    Stop(StopReason, Option<(Cow<'static, str>, Payload)>),
}

impl Reply {
    pub fn ok(payload: impl Into<Payload>) -> Reply {
        Reply::Status("ok".into(), payload.into())
    }
    pub fn error(payload: impl Into<Payload>) -> Reply {
        Reply::Status("error".into(), payload.into())
    }
    /// Ends the channel abnormally: the client gets `phx_error` and rejoins.
    pub fn crash(reason: impl Into<String>) -> Reply {
        Reply::Stop(StopReason::Crash(reason.into()), None)
    }
}

/// Why a channel ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopReason {
    /// The client sent `phx_leave`.
    Left,
    /// The socket closed (client gone, forced disconnect, shutdown).
    Closed,
    /// A newer join of the same topic replaced this one.
    DuplicateJoin,
    /// The channel chose to stop normally: the client gets `phx_close` and does not rejoin.
    Normal,
    /// The channel failed: the client gets `phx_error` and rejoins. A panic counts as this.
    Crash(String),
}

/// What to do after `handle_info` or `handle_out`.
#[derive(Debug)]
pub enum Flow {
    Continue,
    Stop(StopReason),
}

/// A channel: one instance per join of a topic on a socket.
#[async_trait(?Send)]
pub trait Channel: 'static {
    /// Accepts (`Ok(reply)`) or refuses (`Err(reply)`) the join. Pushing from here is not
    /// allowed, as in Phoenix; use [`ChannelContext::send_self`] to act right after the reply.
    async fn join(
        &mut self,
        topic: &str,
        params: Payload,
        ctx: &mut ChannelContext,
    ) -> Result<Payload, Payload>;

    /// A client event. A channel without a clause for the event fails, as in Phoenix.
    async fn handle_in(
        &mut self,
        event: &str,
        payload: Payload,
        ctx: &mut ChannelContext,
    ) -> Reply {
        let _ = (payload, ctx);
        Reply::crash(format!("no handle_in for event {event:?}"))
    }

    /// A message from PubSub, a timer or the app.
    async fn handle_info(&mut self, info: Info, ctx: &mut ChannelContext) -> Flow {
        let _ = (info, ctx);
        Flow::Continue
    }

    /// Broadcast events this channel wants to see in `handle_out` instead of having them sent
    /// straight to the client. Asked once, at join.
    fn intercepts(&self) -> &'static [&'static str] {
        &[]
    }

    /// An intercepted broadcast: push it (changed or not) with `ctx.push`, or drop it.
    fn handle_out(&mut self, event: &str, payload: &Payload, ctx: &mut ChannelContext) -> Flow {
        ctx.push(event, payload.clone());
        Flow::Continue
    }

    /// The channel is ending (not called after a crash, as in Phoenix).
    async fn terminate(&mut self, reason: &StopReason, ctx: &mut ChannelContext) {
        let _ = (reason, ctx);
    }
}

/// Per-socket state set by the connect callback and readable by every channel of the socket:
/// one value per type.
#[derive(Default)]
pub struct Assigns(Vec<(TypeId, Box<dyn Any + Send + Sync>)>);

impl Assigns {
    pub fn new() -> Assigns {
        Assigns::default()
    }

    pub fn insert<T: Any + Send + Sync>(&mut self, value: T) {
        let id = TypeId::of::<T>();
        self.0.retain(|(t, _)| *t != id);
        self.0.push((id, Box::new(value)));
    }

    pub fn with<T: Any + Send + Sync>(mut self, value: T) -> Assigns {
        self.insert(value);
        self
    }

    pub fn get<T: Any>(&self) -> Option<&T> {
        let id = TypeId::of::<T>();
        self.0
            .iter()
            .find(|(t, _)| *t == id)
            .and_then(|(_, v)| v.downcast_ref())
    }
}

/// What the socket shares with its channels.
pub(crate) struct SocketShared {
    pub conn: Arc<Connection>,
    pub endpoint: Endpoint,
    pub assigns: Arc<Assigns>,
    pub id: Option<String>,
    /// Shared by the socket's channels: see [`ChannelContext::spend_costly_push`].
    pub budget: std::sync::Mutex<crate::budget::PushBudget>,
}

/// A channel's handle on its socket, topic and endpoint.
pub struct ChannelContext {
    pub(crate) socket: Arc<SocketShared>,
    pub(crate) topic: String,
    pub(crate) join_ref: Ref,
    pub(crate) id: ChannelId,
    /// The ref of the event being handled, for [`ChannelContext::socket_ref`].
    pub(crate) current_ref: Ref,
    /// Topics this channel tracks presence on, and extra subscriptions: undone when it ends.
    pub(crate) tracked: Vec<String>,
    pub(crate) subscriptions: Vec<(String, SubId)>,
    pub(crate) timers: Vec<tokio::task::JoinHandle<()>>,
    /// Recorded broadcasts at or below this seq are not sent: the join reply covered them.
    pub(crate) covered: Arc<AtomicI64>,
    /// The rule that ends the channel on a broadcast of its own topic, shared with its
    /// subscription (see [`ChannelContext::stop_on_recorded`]).
    pub(crate) own_stop: Arc<OnceLock<StopRule>>,
    /// Rules that end it on other topics' broadcasts.
    pub(crate) stops: Vec<(String, Arc<StopRule>)>,
}

/// Where to send a reply later: see [`ChannelContext::reply`].
#[derive(Debug, Clone)]
pub struct SocketRef {
    channel: ChannelId,
    ref_: Ref,
    conn: std::sync::Weak<Connection>,
}

impl ChannelContext {
    /// Takes one costly push (one that runs a database query or may answer with a large reply)
    /// from the socket's budget ([`crate::Limits::max_costly_pushes_per_second`]); when it is
    /// spent, the error reply to send: `{"reason":"rate_limited","retry_after_ms":N}`, counted in
    /// `fawkes_costly_pushes_refused_total`.
    pub fn spend_costly_push(&self) -> Result<(), Payload> {
        let now = std::time::Instant::now();
        let spent = self
            .socket
            .budget
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .spend(now);
        spent.map_err(|wait| {
            crate::metrics::ENGINE
                .costly_pushes_refused
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let ms = wait.as_millis().max(1) as u64;
            Payload::Json(serde_json::json!({"reason": "rate_limited", "retry_after_ms": ms}))
        })
    }

    /// Charges a costly push's reply, `bytes` long, to the socket's budget
    /// ([`crate::Limits::max_costly_reply_bytes_per_second`]).
    pub fn charge_reply_bytes(&self, bytes: usize) {
        let now = std::time::Instant::now();
        self.socket
            .budget
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .charge_bytes(bytes, now);
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }

    pub fn join_ref(&self) -> &Ref {
        &self.join_ref
    }

    /// The ref of the message being handled (the join's own ref in `join`).
    pub fn event_ref(&self) -> &Ref {
        &self.current_ref
    }

    /// The socket's assigns, from its connect callback.
    pub fn assigns(&self) -> &Assigns {
        &self.socket.assigns
    }

    /// The socket id given at connect, if any.
    pub fn socket_id(&self) -> Option<&str> {
        self.socket.id.as_deref()
    }

    pub fn endpoint(&self) -> &Endpoint {
        &self.socket.endpoint
    }

    /// Sends an event to this client only: `[join_ref, null, topic, event, payload]`.
    pub fn push(&self, event: &str, payload: impl Into<Payload>) {
        let payload = payload.into();
        let msg = Outbound::Push {
            join_ref: &self.join_ref,
            topic: &self.topic,
            event,
            payload: &payload,
        };
        if let Some(f) = encode_frame(self.socket.conn.serializer, &msg) {
            self.socket.conn.push(f);
        }
    }

    /// Broadcasts to every subscriber of this channel's topic, this client included.
    pub fn broadcast(&self, event: &str, payload: impl Into<Payload>) {
        self.endpoint()
            .pubsub()
            .broadcast(&self.topic, event, payload.into());
    }

    /// Broadcasts to every subscriber of this channel's topic but this channel.
    pub fn broadcast_from(&self, event: &str, payload: impl Into<Payload>) {
        self.endpoint()
            .pubsub()
            .broadcast_from(self.id, &self.topic, event, payload.into());
    }

    /// Delivers `msg` to this channel's `handle_info`, after the current callback (and, from
    /// `join`, after the join reply).
    pub fn send_self<T: Any + Send>(&self, msg: T) {
        self.socket.conn.mail(
            Mail::Info {
                channel: self.id,
                info: Info::Message(Box::new(msg)),
            },
            0,
        );
    }

    /// Delivers `msg` to `handle_info` after `delay`, unless the channel has ended by then.
    /// Returns a handle that cancels it when aborted.
    pub fn send_after<T: Any + Send>(
        &mut self,
        delay: Duration,
        msg: T,
    ) -> tokio::task::AbortHandle {
        let conn = Arc::downgrade(&self.socket.conn);
        let channel = self.id;
        let task = crate::task::spawn(async move {
            tokio::time::sleep(delay).await;
            if let Some(conn) = conn.upgrade() {
                conn.mail(
                    Mail::Info {
                        channel,
                        info: Info::Message(Box::new(msg)),
                    },
                    0,
                );
            }
        });
        self.timers.retain(|t| !t.is_finished());
        let abort = task.abort_handle();
        self.timers.push(task);
        abort
    }

    /// Subscribes this channel to another topic: its broadcasts arrive in `handle_info` as
    /// [`Info::Broadcast`]. Undone when the channel ends. The subscription's id is what
    /// `PubSub::broadcast_from` takes to leave this channel out.
    pub fn subscribe(&mut self, topic: &str) -> SubId {
        let sub = Arc::new(InfoSubscriber {
            conn: self.socket.conn.clone(),
            channel: self.id,
            keep: None,
        });
        self.add_subscription(topic, sub)
    }

    /// As [`ChannelContext::subscribe`], keeping only the broadcasts `keep` accepts. `keep` runs
    /// on the publishing thread before anything is queued for this channel, so a channel that
    /// wants few of a busy topic's broadcasts costs its socket nothing for the rest: keep it
    /// cheap.
    pub fn subscribe_where(
        &mut self,
        topic: &str,
        keep: impl Fn(&Broadcast) -> bool + Send + Sync + 'static,
    ) -> SubId {
        let sub = Arc::new(InfoSubscriber {
            conn: self.socket.conn.clone(),
            channel: self.id,
            keep: Some(Box::new(keep)),
        });
        self.add_subscription(topic, sub)
    }

    /// From `join`: the client gets none of its topic's broadcasts from now on, only what the
    /// channel pushes. For a channel whose topic names one of several rooms kept apart on
    /// PubSub (Supabase's public and private channels of one name), which it subscribes to
    /// itself.
    pub fn leave_own_topic(&self) {
        self.socket
            .endpoint
            .pubsub()
            .unsubscribe(&self.topic, self.id);
    }

    /// Subscribes `sub` to `topic` for as long as the channel lives (once per topic).
    fn add_subscription(&mut self, topic: &str, sub: Arc<dyn Subscriber>) -> SubId {
        if let Some((_, id)) = self.subscriptions.iter().find(|(t, _)| t == topic) {
            return *id;
        }
        let ps = self.socket.endpoint.pubsub();
        let id = ps.next_id();
        ps.subscribe(topic, id, sub);
        self.subscriptions.push((topic.to_owned(), id));
        id
    }

    /// From `join`: recorded broadcasts of this topic numbered `seq` or below are not sent to
    /// this client, since the join reply covers them (see [`crate::history`]). Those above it
    /// all are, so the reply and what follows neither overlap nor leave a gap.
    pub fn skip_recorded_through(&self, seq: i64) {
        self.covered.fetch_max(seq, Ordering::Relaxed);
        if let Some(rule) = self.own_stop.get() {
            rule.settle(seq);
        }
        self.socket
            .endpoint
            .pubsub()
            .anchor_recorded(self.topic(), seq);
    }

    /// Ends this channel the way a server-side leave does (the client gets `phx_close` and does
    /// not rejoin) as soon as anything is broadcast on `topic`, on any node. Nothing broadcast
    /// to the channel after that broadcast reaches the client. How an app takes a channel away
    /// from a user who lost access to it.
    pub fn stop_on(&mut self, topic: &str) {
        let sub = Arc::new(StopSubscriber {
            conn: self.socket.conn.clone(),
            channel: self.id,
        });
        self.add_subscription(topic, sub);
    }

    /// Ends this channel the way a server-side leave does on the first broadcast on recorded
    /// `topic` (this channel's own, or another) that `ends` accepts and that the join's reads
    /// did not cover: call before those reads (so nothing in between is missed), then
    /// [`ChannelContext::stop_covered_through`] with the seq they saw (for the channel's own
    /// topic, its join reply's seq does it). Broadcasts at or below that seq are past: they
    /// end nothing. The topic's order on this node starts there too, so that on a cluster what
    /// a node missed while its Redis link was down is caught up, an ending included. Nothing
    /// broadcast to the channel after the ending broadcast reaches the client, nor does the
    /// ending broadcast itself. How an app takes a channel away from a user whose access ends
    /// with a recorded event.
    pub fn stop_on_recorded(
        &mut self,
        topic: &str,
        ends: impl Fn(&Broadcast) -> bool + Send + Sync + 'static,
    ) {
        let rule = StopRule {
            conn: self.socket.conn.clone(),
            channel: self.id,
            ends: Box::new(ends),
            state: Mutex::new(StopState::Pending { seen: None }),
        };
        if topic == self.topic {
            let _ = self.own_stop.set(rule);
            return;
        }
        if self.stops.iter().any(|(t, _)| t == topic) {
            return;
        }
        let rule = Arc::new(rule);
        self.stops.push((topic.to_owned(), rule.clone()));
        self.add_subscription(topic, Arc::new(RuleSubscriber(rule)));
    }

    /// The join's reads covered recorded `topic` through `seq`: see
    /// [`ChannelContext::stop_on_recorded`].
    pub fn stop_covered_through(&self, topic: &str, seq: i64) {
        if topic == self.topic {
            return self.skip_recorded_through(seq);
        }
        if let Some((_, rule)) = self.stops.iter().find(|(t, _)| t == topic) {
            rule.settle(seq);
            self.socket.endpoint.pubsub().anchor_recorded(topic, seq);
        }
    }

    pub fn unsubscribe(&mut self, topic: &str) {
        if let Some(i) = self.subscriptions.iter().position(|(t, _)| t == topic) {
            let (t, id) = self.subscriptions.swap_remove(i);
            self.socket.endpoint.pubsub().unsubscribe(&t, id);
        }
    }

    /// Tracks this channel's presence under `key` on its topic; it leaves when the channel ends.
    pub fn track(&mut self, key: &str, meta: serde_json::Value) -> Result<String, PresenceError> {
        let topic = self.topic.clone();
        self.track_on(&topic, key, meta)
    }

    /// Tracks presence on any topic, owned by this channel.
    pub fn track_on(
        &mut self,
        topic: &str,
        key: &str,
        meta: serde_json::Value,
    ) -> Result<String, PresenceError> {
        let r = self
            .socket
            .endpoint
            .presence()
            .track(topic, self.id, key, meta)?;
        if !self.tracked.iter().any(|t| t == topic) {
            self.tracked.push(topic.to_owned());
        }
        Ok(r)
    }

    /// Replaces this channel's meta for `key` on its topic.
    pub fn update_presence(
        &self,
        key: &str,
        meta: serde_json::Value,
    ) -> Result<String, PresenceError> {
        self.update_presence_on(&self.topic, key, meta)
    }

    /// Replaces this channel's meta for `key` on any topic it tracks.
    pub fn update_presence_on(
        &self,
        topic: &str,
        key: &str,
        meta: serde_json::Value,
    ) -> Result<String, PresenceError> {
        self.socket
            .endpoint
            .presence()
            .update(topic, self.id, key, meta)
    }

    pub fn untrack(&self, key: &str) -> Result<(), PresenceError> {
        self.untrack_on(&self.topic, key)
    }

    /// Stops tracking this channel's `key` on any topic.
    pub fn untrack_on(&self, topic: &str, key: &str) -> Result<(), PresenceError> {
        self.socket.endpoint.presence().untrack(topic, self.id, key)
    }

    /// The presence state of this channel's topic, as `presence_state` carries it.
    pub fn presence_list(&self) -> serde_json::Value {
        self.socket.endpoint.presence().list(&self.topic)
    }

    /// A handle for answering the event being handled later, from anywhere, with [`ChannelContext::reply`].
    pub fn socket_ref(&self) -> SocketRef {
        SocketRef {
            channel: self.id,
            ref_: self.current_ref.clone(),
            conn: Arc::downgrade(&self.socket.conn),
        }
    }

    /// Answers an earlier event (see [`ChannelContext::socket_ref`]); dropped if the channel has ended.
    pub fn reply(socket_ref: &SocketRef, status: &str, payload: impl Into<Payload>) {
        if let Some(conn) = socket_ref.conn.upgrade() {
            let payload = payload.into();
            let bytes = payload.encoded_len();
            conn.mail(
                Mail::Reply {
                    channel: socket_ref.channel,
                    ref_: socket_ref.ref_.clone(),
                    status: status.to_owned(),
                    payload,
                },
                bytes,
            );
        }
    }

    /// Undoes what the channel set up: presence, subscriptions, timers.
    pub(crate) fn cleanup(&mut self) {
        let ep = &self.socket.endpoint;
        for topic in self.tracked.drain(..) {
            ep.presence().untrack_all(&topic, self.id);
        }
        for (topic, id) in self.subscriptions.drain(..) {
            ep.pubsub().unsubscribe(&topic, id);
        }
        for t in self.timers.drain(..) {
            t.abort();
        }
        self.socket.conn.forget(self.id);
    }
}

/// The channel's own topic subscription: broadcasts go straight to the client as shared bytes,
/// except intercepted events, which go to the channel's `handle_out`.
pub(crate) struct FastlaneSubscriber {
    pub conn: Arc<Connection>,
    pub channel: ChannelId,
    pub intercepts: &'static [&'static str],
    /// Shared with the channel's context: see [`ChannelContext::skip_recorded_through`].
    pub covered: Arc<AtomicI64>,
    /// Shared with the channel's context: see [`ChannelContext::stop_on_recorded`].
    pub stop: Arc<OnceLock<StopRule>>,
}

impl Subscriber for FastlaneSubscriber {
    fn deliver(&self, d: &Dispatch<'_>) {
        let seq = d.broadcast.seq;
        if seq.is_some_and(|s| s <= self.covered.load(Ordering::Relaxed)) {
            return;
        }
        // Checked here rather than by a subscription of its own, so that the ending broadcast
        // and nothing after it reaches the client, whatever order subscriptions are served in.
        if self.stop.get().is_some_and(|r| r.ends(d.broadcast)) {
            return;
        }
        if self.intercepts.contains(&d.broadcast.event.as_str()) {
            // Weighed by its encoded frame: built once per broadcast, shared by all.
            let bytes = d.frame(self.conn.serializer).map_or(0, |f| f.len());
            self.conn.mail(
                Mail::Out {
                    channel: self.channel,
                    broadcast: d.broadcast.clone(),
                },
                bytes,
            );
        } else if let Some(frame) = d.frame(self.conn.serializer) {
            self.conn.push_broadcast(self.channel, frame, seq);
        }
    }

    fn connection(&self) -> Option<u64> {
        Some(self.conn.id)
    }
}

/// An extra subscription of a channel: broadcasts go to its `handle_info`.
/// A subscription's filter, run on the publishing thread.
type Keep = Box<dyn Fn(&Broadcast) -> bool + Send + Sync>;

struct InfoSubscriber {
    conn: Arc<Connection>,
    channel: ChannelId,
    /// Which broadcasts to queue (all without it); see [`ChannelContext::subscribe_where`].
    keep: Option<Keep>,
}

impl Subscriber for InfoSubscriber {
    fn deliver(&self, d: &Dispatch<'_>) {
        if self.keep.as_ref().is_some_and(|keep| !keep(d.broadcast)) {
            return;
        }
        let bytes = d.frame(self.conn.serializer).map_or(0, |f| f.len());
        self.conn.mail(
            Mail::Info {
                channel: self.channel,
                info: Info::Broadcast(d.broadcast.clone()),
            },
            bytes,
        );
    }

    fn connection(&self) -> Option<u64> {
        Some(self.conn.id)
    }
}

/// A subscription that ends its channel (see [`ChannelContext::stop_on`]). Revoking here, on
/// the delivering thread, rather than in the socket task, is what keeps later broadcasts out.
struct StopSubscriber {
    conn: Arc<Connection>,
    channel: ChannelId,
}

impl Subscriber for StopSubscriber {
    fn deliver(&self, _: &Dispatch<'_>) {
        self.conn.revoke(self.channel);
    }

    fn connection(&self) -> Option<u64> {
        Some(self.conn.id)
    }
}

/// When a recorded broadcast ends a channel: see [`ChannelContext::stop_on_recorded`].
pub(crate) struct StopRule {
    conn: Arc<Connection>,
    channel: ChannelId,
    ends: Box<dyn Fn(&Broadcast) -> bool + Send + Sync>,
    state: Mutex<StopState>,
}

enum StopState {
    /// The join is still reading: the largest seq of an ending broadcast seen meanwhile.
    Pending { seen: Option<i64> },
    /// The join's reads covered the topic through this seq.
    Covered(i64),
}

impl StopRule {
    /// Whether `b` ends the channel (which is then revoked, now or once the join's reads are
    /// known to predate it); such a broadcast is not delivered to the channel.
    fn ends(&self, b: &Broadcast) -> bool {
        if !(self.ends)(b) {
            return false;
        }
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        match (&mut *state, b.seq) {
            (StopState::Covered(through), Some(s)) if s <= *through => return false,
            (StopState::Pending { seen }, Some(s)) => {
                *seen = Some(seen.map_or(s, |x| x.max(s)));
                return true;
            }
            _ => {}
        }
        drop(state);
        self.conn.revoke(self.channel);
        true
    }

    /// The join's reads covered the topic through `seq`: an ending seen after it ends the channel.
    fn settle(&self, through: i64) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if let StopState::Pending { seen } = *state {
            *state = StopState::Covered(through);
            drop(state);
            if seen.is_some_and(|s| s > through) {
                self.conn.revoke(self.channel);
            }
        }
    }
}

/// A subscription that ends its channel by a [`StopRule`].
struct RuleSubscriber(Arc<StopRule>);

impl Subscriber for RuleSubscriber {
    fn deliver(&self, d: &Dispatch<'_>) {
        self.0.ends(d.broadcast);
    }

    fn connection(&self) -> Option<u64> {
        Some(self.0.conn.id)
    }
}

type Factory = Arc<dyn Fn() -> Box<dyn Channel> + Send + Sync>;

/// Maps topics to channels. A pattern is an exact topic (`community:feed`) or a prefix ending
/// in `*` (`channel:*`); the first match wins, in the order added.
#[derive(Clone, Default)]
pub struct Router {
    routes: Vec<(Pattern, Factory)>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Pattern {
    Exact(String),
    Prefix(String),
}

impl Pattern {
    fn parse(pattern: &str) -> Pattern {
        match pattern.strip_suffix('*') {
            Some(prefix) => Pattern::Prefix(prefix.to_owned()),
            None => Pattern::Exact(pattern.to_owned()),
        }
    }
}

impl Router {
    pub fn new() -> Router {
        Router::default()
    }

    /// Routes `pattern` to channels made by `make`, one per join.
    pub fn channel<C: Channel, F>(mut self, pattern: &str, make: F) -> Router
    where
        F: Fn() -> C + Send + Sync + 'static,
    {
        let pattern = Pattern::parse(pattern);
        self.routes.push((
            pattern,
            Arc::new(move || Box::new(make()) as Box<dyn Channel>),
        ));
        self
    }

    /// A pattern already routed that matches some topic `pattern` matches too, if any (as
    /// written: `room:*`).
    pub fn overlap(&self, pattern: &str) -> Option<String> {
        let new = Pattern::parse(pattern);
        self.routes.iter().find_map(|(p, _)| {
            let shared = match (p, &new) {
                (Pattern::Exact(a), Pattern::Exact(b)) => a == b,
                (Pattern::Exact(t), Pattern::Prefix(p))
                | (Pattern::Prefix(p), Pattern::Exact(t)) => t.starts_with(p.as_str()),
                (Pattern::Prefix(a), Pattern::Prefix(b)) => {
                    a.starts_with(b.as_str()) || b.starts_with(a.as_str())
                }
            };
            shared.then(|| match p {
                Pattern::Exact(t) => t.clone(),
                Pattern::Prefix(p) => format!("{p}*"),
            })
        })
    }

    /// A new channel for `topic`, if a route matches it.
    pub(crate) fn route(&self, topic: &str) -> Option<Box<dyn Channel>> {
        self.routes
            .iter()
            .find(|(p, _)| match p {
                Pattern::Exact(t) => t == topic,
                Pattern::Prefix(p) => topic.starts_with(p.as_str()),
            })
            .map(|(_, make)| make())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Nop;
    #[async_trait(?Send)]
    impl Channel for Nop {
        async fn join(
            &mut self,
            _: &str,
            _: Payload,
            _: &mut ChannelContext,
        ) -> Result<Payload, Payload> {
            Ok(Payload::empty())
        }
        fn intercepts(&self) -> &'static [&'static str] {
            &["marker"]
        }
    }
    struct Other;
    #[async_trait(?Send)]
    impl Channel for Other {
        async fn join(
            &mut self,
            _: &str,
            _: Payload,
            _: &mut ChannelContext,
        ) -> Result<Payload, Payload> {
            Err(Payload::empty())
        }
    }

    #[test]
    fn routes_exact_and_prefix_patterns_in_order() {
        let r = Router::new()
            .channel("community:feed", || Nop)
            .channel("channel:*", || Other)
            .channel("*", || Nop);
        let is_nop = |t: &str| r.route(t).map(|c| c.intercepts() == ["marker"]);
        assert_eq!(is_nop("community:feed"), Some(true));
        assert_eq!(is_nop("channel:lobby"), Some(false));
        assert_eq!(is_nop("channel:"), Some(false));
        assert_eq!(is_nop("anything"), Some(true));
        let r = Router::new().channel("community:feed", || Nop);
        assert!(r.route("community:feed2").is_none());
        assert!(r.route("community").is_none());
    }

    #[test]
    fn overlaps_are_found_whichever_pattern_is_wider() {
        let r = Router::new()
            .channel("community:feed", || Nop)
            .channel("channel:*", || Other);
        assert_eq!(r.overlap("room:*"), None);
        assert_eq!(r.overlap("community:feed2"), None);
        assert_eq!(
            r.overlap("community:feed").as_deref(),
            Some("community:feed")
        );
        assert_eq!(r.overlap("community:*").as_deref(), Some("community:feed"));
        assert_eq!(r.overlap("channel:lobby").as_deref(), Some("channel:*"));
        assert_eq!(r.overlap("chan*").as_deref(), Some("channel:*"));
        assert_eq!(r.overlap("channel:x:*").as_deref(), Some("channel:*"));
        assert_eq!(r.overlap("*").as_deref(), Some("community:feed"));
    }

    #[test]
    fn assigns_hold_one_value_per_type() {
        #[derive(Debug, PartialEq)]
        struct UserId(u64);
        let mut a = Assigns::new().with(UserId(1)).with("token".to_string());
        a.insert(UserId(2));
        assert_eq!(a.get::<UserId>(), Some(&UserId(2)));
        assert_eq!(a.get::<String>().map(String::as_str), Some("token"));
        assert_eq!(a.get::<u8>(), None);
    }
}
