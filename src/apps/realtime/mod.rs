//! Supabase Realtime for unmodified `@supabase/realtime-js` and `supabase-js` clients:
//! `realtime:<name>` channels with Broadcast and Presence, the project's keys and users' JWTs,
//! and the REST broadcast routes. The wire contract is `../shared/protocol/supabase-realtime.md`
//! (read from the client's and Supabase Realtime's sources, v2.129.8).
//!
//! - [`channel`]: one join of `realtime:<name>`.
//! - [`rules`]: who may read, write and track presence on private channels.
//! - [`changes`]: `postgres_changes` subscriptions, filters and events; [`collections`]: the
//!   Fawkes collections as their tables; [`rls`]: row-level security of captured changes;
//!   [`follow`]: what following one table takes, for both kinds of follower.
//! - [`table`]: `postgres:<schema>.<table>[:<filter>]`, the same changes for phoenix.js.
//! - [`rest`]: `POST /realtime/v1/api/broadcast` and its single-message form.
//!
//! Mounted at `/realtime/v1` (what supabase-js connects to, with no gateway in front) and
//! beside the apps' channels on `/socket`, where a client configured with a bare Realtime URL
//! connects; either way the socket's `apikey` must be the project's anon or service_role key.

pub mod changes;
pub mod channel;
pub mod collections;
pub mod follow;
pub mod rest;
pub mod rls;
pub mod rules;
pub mod table;

use crate::auth::supabase::{Claims, ProjectKeys, TokenError};
use crate::budget::PushBudget;
use crate::channel::{Assigns, Router};
use crate::endpoint::{ConnectInfo, Connected, Refused, Socket};
use serde_json::json;
use std::sync::{Arc, Mutex};
use std::time::Instant;

pub use rules::RealtimeRules;

/// Where `realtime:*` clients connect: `<this>/websocket`, as supabase-js builds its URL.
pub const MOUNT: &str = "/realtime/v1";

/// The bounds a client meets.
#[derive(Debug, Clone)]
pub struct RealtimeLimits {
    /// Largest broadcast or presence payload, in bytes (as sent: JSON text or raw bytes).
    pub max_payload_bytes: usize,
    /// Events (broadcasts, presence, others) one socket may send per second over all its
    /// `realtime:*` channels; past it the channel is closed with Realtime's "Too many messages
    /// per second".
    pub events_per_second: u32,
    /// Messages one REST broadcast may carry.
    pub max_rest_messages: usize,
    /// Largest REST broadcast body, in bytes (413 above it).
    pub max_rest_body_bytes: usize,
    /// Memory a `match`/`imatch` filter's pattern may compile to, in bytes (it runs on every
    /// change of its table); a larger one is refused naming it.
    pub max_filter_pattern_bytes: usize,
}

impl Default for RealtimeLimits {
    fn default() -> Self {
        RealtimeLimits {
            max_payload_bytes: 256 * 1024,
            events_per_second: 100,
            max_rest_messages: 100,
            max_rest_body_bytes: 1024 * 1024,
            max_filter_pattern_bytes: 256 * 1024,
        }
    }
}

/// Supabase Realtime's settings: the project's JWT secret, limits and private-channel rules.
pub struct Realtime {
    pub keys: ProjectKeys,
    pub limits: RealtimeLimits,
    pub rules: RealtimeRules,
    /// The collections' rules: a collection is followed as a table only if it lists publicly.
    pub collection_rules: crate::apps::rules::RuleBook,
    /// The app's tables whose changes are captured (`--cdc-tables`), and the database they are
    /// in, where a subscriber's role is checked; none without change capture.
    pub cdc_tables: Vec<String>,
    pub store: Option<crate::store::Store>,
    /// Row-level security checks of captured changes (with change capture).
    pub row_security: Option<Arc<rls::RowSecurity>>,
}

/// The socket's `apikey`, verified at connect, and the socket's event budget shared by its
/// `realtime:*` channels. In the socket's assigns.
pub struct ApiKey {
    pub token: String,
    pub claims: Claims,
    /// The user's token among the connect params (`access_token`), for phoenix.js clients of
    /// `postgres:` topics; checked when they join.
    pub access_token: Option<String>,
    budget: Mutex<PushBudget>,
}

impl ApiKey {
    /// Takes one event from the socket's budget; `false` when it is spent.
    fn spend(&self) -> bool {
        let mut b = self.budget.lock().unwrap_or_else(|e| e.into_inner());
        b.spend(Instant::now()).is_ok()
    }
}

/// The PubSub topic a channel's broadcasts and presence live on: public and private channels
/// of one name are apart, as in Supabase (a public subscriber never sees a private room).
pub fn room(name: &str, private: bool) -> String {
    if private {
        format!("realtime-private:{name}")
    } else {
        format!("realtime:{name}")
    }
}

/// Unix seconds now.
fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

impl Realtime {
    pub fn new(keys: ProjectKeys, limits: RealtimeLimits, rules: RealtimeRules) -> Realtime {
        Realtime {
            keys,
            limits,
            rules,
            collection_rules: Default::default(),
            cdc_tables: Vec::new(),
            store: None,
            row_security: None,
        }
    }

    /// The connect's `apikey` (header `x-api-key`, else the `apikey` parameter), verified.
    /// `Ok(None)` when there is none: the `/realtime/v1` socket refuses that, the apps'
    /// socket lets its own topics be joined without one.
    pub fn api_key(&self, info: &ConnectInfo) -> Result<Option<ApiKey>, Refused> {
        let Some(token) = info.x_header("x-api-key").or(info.params.get("apikey")) else {
            return Ok(None);
        };
        // The messages Realtime's handshake answers with (`RealtimeWeb.UserSocket`).
        let claims = self.keys.verify(token, now()).map_err(|e| {
            let said = match e {
                TokenError::Expired(_) => "Token has expired".to_owned(),
                _ => e.to_string(),
            };
            Refused::with_body(401, format!("apikey: {e}"), json!({ "error": said }))
        })?;
        let budget = PushBudget::new(self.limits.events_per_second, 0, Instant::now());
        Ok(Some(ApiKey {
            token: token.to_owned(),
            claims,
            access_token: info
                .params
                .get("access_token")
                .filter(|t| !t.is_empty())
                .map(str::to_owned),
            budget: Mutex::new(budget),
        }))
    }

    /// Adds `realtime:*` and `postgres:*` to a socket's router.
    pub fn mount(self: &Arc<Self>, router: Router) -> Router {
        let (realtime, tables) = (self.clone(), self.clone());
        router
            .channel("realtime:*", move || {
                channel::RealtimeChannel::new(realtime.clone())
            })
            .channel("postgres:*", move || {
                table::TableChannel::new(tables.clone())
            })
    }

    /// The socket supabase-js connects to at [`MOUNT`]: `realtime:*` only, `apikey` required.
    pub fn socket(self: &Arc<Self>) -> Socket {
        let realtime = self.clone();
        Socket::new(self.mount(Router::new()))
            .transports(true, false)
            .on_connect(move |info| {
                let key = realtime.api_key(&info);
                async move {
                    let key = key?.ok_or_else(|| {
                        Refused::with_body(401, "no apikey", json!({"error": "API key is missing"}))
                    })?;
                    Ok(Connected {
                        assigns: Assigns::new().with(key),
                        id: None,
                    })
                }
            })
    }
}
