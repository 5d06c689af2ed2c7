//! Several `fawkes serve` nodes as one, over a real redis-server and one PostgreSQL database,
//! with phoenix.js clients spread over the nodes: `protocol_tests/js/test/cluster/`. The Node
//! test starts Redis and the nodes itself, so that it can kill a node and restart Redis.

use diesel::{Connection, RunQueryDsl};
use std::path::Path;
use std::process::Command;

/// A new database on the server `FAWKES_TEST_POSTGRES_URL` names (`.ci/run` sets it).
fn fresh_postgres() -> String {
    let admin = std::env::var("FAWKES_TEST_POSTGRES_URL").expect(
        "FAWKES_TEST_POSTGRES_URL must name a PostgreSQL server: several nodes share one database \
         (bash .ci/run starts one and sets it)",
    );
    let name = format!("fawkes_cluster_{}", std::process::id());
    let mut c = diesel::PgConnection::establish(&admin).expect("connect to PostgreSQL");
    diesel::sql_query(format!("DROP DATABASE IF EXISTS {name}"))
        .execute(&mut c)
        .unwrap();
    diesel::sql_query(format!("CREATE DATABASE {name}"))
        .execute(&mut c)
        .unwrap();
    let base = admin.rsplit_once('/').map_or(admin.as_str(), |(b, _)| b);
    format!("{base}/{name}")
}

#[test]
fn three_nodes_over_redis_with_phoenix_js() {
    assert!(
        Command::new("redis-server")
            .arg("--version")
            .output()
            .is_ok(),
        "redis-server must be installed (Debian: apt-get install redis-server; bash .ci/run does)"
    );
    let js = Path::new(env!("CARGO_MANIFEST_DIR")).join("protocol_tests/js");
    assert!(
        js.join("node_modules/phoenix").exists(),
        "run `npm ci` in protocol_tests/js first (bash .ci/run does)"
    );
    let out = Command::new("node")
        .args([
            "--test",
            "--test-concurrency=1",
            "--test-timeout=60000",
            "test/cluster/cluster.test.js",
        ])
        .current_dir(&js)
        .env("FAWKES_BIN", env!("CARGO_BIN_EXE_fawkes"))
        .env("DATABASE_URL", fresh_postgres())
        .output()
        .expect("node must be installed (Node 20+)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{text}");
    assert!(out.status.success(), "the cluster test failed");
    assert!(
        text.contains("# fail 0") && text.contains("# pass 7"),
        "not every cluster test ran and passed:\n{text}"
    );
}
