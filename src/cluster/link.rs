//! The Redis link: one connection subscribed to the PubSub and presence channels, one that
//! publishes, and the loop that reconnects them with capped backoff. While Redis is away each
//! node keeps serving its own clients; what it cannot publish is counted, and the outage is
//! logged once when it starts and once when it ends. The first attempt's outcome is reported
//! to the start: one that waiting cannot mend (TLS, credentials) ends the link there.

use super::message::{self, Inbound, Remote};
use super::order::Order;
use super::term::Bounds;
use super::{phoenix_tracker, tracker, ClusterConfig, Recorded, Stats};
use crate::hub::Endpoint;
use crate::protocol::Payload;
use crate::pubsub::{Adapter, After, Broadcast, PubSub};
use futures_util::StreamExt;
use serde_json::Value;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

/// A message to publish.
pub(super) struct Outgoing {
    pub channel: Arc<str>,
    pub bytes: Vec<u8>,
    /// A recorded broadcast's (topic, seq): one that cannot be published is announced when the
    /// link is back ([`Unsent`]).
    pub recorded: Option<(String, i64)>,
}

/// Topics this node could not publish a recorded broadcast of, with the latest seq of each. Its
/// own outage is one only this node knows of: once its link is back it tells the others how
/// far those topics went (signed, on the Fawkes channel), and they fill the gap from the change
/// log rather than wait for the topic's next write. At most `max` topics (the others' clients
/// of any more catch up at the topic's next write or their own node's reconnect).
struct Unsent {
    topics: Mutex<HashMap<String, i64>>,
    max: usize,
    /// Topics past `max` were logged already, in this outage.
    full_logged: std::sync::atomic::AtomicBool,
}

impl Unsent {
    fn new(max: usize) -> Unsent {
        Unsent {
            topics: Mutex::default(),
            max,
            full_logged: Default::default(),
        }
    }

    fn note(&self, m: &Outgoing) {
        let Some((topic, seq)) = &m.recorded else {
            return;
        };
        let mut map = self.topics.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = map.get_mut(topic) {
            *s = (*s).max(*seq);
        } else if map.len() < self.max {
            map.insert(topic.clone(), *seq);
        } else if !self.full_logged.swap(true, Ordering::Relaxed) {
            log::warn!("cluster: over {} topics with unpublished recorded broadcasts (--cluster-unsent-topics); those past it are not announced when the link is back", self.max);
        }
    }

