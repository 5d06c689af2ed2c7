//! Topic subscriptions and fan-out.
//!
//! The registry is sharded by topic (dashmap), so no global lock sits on the hot path, and each
//! topic's subscribers are grouped by the server worker thread their connection lives on. A
//! broadcast is encoded once per serializer, lazily, and the same bytes go to every subscriber
//! (Phoenix calls this fastlane). Each worker's inbox gets the broadcast once and fills its own
//! connections' queues, all pending broadcasts at a time: waking connections and sharing the
//! bytes stay on one core, and a connection's frames from several broadcasts go out in one write.
//! Only the connection whose handler is publishing is served at once, on the publisher's thread,
//! which keeps Phoenix's ordering: a broadcast made while handling a push precedes its reply.
//!
//! Traffic to other nodes goes through an [`Adapter`], which hands it off without waiting, so a
//! slow or remote link never blocks a publisher. When several nodes number a topic's recorded
//! broadcasts, a [`Sequencer`] puts them in order before they are delivered here.

use crate::protocol::{frame, Outbound, Payload, Serializer};
use bytes::Bytes;
use dashmap::DashMap;
use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, RwLock};
use tokio::sync::mpsc;

/// Identifies one subscription.
pub type SubId = u64;

/// A message published to a topic.
#[derive(Debug, Clone, PartialEq)]
pub struct Broadcast {
    pub topic: String,
    pub event: String,
    pub payload: Payload,
    /// Its place in the topic's recorded stream (see [`crate::history`]), if recorded: a
    /// channel whose join reply covered it skips it.
    pub seq: Option<i64>,
    /// For a recorded broadcast: what must be delivered on a node before it, there.
    pub after: Option<After>,
}

/// A recorded broadcast's dependency on another recorded topic: on every node it is delivered
/// only once `topic`'s recorded broadcasts up to `seq` have been delivered there (or while
/// nobody there subscribes to `topic`). Its write saw `topic`'s stream at `seq`, so what was
/// committed there before it (a removal from a room, before a reply in one of the room's
/// threads) reaches each node's subscribers first. Never sent to clients.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct After {
    pub topic: String,
    pub seq: i64,
}

/// One delivery of a broadcast, with its lazily encoded frames (shared by every worker).
pub struct Dispatch<'a> {
    pub broadcast: &'a Arc<Broadcast>,
    frames: &'a Frames,
    counters: &'a Counters,
}

/// A broadcast's frames, one per serializer, encoded on first use.
#[derive(Default)]
struct Frames([OnceLock<Option<Bytes>>; 2]);

impl Dispatch<'_> {
    /// The complete WebSocket frame for a serializer, built on first use and shared after.
    /// `None` if this serializer cannot carry the payload (binary on V1).
    pub fn frame(&self, serializer: Serializer) -> Option<Bytes> {
        let slot = match serializer {
            Serializer::V1 => &self.frames.0[0],
            Serializer::V2 => &self.frames.0[1],
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
        // A V1 socket cannot get binary payloads (Supabase's V1 clients miss binary user
        // broadcasts, as with Supabase's server): expected, so not a warning.
        Err(e @ crate::protocol::EncodeError::BinaryUnsupported) => {
            log::debug!("not sent: {e}");
            None
        }
        Err(e) => {
            log::warn!("not sent: {e}");
            None
        }
    }
}

/// Something that receives broadcasts. Called on the thread of the worker it was subscribed on
/// (or the publisher's, outside workers), with the topic's registry entry held: keep it short,
/// and never subscribe or unsubscribe from it.
pub trait Subscriber: Send + Sync {
    fn deliver(&self, dispatch: &Dispatch<'_>);

    /// The client connection this subscriber delivers to, if any (see [`with_origin`]).
    fn connection(&self) -> Option<u64> {
        None
    }
}

/// Carries broadcasts between nodes; messages from other nodes come back in through
/// [`PubSub::local_broadcast`].
pub trait Adapter: Send + Sync + 'static {
    /// Sends a broadcast made on this node to the others. Called on the publisher's thread:
    /// hand it off, never wait.
    fn publish(&self, broadcast: &Arc<Broadcast>);
}

