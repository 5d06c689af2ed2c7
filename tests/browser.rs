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
