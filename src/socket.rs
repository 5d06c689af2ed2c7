//! One client socket: its joined channels, keyed by topic, and the protocol's rules for joins,
//! leaves, replies, heartbeats and failures (Phoenix 1.8 semantics). Transport-agnostic: a
//! transport feeds it decoded messages and mail, and drains its connection's queue.

use crate::channel::{
    Channel, ChannelContext, FastlaneSubscriber, Flow, Reply, SocketShared, StopReason,
};
use crate::connection::{ChannelId, Connection, Mail};
use crate::endpoint::{Connected, Endpoint, Socket};
use crate::metrics::ENGINE;
use crate::protocol::{Message, Outbound, Payload, Ref};
use crate::pubsub::{encode_frame, with_origin, Dispatch, Origin, Subscriber};
use futures_util::FutureExt;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

/// Why a socket ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum End {
    /// Close with this code and reason.
    Close(u16, String),
}

struct Joined {
    channel: Box<dyn Channel>,
    ctx: ChannelContext,
}

pub(crate) struct SocketState {
    shared: Arc<SocketShared>,
    def: Socket,
    channels: HashMap<String, Joined>,
    /// The socket id's subscription.
    id_sub: Option<u64>,
}

/// The socket id topic's subscriber: only `disconnect` matters.
struct IdSubscriber(Arc<Connection>);

impl Subscriber for IdSubscriber {
    fn deliver(&self, d: &Dispatch<'_>) {
        if d.broadcast.event == "disconnect" {
            self.0.mail(Mail::Disconnect, 0);
        }
    }

    fn connection(&self) -> Option<u64> {
        Some(self.0.id)
    }
}

/// Runs an app callback of connection `conn`, turning a panic into a failure of that channel.
/// What the callback broadcasts reaches its own connection ahead of its reply.
async fn guarded<T>(
    conn: u64,
    topic: &str,
    what: &str,
    fut: impl Future<Output = T>,
) -> Result<T, String> {
    let fut = Origin { conn, fut };
    AssertUnwindSafe(fut).catch_unwind().await.map_err(|p| {
        let why = panic_message(p.as_ref());
        log::error!("channel {topic}: {what} panicked: {why}");
        why
    })
}

/// Runs a synchronous app callback, turning a panic into an error (logged).
fn catch<T>(topic: &str, what: &str, f: impl FnOnce() -> T) -> Result<T, String> {
    std::panic::catch_unwind(AssertUnwindSafe(f)).map_err(|p| {
        let why = panic_message(p.as_ref());
        log::error!("channel {topic}: {what} panicked: {why}");
        why
    })
}

fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "panic".into())
}

fn empty() -> Payload {
    Payload::empty()
}

fn reason(r: &str) -> Payload {
    Payload::Json(json!({ "reason": r }))
}

impl SocketState {
    pub fn new(
        endpoint: Endpoint,
        def: Socket,
        conn: Arc<Connection>,
        connected: Connected,
    ) -> SocketState {
        let id_sub = connected.id.as_ref().map(|id| {
            let ps = endpoint.pubsub();
            let sub = ps.next_id();
            ps.subscribe(id, sub, Arc::new(IdSubscriber(conn.clone())));
            sub
        });
        let limits = &endpoint.config().limits;
        let budget = crate::budget::PushBudget::new(
            limits.max_costly_pushes_per_second,
            limits.max_costly_reply_bytes_per_second,
            std::time::Instant::now(),
        );
        SocketState {
            shared: Arc::new(SocketShared {
                conn,
                endpoint,
                assigns: Arc::new(connected.assigns),
                id: connected.id,
                budget: std::sync::Mutex::new(budget),
            }),
            def,
            channels: HashMap::new(),
            id_sub,
        }
    }

    pub fn conn(&self) -> &Arc<Connection> {
        &self.shared.conn
    }

    fn send(&self, msg: &Outbound<'_>) {
        if let Some(f) = encode_frame(self.shared.conn.serializer, msg) {
            self.shared.conn.push(f);
        }
    }

    fn reply(&self, join_ref: &Ref, ref_: &Ref, topic: &str, status: &str, response: &Payload) {
        self.send(&Outbound::Reply {
            join_ref,
            ref_,
            topic,
            status,
            response,
        });
    }

