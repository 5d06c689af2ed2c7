//! The official phoenix.js client (npm `phoenix`, in Node) against the fixture started in-process:
//! runs `protocol_tests/js` with `npm test`.

mod support;

use std::path::Path;
use std::process::Command;

fn npm(args: &[&str], envs: &[(&str, String)]) -> (bool, String) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("js");
    let out = Command::new("npm")
        .args(args)
        .current_dir(&dir)
        .envs(envs.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .expect("npm must be installed (Node 20+) to run the phoenix.js tests");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn run_script(script: &str, envs: &[(&str, String)]) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("js");
    if !dir.join("node_modules/phoenix").exists() {
        let (ok, out) = npm(&["ci", "--no-audit", "--no-fund"], &[]);
        assert!(ok, "npm ci failed:\n{out}");
    }
    let (ok, out) = npm(&["run", script], envs);
    // Show node's own report either way.
    println!("{out}");
    assert!(ok, "phoenix.js `npm run {script}` failed");
    assert!(
        out.contains("# fail 0") && !out.contains("# pass 0"),
        "no clean node test summary:\n{out}"
    );
}

fn run_suite(transport: &str) {
    let _one_at_a_time = support::serial();
    let server = support::shared();
    run_script(
        "test",
        &[
            ("FAWKES_URL", server.url()),
            ("FAWKES_TRANSPORT", transport.to_owned()),
        ],
    );
}

#[test]
fn phoenix_js_over_websocket() {
    run_suite("websocket");
}

#[test]
fn phoenix_js_over_longpoll() {
    run_suite("longpoll");
}

#[test]
fn phoenix_js_falls_back_to_longpoll_when_websocket_is_refused() {
    let server = support::start_with(
        fawkes::Config::default(),
        support::fixture::socket().transports(false, true),
    );
    run_script("test:fallback", &[("FAWKES_WS_REFUSED_URL", server.url())]);
}

/// The secret_key_base of the Phoenix app whose tokens the app suite signs in with.
const PHOENIX_SKB: &str =
    "conformance-fixture-secret-key-base-0123456789abcdef0123456789abcdef0123456789";

fn run_app_suite(backend: &str) {
    // A short change log, so the suite can miss more than it holds; the Phoenix app's
    // secret_key_base, so its tokens sign users in.
    let phoenix = fawkes::auth::PhoenixTokens::new(PHOENIX_SKB, "user socket", None);
    let verifier = phoenix.clone();
    let app = support::start_app_configured(backend, move |state| {
        state.collections = fawkes::apps::collections::CollectionsConfig {
            log_size: 5,
            ..Default::default()
        };
        state.auth.phoenix = Some(verifier);
        // A short thread: stream, so recovery.test.js can miss more than it keeps.
        let history = fawkes::history::HistoryConfig {
            by_prefix: vec![(
                "thread:".into(),
                fawkes::history::Retention {
                    max_events: 2,
                    ..Default::default()
                },
            )],
            ..Default::default()
        };
        state.history = fawkes::history::History::new(state.store.clone(), history);
    });
    let (phx_id, _) = app.new_user(fawkes::apps::accounts::NewUser {
        name: "phx".into(),
        external_id: Some("phx-user".into()),
        ..Default::default()
    });
    let phx_token = phoenix.sign(
        &fawkes::auth::Subject::Str("phx-user".into()),
        chrono::Utc::now().timestamp_millis(),
        3600,
    );
    let (_, member) = app.user("member", true);
    let (_, other) = app.user("other", true);
    let mut users = serde_json::Map::new();
    for name in ["alice", "bob", "carol", "dave"] {
        let (id, token) = app.user(name, false);
        users.insert(name.into(), serde_json::json!({"id": id, "token": token}));
    }
    run_script(
        "test:apps",
        &[
            ("FAWKES_APP_URL", format!("http://{}", app.server.addr)),
            ("FAWKES_MEMBER_TOKEN", member),
            ("FAWKES_OTHER_TOKEN", other),
            ("FAWKES_USERS", serde_json::Value::Object(users).to_string()),
            (
                "FAWKES_PHOENIX_USER",
                serde_json::json!({"id": phx_id, "token": phx_token}).to_string(),
            ),
        ],
    );
}

#[test]
fn phoenix_js_apps_on_sqlite() {
    run_app_suite("sqlite");
}

#[test]
fn phoenix_js_apps_on_postgres() {
    run_app_suite("postgres");
}

/// The whole phoenix.js suite over `wss://` (and LongPoll over `https://`), against a
/// certificate made for the test and trusted through NODE_EXTRA_CA_CERTS.
fn run_suite_over_tls(transport: &str) {
    let _one_at_a_time = support::serial();
    let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into(), "localhost".into()])
        .expect("a self-signed certificate");
    let dir = std::env::temp_dir().join(format!("fawkes-tls-{}-{transport}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (cert_path, key_path) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.key_pair.serialize_pem()).unwrap();
    let tls = fawkes::server::tls_config(&cert_path, &key_path).expect("TLS config");
    let server = support::start_tls(fawkes::Config::default(), support::fixture::socket(), tls);
    run_script(
        "test",
        &[
            (
                "FAWKES_URL",
                format!("wss://127.0.0.1:{}/socket", server.addr.port()),
            ),
            ("FAWKES_TRANSPORT", transport.to_owned()),
            (
                "NODE_EXTRA_CA_CERTS",
                cert_path.to_string_lossy().into_owned(),
            ),
        ],
    );
}

#[test]
fn phoenix_js_over_wss() {
    run_suite_over_tls("websocket");
}

#[test]
fn phoenix_js_over_longpoll_on_https() {
    run_suite_over_tls("longpoll");
}
