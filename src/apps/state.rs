//! What the apps share, below every app: `AppState` (the store, the endpoint, sign-in, the
//! recorded history and each app's settings), the user a socket connected as, and the topics
//! whose broadcasts are recorded. The apps import it; it imports none of them.

use crate::accounts::{self, User};
use crate::apps::proxy;
use crate::apps::rules::RuleBook;
use crate::endpoint::Endpoint;
use crate::store::Store;
use crate::ChannelContext;
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Limits of the apps' own input.
#[derive(Debug, Clone)]
pub struct AppLimits {
    /// Longest post or comment body, in characters.
    pub max_post_length: usize,
}

impl Default for AppLimits {
    fn default() -> Self {
        AppLimits {
            max_post_length: 10_000,
        }
    }
}

/// What the apps' handlers and channels share.
pub struct AppState {
    pub store: Store,
    pub endpoint: Endpoint,
    pub limits: AppLimits,
    pub collections: CollectionsConfig,
    pub chat: ChatConfig,
    /// Phoenix.Token and JWT sign-in, when configured.
    pub auth: crate::auth::Verifiers,
    /// The recorded streams of `community:feed`, `channel:`, `thread:` and `user:` topics.
    pub history: crate::history::History,
    /// Channels proxied to the app's backend, mounted beside the built-in ones.
    pub proxy: proxy::Proxy,
    /// Supabase Realtime's `realtime:*` channels, when a project JWT secret is given.
    pub realtime: Option<std::sync::Arc<crate::apps::realtime::Realtime>>,
    pub(crate) chat_rate: RateLimiter,
}

impl AppState {
    pub fn new(
        store: Store,
        endpoint: Endpoint,
        limits: AppLimits,
        collections: CollectionsConfig,
    ) -> AppState {
        AppState {
            history: crate::history::History::new(store.clone(), Default::default()),
            store,
            endpoint,
            limits,
            collections,
            chat: ChatConfig::default(),
            auth: Default::default(),
            chat_rate: Default::default(),
            proxy: Default::default(),
            realtime: None,
        }
    }
}

/// The user a socket connected as; anonymous sockets have none.
#[derive(Debug, Clone)]
pub struct SocketUser(pub User);

pub fn current_user(ctx: &ChannelContext) -> Option<User> {
    ctx.assigns().get::<SocketUser>().map(|u| u.0.clone())
}

/// Topics whose broadcasts are recorded (numbered by `"seq"` in the change log): on several
/// nodes, each delivers them in seq order.
pub const RECORDED_PREFIXES: &[&str] = &[
    "community:feed",
    "collection:",
    "channel:",
    "thread:",
    "user:",
    accounts::COMMUNITY_MEMBER_PREFIX,
];

/// Chat's own limits.
#[derive(Debug, Clone)]
pub struct ChatConfig {
    /// Longest message body, in characters.
    pub max_body: usize,
    /// Messages one user may send within `rate_window`.
    pub rate_count: usize,
    pub rate_window: Duration,
    /// How long a `typing_start` lasts without another one.
    pub typing_timeout: Duration,
    /// Largest voice signaling payload (an SDP offer or answer, an ICE candidate), in bytes.
    pub max_signal_bytes: usize,
    /// Most members a room may have: each message records an `unread_updated` (and, with
    /// `@everyone`, a `mention`) for every member, so this bounds what one message costs.
    pub max_room_members: i64,
}

impl Default for ChatConfig {
    fn default() -> Self {
        ChatConfig {
            max_body: 4000,
            rate_count: 10,
            rate_window: Duration::from_secs(10),
            typing_timeout: Duration::from_secs(5),
            max_signal_bytes: 64 * 1024,
            max_room_members: 10_000,
        }
    }
}

/// Per-user message timestamps for the rate limit, shared by all of a user's sockets.
pub struct RateLimiter {
    sent: dashmap::DashMap<i64, VecDeque<Instant>>,
    /// When idle users were last swept out: at most once a window, so a sweep's cost is
    /// not paid on every message.
    swept: std::sync::Mutex<Instant>,
}

impl Default for RateLimiter {
    fn default() -> Self {
        RateLimiter {
            sent: Default::default(),
            swept: std::sync::Mutex::new(Instant::now()),
        }
    }
}

/// Users tracked before those idle for a whole window are swept out.
const RATE_SWEEP_AT: usize = 1024;

impl RateLimiter {
    /// Takes a slot for `user`, or says how many milliseconds until one frees up.
    pub fn take(&self, user: i64, count: usize, window: Duration) -> Result<(), u64> {
        let now = Instant::now();
        if self.sent.len() >= RATE_SWEEP_AT {
            let mut swept = self.swept.lock().unwrap_or_else(|e| e.into_inner());
            if now.duration_since(*swept) >= window {
                *swept = now;
                // Users who sent nothing for a window have nothing to remember.
                self.sent
                    .retain(|_, q| q.back().is_some_and(|t| now.duration_since(*t) < window));
            }
        }
        let mut q = self.sent.entry(user).or_default();
        while q.front().is_some_and(|t| now.duration_since(*t) >= window) {
            q.pop_front();
        }
        if q.len() >= count {
            let wait = window - now.duration_since(*q.front().expect("full queue"));
            return Err(wait.as_millis().max(1) as u64);
        }
        q.push_back(now);
        Ok(())
    }
}

/// Settings of the collections app.
#[derive(Debug, Clone)]
pub struct CollectionsConfig {
    /// Changes kept per collection for `since` replay.
    pub log_size: i64,
    /// Largest collection a join answers with in full.
    pub join_limit: i64,
    /// Largest join or `reload` reply, in bytes of JSON; a larger one is refused with a reason.
    pub max_reply_bytes: usize,
    /// Who may do what, per collection.
    pub rules: RuleBook,
}

impl Default for CollectionsConfig {
    fn default() -> Self {
        CollectionsConfig {
            log_size: 10_000,
            join_limit: 10_000,
            max_reply_bytes: 4 * 1024 * 1024,
            rules: RuleBook::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limit_counts_per_user_within_the_window() {
        let r = RateLimiter::default();
        let w = Duration::from_millis(200);
        assert!(r.take(1, 2, w).is_ok());
        assert!(r.take(1, 2, w).is_ok());
        let wait = r.take(1, 2, w).unwrap_err();
        assert!((1..=200).contains(&wait), "{wait}");
        assert!(r.take(2, 2, w).is_ok(), "another user has their own budget");
        std::thread::sleep(w);
        assert!(r.take(1, 2, w).is_ok());
    }

    #[test]
    fn idle_users_are_forgotten() {
        let r = RateLimiter::default();
        let w = Duration::from_millis(50);
        for user in 0..RATE_SWEEP_AT as i64 {
            r.take(user, 10, w).unwrap();
        }
        std::thread::sleep(w);
        r.take(-1, 10, w).unwrap();
        assert_eq!(r.sent.len(), 1, "only the user of the last window is kept");
    }
}
