//! The hub of one server: the [`Endpoint`] handle, which holds the configuration, PubSub,
//! Presence and the live connections, and which channels, sockets, transports, the cluster link
//! and request handlers share. It knows nothing of them: it sits below them all.

use crate::config::Config;
use crate::connection::{Connection, ConnectionSummary, Mail};
use crate::metrics::ClusterStats;
use crate::presence::Presence;
use crate::protocol::{Payload, Serializer};
use crate::pubsub::PubSub;
use dashmap::DashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

struct Inner {
    config: Config,
    pubsub: PubSub,
    presence: Presence,
    conns: DashMap<u64, Arc<Connection>>,
    next_conn: AtomicU64,
    /// Set when this node runs in a cluster (see [`crate::cluster`]).
    cluster: std::sync::OnceLock<Arc<ClusterStats>>,
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
    pub fn cluster_stats(&self) -> Option<&Arc<ClusterStats>> {
        self.inner.cluster.get()
    }

    pub(crate) fn set_cluster_stats(&self, stats: Arc<ClusterStats>) {
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

    /// Bytes waiting in all connections' queues and mailboxes (read at scrape time: the hot
    /// path keeps no global sum).
    pub fn queued_bytes(&self) -> usize {
        self.inner
            .conns
            .iter()
            .map(|c| c.value().queued_bytes())
            .sum()
    }

    /// Every live connection, for the inspector (walks them all: not for hot paths).
    pub fn connections(&self) -> Vec<ConnectionSummary> {
        let mut all: Vec<_> = self
            .inner
            .conns
            .iter()
            .map(|c| c.value().summary())
            .collect();
        all.sort_by_key(|c| c.id);
        all
    }

    pub(crate) fn register(&self, serializer: Serializer) -> Arc<Connection> {
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
