//! The proxied channel: each join, push and leave of a declared topic becomes a request to the
//! app's backend, whose answer says what to reply, push, broadcast, keep and track.

use super::answer::{Answer, Track};
use super::client::{Backend, Failure};
use super::{Caller, Declared, Route};
use crate::channel::{Channel, ChannelContext, Flow, Info, Reply, StopReason};
use crate::protocol::Payload;
use async_trait::async_trait;
use serde_json::{json, Value};
use std::sync::Arc;

/// One join of a declared topic.
pub(super) struct ProxyChannel {
    declared: Arc<Declared>,
    /// What the backend asked to keep (`"assigns"`), sent with every later request.
    assigns: Value,
}

/// What a join's answer does once the client has its reply: track, push and broadcast.
struct AfterJoin {
    track: Option<Track>,
    push: Vec<super::answer::Push>,
    broadcast: Vec<super::answer::Broadcast>,
}

impl ProxyChannel {
    pub(super) fn new(declared: Arc<Declared>) -> ProxyChannel {
        ProxyChannel {
            declared,
            assigns: Value::Object(Default::default()),
        }
    }

    /// The request for `event`: what the backend knows of the caller, the channel and the
    /// event. Its keys are the protocol (see the module's doc).
    fn request(&self, ctx: &ChannelContext, event: &str, payload: &Value) -> Vec<u8> {
        let caller = ctx.assigns().get::<Caller>();
        let body = json!({
            "topic": ctx.topic(),
            "event": event,
            "payload": payload,
            "params": caller.map_or(json!({}), |c| c.params.clone()),
            "user": caller.map_or(Value::Null, |c| c.user.clone()),
            "socket_id": ctx.socket_id(),
            "join_ref": ctx.join_ref(),
            "ref": ctx.event_ref(),
            "node": &*self.declared.node,
            "assigns": &self.assigns,
        });
        serde_json::to_vec(&body).expect("JSON values serialize")
    }

    async fn ask(
        &self,
        route: &Route,
        ctx: &ChannelContext,
        event: &str,
        payload: &Value,
    ) -> Result<Answer, Failure> {
        let body = self.request(ctx, event, payload);
        route
            .backend
            .post(&route.url, body, self.declared.timeout, |bytes| {
                serde_json::from_slice(bytes).map_err(|e| e.to_string())
            })
            .await
    }

    fn keep(&mut self, assigns: Option<Value>) {
        if let Some(a) = assigns {
            self.assigns = a;
        }
    }
}

fn reason(why: &str) -> Payload {
    Payload::Json(json!({ "reason": why }))
}

/// Sends an answer's pushes to the caller and its broadcasts to their topics.
fn deliver(
    ctx: &ChannelContext,
    push: Vec<super::answer::Push>,
    broadcast: Vec<super::answer::Broadcast>,
) {
    for p in push {
        ctx.push(&p.event, p.payload);
    }
    for b in broadcast {
        let topic = b.topic.as_deref().unwrap_or(ctx.topic());
        ctx.endpoint()
            .pubsub()
            .broadcast(topic, &b.event, Payload::Json(b.payload));
    }
}

#[async_trait(?Send)]
impl Channel for ProxyChannel {
    /// Without a `join_url`, every join is accepted with `{}`: declaring the topic is the
    /// app's consent. With one, the backend's `reply` decides (`ok` accepts, any other status
    /// refuses with its response); a failed request refuses with `backend unavailable`.
    async fn join(
        &mut self,
        _topic: &str,
        params: Payload,
        ctx: &mut ChannelContext,
    ) -> Result<Payload, Payload> {
        // As a Phoenix channel's socket starts with the connect's assigns.
        if let Some(c) = ctx.assigns().get::<Caller>() {
            self.assigns = c.assigns.clone();
        }
        let Some(route) = self.declared.join.clone() else {
            return Ok(Payload::empty());
        };
        let Payload::Json(params) = params else {
            return Err(reason("binary payloads are not proxied"));
        };
        let answer = self
            .ask(&route, ctx, "phx_join", &params)
            .await
            .map_err(|f| reason(f.reason()))?;
        let response = match answer.reply {
            Some(r) if r.status != "ok" => return Err(Payload::Json(r.response)),
            Some(r) => r.response,
            None => json!({}),
        };
        self.keep(answer.assigns);
        if answer.track.is_some() || !answer.push.is_empty() || !answer.broadcast.is_empty() {
            ctx.send_self(AfterJoin {
                track: answer.track,
                push: answer.push,
                broadcast: answer.broadcast,
            });
        }
        Ok(Payload::Json(response))
    }

    /// Without a `push_url`, a push is refused with a reason (rather than crashing the
    /// channel, as a Phoenix channel without a matching `handle_in` would).
    async fn handle_in(
        &mut self,
        event: &str,
        payload: Payload,
        ctx: &mut ChannelContext,
    ) -> Reply {
        let Some(route) = self.declared.push.clone() else {
            return Reply::error(json!({"reason": "this channel takes no pushes (no push_url)"}));
        };
        let Payload::Json(payload) = payload else {
            return Reply::error(json!({"reason": "binary payloads are not proxied"}));
        };
        let answer = match self.ask(&route, ctx, event, &payload).await {
            Ok(a) => a,
            Err(f) => return Reply::error(json!({ "reason": f.reason() })),
        };
        self.keep(answer.assigns);
        deliver(ctx, answer.push, answer.broadcast);
        let reply = answer
            .reply
            .map(|r| (r.status.into(), Payload::Json(r.response)));
        match (answer.close, reply) {
            (true, reply) => Reply::Stop(StopReason::Normal, reply),
            (false, Some((status, payload))) => Reply::Status(status, payload),
            (false, None) => Reply::None,
        }
    }

    async fn handle_info(&mut self, info: Info, ctx: &mut ChannelContext) -> Flow {
        let Info::Message(m) = info else {
            return Flow::Continue;
        };
        let Ok(after) = m.downcast::<AfterJoin>() else {
            return Flow::Continue;
        };
        let AfterJoin {
            track,
            push,
            broadcast,
        } = *after;
        if let Some(t) = track {
            // As Phoenix apps do: track, then give the joiner the whole state; the others get
            // the diff the track broadcasts.
            if let Err(e) = ctx.track(&t.key, t.meta) {
                return Flow::Stop(StopReason::Crash(format!("presence: {e}")));
            }
            ctx.push("presence_state", ctx.presence_list());
        }
        deliver(ctx, push, broadcast);
        Flow::Continue
    }

    /// Tells the backend (`leave_url`), without waiting for it: the request runs on within the
    /// channel's timeout and its backend's bounds, and its answer is not read for actions.
    async fn terminate(&mut self, why: &StopReason, ctx: &mut ChannelContext) {
        let Some(route) = self.declared.leave.clone() else {
            return;
        };
        let why = match why {
            StopReason::Left => "left",
            StopReason::Closed => "closed",
            StopReason::DuplicateJoin => "duplicate_join",
            StopReason::Normal => "normal",
            StopReason::Crash(_) => "crash",
        };
        let body = self.request(ctx, "phx_leave", &json!({ "reason": why }));
        let timeout = self.declared.timeout;
        crate::task::spawn(async move {
            let backend: &Backend = &route.backend;
            let _ = backend.post(&route.url, body, timeout, |_| Ok(())).await;
        });
    }
}