    fn control(&self, join_ref: &Ref, topic: &str, event: &str, payload: &Payload) {
        self.send(&Outbound::Control {
            join_ref,
            topic,
            event,
            payload,
        });
    }

    /// Handles one message from the client.
    ///
    /// Joins, leaves and stops are boxed: the transport boxes this future once per message,
    /// and the common case (a push) then needs a small allocation, not one sized for a join.
    pub async fn handle(&mut self, msg: Message) {
        match (msg.topic.as_str(), msg.event.as_str()) {
            ("phoenix", "heartbeat") => {
                self.reply(&Value::Null, &msg.ref_, "phoenix", "ok", &empty())
            }
            (_, "phx_join") => Box::pin(self.join(msg)).await,
            (_, "phx_leave") => Box::pin(self.leave(msg)).await,
            _ => self.event(msg).await,
        }
    }

    async fn join(&mut self, msg: Message) {
        let Message {
            join_ref,
            ref_,
            topic,
            payload,
            ..
        } = msg;
        let max_topic = self.shared.endpoint.config().limits.max_topic_bytes;
        if topic.len() > max_topic {
            let why = format!("topic over {max_topic} bytes");
            log::info!("socket {}: refused a join: {why}", self.conn().id);
            ENGINE.join(&topic, false, false);
            self.reply(&join_ref, &ref_, &topic, "error", &reason(&why));
            return;
        }
        // A join of a joined topic replaces the old join; its phx_close follows the new reply.
        let replaced = match self.channels.remove(&topic) {
            Some(old) => Some(self.end(&topic, old, StopReason::DuplicateJoin).await),
            None => None,
        };
        let close_replaced = |s: &Self| {
            if let Some(old_ref) = &replaced {
                s.control(old_ref, &topic, "phx_close", &empty());
            }
        };
        // The app's factory runs under the panic guard too: a panic fails this join only.
        let routed = catch(&topic, "the channel factory", || {
            self.def.router.route(&topic)
        });
        let mut channel = match routed {
            Ok(Some(channel)) => channel,
            Ok(None) => {
                ENGINE.join(&topic, false, false);
                self.reply(
                    &Value::Null,
                    &ref_,
                    &topic,
                    "error",
                    &reason("unmatched topic"),
                );
                return close_replaced(self);
            }
            Err(_) => {
                ENGINE.join(&topic, true, false);
                self.reply(&join_ref, &ref_, &topic, "error", &reason("join crashed"));
                return close_replaced(self);
            }
        };
        let Ok(intercepts) = catch(&topic, "intercepts", || channel.intercepts()) else {
            ENGINE.join(&topic, true, false);
            self.reply(&join_ref, &ref_, &topic, "error", &reason("join crashed"));
            return close_replaced(self);
        };
        let max = self.shared.endpoint.config().limits.max_channels;
        if self.channels.len() >= max {
            log::info!(
                "socket {}: refused join of {topic}: {max} channels joined",
                self.conn().id
            );
            self.reply(
                &join_ref,
                &ref_,
                &topic,
                "error",
                &reason("too many channels joined"),
            );
            ENGINE.join(&topic, true, false);
            return close_replaced(self);
        }

        let ps = self.shared.endpoint.pubsub().clone();
        let id: ChannelId = ps.next_id();
        let conn = self.shared.conn.clone();
        let covered = Arc::new(AtomicI64::new(0));
        let own_stop = Arc::new(std::sync::OnceLock::new());
        // Subscribe before join runs, so that nothing published after the join's reads is
        // missed; hold those broadcasts until the reply is written.
        conn.hold(id);
        ps.subscribe(
            &topic,
            id,
            Arc::new(FastlaneSubscriber {
                conn: conn.clone(),
                channel: id,
                intercepts,
                covered: covered.clone(),
                stop: own_stop.clone(),
            }),
        );
        let mut ctx = ChannelContext {
            socket: self.shared.clone(),
            topic: topic.clone(),
            join_ref: join_ref.clone(),
            id,
            current_ref: ref_.clone(),
            tracked: Vec::new(),
            subscriptions: Vec::new(),
            timers: Vec::new(),
            covered: covered.clone(),
            own_stop,
            stops: Vec::new(),
        };
        let result = guarded(
            conn.id,
            &topic,
            "join",
            channel.join(&topic, payload, &mut ctx),
        )
        .await;
        let (status, response) = match result {
            Ok(Ok(r)) => ("ok", r),
            Ok(Err(r)) => ("error", r),
            Err(_) => ("error", reason("join crashed")),
        };
        let reply = encode_frame(
            conn.serializer,
            &Outbound::Reply {
                join_ref: &join_ref,
                ref_: &ref_,
                topic: &topic,
                status,
                response: &response,
            },
        );
        let ok = status == "ok";
        ENGINE.join(&topic, true, ok);
        if ok {
            conn.release(reply, true, covered.load(Ordering::Relaxed));
            self.channels.insert(topic.clone(), Joined { channel, ctx });
        } else {
            ps.unsubscribe(&topic, id);
            ctx.cleanup();
            conn.release(reply, false, 0);
        }
        close_replaced(self);
    }

