//! `user:<id>`: a user's own notifications (`mention`, `unread_updated`), recorded for replay.
//! Only that user joins, so only that user ever sees the stream.

use super::room::{topic_id, user_summary};
use crate::apps::state::{current_user, AppState};
use crate::history::{position, since_param};
use crate::{async_trait, Channel, ChannelContext, Payload, Reply};
use actix_web::web;
use serde_json::json;

pub struct UserChannel {
    pub state: web::Data<AppState>,
}

#[async_trait(?Send)]
impl Channel for UserChannel {
    async fn join(
        &mut self,
        topic: &str,
        params: Payload,
        ctx: &mut ChannelContext,
    ) -> Result<Payload, Payload> {
        let unauthorized = || Payload::Json(json!({"reason": "unauthorized"}));
        let me = current_user(ctx).ok_or_else(unauthorized)?;
        if topic_id(topic, "user:") != Some(me.id) {
            return Err(unauthorized());
        }
        let since = since_param(&params).map_err(|r| Payload::Json(json!({ "reason": r })))?;
        let t = topic.to_owned();
        let (reply, pos) = self
            .state
            .store
            .read(move |c| Ok((user_summary(c, me.id)?, position(c, &t, since)?)))
            .await
            .map_err(|e| {
                log::error!("user channel: {e}");
                unauthorized()
            })?;
        Ok(pos.join_reply(ctx, reply))
    }

    async fn handle_in(&mut self, event: &str, _: Payload, _: &mut ChannelContext) -> Reply {
        Reply::error(json!({"reason": format!("unknown event {event:?}")}))
    }
}
