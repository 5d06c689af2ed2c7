//! `user:<id>`: a user's own notifications (`mention`, `unread_updated`). Only that user joins.

use super::room::{topic_id, user_summary};
use crate::apps::{current_user, AppState};
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
        _: Payload,
        ctx: &mut ChannelContext,
    ) -> Result<Payload, Payload> {
        let unauthorized = || Payload::Json(json!({"reason": "unauthorized"}));
        let me = current_user(ctx).ok_or_else(unauthorized)?;
        if topic_id(topic, "user:") != Some(me.id) {
            return Err(unauthorized());
        }
        self.state
            .store
            .run(move |c| user_summary(c, me.id))
            .await
            .map(Payload::Json)
            .map_err(|e| {
                log::error!("user channel: {e}");
                unauthorized()
            })
    }

    async fn handle_in(&mut self, event: &str, _: Payload, _: &mut ChannelContext) -> Reply {
        Reply::error(json!({"reason": format!("unknown event {event:?}")}))
    }
}
