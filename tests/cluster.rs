//! Several `fawkes serve` nodes as one, over a real redis-server and one PostgreSQL database,
//! with phoenix.js clients spread over the nodes: `protocol_tests/js/test/cluster/`. The Node
//! test starts Redis and the nodes itself, so that it can kill a node and restart Redis.

mod support;

#[test]
fn three_nodes_over_redis_with_phoenix_js() {
    assert!(
        std::process::Command::new("redis-server")
            .arg("--version")
            .output()
            .is_ok(),
        "redis-server must be installed (Debian: apt-get install redis-server; bash .ci/run does)"
    );
    support::node_test(
        "test/cluster/cluster.test.js",
        &[
            ("FAWKES_BIN", env!("CARGO_BIN_EXE_fawkes").to_owned()),
            ("DATABASE_URL", support::fresh_postgres("cluster")),
        ],
        7,
    );
}
