//! Several nodes as one: broadcasts, disconnects and presence over Redis.
//!
//! Broadcasts travel in phoenix_pubsub_redis 3.x's format on its channel
//! (`phx:Elixir.<pubsub-name>.Adapter`), so Fawkes nodes and Phoenix nodes of one app share
//! them: each broadcast is published once and every node fans it out to its own sockets
//! ([`message`], on the term codec of [`term`]). Presence is replicated between Fawkes nodes on a
//! channel of their own, Phoenix.Tracker's way: per-node deltas, heartbeats, and a node silent
//! too long counted as down ([`tracker`]). Recorded broadcasts, which several nodes number from
//! one database, are delivered in seq order, a gap filled from the change log ([`order`]), and
//! their seqs are believed only when a node of the cluster signed them ([`seal`]).
//! Phoenix.Tracker's own messages, which Elixir nodes replicate their presence with, are read
//! and written by [`phoenix_tracker`].
//! [`link`] owns the Redis connections and survives Redis going away; [`redis_server`] is
//! how they are opened (TLS, credentials) and which failures stop a node at start.
//!
//! Without a Redis URL none of this runs: one node needs nothing but itself.

pub mod link;
pub mod message;
pub mod order;
pub mod phoenix_tracker;
pub mod redis_server;
pub mod seal;
pub mod term;
pub mod tracker;

/// Counted in [`crate::metrics`], where the endpoint that holds them and `/metrics` can read
/// them without importing the cluster.
pub use crate::metrics::ClusterStats as Stats;
pub use order::Backfill;
pub use redis_server::RedisServer;
pub use seal::SealKey;

use crate::hub::Endpoint;
use std::sync::Arc;
use std::time::Duration;

/// How a node joins the others.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// The Redis server, from `redis[s]://[user:password@]host:port[/db]` and the CA file.
    pub redis: RedisServer,
    /// This node's name, unique in the cluster: Phoenix nodes drop what they sent by it.
    pub node_name: String,
    /// The PubSub server's name; `MyApp.PubSub` joins the Phoenix app whose PubSub it is.
    pub pubsub_name: String,
    /// A node heard from for this long is down: its presences leave.
    pub presence_down_after: Duration,
    /// The app's Presence module (`MyApp.Presence`): this node replicates presence as one of
    /// its Phoenix.Tracker replicas, beside the app's Elixir nodes. `None`: among Fawkes nodes
    /// only, on a channel of their own.
    pub presence_name: Option<String>,
    /// Its shard count (`pool_size`).
    pub presence_pool_size: u32,
    /// Presences one shard of the replica holds; a peer's message past it is refused.
    pub presence_max_entries: usize,
    /// Largest message read from Redis; larger ones are refused and counted.
    pub max_message_bytes: usize,
    /// Memory one message's decoded term may take (see [`term::Bounds::max_term_bytes`]).
    pub max_term_bytes: usize,
    /// Messages waiting to be published; past it they are dropped and counted.
    pub publish_queue: usize,
    /// Topics whose unpublished recorded broadcasts are announced when the link is back.
    pub unsent_topics: usize,
    /// How long an early recorded broadcast waits for the ones before it.
    pub reorder_hold: Duration,
}

impl ClusterConfig {
    pub fn new(redis: RedisServer) -> ClusterConfig {
        ClusterConfig {
            redis,
            node_name: default_node_name(),
            pubsub_name: DEFAULT_PUBSUB_NAME.to_owned(),
            presence_down_after: Duration::from_secs(30),
            presence_name: None,
            presence_pool_size: 1,
            presence_max_entries: 1_000_000,
            max_message_bytes: 8 * 1024 * 1024,
            max_term_bytes: term::Bounds::default().max_term_bytes,
            publish_queue: 65_536,
            unsent_topics: 4096,
            reorder_hold: Duration::from_millis(250),
        }
    }
}

pub const DEFAULT_PUBSUB_NAME: &str = "Fawkes.PubSub";

/// The host's name and a random suffix: two starts never share a name.
pub fn default_node_name() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname writes at most that much.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    let host = if rc == 0 {
        let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
        String::from_utf8_lossy(&buf[..end]).into_owned()
    } else {
        "fawkes".to_owned()
    };
    format!("{host}-{:08x}", rand::random::<u32>())
}