    async fn leave(&mut self, msg: Message) {
        let current = self
            .channels
            .get(&msg.topic)
            .map(|j| j.ctx.join_ref.clone());
        match current {
            // Not joined: answer ok, echoing the join_ref sent.
            None => self.reply(&msg.join_ref, &msg.ref_, &msg.topic, "ok", &empty()),
            Some(j) if msg.join_ref.is_null() || msg.join_ref == j => {
                self.reply(&j, &msg.ref_, &msg.topic, "ok", &empty());
                let joined = self.channels.remove(&msg.topic).expect("joined");
                self.control(&j, &msg.topic, "phx_close", &empty());
                self.end(&msg.topic, joined, StopReason::Left).await;
            }
            // A stale leave (an older join of this topic): Phoenix drops it.
            Some(_) => {}
        }
    }

    async fn event(&mut self, msg: Message) {
        let Some(joined) = self.channels.get_mut(&msg.topic) else {
            return self.reply(
                &Value::Null,
                &msg.ref_,
                &msg.topic,
                "error",
                &reason("unmatched topic"),
            );
        };
        if !msg.join_ref.is_null() && msg.join_ref != joined.ctx.join_ref {
            // Phoenix 1.8.12 drops events carrying the join_ref of an older join.
            log::debug!("dropped {} on {}: stale join_ref", msg.event, msg.topic);
            return;
        }
        joined.ctx.current_ref = msg.ref_.clone();
        let fut = joined
            .channel
            .handle_in(&msg.event, msg.payload, &mut joined.ctx);
        let outcome = guarded(self.shared.conn.id, &msg.topic, "handle_in", fut).await;
        let j = joined.ctx.join_ref.clone();
        let stop = match outcome {
            Err(why) => Some(StopReason::Crash(why)),
            Ok(Reply::None) => None,
            Ok(Reply::Status(status, p)) => {
                self.reply(&j, &msg.ref_, &msg.topic, &status, &p);
                None
            }
            Ok(Reply::Stop(why, reply)) => {
                if let Some((status, p)) = reply {
                    self.reply(&j, &msg.ref_, &msg.topic, &status, &p);
                }
                Some(why)
            }
        };
        if let Some(why) = stop {
            Box::pin(self.stop(&msg.topic, why)).await;
        }
    }

    /// A channel stops on its own: `phx_close` for a normal stop, `phx_error` for a failure.
    async fn stop(&mut self, topic: &str, why: StopReason) {
        let Some(joined) = self.channels.remove(topic) else {
            return;
        };
        let j = joined.ctx.join_ref.clone();
        if let StopReason::Crash(r) = &why {
            log::warn!("channel {topic} failed: {r}");
            self.control(&j, topic, "phx_error", &reason("channel_crash"));
        } else {
            self.control(&j, topic, "phx_close", &empty());
        }
        self.end(topic, joined, why).await;
    }