/// Orders recorded broadcasts (those with a seq) before they are delivered on this node, when
/// more than one node writes a topic's stream (see `crate::cluster::order`).
pub trait Sequencer: Send + Sync + 'static {
    /// Takes a recorded broadcast and delivers it, now or once those before it are in (and what
    /// its [`Broadcast::after`] names), with [`PubSub::deliver_in_order`]; drops one already
    /// delivered.
    fn admit(&self, pubsub: &PubSub, from: Option<SubId>, broadcast: Arc<Broadcast>);

    /// A channel joined `topic` with a reply covering seq `seq`: a topic's order starts there.
    fn anchor(&self, pubsub: &PubSub, topic: &str, seq: i64);
}

/// Counts what fan-out did, to show that a broadcast is encoded once per serializer.
#[derive(Default, Debug)]
pub struct Counters {
    pub broadcasts: AtomicU64,
    pub encodes: AtomicU64,
    pub deliveries: AtomicU64,
    /// Broadcasts queued behind a full worker inbox (delivered later, in order).
    pub inbox_overflows: AtomicU64,
    /// Broadcasts not delivered on a worker over twice its inbox behind.
    pub inbox_drops: AtomicU64,
}

struct Entry {
    id: SubId,
    /// The subscriber's connection id, 0 for none: kept here so a scan for the publisher's own
    /// connection does not have to follow every subscriber's pointer.
    conn: u64,
    sub: Arc<dyn Subscriber>,
}

/// A topic's subscribers, by the worker that owns them, and those outside any worker (tests,
/// tools), which the publisher's thread serves.
#[derive(Default)]
struct Groups {
    workers: Vec<Vec<Entry>>,
    outside: Vec<Entry>,
    /// Removed from the registry (its last subscriber left): subscribe anew.
    dead: bool,
}

/// A topic's entry in the registry. A fan-out holds only this topic's read lock while it
/// delivers, never the registry's: subscribing to other topics never waits for it.
type Topic = Arc<RwLock<Groups>>;

fn read(t: &Topic) -> std::sync::RwLockReadGuard<'_, Groups> {
    t.read().unwrap_or_else(|e| e.into_inner())
}

fn write(t: &Topic) -> std::sync::RwLockWriteGuard<'_, Groups> {
    t.write().unwrap_or_else(|e| e.into_inner())
}

impl Groups {
    fn group(&mut self, worker: Option<usize>) -> &mut Vec<Entry> {
        match worker {
            None => &mut self.outside,
            Some(i) => {
                if self.workers.len() <= i {
                    self.workers.resize_with(i + 1, Vec::new);
                }
                &mut self.workers[i]
            }
        }
    }

    fn get(&self, worker: Option<usize>) -> &[Entry] {
        match worker {
            None => &self.outside,
            Some(i) => self.workers.get(i).map_or(&[], Vec::as_slice),
        }
    }

    fn all_mut(&mut self) -> impl Iterator<Item = &mut Vec<Entry>> {
        self.workers
            .iter_mut()
            .chain(std::iter::once(&mut self.outside))
    }

    fn len(&self) -> usize {
        self.workers.iter().map(Vec::len).sum::<usize>() + self.outside.len()
    }

    /// Subscribers that deliver to a client connection.
    fn of_clients(&self) -> usize {
        (self.workers.iter().chain(std::iter::once(&self.outside)))
            .flatten()
            .filter(|e| e.conn != 0)
            .count()
    }
}

/// Work for a worker: deliver a broadcast to its group of a topic.
struct Job {
    broadcast: Arc<Broadcast>,
    frames: Arc<Frames>,
    from: Option<SubId>,
    /// A connection already served on the publisher's thread.
    served: u64,
}

struct Inner {
    id: u64,
    topics: DashMap<Box<str>, Topic>,
    next_id: AtomicU64,
    counters: Counters,
    /// Each worker's inbox, by worker index.
    workers: RwLock<Vec<Arc<Inbox>>>,
    /// Broadcasts each inbox holds (and its overflow, again as many).
    inbox_capacity: usize,
    remote: OnceLock<Box<dyn Adapter>>,
    sequencer: OnceLock<Arc<dyn Sequencer>>,
}

/// Broadcasts a worker's inbox holds. A worker that far behind gets later broadcasts in its
/// overflow, which it takes in order once the inbox is drained (counted in
/// [`Counters::inbox_overflows`]); past as many again, a broadcast is not delivered on that
/// worker (counted in [`Counters::inbox_drops`], logged): memory stays bounded.
const INBOX_CAPACITY: usize = 65_536;

/// A worker's inbox: a bounded channel, and the overflow that keeps order behind it.
struct Inbox {
    tx: mpsc::Sender<Job>,
    overflow: std::sync::Mutex<Overflow>,
}

