//! This node as a replica of the app's Presence (`--presence-name`): one task runs the
//! [`Shard`], fed by the engine's presence changes, the tracker messages the link reads from
//! the PubSub channel, and a tick each `broadcast_period`; what the shard publishes goes out on
//! the same channel, in phoenix_pubsub_redis's envelope, and the other replicas' presences go
//! into the engine's presence, which shows them to this node's sockets.

use super::shard::{Out, Shard, ShardConfig};
use super::wire::Envelope;
use crate::cluster::link::Outgoing;
use crate::cluster::term::{phash2_binary, Atoms, Term};
use crate::cluster::tracker::Changes;
use crate::cluster::{ClusterConfig, Stats};
use crate::presence::{Change, Presence};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

/// Changes handled in one go before the task looks at its other inputs.
const BATCH: usize = 512;

/// Asks the replica to leave: its graceful permdown is published, so the peers drop this
/// node's presences at once rather than after their down period.
#[derive(Clone)]
pub struct Leave(mpsc::Sender<oneshot::Sender<()>>);

/// How long leaving may take: one PUBLISH on a connection of its own.
const LEAVE_TIMEOUT: Duration = Duration::from_secs(2);

impl Leave {
    pub async fn leave(&self) {
        let (tx, rx) = oneshot::channel();
        if self.0.send(tx).await.is_ok() {
            let _ = tokio::time::timeout(LEAVE_TIMEOUT, rx).await;
        }
    }
}

/// Starts the replica. Tracker messages from the PubSub channel go in through the returned
/// sender (already decoded: the link reads the envelope to tell them from broadcasts).
pub(in crate::cluster) fn start(
    presence: &Presence,
    config: &ClusterConfig,
    tracker: &str,
    stats: Arc<Stats>,
    out: mpsc::Sender<Outgoing>,
    channel: Arc<str>,
) -> (mpsc::Sender<Term>, Leave) {
    let (changes_tx, mut changes) = mpsc::channel::<Change>(65_536);
    let (leave_tx, mut leave) = mpsc::channel::<oneshot::Sender<()>>(1);
    let redis = config.redis.client.clone();
    let (in_tx, mut inbound) = mpsc::channel::<Term>(4096);
    let lost = Arc::new(AtomicBool::new(false));
    presence.set_replication(Changes {
        tx: changes_tx,
        lost: lost.clone(),
    });
    let pool_size = config.presence_pool_size.max(1);
    // As Phoenix makes a vsn: the time in microseconds, here with a random part besides; each
    // shard is a replica of its own.
    let vsn = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i128)
        + i128::from(rand::random::<u16>());
    let shards: Vec<Shard> = (0..pool_size)
        .map(|n| {
            let mut c = ShardConfig::new(&config.node_name, tracker, n);
            c.down_period = config.presence_down_after;
            c.max_presences = config.presence_max_entries;
            // Idle heartbeats at least twice per down period, as Phoenix's defaults have it
            // (every 16.5 s against 30 s): a shorter down period makes them more frequent.
            let idle_every =
                c.down_period.as_millis() / (2 * c.broadcast_period.as_millis()).max(1);
            c.max_silent_periods = (idle_every as u32).saturating_sub(1).min(10);
            Shard::new(c, vsn + 2 * i128::from(n))
        })
        .collect();
    let period = shards[0].broadcast_period();
    let mut node = Node {
        shards,
        presence: presence.clone(),
        stats,
        out,
        channel,
        lost,
        refused_logged: false,
        bad_logged: false,
    };
    let last = match pool_size {
        1 => String::new(),
        n => format!("..{}", n - 1),
    };
    log::info!(
        "cluster: replica {} of Elixir.{tracker} on phx_presence:Elixir.{tracker}_shard0{last}",
        config.node_name
    );
    crate::task::spawn(async move {
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                Some(c) = changes.recv() => {
                    node.local(c);
                    for _ in 1..BATCH {
                        match changes.try_recv() {
                            Ok(c) => node.local(c),
                            Err(_) => break,
                        }
                    }
                }
                Some(t) = inbound.recv() => node.receive(&t),
                _ = tick.tick() => node.tick(),
                Some(done) = leave.recv() => {
                    // Past the link's queue, which may be behind or down: a connection of its own.
                    let mut pipe = redis::pipe();
                    for shard in &node.shards {
                        let bytes = shard.graceful_permdown().encode(Atoms::Otp26);
                        pipe.cmd("PUBLISH").arg(&*node.channel).arg(bytes).ignore();
                    }
                    let publish = async {
                        let mut c = redis.get_multiplexed_async_connection().await?;
                        pipe.query_async::<()>(&mut c).await
                    };
                    match tokio::time::timeout(LEAVE_TIMEOUT, publish).await {
                        Ok(Ok(())) => log::info!("cluster: replica left (graceful permdown sent)"),
                        Ok(Err(e)) => log::warn!("cluster: could not send the graceful permdown: {e}; the peers drop this node's presences after their down period"),
                        Err(_) => log::warn!("cluster: the graceful permdown timed out; the peers drop this node's presences after their down period"),
                    }
                    let _ = done.send(());
                    return;
                }
            }
        }
    });
    (in_tx, Leave(leave_tx))
}

