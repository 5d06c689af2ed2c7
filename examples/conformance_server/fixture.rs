//! The conformance fixture (`protocol_tests/reference/conformance-fixture.md`), written only against Fawkes's
//! public API: also the smallest example of writing channels.

use fawkes::{
    async_trait, Channel, ChannelContext, Connected, Flow, Info, Payload, Refused, Reply, Router,
    Socket,
};
use serde_json::{json, Value};

/// `community:feed`: `new_post` is broadcast to every joined socket, `ping` echoes.
pub struct Feed;

#[async_trait(?Send)]
impl Channel for Feed {
    async fn join(
        &mut self,
        _: &str,
        _: Payload,
        _: &mut ChannelContext,
    ) -> Result<Payload, Payload> {
        Ok(Payload::empty())
    }

    async fn handle_in(
        &mut self,
        event: &str,
        payload: Payload,
        ctx: &mut ChannelContext,
    ) -> Reply {
        match event {
            "new_post" => {
                // Broadcast first: the sender sees it before its reply, as with Phoenix.
                ctx.broadcast("new_post", payload);
                Reply::ok(Payload::empty())
            }
            "ping" => Reply::ok(payload),
            other => Reply::crash(format!("no handler for {other}")),
        }
    }
}

/// `channel:*`: presence keyed by the `user_id` join param, `new_msg` to all, `typing` to others.
#[derive(Default)]
pub struct Room {
    user_id: String,
}

struct AfterJoin;

#[async_trait(?Send)]
impl Channel for Room {
    async fn join(
        &mut self,
        _: &str,
        params: Payload,
        ctx: &mut ChannelContext,
    ) -> Result<Payload, Payload> {
        // Non-object params make the join fail the way a Phoenix join that raises does.
        let params = params
            .json()
            .and_then(Value::as_object)
            .expect("join params must be a JSON object");
        self.user_id = match params.get("user_id") {
            Some(Value::String(s)) => s.clone(),
            Some(other) => other.to_string(),
            None => String::new(),
        };
        // Pushing is not allowed during join: track and push the state right after the reply.
        ctx.send_self(AfterJoin);
        Ok(Payload::empty())
    }

    async fn handle_info(&mut self, info: Info, ctx: &mut ChannelContext) -> Flow {
        if info.downcast::<AfterJoin>().is_some() {
            let online_at = chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string();
            if let Err(e) = ctx.track(&self.user_id, json!({ "online_at": online_at })) {
                return Flow::Stop(fawkes::StopReason::Crash(e.to_string()));
            }
            ctx.push("presence_state", ctx.presence_list());
        }
        Flow::Continue
    }

    async fn handle_in(
        &mut self,
        event: &str,
        payload: Payload,
        ctx: &mut ChannelContext,
    ) -> Reply {
        match event {
            "new_msg" => {
                ctx.broadcast("new_msg", payload);
                Reply::None
            }
            "typing" => {
                ctx.broadcast_from("typing", payload);
                Reply::None
            }
            other => Reply::crash(format!("no handler for {other}")),
        }
    }
}

/// `collection:*`: joins with `{"items": []}` and has no event handlers at all, so any push
/// makes it fail. It fails by panicking, to show that a panic only fails its channel.
pub struct Collection;

#[async_trait(?Send)]
impl Channel for Collection {
    async fn join(
        &mut self,
        _: &str,
        _: Payload,
        _: &mut ChannelContext,
    ) -> Result<Payload, Payload> {
        Ok(Payload::Json(json!({ "items": [] })))
    }

    async fn handle_in(&mut self, event: &str, _: Payload, _: &mut ChannelContext) -> Reply {
        panic!("collection channel has no handler for {event}")
    }
}

/// `private:*`: every join is refused.
pub struct Private;

#[async_trait(?Send)]
impl Channel for Private {
    async fn join(
        &mut self,
        _: &str,
        _: Payload,
        _: &mut ChannelContext,
    ) -> Result<Payload, Payload> {
        Err(Payload::Json(json!({ "reason": "unauthorized" })))
    }
}

/// The fixture's socket: token `bad` is refused; any other token becomes the socket id
/// `users_socket:<token>`.
pub fn socket() -> Socket {
    let router = Router::new()
        .channel("community:feed", || Feed)
        .channel("channel:*", Room::default)
        .channel("collection:*", || Collection)
        .channel("private:*", || Private);
    Socket::new(router).on_connect(|info| async move {
        let token = info.params.get("token").unwrap_or_default().to_owned();
        if token == "bad" {
            return Err(Refused::new("token bad"));
        }
        Ok(Connected {
            id: Some(format!("users_socket:{token}")),
            ..Connected::default()
        })
    })
}
