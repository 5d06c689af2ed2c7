//! The Redis link: one connection subscribed to the PubSub and presence channels, one that
//! publishes, and the loop that reconnects them with capped backoff. While Redis is away each
//! node keeps serving its own clients; what it cannot publish is counted, and the outage is
//! logged once when it starts and once when it ends.

use super::message::{self, Inbound, Remote};
use super::order::Order;
use super::term::Bounds;
use super::{tracker, ClusterConfig, Recorded, Stats};
use crate::endpoint::Endpoint;
use crate::protocol::Payload;
use crate::pubsub::{Adapter, Broadcast, PubSub};
use futures_util::StreamExt;
use serde_json::Value;
use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// A message to publish: (Redis channel, bytes).
type Outgoing = (Arc<str>, Vec<u8>);

/// Publishes this node's broadcasts, in phoenix_pubsub_redis's format; recorded ones signed.
struct RedisAdapter {
    node: String,
    channel: Arc<str>,
    tx: mpsc::Sender<Outgoing>,
    stats: Arc<Stats>,
    recorded: Option<Arc<Recorded>>,
}

impl Adapter for RedisAdapter {
    fn publish(&self, b: &Arc<Broadcast>) {
        let sealed = match (&self.recorded, b.seq, &b.payload) {
            (Some(r), Some(_), Payload::Json(Value::Object(m))) => {
                Some(Payload::Json(r.key.seal(&b.topic, &b.event, m)))
            }
            _ => None,
        };
        let payload = sealed.as_ref().unwrap_or(&b.payload);
        let bytes = message::encode(&self.node, &b.topic, &b.event, payload);
        if self.tx.try_send((self.channel.clone(), bytes)).is_err() {
            self.stats.unpublished.fetch_add(1, Ordering::Relaxed);
        }
    }
}

const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Messages published in one round trip.
const BATCH: usize = 256;

pub(super) fn start(
    endpoint: &Endpoint,
    config: Arc<ClusterConfig>,
    stats: Arc<Stats>,
    recorded: Option<Recorded>,
) {
    let ps = endpoint.pubsub().clone();
    let (tx, rx) = mpsc::channel::<Outgoing>(config.publish_queue.max(1));
    let recorded = recorded.map(Arc::new);
    let backfill = recorded.as_ref().map(|r| r.change_log.clone());
    let order = Arc::new(Order::new(config.reorder_hold, backfill, stats.clone()));
    ps.set_sequencer(order.clone());
    order.clone().run(ps.clone());
    let phx: Arc<str> = message::redis_channel(&config.pubsub_name).into();
    ps.set_adapter(RedisAdapter {
        node: config.node_name.clone(),
        channel: phx.clone(),
        tx: tx.clone(),
        stats: stats.clone(),
        recorded: recorded.clone(),
    });
    let presence_in = tracker::start(endpoint.presence(), &config, stats.clone(), tx);
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
            phx,
            config: config.clone(),
        },
        config,
        stats,
        order,
    };
    actix_rt::spawn(link.run(rx));
}

struct Link {
    inbound: Arrivals,
    config: Arc<ClusterConfig>,
    stats: Arc<Stats>,
    order: Arc<Order>,
}