/// The `--redis-url` family of flags, shared by `fawkes serve` and the conformance fixture.
#[derive(clap::Args, Debug, Clone)]
pub struct ClusterArgs {
    /// Join other nodes over Redis: `redis://[user:password@]host:port[/db]`, or `rediss://`
    /// for TLS. Unset: one node. A node whose Redis certificate does not verify, or that
    /// refuses the credentials, does not start.
    #[arg(long, env = "FAWKES_REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<String>,
    /// A PEM file of the CAs a `rediss://` server's certificate must chain to (a managed
    /// Redis's private CA), instead of the system's root certificates.
    #[arg(long, env = "FAWKES_REDIS_CA_FILE")]
    pub redis_ca_file: Option<std::path::PathBuf>,
    /// This node's name, unique among the nodes (default: host name and a random suffix).
    #[arg(long, env = "FAWKES_NODE_NAME")]
    pub node_name: Option<String>,
    /// The PubSub server's name: the Redis channel is `phx:Elixir.<name>.Adapter`, as
    /// phoenix_pubsub_redis names it (`MyApp.PubSub` joins that Phoenix app).
    #[arg(long, env = "FAWKES_PUBSUB_NAME", default_value = DEFAULT_PUBSUB_NAME)]
    pub pubsub_name: String,
    /// The app's Presence module (`MyApp.Presence`): presence is replicated as Phoenix.Tracker
    /// does it, on `phx_presence:Elixir.<name>_shard0`, so Elixir nodes of that app and this
    /// node see one presence list. Every Fawkes node of the cluster must then be given it.
    #[arg(long, env = "FAWKES_PRESENCE_NAME")]
    pub presence_name: Option<String>,
    /// The Presence's shard count (its `pool_size`, 1 unless the app sets it): a topic's
    /// presences live on shard `:erlang.phash2(topic, pool_size)`, as on the Elixir nodes.
    #[arg(long, env = "FAWKES_PRESENCE_POOL_SIZE", default_value_t = 1)]
    pub presence_pool_size: u32,
    /// With `--presence-name`: presences each shard holds, this node's and its peers'; a
    /// peer's message that would go past it is refused and counted.
    #[arg(long, env = "FAWKES_PRESENCE_MAX_ENTRIES", default_value_t = 1_000_000)]
    pub presence_max_entries: usize,
    /// Seconds without a heartbeat after which another node counts as down.
    #[arg(long, env = "FAWKES_PRESENCE_DOWN_AFTER", default_value_t = 30)]
    pub presence_down_after: u64,
    /// Largest message read from Redis, in bytes (larger: refused and counted).
    #[arg(long, env = "FAWKES_CLUSTER_MAX_MESSAGE_BYTES", default_value_t = 8 * 1024 * 1024)]
    pub cluster_max_message_bytes: usize,
    /// Memory one message from Redis may take once decoded, in bytes: every Erlang term it
    /// makes counts its own size and what it holds (more: refused and counted).
    #[arg(long, env = "FAWKES_CLUSTER_MAX_TERM_BYTES", default_value_t = 32 * 1024 * 1024)]
    pub cluster_max_term_bytes: usize,
    /// Messages waiting to be published to Redis; past it (Redis slow or away) they are dropped
    /// and counted.
    #[arg(long, env = "FAWKES_CLUSTER_PUBLISH_QUEUE", default_value_t = 65_536)]
    pub cluster_publish_queue: usize,
    /// Topics whose recorded broadcasts could not be published (this node's link down) that
    /// are announced to the other nodes when it is back, so they fill the gap at once.
    #[arg(long, env = "FAWKES_CLUSTER_UNSENT_TOPICS", default_value_t = 4096)]
    pub cluster_unsent_topics: usize,
}

impl ClusterArgs {
    /// The configuration, or `None` without a Redis URL.
    pub fn config(&self) -> Result<Option<ClusterConfig>, String> {
        let Some(url) = &self.redis_url else {
            if self.redis_ca_file.is_some() {
                return Err("--redis-ca-file is given without --redis-url".into());
            }
            return Ok(None);
        };
        let redis = RedisServer::open(url, self.redis_ca_file.as_deref())?;
        let mut c = ClusterConfig::new(redis);
        if let Some(n) = &self.node_name {
            if n.is_empty() || n.len() > 255 {
                return Err("--node-name must be 1 to 255 bytes".into());
            }
            c.node_name = n.clone();
        }
        if self.pubsub_name.is_empty() || self.pubsub_name.len() > 200 {
            return Err("--pubsub-name must be 1 to 200 bytes".into());
        }
        c.pubsub_name = self.pubsub_name.clone();
        c.presence_down_after = Duration::from_secs(self.presence_down_after.max(1));
        if let Some(name) = &self.presence_name {
            if name.is_empty() || name.len() > 200 || name.starts_with("Elixir.") {
                return Err("--presence-name must be the Presence module's name, 1 to 200 bytes, without `Elixir.` (MyApp.Presence)".into());
            }
            if !(1..=1024).contains(&self.presence_pool_size) {
                return Err(
                    "--presence-pool-size must be 1 to 1024 (the Presence's pool_size)".into(),
                );
            }
            c.presence_pool_size = self.presence_pool_size;
            c.presence_max_entries = self.presence_max_entries.max(1);
            // Phoenix.Tracker marks a replica down only after twice its heartbeat period and
            // more; its own heartbeat is every 1.5 s.
            if self.presence_down_after < 3 {
                return Err("--presence-down-after must be at least 3 seconds with --presence-name (twice Phoenix.Tracker's 1.5 s heartbeat)".into());
            }
            c.presence_name = Some(name.clone());
        } else if self.presence_pool_size != 1 {
            return Err("--presence-pool-size is given without --presence-name".into());
        }
        c.max_message_bytes = self.cluster_max_message_bytes.max(1024);
        c.max_term_bytes = self.cluster_max_term_bytes.max(1024);
        c.publish_queue = self.cluster_publish_queue.max(1);
        c.unsent_topics = self.cluster_unsent_topics;
        Ok(Some(c))
    }
}

