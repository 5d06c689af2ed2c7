//! The demo pages and the inspector in a real browser: `fawkes serve --demo` on a fresh SQLite
//! file, then `protocol_tests/js/test/browser/demo.test.js` (playwright-core driving Debian's
//! Chromium, headless). Fails, never skips, when Node, the npm packages or Chromium are missing.

mod support;

use std::path::Path;

#[test]
fn demo_pages_and_inspector_in_chromium() {
    let dir = support::temp_dir("browser");
    let db = dir.join("fawkes.db");
    let db = db.to_str().unwrap();
    let alice = support::create_user(&dir, db, &["--name", "alice", "--community-member"]);
    let admin = support::create_user(&dir, db, &["--name", "root", "--admin"]);
    let server = support::Serve::start(&dir, &["--database-url", db, "--demo"]);

    let shots = Path::new(env!("CARGO_TARGET_TMPDIR")).join("screenshots");
    support::node_test(
        "test/browser/demo.test.js",
        &[
            ("FAWKES_APP_URL", server.url()),
            ("FAWKES_ALICE_TOKEN", alice),
            ("FAWKES_ADMIN_TOKEN", admin),
            ("FAWKES_SCREENSHOTS", shots.to_string_lossy().into_owned()),
        ],
        5,
    );
    for shot in ["feed", "chat", "orders", "inspector"] {
        assert!(shots.join(format!("{shot}.png")).exists(), "{shot}.png");
    }
}

/// The inspector's gauges in Chromium (`protocol_tests/js/test/browser/gauges.test.js`): sampled
/// every 200 ms, the charts' latest values follow 24 phoenix.js clients coming (connections and
/// presence entries to 24), REST writes fanned out to them (deliveries per second above 0), and
/// their going (back to 0); resident memory is charted above 0.
#[test]
fn the_inspector_charts_the_gauges_moving_in_chromium() {
    let dir = support::temp_dir("browser-gauges");
    let db = dir.join("fawkes.db");
    let db = db.to_str().unwrap();
    let member = support::create_user(&dir, db, &["--name", "alice", "--community-member"]);
    let admin = support::create_user(&dir, db, &["--name", "root", "--admin"]);
    let server = support::Serve::start(
        &dir,
        &["--database-url", db, "--inspector-sample-ms", "200"],
    );
    let shots = Path::new(env!("CARGO_TARGET_TMPDIR")).join("screenshots");
    std::fs::create_dir_all(&shots).unwrap();
    support::node_test(
        "test/browser/gauges.test.js",
        &[
            ("FAWKES_APP_URL", server.url()),
            ("FAWKES_ADMIN_TOKEN", admin),
            ("FAWKES_MEMBER_TOKEN", member),
            ("FAWKES_CLIENTS", "24".to_owned()),
            ("FAWKES_SCREENSHOTS", shots.to_string_lossy().into_owned()),
        ],
        1,
    );
    assert!(shots.join("gauges.png").exists());
}
