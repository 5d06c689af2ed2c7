//! Topic subscriptions and fan-out.
//!
//! The registry is sharded by topic (dashmap), so no global lock sits on the hot path. A local
//! broadcast runs on the publisher's thread: it encodes the message once per serializer, lazily,
//! and hands the same bytes to every subscriber (Phoenix calls this fastlane). Running it there
//! also keeps Phoenix's ordering: a broadcast made while handling a push is queued before that
//! push's reply.
//!
//! Traffic to other nodes goes through an [`Adapter`], owned by the [`PubSubActor`], so a slow or
//! remote adapter never blocks a publisher.

use crate::protocol::{Outbound, Payload, Serializer};
use crate::transport::frame;
use actix::prelude::*;
use bytes::Bytes;
use dashmap::DashMap;
use std::cell::OnceCell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Identifies one subscription.
pub type SubId = u64;

/// A message published to a topic.
#[derive(Debug, Clone, PartialEq)]
pub struct Broadcast {
    pub topic: String,
    pub event: String,
    pub payload: Payload,
}

/// One delivery of a broadcast, with its lazily encoded frames.
pub struct Dispatch<'a> {
    pub broadcast: &'a Arc<Broadcast>,
    frames: [OnceCell<Option<Bytes>>; 2],
    counters: &'a Counters,
}

impl Dispatch<'_> {
    /// The complete WebSocket frame for a serializer, built on first use and shared after.
    /// `None` if this serializer cannot carry the payload (binary on V1).
    pub fn frame(&self, serializer: Serializer) -> Option<Bytes> {
        let slot = match serializer {
            Serializer::V1 => &self.frames[0],
            Serializer::V2 => &self.frames[1],
        };
        slot.get_or_init(|| {
            self.counters.encodes.fetch_add(1, Ordering::Relaxed);
            let b = &**self.broadcast;
            encode_frame(
                serializer,
                &Outbound::Broadcast {
                    topic: &b.topic,
                    event: &b.event,
                    payload: &b.payload,
                },
            )
        })
        .clone()
    }
}

/// Encodes a message as a whole WebSocket frame; logs and gives `None` when it cannot be sent.
pub(crate) fn encode_frame(serializer: Serializer, msg: &Outbound<'_>) -> Option<Bytes> {
    let mut buf = frame::start(128);
    match serializer.encode(msg, &mut buf) {
        Ok(kind) => Some(frame::finish(buf, kind)),
        Err(e) => {
            log::warn!("not sent: {e}");
            None
        }
    }
}

/// Something that receives broadcasts. Called on the publisher's thread: keep it short.
pub trait Subscriber: Send + Sync {
    fn deliver(&self, dispatch: &Dispatch<'_>);
}

/// Carries broadcasts between nodes. `publish` is called by the [`PubSubActor`], off the hot path;
/// messages from other nodes come back in through [`PubSub::local_broadcast`].
pub trait Adapter: Send + 'static {
    /// Sends a broadcast made on this node to the others.
    fn publish(&mut self, broadcast: &Broadcast);
}

/// Counts what fan-out did, to show that a broadcast is encoded once per serializer.
#[derive(Default, Debug)]
pub struct Counters {
    pub broadcasts: AtomicU64,
    pub encodes: AtomicU64,
    pub deliveries: AtomicU64,
}

struct Entry {
    id: SubId,
    sub: Arc<dyn Subscriber>,
}

struct Inner {
    topics: DashMap<Box<str>, Vec<Entry>>,
    next_id: AtomicU64,
    counters: Counters,
    remote: std::sync::OnceLock<Addr<PubSubActor>>,
}

/// A handle to the PubSub system; cheap to clone.
#[derive(Clone)]
pub struct PubSub {
    inner: Arc<Inner>,
}

impl Default for PubSub {
    fn default() -> Self {
        Self::new()
    }
}

impl PubSub {
    pub fn new() -> PubSub {
        PubSub {
            inner: Arc::new(Inner {
                topics: DashMap::new(),
                next_id: AtomicU64::new(1),
                counters: Counters::default(),
                remote: std::sync::OnceLock::new(),
            }),
        }
    }

