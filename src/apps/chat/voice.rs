//! `voice:<id>`: WebRTC signaling for a room's voice call. Audio never passes through here.
//!
//! Each member's channel also listens on its own `voice:<id>:user:<user id>` topic, so an
//! offer, answer or ICE candidate reaches only the sockets of the user it is addressed to.

use super::room::topic_id;
use super::{ends_membership, readable};
use crate::accounts::User;
use crate::apps::state::{current_user, AppState};
use crate::{async_trait, Channel, ChannelContext, Flow, Info, Payload, Reply, StopReason};
use actix_web::web;
use serde_json::{json, Value};

pub struct VoiceChannel {
    state: web::Data<AppState>,
    user: Option<User>,
    room_id: i64,
}

struct AfterJoin;

const SIGNALS: [&str; 3] = ["sdp_offer", "sdp_answer", "ice_candidate"];

impl VoiceChannel {
    pub fn new(state: web::Data<AppState>) -> VoiceChannel {
        VoiceChannel {
            state,
            user: None,
            room_id: 0,
        }
    }

    fn me(&self) -> i64 {
        self.user.as_ref().map_or(0, |u| u.id)
    }

    fn inbox(&self, user: i64) -> String {
        format!("voice:{}:user:{user}", self.room_id)
    }
}

fn reason(r: &str) -> Payload {
    Payload::Json(json!({ "reason": r }))
}

#[async_trait(?Send)]
impl Channel for VoiceChannel {
    async fn join(
        &mut self,
        topic: &str,
        _: Payload,
        ctx: &mut ChannelContext,
    ) -> Result<Payload, Payload> {
        let user = current_user(ctx).ok_or_else(|| reason("unauthorized"))?;
        let room_id = topic_id(topic, "voice:").ok_or_else(|| reason("unauthorized"))?;
        // Listen for a removal (in the room's stream) before checking access: one that lands in
        // between is not missed.
        let room_stream = super::room::room_topic(room_id);
        ctx.stop_on_recorded(&room_stream, ends_membership(user.id));
        let (u, r) = (user.clone(), room_stream.clone());
        let room_seq = self
            .state
            .store
            .read(move |c| {
                readable(c, room_id, &u)?;
                crate::history::latest_seq(c, &r)
            })
            .await
            .map_err(|_| reason("unauthorized"))?;
        ctx.stop_covered_through(&room_stream, room_seq);
        self.user = Some(user);
        self.room_id = room_id;
        ctx.subscribe(&self.inbox(self.me()));
        ctx.send_self(AfterJoin);
        Ok(Payload::empty())
    }

    async fn handle_info(&mut self, info: Info, ctx: &mut ChannelContext) -> Flow {
        match info {
            // A signal addressed to this user.
            Info::Broadcast(b) => ctx.push(&b.event, b.payload.clone()),
            Info::Message(m) if m.is::<AfterJoin>() => {
                let key = self.me().to_string();
                if let Err(e) = ctx.track(&key, json!({"muted": false, "deafened": false})) {
                    return Flow::Stop(StopReason::Crash(e.to_string()));
                }
                ctx.push("presence_state", ctx.presence_list());
                ctx.broadcast_from("peer_joined", json!({"user_id": self.me()}));
            }
            Info::Message(_) => {}
        }
        Flow::Continue
    }

    async fn handle_in(
        &mut self,
        event: &str,
        payload: Payload,
        ctx: &mut ChannelContext,
    ) -> Reply {
        let max = self.state.chat.max_signal_bytes;
        if payload.encoded_len() > max {
            return Reply::error(reason(&format!("payload over {max} bytes")));
        }
        let Payload::Json(Value::Object(mut p)) = payload else {
            return Reply::error(reason("payload must be a JSON object"));
        };
        // Access is checked on every push, not only at join: a query, so it spends the socket's
        // budget.
        if let Err(p) = ctx.spend_costly_push() {
            return Reply::error(p);
        }
        let (room, user) = (self.room_id, self.user.clone().expect("joined"));
        if let Err(e) = self
            .state
            .store
            .run(move |c| readable(c, room, &user))
            .await
        {
            log::info!("voice:{room}: push refused: {e}");
            return Reply::error(reason("unauthorized"));
        }
        if SIGNALS.contains(&event) {
            let Some(to) = p.get("to").and_then(Value::as_i64) else {
                return Reply::error(reason("to must be a user id"));
            };
            let present = ctx.presence_list().get(to.to_string()).is_some();
            if !present {
                return Reply::error(reason("that user is not in the voice room"));
            }
            p.insert("from".into(), json!(self.me()));
            ctx.endpoint()
                .broadcast(&self.inbox(to), event, Value::Object(p));
            return Reply::ok(Payload::empty());
        }
        if event == "set_mute" {
            let flag = |k: &str| p.get(k).and_then(Value::as_bool);
            let (Some(muted), Some(deafened)) = (flag("muted"), flag("deafened")) else {
                return Reply::error(reason("muted and deafened must be true or false"));
            };
            let key = self.me().to_string();
            return match ctx.update_presence(&key, json!({"muted": muted, "deafened": deafened})) {
                Ok(_) => Reply::ok(Payload::empty()),
                Err(e) => Reply::error(reason(&e.to_string())),
            };
        }
        Reply::error(reason(&format!("unknown event {event:?}")))
    }

    async fn terminate(&mut self, _: &StopReason, ctx: &mut ChannelContext) {
        if self.user.is_some() {
            ctx.broadcast_from("peer_left", json!({"user_id": self.me()}));
        }
    }
}