    fn take(&self) -> HashMap<String, i64> {
        self.full_logged.store(false, Ordering::Relaxed);
        std::mem::take(&mut *self.topics.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

/// The payload key that carries a recorded broadcast's [`After`] between Fawkes nodes:
/// `{"topic": T, "seq": S}`, signed with the rest and taken out, like the signature, before any
/// client sees the payload.
pub const AFTER_FIELD: &str = "seq_after";

/// Publishes this node's broadcasts, in phoenix_pubsub_redis's format; recorded ones signed.
struct RedisAdapter {
    node: String,
    channel: Arc<str>,
    tx: mpsc::Sender<Outgoing>,
    stats: Arc<Stats>,
    recorded: Option<Arc<Recorded>>,
    unsent: Arc<Unsent>,
}

impl Adapter for RedisAdapter {
    fn publish(&self, b: &Arc<Broadcast>) {
        let sealed = match (&self.recorded, b.seq, &b.payload) {
            (Some(r), Some(_), Payload::Json(Value::Object(m))) => {
                let m = match &b.after {
                    None => std::borrow::Cow::Borrowed(m),
                    Some(a) => {
                        let mut m = m.clone();
                        let after = serde_json::json!({"topic": a.topic, "seq": a.seq});
                        m.insert(AFTER_FIELD.to_owned(), after);
                        std::borrow::Cow::Owned(m)
                    }
                };
                Some(Payload::Json(r.key.seal(&b.topic, &b.event, &m)))
            }
            _ => None,
        };
        let payload = sealed.as_ref().unwrap_or(&b.payload);
        let m = Outgoing {
            channel: self.channel.clone(),
            bytes: message::encode(&self.node, &b.topic, &b.event, payload),
            recorded: sealed.and(b.seq).map(|s| (b.topic.clone(), s)),
        };
        if let Err(e) = self.tx.try_send(m) {
            self.stats.unpublished.fetch_add(1, Ordering::Relaxed);
            let (mpsc::error::TrySendError::Full(m) | mpsc::error::TrySendError::Closed(m)) = e;
            self.unsent.note(&m);
        }
    }
}

const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Messages published in one round trip.
const BATCH: usize = 256;

/// The first attempt's outcome: `Err` with why the node is not to start.
pub(super) type FirstAttempt = oneshot::Receiver<Result<(), String>>;

pub(super) fn start(
    endpoint: &Endpoint,
    config: Arc<ClusterConfig>,
    stats: Arc<Stats>,
    recorded: Option<Recorded>,
) -> (FirstAttempt, Option<phoenix_tracker::node::Leave>) {
    let ps = endpoint.pubsub().clone();
    let (tx, rx) = mpsc::channel::<Outgoing>(config.publish_queue.max(1));
    let recorded = recorded.map(Arc::new);
    let backfill = recorded.as_ref().map(|r| r.change_log.clone());
    let order = Arc::new(Order::new(config.reorder_hold, backfill, stats.clone()));
    ps.set_sequencer(order.clone());
    order.clone().run(ps.clone());
    let phx: Arc<str> = message::redis_channel(&config.pubsub_name).into();
    let unsent = Arc::new(Unsent::new(config.unsent_topics));
    ps.set_adapter(RedisAdapter {
        node: config.node_name.clone(),
        channel: phx.clone(),
        tx: tx.clone(),
        stats: stats.clone(),
        recorded: recorded.clone(),
        unsent: unsent.clone(),
    });
    // Presence replicates among Fawkes nodes on their own channel, or, with the app's Presence
    // named, as a replica of it beside its Elixir nodes (and then among Fawkes nodes too).
    let (presence_in, tracker_in, leave) = match &config.presence_name {
        None => {
            let presence_in = tracker::start(endpoint.presence(), &config, stats.clone(), tx);
            (Some(presence_in), None, None)
        }
        Some(name) => {
            let (tracker_in, leave) = phoenix_tracker::node::start(
                endpoint.presence(),
                &config,
                name,
                stats.clone(),
                tx,
                phx.clone(),
            );
            (None, Some(tracker_in), Some(leave))
        }
    };
    let link = Link {
        inbound: Arrivals {
            ps,
            bounds: Bounds {
                max_bytes: config.max_message_bytes,
                max_term_bytes: config.max_term_bytes,
                ..Bounds::default()
            },
            stats: stats.clone(),
            not_json_logged: HashSet::new(),
            over_bounds_logged: false,
            unsigned_logged: false,
            recorded,
            presence_in,
            tracker_in,
            phx,
            reached: reached_channel(&config.pubsub_name).into(),
            order: order.clone(),
            config: config.clone(),
        },
        config,
        stats,
        order,
        unsent,
    };
    let (first_tx, first) = oneshot::channel();
    crate::task::spawn(link.run(rx, first_tx));
    (first, leave)
}

/// The Fawkes nodes' channel for "topic T reached seq S" (see [`Unsent`]): JSON
/// `{"topic": T, "payload": {"seq": S, "seq_sig": …}}`, signed as a recorded broadcast is.
pub fn reached_channel(pubsub_name: &str) -> String {
    format!("fawkes:{pubsub_name}:recorded")
}

const REACHED: &str = "reached";

struct Link {
    inbound: Arrivals,
    config: Arc<ClusterConfig>,
    stats: Arc<Stats>,
    order: Arc<Order>,
    unsent: Arc<Unsent>,
}

impl Link {
    async fn run(
        mut self,
        mut out: mpsc::Receiver<Outgoing>,
        first: oneshot::Sender<Result<(), String>>,
    ) {
        let config = self.config.clone();
        let (client, shown) = (&config.redis.client, &config.redis.shown);
        let presence: Arc<str> = tracker::redis_channel(&self.config.pubsub_name).into();
        let mut backoff = FIRST_BACKOFF;
        let mut down_since: Option<Instant> = None;
        let mut ever_up = false;
        let mut first = Some(first);
        loop {
            let attempt = self.connect(client, &presence).await;
            if let Some(first) = first.take() {
                if let Err(Failed::Redis(e)) = &attempt {
                    if let Some(why) = config.redis.refusal(e) {
                        let _ = first.send(Err(why));
                        return;
                    }
                }
                let _ = first.send(Ok(()));
            }
            match attempt {
                Ok((sub, mut publisher)) => {
                    match down_since.take() {
                        Some(t) => log::warn!(
                            "cluster: Redis link back after {:.1} s",
                            t.elapsed().as_secs_f64()
                        ),
                        None if !ever_up => log::info!("cluster: connected to Redis at {shown}"),
                        None => {}
                    }
                    ever_up = true;
                    backoff = FIRST_BACKOFF;
                    self.stats.up.store(true, Ordering::Relaxed);
                    // Subscribed again: what was written while this node heard nothing is in
                    // the change log, and what is published from now on arrives.
                    self.order.catch_up(&self.inbound.ps);
                    let why = match self.announce_unsent(&mut publisher).await {
                        Ok(()) => self.serve(sub, &mut publisher, &mut out).await,
                        Err(e) => e,
                    };
                    self.stats.up.store(false, Ordering::Relaxed);
                    self.stats.outages.fetch_add(1, Ordering::Relaxed);
                    log::error!(
                        "cluster: Redis link lost ({why}); this node goes on alone and reconnects"
                    );
                    down_since = Some(Instant::now());
                }
                Err(e) => {
                    if down_since.is_none() {
                        down_since = Some(Instant::now());
                        log::error!("cluster: cannot reach Redis at {shown} ({e}); this node goes on alone and retries");
                    }
                    // Wait out the backoff; what comes to publish meanwhile is lost, counted.
                    let wait = tokio::time::sleep(backoff);
                    tokio::pin!(wait);
                    loop {
                        tokio::select! {
                            _ = &mut wait => break,
                            m = out.recv() => match m {
                                Some(m) => {
                                    self.stats.unpublished.fetch_add(1, Ordering::Relaxed);
                                    self.unsent.note(&m);
                                }
                                None => return,
                            },
                        }
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }

    async fn connect(
        &self,
        client: &redis::Client,
        presence: &Arc<str>,
    ) -> Result<(redis::aio::PubSub, redis::aio::MultiplexedConnection), Failed> {
        let setup = async {
            let mut sub = client.get_async_pubsub().await?;
            sub.subscribe(&*self.inbound.phx).await?;
            sub.subscribe(&**presence).await?;
            sub.subscribe(&*self.inbound.reached).await?;
            let publisher = client.get_multiplexed_async_connection().await?;
            Ok::<_, redis::RedisError>((sub, publisher))
        };
        match tokio::time::timeout(CONNECT_TIMEOUT, setup).await {
            Ok(r) => r.map_err(Failed::Redis),
            Err(_) => Err(Failed::TimedOut),
        }
    }

    /// Tells the other nodes how far the topics went whose recorded broadcasts this node could
    /// not publish (see [`Unsent`]).
    async fn announce_unsent(
        &self,
        publisher: &mut redis::aio::MultiplexedConnection,
    ) -> Result<(), String> {
        let Some(rec) = &self.inbound.recorded else {
            return Ok(());
        };
        let unsent = self.unsent.take();
        if unsent.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        for (topic, seq) in &unsent {
            let mut p = serde_json::Map::new();
            p.insert("seq".into(), (*seq).into());
            let msg =
                serde_json::json!({"topic": topic, "payload": rec.key.seal(topic, REACHED, &p)});
            pipe.cmd("PUBLISH")
                .arg(&*self.inbound.reached)
                .arg(msg.to_string())
                .ignore();
        }
        match pipe.query_async::<()>(publisher).await {
            Ok(()) => {
                log::info!(
                    "cluster: told the other nodes of {} topic(s) written while the link was down",
                    unsent.len()
                );
                Ok(())
            }
            Err(e) => {
                for (topic, seq) in unsent {
                    self.unsent.note(&Outgoing {
                        channel: self.inbound.reached.clone(),
                        bytes: Vec::new(),
                        recorded: Some((topic, seq)),
                    });
                }
                Err(format!("publishing: {e}"))
            }
        }
    }

    /// Carries messages both ways until the link fails; returns why.
    async fn serve(
        &mut self,
        sub: redis::aio::PubSub,
        publisher: &mut redis::aio::MultiplexedConnection,
        out: &mut mpsc::Receiver<Outgoing>,
    ) -> String {
        let mut stream = sub.into_on_message();
        loop {
            tokio::select! {
                m = stream.next() => match m {
                    Some(m) => self.inbound.handle(m.get_channel_name(), m.get_payload_bytes()),
                    None => return "subscription closed".into(),
                },
                first = out.recv() => {
                    let Some(first) = first else { return "shutting down".into() };
                    let mut batch = vec![first];
                    while batch.len() < BATCH {
                        match out.try_recv() {
                            Ok(m) => batch.push(m),
                            Err(_) => break,
                        }
                    }
                    let mut pipe = redis::pipe();
                    for m in &batch {
                        pipe.cmd("PUBLISH").arg(&*m.channel).arg(m.bytes.as_slice()).ignore();
                    }
                    match pipe.query_async::<()>(publisher).await {
                        Ok(()) => {
                            self.stats.published.fetch_add(batch.len() as u64, Ordering::Relaxed);
                        }
                        Err(e) => {
                            self.stats.unpublished.fetch_add(batch.len() as u64, Ordering::Relaxed);
                            batch.iter().for_each(|m| self.unsent.note(m));
                            return format!("publishing: {e}");
                        }
                    }
                }
            }
        }
    }
}

/// Why connecting failed.
enum Failed {
    Redis(redis::RedisError),
    TimedOut,
}

impl std::fmt::Display for Failed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failed::Redis(e) => e.fmt(f),
            Failed::TimedOut => f.write_str("timed out"),
        }
    }
}

/// What arrives from Redis, handed to PubSub or the tracker.
struct Arrivals {
    ps: PubSub,
    bounds: Bounds,
    stats: Arc<Stats>,
    /// Topics whose undeliverable payloads were logged already (bounded).
    not_json_logged: HashSet<String>,
    /// A message over the bounds was logged already: one line, however many follow.
    over_bounds_logged: bool,
    /// Likewise for a recorded broadcast whose seq no node of the cluster signed.
    unsigned_logged: bool,
    recorded: Option<Arc<Recorded>>,
    /// Fawkes's own presence channel's messages, to its tracker (without `--presence-name`).
    presence_in: Option<mpsc::Sender<Vec<u8>>>,
    /// Phoenix.Tracker's messages, to this node's replica (with `--presence-name`).
    tracker_in: Option<mpsc::Sender<super::term::Term>>,
    phx: Arc<str>,
    /// See [`reached_channel`].
    reached: Arc<str>,
    order: Arc<Order>,
    config: Arc<ClusterConfig>,
}

impl Arrivals {
    fn handle(&mut self, channel: &str, bytes: &[u8]) {
        if channel == &*self.reached {
            self.reached(bytes);
            return;
        }
        if channel != &*self.phx {
            let Some(presence_in) = &self.presence_in else {
                return;
            };
            if presence_in.try_send(bytes.to_vec()).is_err() {
                // The tracker is behind: a delta lost here shows as a gap, and a full sync follows.
                self.stats.ignored.fetch_add(1, Ordering::Relaxed);
            }
            return;
        }
        match message::decode(bytes, &self.config.node_name, self.bounds) {
            Inbound::Deliver(mut r) => {
                let Ok(recorded) = self.recorded_seq(&mut r) else {
                    self.stats.unsigned.fetch_add(1, Ordering::Relaxed);
                    if !std::mem::replace(&mut self.unsigned_logged, true) {
                        log::warn!("cluster: dropped a broadcast on {} whose seq no node of this cluster signed (not a Fawkes node on this database); counted in fawkes_recorded_unsigned_total, logged once", r.topic);
                    }
                    return;
                };
                self.stats.received.fetch_add(1, Ordering::Relaxed);
                let (seq, after) = recorded.unzip();
                self.ps.local_broadcast(Broadcast {
                    topic: r.topic,
                    event: r.event,
                    payload: r.payload,
                    seq,
                    after: after.flatten(),
                });
            }
            Inbound::NotForUs => {}
            Inbound::Tracker(t) => match &self.tracker_in {
                Some(tracker_in) => {
                    if tracker_in.try_send(t).is_err() {
                        // Behind: a lost delta shows as a gap, which a transfer fills.
                        self.stats.ignored.fetch_add(1, Ordering::Relaxed);
                    }
                }
                None => {
                    self.stats.ignored.fetch_add(1, Ordering::Relaxed);
                }
            },
            Inbound::NotJson { topic, what } => {
                self.stats.not_json.fetch_add(1, Ordering::Relaxed);
                if self.not_json_logged.len() < 1024 && self.not_json_logged.insert(topic.clone()) {
                    log::warn!("cluster: a broadcast on {topic} carries {what}, which JSON cannot; not delivered (logged once per topic)");
                }
            }
            Inbound::OverBounds(why) => {
                self.stats.refused.fetch_add(1, Ordering::Relaxed);
                if !std::mem::replace(&mut self.over_bounds_logged, true) {
                    log::warn!("cluster: refused a message from Redis: {why} (--cluster-max-message-bytes, --cluster-max-term-bytes); counted in fawkes_redis_refused_total, logged once");
                }
            }
            Inbound::Ignored(why) => {
                self.stats.ignored.fetch_add(1, Ordering::Relaxed);
                log::debug!("cluster: ignored a message: {why}");
            }
        }
    }

    /// Another node's "topic T reached seq S", if signed by a node of the cluster: a topic
    /// ordered here that is behind it is filled from the change log.
    fn reached(&mut self, bytes: &[u8]) {
        #[derive(serde::Deserialize)]
        struct Reached {
            topic: String,
            payload: serde_json::Map<String, Value>,
        }
        let Some(rec) = &self.recorded else { return };
        let Ok(mut r) = serde_json::from_slice::<Reached>(bytes) else {
            self.stats.ignored.fetch_add(1, Ordering::Relaxed);
            return;
        };
        if !rec.key.open(&r.topic, REACHED, &mut r.payload) {
            self.stats.unsigned.fetch_add(1, Ordering::Relaxed);
            return;
        }
        if let Some(seq) = r.payload.get("seq").and_then(Value::as_i64) {
            self.order.reached(&self.ps, &r.topic, seq);
        }
    }

    /// A recorded topic's broadcast carries its `"seq"` in its payload, signed by the node that
    /// took it from the database, and what it is delivered after ([`AFTER_FIELD`]). The
    /// signature and that are taken out; a seq without a good signature is not believed (`Err`:
    /// the broadcast is dropped). A broadcast without a seq is not recorded.
    fn recorded_seq(&self, r: &mut Remote) -> Result<Option<(i64, Option<After>)>, ()> {
        let Some(rec) = self.recorded.as_ref().filter(|rec| rec.covers(&r.topic)) else {
            return Ok(None);
        };
        let Payload::Json(Value::Object(m)) = &mut r.payload else {
            return Ok(None);
        };
        if !m.contains_key("seq") && !m.contains_key(super::seal::FIELD) {
            return Ok(None);
        }
        if !rec.key.open(&r.topic, &r.event, m) {
            return Err(());
        }
        let after = match m.remove(AFTER_FIELD) {
            None => None,
            Some(a) => Some(After {
                topic: a.get("topic").and_then(Value::as_str).ok_or(())?.to_owned(),
                seq: a.get("seq").and_then(Value::as_i64).ok_or(())?,
            }),
        };
        let seq = m.get("seq").and_then(Value::as_i64).ok_or(())?;
        Ok(Some((seq, after)))
    }
}
