//! The demo pages' server side: pages and the built-in phoenix.js are served; one-click users
//! exist only with --demo, with clear errors and a bound. (tests/browser.rs uses the pages.)

mod support;

use support::http_raw as http;

const JSON: (&str, &str) = ("Content-Type", "application/json");

#[test]
fn pages_and_phoenix_js_are_built_in_and_demo_users_need_the_flag() {
    let dir = support::temp_dir("demo-off");
    let db = dir.join("fawkes.db");
    let server = support::Serve::start(&dir, &["--database-url", db.to_str().unwrap()]);
    let addr = server.addr.as_str();
    assert!(
        server.banner[1].trim() == format!("demo pages: http://{addr}/"),
        "{:?}",
        server.banner
    );
    assert_eq!(
        server.banner[2].trim(),
        format!("inspector:  http://{addr}/admin")
    );
    for (path, needle) in [
        ("/", r#"href="/demo/feed""#),
        ("/demo/feed", r#"src="/assets/feed.js""#),
        ("/demo/chat", r#"src="/assets/chat.js""#),
        ("/demo/orders", r#"src="/assets/orders.js""#),
    ] {
        let (status, head, body) = http(addr, "GET", path, &[], "");
        assert_eq!(status, 200, "{path}");
        assert!(body.contains(needle), "{path}: {needle}");
        assert!(head.contains("default-src 'self'"), "{path}: {head}");
    }
    let (status, _, js) = http(addr, "GET", "/assets/phoenix.mjs", &[], "");
    assert_eq!(status, 200);
    let vendored = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/protocol_tests/js/node_modules/phoenix/priv/static/phoenix.mjs"
    ));
    // The pinned npm package, byte for byte (when npm ci has run).
    if let Ok(v) = vendored {
        assert_eq!(js, v);
    }
    assert!(js.contains("var Socket = class"), "phoenix.js");
    assert_eq!(
        http(addr, "GET", "/demo/config", &[], "").2,
        r#"{"signup":false}"#
    );
    assert_eq!(
        http(addr, "POST", "/demo/users", &[JSON], r#"{"name":"eve"}"#).0,
        404
    );
}

#[test]
fn demo_users_are_members_with_tokens_and_bounded() {
    let dir = support::temp_dir("demo-on");
    let db = dir.join("fawkes.db");
    let server = support::Serve::start(
        &dir,
        &[
            "--database-url",
            db.to_str().unwrap(),
            "--demo",
            "--demo-max-users",
            "1",
        ],
    );
    let addr = server.addr.as_str();
    assert_eq!(
        http(addr, "GET", "/demo/config", &[], "").2,
        r#"{"signup":true}"#
    );
    assert_eq!(
        http(addr, "POST", "/demo/users", &[JSON], "not json").0,
        400
    );
    let (status, _, body) = http(addr, "POST", "/demo/users", &[JSON], r#"{"name":""}"#);
    assert_eq!(status, 422, "{body}");
    let (status, _, body) = http(
        addr,
        "POST",
        "/demo/users",
        &[JSON],
        r#"{"name":"no spaces"}"#,
    );
    assert_eq!(status, 422, "{body}");
    let (status, _, body) = http(addr, "POST", "/demo/users", &[JSON], r#"{"name":"eve"}"#);
    assert_eq!(status, 201, "{body}");
    let made: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(made["user"]["name"], "eve");
    assert_eq!(made["user"]["community_member"], true);
    let token = made["token"].as_str().unwrap();
    let auth = format!("Bearer {token}");
    let (status, _, me) = http(addr, "GET", "/api/me", &[("Authorization", &auth)], "");
    assert_eq!(status, 200);
    assert!(me.contains(r#""name":"eve""#), "{me}");
    // The bound: one demo user on this server.
    let (status, _, body) = http(
        addr,
        "POST",
        "/demo/users",
        &[JSON],
        r#"{"name":"mallory"}"#,
    );
    assert_eq!(status, 429, "{body}");
}
