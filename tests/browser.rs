//! The demo pages and the inspector in a real browser: `fawkes serve --demo` on a fresh SQLite
//! file, then `protocol_tests/js/test/browser/demo.test.js` (playwright-core driving Debian's
//! Chromium, headless). Fails, never skips, when Node, the npm packages or Chromium are missing.

mod support;

use std::path::Path;
use std::process::Command;

#[test]
fn demo_pages_and_inspector_in_chromium() {
    let dir = support::temp_dir("browser");
    let db = dir.join("fawkes.db");
    let db = db.to_str().unwrap();
    let alice = support::create_user(&dir, db, &["--name", "alice", "--community-member"]);
    let admin = support::create_user(&dir, db, &["--name", "root", "--admin"]);
    let server = support::Serve::start(&dir, &["--database-url", db, "--demo"]);

    let js = Path::new(env!("CARGO_MANIFEST_DIR")).join("protocol_tests/js");
    support::npm_ci(&js);
    let shots = Path::new(env!("CARGO_TARGET_TMPDIR")).join("screenshots");
    let out = Command::new("node")
        .args([
            "--test",
            "--test-concurrency=1",
            "--test-timeout=60000",
            "test/browser/demo.test.js",
        ])
        .current_dir(&js)
        .env("FAWKES_APP_URL", server.url())
        .env("FAWKES_ALICE_TOKEN", &alice)
        .env("FAWKES_ADMIN_TOKEN", &admin)
        .env("FAWKES_SCREENSHOTS", &shots)
        .output()
        .expect("node (20+) must be installed to run the browser tests");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{text}");
    assert!(out.status.success(), "browser tests failed");
    assert!(
        text.contains("# pass 5") && text.contains("# fail 0"),
        "expected 5 passing browser tests:\n{text}"
    );
    for shot in ["feed", "chat", "orders", "inspector"] {
        assert!(shots.join(format!("{shot}.png")).exists(), "{shot}.png");
    }
}