    /// Unsubscribes, leaves presence, cancels timers and runs `terminate` (not after a crash).
    /// Returns the ended join's join_ref.
    async fn end(&mut self, topic: &str, mut joined: Joined, why: StopReason) -> Ref {
        self.shared
            .endpoint
            .pubsub()
            .unsubscribe(topic, joined.ctx.id);
        joined.ctx.cleanup();
        if !matches!(why, StopReason::Crash(_)) {
            let fut = joined.channel.terminate(&why, &mut joined.ctx);
            let _ = guarded(self.shared.conn.id, topic, "terminate", fut).await;
            // terminate may have tracked or subscribed again.
            joined.ctx.cleanup();
        }
        joined.ctx.join_ref
    }

    /// Handles mail; `Some` when the socket must end.
    pub async fn handle_mail(&mut self, mail: Mail) -> Option<End> {
        match mail {
            // As Phoenix 1.8.8+ closes on a disconnect: 1001, empty reason; clients reconnect.
            Mail::Disconnect | Mail::Shutdown => {
                return Some(End::Close(1001, String::new()));
            }
            Mail::Stop { channel } => {
                if let Some(topic) = self.topic_of(channel) {
                    Box::pin(self.stop(&topic, StopReason::Normal)).await;
                }
            }
            Mail::Info { channel, info } => {
                if let Some(topic) = self.topic_of(channel) {
                    let joined = self.channels.get_mut(&topic).expect("joined");
                    let fut = joined.channel.handle_info(info, &mut joined.ctx);
                    let r = guarded(self.shared.conn.id, &topic, "handle_info", fut).await;
                    self.after(&topic, r).await;
                }
            }
            Mail::Out { channel, broadcast } => {
                if let Some(topic) = self.topic_of(channel) {
                    let joined = self.channels.get_mut(&topic).expect("joined");
                    let covered = joined.ctx.covered.load(Ordering::Relaxed);
                    if broadcast.seq.is_some_and(|s| s <= covered) {
                        return None;
                    }
                    let (ev, p) = (&broadcast.event, &broadcast.payload);
                    let conn = joined.ctx.socket.conn.id;
                    let r = catch(&topic, "handle_out", || {
                        with_origin(conn, || joined.channel.handle_out(ev, p, &mut joined.ctx))
                    });
                    self.after(&topic, r).await;
                }
            }
            Mail::Reply {
                channel,
                ref_,
                status,
                payload,
            } => {
                if let Some(topic) = self.topic_of(channel) {
                    let j = self.channels[&topic].ctx.join_ref.clone();
                    self.reply(&j, &ref_, &topic, &status, &payload);
                }
            }
        }
        None
    }

    async fn after(&mut self, topic: &str, r: Result<Flow, String>) {
        match r {
            Ok(Flow::Continue) => {}
            Ok(Flow::Stop(why)) => Box::pin(self.stop(topic, why)).await,
            Err(why) => Box::pin(self.stop(topic, StopReason::Crash(why))).await,
        }
    }

    /// The topic of a channel that is still joined (mail for an ended join is dropped).
    fn topic_of(&self, channel: ChannelId) -> Option<String> {
        self.channels
            .iter()
            .find(|(_, j)| j.ctx.id == channel)
            .map(|(t, _)| t.clone())
    }

    /// Ends every channel (the socket is closing) and drops the socket id subscription.
    pub async fn terminate(&mut self) {
        let topics: Vec<String> = self.channels.keys().cloned().collect();
        for topic in topics {
            if let Some(joined) = self.channels.remove(&topic) {
                self.end(&topic, joined, StopReason::Closed).await;
            }
        }
        if let (Some(id), Some(sub)) = (&self.shared.id, self.id_sub.take()) {
            self.shared.endpoint.pubsub().unsubscribe(id, sub);
        }
    }
}

impl Drop for SocketState {
    fn drop(&mut self) {
        // A task dropped mid-way (runtime shutdown) still must not leave subscriptions behind.
        for (topic, mut joined) in self.channels.drain() {
            self.shared
                .endpoint
                .pubsub()
                .unsubscribe(&topic, joined.ctx.id);
            joined.ctx.cleanup();
        }
        if let (Some(id), Some(sub)) = (&self.shared.id, self.id_sub.take()) {
            self.shared.endpoint.pubsub().unsubscribe(id, sub);
        }
    }
}