    /// A fresh subscription id (ids are never reused).
    pub fn next_id(&self) -> SubId {
        self.inner.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Subscribes under an id from [`PubSub::next_id`].
    pub fn subscribe(&self, topic: &str, id: SubId, sub: Arc<dyn Subscriber>) {
        self.inner
            .topics
            .entry(topic.into())
            .or_default()
            .push(Entry { id, sub });
    }

    pub fn unsubscribe(&self, topic: &str, id: SubId) {
        // Remove the topic itself once empty, so topics do not accumulate.
        self.inner.topics.remove_if_mut(topic, |_, subs| {
            if let Some(i) = subs.iter().position(|e| e.id == id) {
                subs.swap_remove(i);
            }
            if subs.capacity() > 16 && subs.len() < subs.capacity() / 4 {
                subs.shrink_to_fit();
            }
            subs.is_empty()
        });
    }

    pub fn subscriber_count(&self, topic: &str) -> usize {
        self.inner.topics.get(topic).map_or(0, |s| s.len())
    }

    /// Broadcasts to every subscriber of the topic, on this node and, through the adapter, others.
    pub fn broadcast(&self, topic: &str, event: &str, payload: Payload) {
        self.publish(None, topic, event, payload);
    }

    /// Broadcasts to every subscriber but `from` (a channel's own subscription).
    pub fn broadcast_from(&self, from: SubId, topic: &str, event: &str, payload: Payload) {
        self.publish(Some(from), topic, event, payload);
    }

    fn publish(&self, from: Option<SubId>, topic: &str, event: &str, payload: Payload) {
        let b = Arc::new(Broadcast {
            topic: topic.to_owned(),
            event: event.to_owned(),
            payload,
        });
        self.dispatch(from, &b);
        if let Some(addr) = self.inner.remote.get() {
            addr.do_send(Publish(b));
        }
    }

    /// Delivers on this node only (what an adapter calls for messages from other nodes).
    pub fn local_broadcast(&self, broadcast: Broadcast) {
        self.dispatch(None, &Arc::new(broadcast));
    }

    fn dispatch(&self, from: Option<SubId>, b: &Arc<Broadcast>) {
        let c = &self.inner.counters;
        c.broadcasts.fetch_add(1, Ordering::Relaxed);
        let Some(subs) = self.inner.topics.get(b.topic.as_str()) else {
            return;
        };
        let d = Dispatch {
            broadcast: b,
            frames: Default::default(),
            counters: c,
        };
        let mut n = 0;
        for e in subs.iter().filter(|e| Some(e.id) != from) {
            e.sub.deliver(&d);
            n += 1;
        }
        c.deliveries.fetch_add(n, Ordering::Relaxed);
    }

    pub fn counters(&self) -> &Counters {
        &self.inner.counters
    }

    /// Connects this node to others. Starts the actor that owns the adapter; call it once,
    /// from within an actix system.
    pub fn set_adapter(&self, adapter: impl Adapter) {
        let addr = PubSubActor {
            adapter: Box::new(adapter),
        }
        .start();
        if self.inner.remote.set(addr).is_err() {
            log::warn!("PubSub adapter already set; ignoring the new one");
        }
    }
}

/// Owns the node-to-node adapter, so publishing to other nodes happens off the publisher's path.
pub struct PubSubActor {
    adapter: Box<dyn Adapter>,
}

impl Actor for PubSubActor {
    type Context = Context<Self>;
}

#[derive(Message)]
#[rtype(result = "()")]
struct Publish(Arc<Broadcast>);

impl Handler<Publish> for PubSubActor {
    type Result = ();

    fn handle(&mut self, msg: Publish, _: &mut Context<Self>) {
        self.adapter.publish(&msg.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::sync::Mutex;

    #[derive(Default)]
    struct Collect(Mutex<Vec<(String, Option<Bytes>)>>);

    impl Subscriber for Collect {
        fn deliver(&self, d: &Dispatch<'_>) {
            let f = d.frame(Serializer::V2);
            self.0.lock().unwrap().push((d.broadcast.event.clone(), f));
        }
    }

    #[test]
    fn fan_out_encodes_once_and_skips_the_sender() {
        let ps = PubSub::new();
        let subs: Vec<Arc<Collect>> = (0..3).map(|_| Arc::default()).collect();
        let ids: Vec<SubId> = subs
            .iter()
            .map(|s| {
                let id = ps.next_id();
                ps.subscribe("t", id, s.clone());
                id
            })
            .collect();
        ps.broadcast("t", "e", Payload::Json(json!({"a": 1})));
        assert_eq!(ps.counters().encodes.load(Ordering::Relaxed), 1);
        let frame = subs[0].0.lock().unwrap()[0].1.clone().unwrap();
        assert_eq!(&frame[2..], br#"[null,null,"t","e",{"a":1}]"#);
        for s in &subs {
            let got = s.0.lock().unwrap();
            // The very same allocation, not a copy.
            assert_eq!(got[0].1.as_ref().unwrap().as_ptr(), frame.as_ptr());
        }
        ps.broadcast_from(ids[1], "t", "f", Payload::empty());
        assert_eq!(subs[1].0.lock().unwrap().len(), 1);
        assert_eq!(subs[0].0.lock().unwrap().len(), 2);
        ps.unsubscribe("t", ids[0]);
        ps.broadcast("t", "g", Payload::empty());
        assert_eq!(subs[0].0.lock().unwrap().len(), 2);
        assert_eq!(ps.subscriber_count("t"), 2);
        ps.unsubscribe("t", ids[1]);
        ps.unsubscribe("t", ids[2]);
        assert_eq!(ps.subscriber_count("t"), 0);
        assert!(ps.inner.topics.is_empty());
    }

    struct Relay(PubSub);

    impl Adapter for Relay {
        fn publish(&mut self, b: &Broadcast) {
            self.0.local_broadcast(b.clone());
        }
    }

    #[actix_rt::test]
    async fn adapter_carries_broadcasts_to_another_node() {
        let (a, b) = (PubSub::new(), PubSub::new());
        a.set_adapter(Relay(b.clone()));
        let sub: Arc<Collect> = Arc::default();
        b.subscribe("t", b.next_id(), sub.clone());
        a.broadcast("t", "hello", Payload::empty());
        for _ in 0..100 {
            if !sub.0.lock().unwrap().is_empty() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        assert_eq!(sub.0.lock().unwrap()[0].0, "hello");
    }
}