/// Topics whose broadcasts the nodes number from one database, and what a node needs to trust
/// those numbers and fill their gaps. Given by the layer that owns the database.
pub struct Recorded {
    /// Topic prefixes whose broadcasts carry a `"seq"` from the change log.
    pub prefixes: Vec<String>,
    /// Where missing events are read from.
    pub change_log: Arc<dyn Backfill>,
    /// The key the cluster's nodes sign their recorded broadcasts with (kept in the database).
    pub key: SealKey,
}

impl Recorded {
    pub(crate) fn covers(&self, topic: &str) -> bool {
        self.prefixes.iter().any(|p| topic.starts_with(p.as_str()))
    }
}

/// A running cluster link.
#[derive(Clone)]
pub struct Cluster {
    pub config: Arc<ClusterConfig>,
    pub stats: Arc<Stats>,
    leave: Option<phoenix_tracker::node::Leave>,
}

impl Cluster {
    /// Connects `endpoint` to the other nodes: its broadcasts are published, theirs delivered,
    /// presence replicated. With `recorded`, those topics' broadcasts are delivered in seq
    /// order on every node (without it no broadcast from another node carries a seq, and a gap
    /// in this node's own is waited out, then skipped). Call from within the server's runtime;
    /// the link runs as its tasks and keeps retrying while Redis is away.
    ///
    /// Returns once the first connection is made or has failed (within the link's connect
    /// timeout). A failure that waiting cannot mend ([`RedisServer::refusal`]: a certificate
    /// that does not verify, refused credentials) is the error, and the link stops: the node
    /// is not to start. Redis merely down or unreachable is no error: the node starts alone
    /// and the link retries.
    pub async fn start(
        endpoint: &Endpoint,
        config: ClusterConfig,
        recorded: Option<Recorded>,
    ) -> Result<Cluster, String> {
        let config = Arc::new(config);
        let stats = Arc::new(Stats::default());
        log::info!(
            "cluster: node {} on {} (PubSub {}), Redis at {}",
            config.node_name,
            message::redis_channel(&config.pubsub_name),
            config.pubsub_name,
            config.redis.shown
        );
        endpoint.set_cluster_stats(stats.clone());
        let (first, leave) = link::start(endpoint, config.clone(), stats.clone(), recorded);
        match first.await {
            Ok(Ok(())) => Ok(Cluster {
                config,
                stats,
                leave,
            }),
            Ok(Err(why)) => Err(format!(
                "cluster: Redis at {}: {why}; the node does not start (this is no outage \
                 to wait out)",
                config.redis.shown
            )),
            Err(_) => Err("cluster: the Redis link stopped before it first connected".into()),
        }
    }

    /// Called as the node stops: as a replica of the app's Presence it says so, and the other
    /// replicas drop its presences at once (else after their down period). Waits at most a
    /// couple of seconds.
    pub async fn leave(&self) {
        if let Some(l) = &self.leave {
            l.leave().await;
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    const CAPTURES: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/phoenix-pubsub-redis-captures"
    );

    /// The bytes of the capture whose file name starts with `prefix` (real Phoenix traffic on
    /// Redis, `tests/data/phoenix-pubsub-redis-captures`).
    pub fn capture(prefix: &str) -> Vec<u8> {
        let dir = std::fs::read_dir(CAPTURES).expect("captures copied into tests/data");
        for f in dir {
            let p = f.unwrap().path();
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            if name.starts_with(prefix) && name.ends_with(".hex") {
                let hex = std::fs::read_to_string(&p).unwrap();
                let hex = hex.trim();
                return (0..hex.len())
                    .step_by(2)
                    .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
                    .collect();
            }
        }
        panic!("no capture {prefix}")
    }
}