impl Link {
    async fn run(mut self, mut out: mpsc::Receiver<Outgoing>) {
        let client = match redis::Client::open(self.config.redis_url.as_str()) {
            Ok(c) => c,
            Err(e) => {
                log::error!("cluster: bad Redis URL: {e}");
                return;
            }
        };
        let presence: Arc<str> = tracker::redis_channel(&self.config.pubsub_name).into();
        let mut backoff = FIRST_BACKOFF;
        let mut down_since: Option<Instant> = None;
        let mut ever_up = false;
        loop {
            match self.connect(&client, &presence).await {
                Ok((sub, mut publisher)) => {
                    match down_since.take() {
                        Some(t) => log::warn!(
                            "cluster: Redis link back after {:.1} s",
                            t.elapsed().as_secs_f64()
                        ),
                        None if !ever_up => log::info!("cluster: connected to Redis"),
                        None => {}
                    }
                    ever_up = true;
                    backoff = FIRST_BACKOFF;
                    self.stats.up.store(true, Ordering::Relaxed);
                    // Subscribed again: what was written while this node heard nothing is in
                    // the change log, and what is published from now on arrives.
                    self.order.catch_up(&self.inbound.ps);
                    let why = self.serve(sub, &mut publisher, &mut out).await;
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
                        log::error!("cluster: cannot reach Redis ({e}); this node goes on alone and retries");
                    }
                    // Wait out the backoff; what comes to publish meanwhile is lost, counted.
                    let wait = tokio::time::sleep(backoff);
                    tokio::pin!(wait);
                    loop {
                        tokio::select! {
                            _ = &mut wait => break,
                            m = out.recv() => match m {
                                Some(_) => { self.stats.unpublished.fetch_add(1, Ordering::Relaxed); }
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
    ) -> Result<(redis::aio::PubSub, redis::aio::MultiplexedConnection), String> {
        let setup = async {
            let mut sub = client.get_async_pubsub().await?;
            sub.subscribe(&*self.inbound.phx).await?;
            sub.subscribe(&**presence).await?;
            let publisher = client.get_multiplexed_async_connection().await?;
            Ok::<_, redis::RedisError>((sub, publisher))
        };
        match tokio::time::timeout(CONNECT_TIMEOUT, setup).await {
            Ok(r) => r.map_err(|e| e.to_string()),
            Err(_) => Err("timed out".into()),
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
                    for (channel, bytes) in &batch {
                        pipe.cmd("PUBLISH").arg(&**channel).arg(bytes.as_slice()).ignore();
                    }
                    match pipe.query_async::<()>(publisher).await {
                        Ok(()) => {
                            self.stats.published.fetch_add(batch.len() as u64, Ordering::Relaxed);
                        }
                        Err(e) => {
                            self.stats.unpublished.fetch_add(batch.len() as u64, Ordering::Relaxed);
                            return format!("publishing: {e}");
                        }
                    }
                }
            }
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
    presence_in: mpsc::Sender<Vec<u8>>,
    phx: Arc<str>,
    config: Arc<ClusterConfig>,
}

impl Arrivals {
    fn handle(&mut self, channel: &str, bytes: &[u8]) {
        if channel != &*self.phx {
            if self.presence_in.try_send(bytes.to_vec()).is_err() {
                // The tracker is behind: a delta lost here shows as a gap, and a full sync follows.
                self.stats.ignored.fetch_add(1, Ordering::Relaxed);
            }
            return;
        }
        match message::decode(bytes, &self.config.node_name, self.bounds) {
            Inbound::Deliver(mut r) => {
                let Ok(seq) = self.recorded_seq(&mut r) else {
                    self.stats.unsigned.fetch_add(1, Ordering::Relaxed);
                    if !std::mem::replace(&mut self.unsigned_logged, true) {
                        log::warn!("cluster: dropped a broadcast on {} whose seq no node of this cluster signed (not a Fawkes node on this database); counted in fawkes_recorded_unsigned_total, logged once", r.topic);
                    }
                    return;
                };
                self.stats.received.fetch_add(1, Ordering::Relaxed);
                self.ps.local_broadcast(Broadcast {
                    topic: r.topic,
                    event: r.event,
                    payload: r.payload,
                    seq,
                });
            }
            Inbound::NotForUs => {}
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

    /// A recorded topic's broadcast carries its `"seq"` in its payload, signed by the node that
    /// took it from the database. The signature is taken out; a seq without a good one is not
    /// believed (`Err`: the broadcast is dropped). A broadcast without a seq is not recorded.
    fn recorded_seq(&self, r: &mut Remote) -> Result<Option<i64>, ()> {
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
        m.get("seq").and_then(Value::as_i64).map(Some).ok_or(())
    }
}
