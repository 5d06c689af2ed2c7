//! Several `fawkes serve` nodes as one, over a real redis-server and one PostgreSQL database,
//! with phoenix.js clients spread over the nodes: `protocol_tests/js/test/cluster/`. The Node
//! tests start Redis and the nodes themselves, so that they can kill a node, stop and restart
//! Redis, and PUBLISH on it what any Redis client could.

mod support;

/// One cluster at a time: three nodes hold 48 PostgreSQL connections (16 each), and two
/// clusters at once would take most of a default server's 100.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn redis_installed() {
    assert!(
        std::process::Command::new("redis-server")
            .arg("--version")
            .output()
            .is_ok(),
        "redis-server must be installed (Debian: apt-get install redis-server; bash .ci/run does)"
    );
}

#[test]
fn three_nodes_over_redis_with_phoenix_js() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    redis_installed();
    support::node_test(
        "test/cluster/cluster.test.js",
        &[
            ("FAWKES_BIN", env!("CARGO_BIN_EXE_fawkes").to_owned()),
            ("DATABASE_URL", support::fresh_postgres("cluster")),
        ],
        7,
    );
}

/// The same, with presence replicated as Phoenix.Tracker does it (`--presence-name`): each
/// node a replica of `Fawkes.Presence`'s four shards, `phx_presence:Elixir.Fawkes.Presence_shard0..3`.
#[test]
fn three_nodes_as_phoenix_tracker_replicas() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    redis_installed();
    support::node_test(
        "test/cluster/cluster.test.js",
        &[
            ("FAWKES_BIN", env!("CARGO_BIN_EXE_fawkes").to_owned()),
            ("DATABASE_URL", support::fresh_postgres("cluster_tracker")),
            ("PRESENCE_NAME", "Fawkes.Presence".to_owned()),
            // Topics spread over four shards, each a replica set of its own.
            ("PRESENCE_POOL_SIZE", "4".to_owned()),
        ],
        7,
    );
}

/// Fawkes nodes as replicas of one Phoenix Presence at its default down period: leaving at
/// once on SIGTERM and on a restart under the same name, malformed tracker messages refused.
#[test]
fn replicas_of_one_phoenix_presence() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    redis_installed();
    support::node_test(
        "test/cluster/tracker.test.js",
        &[
            ("FAWKES_BIN", env!("CARGO_BIN_EXE_fawkes").to_owned()),
            ("DATABASE_URL", support::fresh_postgres("cluster_replicas")),
        ],
        5,
    );
}

/// Hostile messages on Redis and outages in the middle of writes.
#[test]
fn what_redis_does_to_three_nodes() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    redis_installed();
    support::node_test(
        "test/cluster/faults.test.js",
        &[
            ("FAWKES_BIN", env!("CARGO_BIN_EXE_fawkes").to_owned()),
            ("DATABASE_URL", support::fresh_postgres("cluster_faults")),
        ],
        9,
    );
}
