//! `/admin` over plain HTTP: who may in, the session cookie's attributes, and the CSRF and
//! Origin checks on actions. (tests/browser.rs drives the same pages in Chromium.)

mod support;

use support::http_raw as http;
use support::{session, set_cookie, sign_in, sign_in_form, FORM};

#[test]
fn only_admins_get_in_and_actions_need_the_csrf_token_and_this_origin() {
    let dir = support::temp_dir("inspector");
    let db = dir.join("fawkes.db");
    let db = db.to_str().unwrap();
    let admin = support::create_user(&dir, db, &["--name", "root", "--admin"]);
    let member = support::create_user(&dir, db, &["--name", "alice", "--community-member"]);
    let server = support::Serve::start(&dir, &["--database-url", db]);
    let addr = server.addr.as_str();

    // Anonymous: the page redirects to sign-in, the API says 401.
    let (status, head, _) = http(addr, "GET", "/admin", &[], "");
    assert_eq!(status, 303);
    assert!(
        head.to_lowercase().contains("location: /admin/sign-in"),
        "{head}"
    );
    assert_eq!(http(addr, "GET", "/admin/api/stats", &[], "").0, 401);
    assert_eq!(
        http(addr, "POST", "/admin/api/disconnect", &[], "{}").0,
        401
    );
    // A forged cookie is nobody.
    assert_eq!(
        http(
            addr,
            "GET",
            "/admin/api/stats",
            &[("Cookie", "fawkes_admin=forged")],
            ""
        )
        .0,
        401
    );

    // Bad tokens and non-admins do not get a session.
    let (status, head, _) = sign_in(addr, "nope");
    assert_eq!(status, 401);
    assert_eq!(set_cookie(&head, "fawkes_admin"), None, "{head}");
    let (status, head, body) = sign_in(addr, &member);
    assert_eq!(status, 403);
    assert_eq!(set_cookie(&head, "fawkes_admin"), None, "{head}");
    assert!(body.contains("That user is not an admin."), "{body}");
    // A sign-in posted from another site is refused: by its Origin, and, when a browser sends
    // none, by the form's CSRF token, which another site cannot read (login CSRF).
    let (form_cookie, csrf) = sign_in_form(addr);
    let origin = format!("http://{addr}");
    let wrong = "0".repeat(64);
    for (headers, body) in [
        (
            vec![
                FORM,
                ("Origin", "https://evil.example"),
                ("Cookie", &form_cookie),
            ],
            format!("token={admin}&csrf={csrf}"),
        ),
        (vec![FORM], format!("token={admin}")),
        (
            vec![FORM, ("Origin", &origin)],
            format!("token={admin}&csrf={csrf}"),
        ),
        (
            vec![FORM, ("Cookie", &form_cookie)],
            format!("token={admin}"),
        ),
        (
            vec![FORM, ("Cookie", &form_cookie)],
            format!("token={admin}&csrf={wrong}"),
        ),
    ] {
        let (status, head, page) = http(addr, "POST", "/admin/session", &headers, &body);
        assert_eq!(status, 403, "{headers:?} {body}");
        assert_eq!(set_cookie(&head, "fawkes_admin"), None, "{head}");
        assert!(
            page.contains("The sign-in form expired or came from another site"),
            "{page}"
        );
    }

    // An admin gets an HttpOnly, SameSite=Strict cookie scoped to /admin.
    let (status, head, _) = sign_in(addr, &admin);
    assert_eq!(status, 303, "{head}");
    let set_cookie = set_cookie(&head, "fawkes_admin").expect("a session cookie");
    for attr in ["HttpOnly", "SameSite=Strict", "Path=/admin"] {
        assert!(set_cookie.contains(attr), "{attr} in {set_cookie}");
    }
    assert!(!set_cookie.contains("Secure"), "no TLS here: {set_cookie}");
    let cookie = set_cookie.split(';').next().unwrap().to_owned();
    let (status, _, page) = http(addr, "GET", "/admin", &[("Cookie", &cookie)], "");
    assert_eq!(status, 200);
    let csrf = page
        .split_once(r#"name="csrf-token" content=""#)
        .and_then(|(_, r)| r.split_once('"'))
        .map(|(t, _)| t.to_owned())
        .expect("a CSRF token in the page");
    assert_eq!(csrf.len(), 64);

    let (status, _, stats) = http(addr, "GET", "/admin/api/stats", &[("Cookie", &cookie)], "");
    assert_eq!(status, 200);
    let stats: serde_json::Value = serde_json::from_str(&stats).unwrap();
    assert_eq!(stats["connections"], serde_json::json!([]));

    // Actions: without the CSRF token, with a wrong one, or from another origin: 403.
    let body = r#"{"socket_id":"api_token:1"}"#;
    let json = ("Content-Type", "application/json");
    let wrong = "0".repeat(64);
    for headers in [
        vec![("Cookie", cookie.as_str()), json],
        vec![
            ("Cookie", cookie.as_str()),
            json,
            ("X-CSRF-Token", wrong.as_str()),
        ],
        vec![
            ("Cookie", cookie.as_str()),
            json,
            ("X-CSRF-Token", csrf.as_str()),
            ("Origin", "https://evil.example"),
        ],
    ] {
        assert_eq!(
            http(addr, "POST", "/admin/api/disconnect", &headers, body).0,
            403
        );
    }
    let ok = [
        ("Cookie", cookie.as_str()),
        json,
        ("X-CSRF-Token", csrf.as_str()),
        ("Origin", origin.as_str()),
    ];
    let (status, _, answer) = http(addr, "POST", "/admin/api/disconnect", &ok, body);
    assert_eq!(status, 200);
    assert_eq!(answer, r#"{"connections":0,"socket_id":"api_token:1"}"#);
    // Bad input gets a clear error.
    let (status, _, answer) = http(addr, "POST", "/admin/api/disconnect", &ok, "[1]");
    assert_eq!(status, 422);
    assert!(answer.contains("socket_id"), "{answer}");
    let (status, _, _) = http(
        addr,
        "GET",
        "/admin/api/frames?topic=",
        &[("Cookie", &cookie)],
        "",
    );
    assert_eq!(status, 422);

    // Signing out ends the session.
    assert_eq!(http(addr, "POST", "/admin/sign-out", &ok, "").0, 204);
    assert_eq!(
        http(addr, "GET", "/admin/api/stats", &[("Cookie", &cookie)], "").0,
        401
    );
}

/// A session lives no longer than its token: revoking an API token ends it at the next request,
/// and a Phoenix.Token's expiry ends it then, not 12 hours after sign-in.
#[test]
fn a_session_ends_with_its_token() {
    const SKB: &str = "inspector-test-secret-key-base-0123456789abcdef0123456789abcdef0123";
    let dir = support::temp_dir("inspector-token");
    let db = dir.join("fawkes.db");
    let db = db.to_str().unwrap();
    let admin = support::create_user(&dir, db, &["--name", "root", "--admin"]);
    support::create_user(
        &dir,
        db,
        &["--name", "ops", "--admin", "--external-id", "ops-1"],
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_fawkes"))
        .args(["tokens", "phoenix", "--user", "ops", "--max-age", "2"])
        .args(["--phoenix-secret-key-base", SKB, "--database-url", db])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let short = String::from_utf8(out.stdout).unwrap();
    let short = short.lines().last().unwrap().to_owned();
    let server = support::Serve::start(
        &dir,
        &["--database-url", db, "--phoenix-secret-key-base", SKB],
    );
    let addr = server.addr.as_str();
    let stats = |cookie: &str| http(addr, "GET", "/admin/api/stats", &[("Cookie", cookie)], "").0;

    let by_api_token = session(addr, &admin);
    let by_phoenix_token = session(addr, &short);
    assert_eq!(stats(&by_api_token), 200);
    assert_eq!(stats(&by_phoenix_token), 200);

    let revoked = std::process::Command::new(env!("CARGO_BIN_EXE_fawkes"))
        .args(["tokens", "revoke", &admin, "--database-url", db])
        .output()
        .unwrap();
    assert!(revoked.status.success(), "{revoked:?}");
    assert_eq!(stats(&by_api_token), 401, "revoked");
    // Gone for good: the same cookie stays refused.
    assert_eq!(stats(&by_api_token), 401);

    // The Phoenix.Token was signed for 2 seconds.
    std::thread::sleep(std::time::Duration::from_millis(3100));
    assert_eq!(stats(&by_phoenix_token), 401, "expired");
    let (status, _, page) = http(addr, "GET", "/admin", &[("Cookie", &by_phoenix_token)], "");
    assert_eq!(status, 303, "{page}");
}

/// `GET /admin/api/gauges`: for admins only; samples this process every `--inspector-sample-ms`,
/// oldest first, with the values of that moment (a WebSocket client counts while it is open),
/// deliveries as a rate from the second sample on, and with `after` only newer samples. The
/// period's bounds are enforced at start.
#[test]
fn the_gauges_api_samples_this_process() {
    use serde_json::Value;
    use std::time::{Duration, Instant};
    let dir = support::temp_dir("inspector-gauges");
    let db = dir.join("fawkes.db");
    let db = db.to_str().unwrap();
    let admin = support::create_user(&dir, db, &["--name", "root", "--admin"]);
    let server = support::Serve::start(
        &dir,
        &["--database-url", db, "--inspector-sample-ms", "100"],
    );
    let addr = server.addr.as_str();
    assert_eq!(http(addr, "GET", "/admin/api/gauges", &[], "").0, 401);
    let cookie = session(addr, &admin);
    let gauges = |after: u64| -> Value {
        let path = format!("/admin/api/gauges?after={after}");
        let (status, _, body) = http(addr, "GET", &path, &[("Cookie", &cookie)], "");
        assert_eq!(status, 200, "{body}");
        serde_json::from_str(&body).unwrap()
    };
    // Waits for a sample after `after` whose `key` is `value`; returns the samples up to it.
    let until = |key: &str, value: i64, after: u64| -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let samples = gauges(after)["samples"].as_array().unwrap().clone();
            if let Some(i) = samples.iter().position(|s| s[key] == value) {
                return samples[..=i].to_vec();
            }
            assert!(
                Instant::now() < deadline,
                "no {key} = {value} in {} samples; the last: {:?}",
                samples.len(),
                samples.last()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    };

    let g = gauges(0);
    assert_eq!(g["period_ms"], 100);
    assert_eq!(g["window_ms"], 900_000);
    // Three samples of an idle server.
    let deadline = Instant::now() + Duration::from_secs(10);
    let idle = loop {
        let samples = gauges(0)["samples"].as_array().unwrap().clone();
        if samples.len() >= 3 {
            break samples;
        }
        assert!(Instant::now() < deadline, "{samples:?}");
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut keys: Vec<&str> = idle[0]
        .as_object()
        .unwrap()
        .keys()
        .map(|k| k.as_str())
        .collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            "at_ms",
            "connections",
            "deliveries_per_second",
            "open_fds",
            "presence_entries",
            "queued_bytes",
            "resident_bytes",
            "tasks"
        ]
    );
    assert!(idle[0]["deliveries_per_second"].is_null(), "{idle:?}");
    for pair in idle.windows(2) {
        assert!(
            pair[0]["at_ms"].as_u64() < pair[1]["at_ms"].as_u64(),
            "{idle:?}"
        );
        assert_eq!(pair[1]["deliveries_per_second"], 0.0, "{idle:?}");
    }
    for s in &idle {
        assert_eq!(s["connections"], 0, "{s}");
        assert_eq!(s["presence_entries"], 0, "{s}");
        assert_eq!(s["queued_bytes"], 0, "{s}");
        assert!(s["resident_bytes"].as_u64().unwrap() > 1 << 20, "{s}");
        assert!(s["open_fds"].as_u64().unwrap() > 3, "{s}");
        // The sampler is a task of its own.
        assert!(s["tasks"].as_i64().unwrap() >= 1, "{s}");
    }

    // `after` gives only what came later.
    let last = idle.last().unwrap()["at_ms"].as_u64().unwrap();
    for s in gauges(last)["samples"].as_array().unwrap() {
        assert!(s["at_ms"].as_u64().unwrap() > last, "{s}");
    }

    // A WebSocket client counts while it is open.
    let url = format!("ws://{addr}/socket/websocket?vsn=2.0.0");
    let (ws, _) = tokio_tungstenite::tungstenite::connect(url).unwrap();
    let open = until("connections", 1, last);
    let opened_at = open.last().unwrap()["at_ms"].as_u64().unwrap();
    drop(ws);
    until("connections", 0, opened_at);

    // The period's bounds.
    for ms in ["99", "60001"] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_fawkes"))
            .args(["serve", "--port", "0", "--database-url", db])
            .args(["--inspector-sample-ms", ms])
            .current_dir(&dir)
            .output()
            .unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("--inspector-sample-ms") && err.contains("100..=60000"),
            "{err}"
        );
    }
}
