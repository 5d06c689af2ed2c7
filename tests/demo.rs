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

/// With proxied channels declared, the index links to the proxied channels' page, which names
/// the patterns and starts from a topic the first one serves; without, neither link nor page.
#[test]
fn the_index_links_to_the_proxied_channels_page_only_when_some_are_declared() {
    let dir = support::temp_dir("demo-proxy");
    let db = dir.join("fawkes.db");
    let db = db.to_str().unwrap();
    let link = r#"<a href="/demo/proxy">Proxied channels</a>"#;

    let plain = support::Serve::start(&dir, &["--database-url", db]);
    let (status, _, index) = http(&plain.addr, "GET", "/", &[], "");
    assert_eq!(status, 200);
    assert!(index.contains(r#"href="/demo/feed""#), "{index}");
    assert!(!index.contains("/demo/proxy"), "{index}");
    assert_eq!(http(&plain.addr, "GET", "/demo/proxy", &[], "").0, 404);
    drop(plain);

    std::fs::write(
        dir.join("fawkes.toml"),
        "backend-secret = \"s\"\n[[channels]]\ntopic = \"room:*\"\n\
         join_url = \"http://127.0.0.1:9/join\"\n",
    )
    .unwrap();
    let proxied = support::Serve::start(&dir, &["--database-url", db, "--channel-topic", "lobby"]);
    let (status, head, index) = http(&proxied.addr, "GET", "/", &[], "");
    assert_eq!(status, 200);
    assert!(head.contains("default-src 'self'"), "{head}");
    assert!(
        index.contains(&format!(
            "{link}: <code>room:*</code>, <code>lobby</code>, handled by the app's own backend"
        )),
        "{index}"
    );
    let (status, _, page) = http(&proxied.addr, "GET", "/demo/proxy", &[], "");
    assert_eq!(status, 200);
    assert!(
        page.contains(r#"<input name="topic" required value="room:lobby">"#),
        "{page}"
    );
    assert!(page.contains(r#"src="/assets/proxy.js""#), "{page}");
    assert!(page.contains("examples/proxy_chat"), "{page}");
    let (status, _, js) = http(&proxied.addr, "GET", "/assets/proxy.js", &[], "");
    assert_eq!(status, 200);
    assert!(js.contains(r#"channel.push("new_msg""#), "{js}");
}