/// While `active`, every new job goes here, after the channel's: the worker takes these once
/// the channel is empty, so its jobs run in the order they were published.
#[derive(Default)]
struct Overflow {
    active: bool,
    jobs: std::collections::VecDeque<Job>,
}

impl Inbox {
    fn overflow(&self) -> std::sync::MutexGuard<'_, Overflow> {
        self.overflow.lock().unwrap_or_else(|e| e.into_inner())
    }
}

thread_local! {
    /// Which PubSub's worker this thread is, and its index there.
    static WORKER: Cell<Option<(u64, usize)>> = const { Cell::new(None) };
    /// The connection whose handler this thread is running, 0 for none.
    static ORIGIN: Cell<u64> = const { Cell::new(0) };
}

/// The connection whose handler this thread is running, 0 for none.
pub(crate) fn current_origin() -> u64 {
    ORIGIN.with(Cell::get)
}

/// Runs `f` as the handler of connection `conn`: what it broadcasts reaches that connection at
/// once, ahead of anything `f` then sends it directly (a reply, a push).
pub(crate) fn with_origin<T>(conn: u64, f: impl FnOnce() -> T) -> T {
    let before = ORIGIN.with(|o| o.replace(conn));
    let out = f();
    ORIGIN.with(|o| o.set(before));
    out
}

pin_project_lite::pin_project! {
    /// A future run as the handler of a connection, poll by poll (see [`with_origin`]).
    pub(crate) struct Origin<F> {
        pub conn: u64,
        #[pin]
        pub fut: F,
    }
}