struct Node {
    /// Shard N holds the topics that `phash2(topic, pool_size)` gives N.
    shards: Vec<Shard>,
    presence: Presence,
    stats: Arc<Stats>,
    out: mpsc::Sender<Outgoing>,
    channel: Arc<str>,
    /// A change of this node's could not be queued: its presences are read again at the tick.
    lost: Arc<AtomicBool>,
    refused_logged: bool,
    bad_logged: bool,
}

impl Node {
    /// The shard of a topic's presences, as Phoenix.Tracker picks it.
    fn shard_of(&self, topic: &str) -> usize {
        (phash2_binary(topic.as_bytes()) % self.shards.len() as u32) as usize
    }

    fn local(&mut self, change: Change) {
        let (Change::Join { topic, .. } | Change::Leave { topic, .. }) = &change;
        let n = self.shard_of(topic);
        self.shards[n].local(change);
    }

    fn tick(&mut self) {
        if self.lost.swap(false, Ordering::Relaxed) {
            let mut by_shard = vec![Vec::new(); self.shards.len()];
            for entry in self.presence.local_entries() {
                by_shard[self.shard_of(&entry.0)].push(entry);
            }
            for (shard, entries) in self.shards.iter_mut().zip(by_shard) {
                shard.resync_own(entries);
            }
        }
        let now = Instant::now();
        for n in 0..self.shards.len() {
            let out = self.shards[n].tick(now);
            self.apply(out);
        }
    }

    fn receive(&mut self, t: &Term) {
        self.stats.presence_received.fetch_add(1, Ordering::Relaxed);
        match Envelope::from_term(t) {
            Ok(env) => {
                // Another Presence's shards share the channel: not ours.
                let Some(shard) = self.shards.iter_mut().find(|s| s.topic() == env.topic) else {
                    return;
                };
                let out = shard.receive(env, Instant::now());
                self.apply(out);
            }
            Err(why) => {
                self.stats.ignored.fetch_add(1, Ordering::Relaxed);
                if !std::mem::replace(&mut self.bad_logged, true) {
                    log::warn!("cluster: a presence tracker message not read: {why}; counted in fawkes_redis_ignored_total, logged once");
                }
            }
        }
    }

    fn apply(&mut self, out: Out) {
        for env in out.publish {
            self.stats.presence_sent.fetch_add(1, Ordering::Relaxed);
            let m = Outgoing {
                channel: self.channel.clone(),
                bytes: env.encode(Atoms::Otp26),
                recorded: None,
            };
            if self.out.try_send(m).is_err() {
                self.stats.unpublished.fetch_add(1, Ordering::Relaxed);
            }
        }
        for id in out.dropped {
            self.presence.drop_remote_node(&id);
        }
        for (id, changes) in out.changes {
            self.presence.apply_remote(&id, changes);
        }
        if let Some(why) = out.refused {
            self.stats.refused.fetch_add(1, Ordering::Relaxed);
            if !std::mem::replace(&mut self.refused_logged, true) {
                log::warn!("cluster: refused a presence tracker message: {why}; counted in fawkes_redis_refused_total, logged once");
            }
        }
    }
}
