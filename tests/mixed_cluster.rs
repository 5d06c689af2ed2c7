//! Elixir and Fawkes nodes of one app as one cluster: the real Phoenix-on-Redis fixture
//! (`../shared/phoenix-reference-redis/`, built outside the repository) beside two Fawkes nodes
//! running the same conformance fixture, with phoenix.js clients on all three
//! (`protocol_tests/js/test/cluster/mixed.test.js`). It needs that build, so it runs only when
//! asked: `PHOENIX_REDIS_FIXTURE=<the folder holding phoenix_fixture/> cargo test --test
//! mixed_cluster -- --ignored`.

mod support;

use std::path::Path;
use std::process::Command;

#[test]
#[ignore = "needs the real Phoenix-on-Redis fixture: PHOENIX_REDIS_FIXTURE=<its folder>, --ignored"]
fn phoenix_and_fawkes_nodes_share_one_presence_list() {
    let anchor_dir = std::env::var("PHOENIX_REDIS_FIXTURE").expect(
        "PHOENIX_REDIS_FIXTURE names the folder holding the built phoenix_fixture/ \
         (../shared/phoenix-reference-redis/README.md)",
    );
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let scripts = root.join("../shared/phoenix-reference-redis/bin");
    assert!(scripts.join("start_anchor.sh").exists(), "{scripts:?}");
    // The Fawkes nodes run the conformance fixture, as the Phoenix node does.
    let built = Command::new(env!("CARGO"))
        .args(["build", "--example", "conformance_server"])
        .current_dir(root)
        .status()
        .expect("cargo");
    assert!(built.success());
    let target = std::env::var("CARGO_TARGET_DIR")
        .unwrap_or_else(|_| root.join("target").display().to_string());
    let bin = Path::new(&target).join("debug/examples/conformance_server");
    // Two replicas waited out for their 30 s down period.
    support::node_test_within(
        "test/cluster/mixed.test.js",
        &[
            ("FIXTURE_BIN", bin.display().to_string()),
            ("ANCHOR_DIR", anchor_dir),
            ("ANCHOR_SCRIPTS", scripts.display().to_string()),
        ],
        3,
        240,
    );
}
