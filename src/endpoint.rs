//! The endpoint ties a server together: configuration, PubSub, Presence, the live connections,
//! and the socket definitions (connect callback + channel router) mounted on it.

use crate::channel::{Assigns, Router};
use crate::config::Config;
use crate::connection::{Connection, Mail};
use crate::presence::Presence;
use crate::protocol::Payload;
use crate::pubsub::PubSub;
use dashmap::DashMap;
use futures_util::future::LocalBoxFuture;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// The query parameters of a connect, in order. Where a name repeats, the last value wins.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Params(pub Vec<(String, String)>);

impl Params {
    pub fn parse(query: &str) -> Params {
        Params(
            serde_urlencoded::from_str::<Vec<(String, String)>>(query).unwrap_or_else(|_| {
                // Undecodable pairs are skipped rather than failing the whole connect.
                query
                    .split('&')
                    .filter_map(|kv| serde_urlencoded::from_str::<Vec<(String, String)>>(kv).ok())
                    .flatten()
                    .collect()
            }),
        )
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// What a connect callback sees.
#[derive(Debug, Clone, Default)]
pub struct ConnectInfo {
    /// The query string's parameters, `vsn` included.
    pub params: Params,
    /// The token phoenix.js sends with its `authToken` option (WebSocket subprotocol or the
    /// LongPoll `X-Phoenix-AuthToken` header), decoded.
    pub auth_token: Option<String>,
    pub peer_addr: Option<SocketAddr>,
    pub origin: Option<String>,
    pub user_agent: Option<String>,
}

/// An accepted connect: the socket's assigns and, optionally, its id. Broadcasting
/// `disconnect` to the id (see [`Endpoint::disconnect`]) closes every socket that has it.
#[derive(Default)]
pub struct Connected {
    pub assigns: Assigns,
    pub id: Option<String>,
}

/// A refused connect. The reason is logged, never sent.
#[derive(Debug, Clone)]
pub struct Refused {
    pub reason: String,
    /// What the client is told: 403 (HTTP 403 on WebSocket, `{"status":403}` on LongPoll) when
    /// it may not connect; 500 when the server could not decide (a database error, say).
    pub status: u16,
}

impl Refused {
    /// The client may not connect (403).
    pub fn new(reason: impl Into<String>) -> Refused {
        Refused {
            reason: reason.into(),
            status: 403,
        }
    }

    /// The server failed to decide (500); logged as an error.
    pub fn internal(reason: impl Into<String>) -> Refused {
        Refused {
            reason: reason.into(),
            status: 500,
        }
    }
}

type ConnectFn =
    Arc<dyn Fn(ConnectInfo) -> LocalBoxFuture<'static, Result<Connected, Refused>> + Send + Sync>;

/// A socket definition, what a Phoenix socket module is: a connect callback and a router.
#[derive(Clone)]
pub struct Socket {
    pub(crate) connect: ConnectFn,
    pub(crate) router: Router,
    pub(crate) websocket: bool,
    pub(crate) longpoll: bool,
}

impl Socket {
    /// A socket that accepts every connect, anonymously, and routes by `router`.
    pub fn new(router: Router) -> Socket {
        Socket {
            connect: Arc::new(|_| Box::pin(async { Ok(Connected::default()) })),
            router,
            websocket: true,
            longpoll: true,
        }
    }

    /// Turns transports on or off (both are on by default). A transport that is off has no
    /// route: its path answers 404.
    pub fn transports(mut self, websocket: bool, longpoll: bool) -> Socket {
        self.websocket = websocket;
        self.longpoll = longpoll;
        self
    }

    /// Sets the connect callback.
    pub fn on_connect<F, Fut>(mut self, f: F) -> Socket
    where
        F: Fn(ConnectInfo) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Connected, Refused>> + 'static,
    {
        self.connect = Arc::new(move |info| Box::pin(f(info)));
        self
    }
}

struct Inner {
    config: Config,
    pubsub: PubSub,
    presence: Presence,
    conns: DashMap<u64, Arc<Connection>>,
    next_conn: AtomicU64,
    /// Set when this node runs in a cluster (see [`crate::cluster`]).
    cluster: std::sync::OnceLock<Arc<crate::metrics::ClusterStats>>,
}

/// Shared by every socket, channel and request handler of a server; cheap to clone.
#[derive(Clone)]
pub struct Endpoint {
    inner: Arc<Inner>,
}

impl Endpoint {
    pub fn new(config: Config) -> Endpoint {
        let pubsub = PubSub::new();
        Endpoint {
            inner: Arc::new(Inner {
                config,
                presence: Presence::new(pubsub.clone()),
                pubsub,
                conns: DashMap::new(),
                next_conn: AtomicU64::new(1),
                cluster: std::sync::OnceLock::new(),
            }),
        }
    }

    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    pub fn pubsub(&self) -> &PubSub {
        &self.inner.pubsub
    }

    pub fn presence(&self) -> &Presence {
        &self.inner.presence
    }

    /// What the cluster link did, when this node is in a cluster.
    pub fn cluster_stats(&self) -> Option<&Arc<crate::metrics::ClusterStats>> {
        self.inner.cluster.get()
    }

    pub(crate) fn set_cluster_stats(&self, stats: Arc<crate::metrics::ClusterStats>) {
        let _ = self.inner.cluster.set(stats);
    }

    /// Broadcasts to every subscriber of `topic` (REST handlers use this after a commit).
    pub fn broadcast(&self, topic: &str, event: &str, payload: impl Into<Payload>) {
        self.inner.pubsub.broadcast(topic, event, payload.into());
    }

    /// Closes every socket whose id is `socket_id` (close code 1001: clients reconnect, and
    /// their connect callback decides again). How an app logs a user out everywhere.
    pub fn disconnect(&self, socket_id: &str) {
        self.broadcast(socket_id, "disconnect", Payload::empty());
    }

    /// Live connections (WebSocket and LongPoll).
    pub fn connection_count(&self) -> usize {
        self.inner.conns.len()
    }

    /// Every live connection, for the inspector (walks them all: not for hot paths).
    pub fn connections(&self) -> Vec<crate::connection::ConnectionSummary> {
        let mut all: Vec<_> = self
            .inner
            .conns
            .iter()
            .map(|c| c.value().summary())
            .collect();
        all.sort_by_key(|c| c.id);
        all
    }

    pub(crate) fn register(&self, serializer: crate::protocol::Serializer) -> Arc<Connection> {
        let id = self.inner.next_conn.fetch_add(1, Ordering::Relaxed);
        let limits = &self.inner.config.limits;
        let conn = Arc::new(Connection::new(
            id,
            serializer,
            limits.max_queue,
            limits.max_queue_bytes,
        ));
        self.inner.conns.insert(id, conn.clone());
        conn
    }

    pub(crate) fn unregister(&self, id: u64) {
        self.inner.conns.remove(&id);
    }

    /// Tells every connection to close with 1001 (their channels terminate first).
    pub fn shutdown_connections(&self) {
        let conns: Vec<Arc<Connection>> =
            self.inner.conns.iter().map(|c| c.value().clone()).collect();
        for c in conns {
            c.mail(Mail::Shutdown, 0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_last_value_wins_and_decode() {
        let p = Params::parse("token=t1&vsn=2.0.0&token=abc%20d&x=a+b&");
        assert_eq!(p.get("token"), Some("abc d"));
        assert_eq!(p.get("vsn"), Some("2.0.0"));
        assert_eq!(p.get("x"), Some("a b"));
        assert_eq!(p.get("nope"), None);
        assert_eq!(Params::parse("").0, vec![]);
    }
}
