//! `postgres:<schema>.<table>` (optionally `:<filter>`, as `postgres:public.todos:n=eq.5`): a
//! table's changes for any Phoenix-protocol client, event `change` with the `data` object
//! supabase-js gets (schema, table, commit_timestamp, type, columns, record, old_record,
//! errors). The follower is whom the socket's `apikey` and `access_token` connect params name
//! (`anon` with the anon key alone), held to the same privileges, row-level security and rules
//! as supabase-js's followers; what cannot be followed is refused at join, naming why.

use super::changes::{Change, Subscription};
use super::{collections, follow, now, ApiKey, Realtime};
use crate::auth::supabase::{role, Claims};
use crate::channel::{Channel, ChannelContext, Flow, Info, Reply};
use crate::protocol::Payload;
use crate::store::cdc;
use async_trait::async_trait;
use serde_json::json;
use std::sync::Arc;

pub struct TableChannel {
    realtime: Arc<Realtime>,
    subscription: Option<Subscription>,
    claims: Claims,
    rls: bool,
    seen: cdc::Seen,
}

fn refusal(why: impl std::fmt::Display) -> Payload {
    Payload::Json(json!({ "reason": why.to_string() }))
}

impl TableChannel {
    pub fn new(realtime: Arc<Realtime>) -> TableChannel {
        TableChannel {
            realtime,
            subscription: None,
            claims: Claims::new(),
            rls: false,
            seen: cdc::Seen::default(),
        }
    }
}

#[async_trait(?Send)]
impl Channel for TableChannel {
    async fn join(
        &mut self,
        topic: &str,
        _params: Payload,
        ctx: &mut ChannelContext,
    ) -> Result<Payload, Payload> {
        let rest = topic.strip_prefix("postgres:").unwrap_or_default();
        let (table, filter) = match rest.split_once(':') {
            Some((t, f)) => (t, Some(f)),
            None => (rest, None),
        };
        let Some((schema, table)) = table
            .split_once('.')
            .filter(|(s, t)| !s.is_empty() && !t.is_empty())
        else {
            return Err(refusal(
                "the topic is postgres:<schema>.<table>, optionally :<filter>",
            ));
        };
        let Some(key) = ctx.assigns().get::<ApiKey>() else {
            return Err(refusal("an apikey connect param is required"));
        };
        let token = key.access_token.as_deref().unwrap_or(&key.token);
        self.claims = self
            .realtime
            .keys
            .verify(token, now())
            .map_err(|e| refusal(format!("access_token: {e}")))?;
        let params = json!({"event": "*", "schema": schema, "table": table, "filter": filter});
        let subscription =
            Subscription::parse(&params, self.realtime.limits.max_filter_pattern_bytes)
                .map_err(refusal)?;
        let target = follow::target(&self.realtime, &subscription, role(&self.claims))
            .await
            .map_err(refusal)?;
        self.rls = target.rls;
        ctx.leave_own_topic();
        if target.topic.starts_with("postgres_changes:") {
            // Only what the filter wants reaches this channel's queue.
            let s = subscription.clone();
            ctx.subscribe_where(&target.topic, move |b| {
                b.payload.json().is_some_and(|d| s.wants_data(d))
            });
        } else {
            ctx.subscribe(&target.topic);
        }
        self.subscription = Some(subscription);
        Ok(Payload::empty())
    }

    async fn handle_info(&mut self, info: Info, ctx: &mut ChannelContext) -> Flow {
        let (Info::Broadcast(b), Some(s)) = (info, &self.subscription) else {
            return Flow::Continue;
        };
        let Some(data) = b.payload.json() else {
            return Flow::Continue;
        };
        if !self.seen.first_time(data) {
            return Flow::Continue;
        }
        let change = match b.topic.strip_prefix("collection:") {
            Some(name) => collections::change(name, data),
            None => Change::from_data(data),
        };
        let Some(change) = change.filter(|c| s.wants(c)) else {
            return Flow::Continue;
        };
        if follow::visible(&self.realtime, self.rls, &change, data, &self.claims).await {
            ctx.push("change", change.payload(&[])["data"].clone());
        }
        Flow::Continue
    }

    /// Followers only listen.
    async fn handle_in(&mut self, event: &str, _: Payload, _: &mut ChannelContext) -> Reply {
        Reply::error(json!({ "reason": format!("{event:?}: a postgres: topic takes no pushes") }))
    }
}