impl<F: std::future::Future> std::future::Future for Origin<F> {
    type Output = F::Output;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<F::Output> {
        let this = self.project();
        let fut = this.fut;
        with_origin(*this.conn, || fut.poll(cx))
    }
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
        PubSub::with_inbox_capacity(INBOX_CAPACITY)
    }

    /// A PubSub whose worker inboxes hold `n` broadcasts each.
    pub fn with_inbox_capacity(n: usize) -> PubSub {
        static IDS: AtomicU64 = AtomicU64::new(1);
        PubSub {
            inner: Arc::new(Inner {
                id: IDS.fetch_add(1, Ordering::Relaxed),
                topics: DashMap::new(),
                next_id: AtomicU64::new(1),
                counters: Counters::default(),
                workers: RwLock::new(Vec::new()),
                inbox_capacity: n.max(1),
                remote: OnceLock::new(),
                sequencer: OnceLock::new(),
            }),
        }
    }

    /// Makes the calling thread one of this PubSub's workers: broadcasts to subscribers made on
    /// it are delivered by its own inbox task. Call once per server worker thread, inside its
    /// runtime (the server does this as each worker starts).
    pub fn register_worker(&self) {
        if self.worker().is_some() {
            return;
        }
        let (tx, mut rx) = mpsc::channel::<Job>(self.inner.inbox_capacity);
        let inbox = Arc::new(Inbox {
            tx,
            overflow: Default::default(),
        });
        let index = {
            let mut w = self
                .inner
                .workers
                .write()
                .unwrap_or_else(|e| e.into_inner());
            w.push(inbox.clone());
            w.len() - 1
        };
        WORKER.with(|c| c.set(Some((self.inner.id, index))));
        let ps = self.clone();
        crate::task::spawn(async move {
            while let Some(job) = rx.recv().await {
                ps.run_job(&job, Some(index));
                if rx.is_empty() {
                    // The channel is drained: what overflowed comes next, in order.
                    let late = {
                        let mut o = inbox.overflow();
                        o.active = false;
                        std::mem::take(&mut o.jobs)
                    };
                    for job in late {
                        ps.run_job(&job, Some(index));
                    }
                }
            }
        });
    }

    /// This thread's worker index, if it is one of this PubSub's workers.
    fn worker(&self) -> Option<usize> {
        WORKER
            .with(Cell::get)
            .filter(|(id, _)| *id == self.inner.id)
            .map(|(_, i)| i)
    }

    /// A fresh subscription id (ids are never reused).
    pub fn next_id(&self) -> SubId {
        self.inner.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Subscribes under an id from [`PubSub::next_id`]. The subscriber belongs to the calling
    /// thread's worker, which will deliver to it.
    pub fn subscribe(&self, topic: &str, id: SubId, sub: Arc<dyn Subscriber>) {
        let worker = self.worker();
        let conn = sub.connection().unwrap_or(0);
        loop {
            // The registry's shard lock is held only to find the topic, never while waiting
            // for the topic's own lock.
            let t = self.inner.topics.entry(topic.into()).or_default().clone();
            let mut groups = write(&t);
            if groups.dead {
                continue;
            }
            groups.group(worker).push(Entry {
                id,
                conn,
                sub: sub.clone(),
            });
            return;
        }
    }

    pub fn unsubscribe(&self, topic: &str, id: SubId) {
        let Some(t) = self.topic(topic) else { return };
        let mut groups = write(&t);
        for subs in groups.all_mut() {
            if let Some(i) = subs.iter().position(|e| e.id == id) {
                subs.swap_remove(i);
                if subs.capacity() > 16 && subs.len() < subs.capacity() / 4 {
                    subs.shrink_to_fit();
                }
                break;
            }
        }
        // Remove the topic itself once empty, so topics do not accumulate.
        if groups.len() == 0 && !groups.dead {
            groups.dead = true;
            self.inner
                .topics
                .remove_if(topic, |_, current| Arc::ptr_eq(current, &t));
        }
    }

    /// A topic's entry, if it has subscribers.
    fn topic(&self, topic: &str) -> Option<Topic> {
        self.inner.topics.get(topic).map(|t| t.clone())
    }

    pub fn subscriber_count(&self, topic: &str) -> usize {
        self.topic(topic).map_or(0, |t| read(&t).len())
    }

    /// Every topic with subscribers and how many it has (for metrics and the inspector; walks
    /// the whole registry, so not for hot paths).
    pub fn topics(&self) -> Vec<(String, usize)> {
        let all: Vec<(String, Topic)> = self
            .inner
            .topics
            .iter()
            .map(|e| (e.key().to_string(), e.value().clone()))
            .collect();
        all.into_iter()
            .map(|(name, t)| (name, read(&t).len()))
            .filter(|(_, n)| *n > 0)
            .collect()
    }

    /// Topics that client connections subscribe to (their channels' topics and socket ids),
    /// each with how many such subscriptions it has, sorted by topic: what the inspector and
    /// the server API show. The server's own subscribers (the inspector's watcher) are not
    /// counted, so watching a topic does not change its count. Walks the whole registry.
    pub fn client_topics(&self) -> Vec<(String, usize)> {
        let all: Vec<(String, Topic)> = self
            .inner
            .topics
            .iter()
            .map(|e| (e.key().to_string(), e.value().clone()))
            .collect();
        let mut counted: Vec<(String, usize)> = all
            .into_iter()
            .map(|(name, t)| (name, read(&t).of_clients()))
            .filter(|(_, n)| *n > 0)
            .collect();
        counted.sort_unstable();
        counted
    }

    /// Delivers a worker's share of a broadcast.
    fn run_job(&self, job: &Job, worker: Option<usize>) {
        let Some(t) = self.topic(job.broadcast.topic.as_str()) else {
            return;
        };
        let (from, served) = (job.from, job.served);
        self.deliver(&read(&t), worker, &job.broadcast, &job.frames, |e| {
            Some(e.id) != from && (served == 0 || e.conn != served)
        });
    }

    /// Broadcasts to every subscriber of the topic, on this node and, through the adapter, others.
    pub fn broadcast(&self, topic: &str, event: &str, payload: Payload) {
        self.publish(None, topic, event, payload);
    }

    /// Broadcasts to every subscriber but `from` (a channel's own subscription).
    pub fn broadcast_from(&self, from: SubId, topic: &str, event: &str, payload: Payload) {
        self.publish(Some(from), topic, event, payload);
    }

    /// Broadcasts an event recorded as number `seq` of the topic's stream, delivered on each
    /// node after what `after` names, if anything.
    pub fn broadcast_recorded(
        &self,
        topic: &str,
        event: &str,
        payload: Payload,
        seq: i64,
        after: Option<After>,
    ) {
        let b = Arc::new(Broadcast {
            topic: topic.to_owned(),
            event: event.to_owned(),
            payload,
            seq: Some(seq),
            after,
        });
        self.send(None, b);
    }

    fn publish(&self, from: Option<SubId>, topic: &str, event: &str, payload: Payload) {
        let b = Arc::new(Broadcast {
            topic: topic.to_owned(),
            event: event.to_owned(),
            payload,
            seq: None,
            after: None,
        });
        self.send(from, b);
    }

    /// Publishes to the other nodes and delivers here.
    fn send(&self, from: Option<SubId>, b: Arc<Broadcast>) {
        if let Some(remote) = self.inner.remote.get() {
            remote.publish(&b);
        }
        self.deliver_here(from, b);
    }

    /// Delivers on this node only (what an adapter calls for messages from other nodes).
    pub fn local_broadcast(&self, broadcast: Broadcast) {
        self.deliver_here(None, Arc::new(broadcast));
    }

    fn deliver_here(&self, from: Option<SubId>, b: Arc<Broadcast>) {
        match (b.seq, self.inner.sequencer.get()) {
            (Some(_), Some(s)) => s.admit(self, from, b),
            _ => self.dispatch(from, &b),
        }
    }

    /// Delivers a recorded broadcast the [`Sequencer`] lets through.
    pub fn deliver_in_order(&self, from: Option<SubId>, b: &Arc<Broadcast>) {
        self.dispatch(from, b);
    }

    /// See [`Sequencer::anchor`]; nothing without a sequencer.
    pub fn anchor_recorded(&self, topic: &str, seq: i64) {
        if let Some(s) = self.inner.sequencer.get() {
            s.anchor(self, topic, seq);
        }
    }

    fn dispatch(&self, from: Option<SubId>, b: &Arc<Broadcast>) {
        self.inner
            .counters
            .broadcasts
            .fetch_add(1, Ordering::Relaxed);
        let me = self.worker();
        // The publishing handler's own connection, when it lives on this worker.
        let origin = if me.is_some() {
            ORIGIN.with(Cell::get)
        } else {
            0
        };
        let frames = Arc::new(Frames::default());
        // One registry look-up: serve here what is served here, note which workers to hand to.
        let busy: Vec<usize> = {
            let Some(t) = self.topic(b.topic.as_str()) else {
                return;
            };
            let groups = read(&t);
            if origin != 0 {
                self.deliver(&groups, me, b, &frames, |e| {
                    e.conn == origin && Some(e.id) != from
                });
            }
            // Subscribers outside any worker are served here.
            self.deliver(&groups, None, b, &frames, |e| Some(e.id) != from);
            (0..groups.workers.len())
                .filter(|&i| !groups.workers[i].is_empty())
                .collect()
        };
        if busy.is_empty() {
            return;
        }
        let workers = self.inner.workers.read().unwrap_or_else(|e| e.into_inner());
        for i in busy {
            let job = Job {
                broadcast: b.clone(),
                frames: frames.clone(),
                from,
                served: if Some(i) == me { origin } else { 0 },
            };
            self.send_job(i, &workers[i], job);
        }
    }

    /// Hands a job to worker `i`: its channel, or behind it its overflow, so that the worker
    /// runs its jobs in the order they were published.
    fn send_job(&self, i: usize, inbox: &Inbox, job: Job) {
        let c = &self.inner.counters;
        let mut o = inbox.overflow();
        let job = if o.active {
            job
        } else {
            match inbox.tx.try_send(job) {
                Ok(()) => return,
                Err(mpsc::error::TrySendError::Full(job)) => {
                    o.active = true;
                    log::warn!(
                        "worker {i} is {} broadcasts behind; queueing the next ones behind them",
                        self.inner.inbox_capacity
                    );
                    job
                }
                Err(mpsc::error::TrySendError::Closed(job)) => {
                    log::warn!(
                        "worker {i} is gone; a broadcast on {} is not delivered there",
                        job.broadcast.topic
                    );
                    return;
                }
            }
        };
        if o.jobs.len() >= self.inner.inbox_capacity {
            if c.inbox_drops.fetch_add(1, Ordering::Relaxed) == 0 {
                log::error!(
                    "worker {i} is over {} broadcasts behind: broadcasts on it are being dropped",
                    2 * self.inner.inbox_capacity
                );
            }
            return;
        }
        c.inbox_overflows.fetch_add(1, Ordering::Relaxed);
        o.jobs.push_back(job);
    }

    /// Delivers to the subscribers of one group of a topic that `pick` selects, on the thread
    /// that owns them.
    fn deliver(
        &self,
        groups: &Groups,
        group: Option<usize>,
        b: &Arc<Broadcast>,
        frames: &Frames,
        pick: impl Fn(&Entry) -> bool,
    ) {
        let c = &self.inner.counters;
        let d = Dispatch {
            broadcast: b,
            frames,
            counters: c,
        };
        let mut n = 0;
        for e in groups.get(group).iter().filter(|e| pick(e)) {
            e.sub.deliver(&d);
            n += 1;
        }
        c.deliveries.fetch_add(n, Ordering::Relaxed);
    }

    pub fn counters(&self) -> &Counters {
        &self.inner.counters
    }

    /// Connects this node to others (once).
    pub fn set_adapter(&self, adapter: impl Adapter) {
        if self.inner.remote.set(Box::new(adapter)).is_err() {
            log::warn!("PubSub adapter already set; ignoring the new one");
        }
    }

    /// Orders recorded broadcasts from here on (once).
    pub fn set_sequencer(&self, sequencer: Arc<dyn Sequencer>) {
        if self.inner.sequencer.set(sequencer).is_err() {
            log::warn!("PubSub sequencer already set; ignoring the new one");
        }
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

    /// A subscriber delivering to client connection `.0`.
    struct OfClient(u64);

    impl Subscriber for OfClient {
        fn deliver(&self, _: &Dispatch<'_>) {}

        fn connection(&self) -> Option<u64> {
            Some(self.0)
        }
    }

    #[test]
    fn client_topics_count_only_subscribers_of_client_connections() {
        let ps = PubSub::new();
        for (topic, conn) in [("room:b", 1), ("room:a", 1), ("room:a", 2)] {
            ps.subscribe(topic, ps.next_id(), Arc::new(OfClient(conn)));
        }
        // The server's own watchers (the inspector's): on a client topic and on a topic alone.
        ps.subscribe("room:a", ps.next_id(), Arc::new(Collect::default()));
        ps.subscribe("watched", ps.next_id(), Arc::new(Collect::default()));
        assert_eq!(
            ps.client_topics(),
            vec![("room:a".to_owned(), 2), ("room:b".to_owned(), 1)]
        );
        assert_eq!(ps.topics().len(), 3, "topics() still counts them all");
    }

    #[test]
    fn a_fan_out_in_progress_never_holds_up_other_topics() {
        let ps = PubSub::new();
        let sub: Arc<Collect> = Arc::default();
        ps.subscribe("busy", ps.next_id(), sub);
        // What a long fan-out holds: the busy topic's read lock.
        let busy = ps.topic("busy").unwrap();
        let _delivering = read(&busy);
        let other = ps.clone();
        let (done, finished) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for i in 0..1000 {
                let (topic, id) = (format!("t{i}"), other.next_id());
                other.subscribe(&topic, id, Arc::new(Collect::default()));
                other.unsubscribe(&topic, id);
            }
            done.send(()).unwrap();
        });
        finished
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("subscribing to other topics waited for the fan-out");
        assert_eq!(ps.subscriber_count("busy"), 1);
        assert_eq!(ps.inner.topics.len(), 1, "emptied topics are removed");
    }

    #[actix_rt::test]
    async fn a_full_worker_inbox_keeps_order_in_its_overflow() {
        let ps = PubSub::with_inbox_capacity(4);
        ps.register_worker();
        let sub: Arc<Collect> = Arc::default();
        ps.subscribe("t", ps.next_id(), sub.clone());
        // The worker's task cannot run while this one publishes: 4 fill its inbox, 4 its
        // overflow, and 2 more are beyond both bounds.
        for i in 0..10 {
            ps.broadcast("t", &format!("e{i}"), Payload::empty());
        }
        let c = ps.counters();
        assert_eq!(c.inbox_overflows.load(Ordering::Relaxed), 4);
        assert_eq!(c.inbox_drops.load(Ordering::Relaxed), 2);
        assert!(sub.0.lock().unwrap().is_empty(), "all left to the worker");
        for _ in 0..100 {
            if sub.0.lock().unwrap().len() == 8 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        let got: Vec<String> = sub
            .0
            .lock()
            .unwrap()
            .iter()
            .map(|(e, _)| e.clone())
            .collect();
        let want: Vec<String> = (0..8).map(|i| format!("e{i}")).collect();
        assert_eq!(got, want, "in the order published");
        // Drained: the next broadcast goes through the inbox again.
        ps.broadcast("t", "after", Payload::empty());
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        assert_eq!(sub.0.lock().unwrap().last().unwrap().0, "after");
        assert_eq!(c.inbox_overflows.load(Ordering::Relaxed), 4);
    }

    struct Relay(PubSub);

    impl Adapter for Relay {
        fn publish(&self, b: &Arc<Broadcast>) {
            self.0.local_broadcast((**b).clone());
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
