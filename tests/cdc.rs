//! Change capture from the app's own PostgreSQL tables (`--cdc-tables`), on a PostgreSQL the
//! tests start with `wal_level = logical`: supabase-js follows the tables
//! (`protocol_tests/js/test/supabase/cdc.test.js`), the slot survives a restart of Fawkes with
//! nothing lost and nothing delivered twice, and a database that cannot capture stops `serve`
//! with the reason.

mod support;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::path::Path;
use std::process::Command;
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;

const SECRET: &str = "a-supabase-project-jwt-secret-of-32-bytes-or-more";

fn keys() -> (String, String) {
    support::supabase_keys(SECRET)
}

/// The app's schema: roles as in a Supabase project, a plain table, one anon may not read,
/// one with row-level security (each authenticated user sees their own rows; anon none).
fn app_schema(pg: &support::LogicalPostgres) {
    pg.sql(&[
        "CREATE ROLE anon NOLOGIN",
        "CREATE ROLE authenticated NOLOGIN",
        "CREATE TABLE todos (id bigserial PRIMARY KEY, title text, n int, done bool, meta jsonb, at timestamptz DEFAULT now())",
        "CREATE TABLE hidden (id int PRIMARY KEY)",
        "CREATE TABLE mine (id serial PRIMARY KEY, owner text)",
        "ALTER TABLE mine ENABLE ROW LEVEL SECURITY",
        "GRANT SELECT ON todos, mine TO anon, authenticated",
        // Supabase's auth.uid(), over the settings a check runs with; each user sees their rows.
        "CREATE SCHEMA auth",
        "CREATE FUNCTION auth.uid() RETURNS text LANGUAGE sql STABLE AS \
         $$ SELECT coalesce(nullif(current_setting('request.jwt.claim.sub', true), ''), \
         (nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'sub')) $$",
        "GRANT USAGE ON SCHEMA auth TO anon, authenticated",
        "CREATE POLICY own_rows ON mine FOR SELECT TO authenticated USING (owner = auth.uid())",
    ]);
}

fn serve(dir: &Path, url: &str) -> support::Serve {
    serve_capturing(dir, url, "public.todos,public.hidden,public.mine", &[])
}

/// `fawkes serve` on `url` capturing `tables`, reading the slot every 20 ms, with `extra` flags.
fn serve_capturing(dir: &Path, url: &str, tables: &str, extra: &[&str]) -> support::Serve {
    let mut args = vec![
        "--database-url",
        url,
        "--supabase-jwt-secret",
        SECRET,
        "--cdc-tables",
        tables,
        "--cdc-poll-ms",
        "20",
    ];
    args.extend_from_slice(extra);
    support::Serve::start(dir, &args)
}

#[test]
fn supabase_js_follows_the_apps_tables() {
    let pg = support::LogicalPostgres::start();
    app_schema(&pg);
    let dir = support::temp_dir("cdc-js");
    let server = serve(&dir, &pg.url);
    let (anon, service) = keys();
    support::node_test(
        "test/supabase/cdc.test.js",
        &[
            ("FAWKES_SUPABASE_SECRET", SECRET.to_owned()),
            ("FAWKES_ANON_KEY", anon),
            ("FAWKES_SERVICE_KEY", service),
            ("FAWKES_SUPABASE_URL", server.url()),
            ("FAWKES_PG_URL", pg.url.clone()),
        ],
        5,
    );
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A realtime-js-like socket following `public.todos` inserts; returns once subscribed.
async fn follow(addr: &str, key: &str) -> Ws {
    let url = format!("ws://{addr}/realtime/v1/websocket?apikey={key}&vsn=2.0.0");
    let mut ws = tokio_tungstenite::connect_async(url).await.unwrap().0;
    let join = json!(["1", "1", "realtime:t", "phx_join", {"config": {
        "postgres_changes": [{"event": "INSERT", "schema": "public", "table": "todos"}]}}]);
    ws.send(Message::Text(join.to_string())).await.unwrap();
    loop {
        let f = frame(&mut ws).await;
        if f[3] == "system" {
            assert_eq!(f[4]["message"], "Subscribed to PostgreSQL", "{f}");
            return ws;
        }
    }
}

async fn frame(ws: &mut Ws) -> Value {
    match tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
        Ok(Some(Ok(Message::Text(t)))) => serde_json::from_str(&t).unwrap(),
        other => panic!("expected a frame, got {other:?}"),
    }
}

/// The titles of the inserts that arrive within `quiet` of each other.
async fn titles(ws: &mut Ws, quiet: Duration) -> Vec<String> {
    let mut out = Vec::new();
    while let Ok(Some(Ok(Message::Text(t)))) = tokio::time::timeout(quiet, ws.next()).await {
        let f: Value = serde_json::from_str(&t).unwrap();
        if f[3] == "postgres_changes" {
            out.push(f[4]["data"]["record"]["title"].as_str().unwrap().to_owned());
        }
    }
    out
}

/// A transaction open while Fawkes is stopped and committed after it is back comes once; what
/// was delivered before the stop does not come again; a commit made while Fawkes was down is
/// read from the kept slot at the restart.
#[test]
fn the_slot_outlives_a_restart_with_nothing_lost_or_doubled() {
    use diesel::{Connection, RunQueryDsl};
    let pg = support::LogicalPostgres::start();
    app_schema(&pg);
    let dir = support::temp_dir("cdc-restart");
    let (_, service) = keys();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let server = serve(&dir, &pg.url);
    rt.block_on(async {
        let mut ws = follow(&server.addr, &service).await;
        pg.sql(&["INSERT INTO todos (title) VALUES ('before')"]);
        assert_eq!(titles(&mut ws, Duration::from_secs(2)).await, ["before"]);
    });
    drop(server);
    // While Fawkes is down: one transaction begins (and stays open), another commits.
    let mut open = diesel::PgConnection::establish(&pg.url).unwrap();
    diesel::sql_query("BEGIN").execute(&mut open).unwrap();
    diesel::sql_query("INSERT INTO todos (title) VALUES ('across')")
        .execute(&mut open)
        .unwrap();
    pg.sql(&["INSERT INTO todos (title) VALUES ('while down')"]);
    let server = serve(&dir, &pg.url);
    rt.block_on(async {
        // A listener on the restarted node, then the open transaction commits.
        let mut ws = follow(&server.addr, &service).await;
        diesel::sql_query("COMMIT").execute(&mut open).unwrap();
        pg.sql(&["INSERT INTO todos (title) VALUES ('after')"]);
        let seen = titles(&mut ws, Duration::from_secs(2)).await;
        // 'while down' was read at the restart, possibly before this listener joined; nothing
        // from before the stop comes again, and each change comes at most once.
        let want: Vec<&str> = if seen.first().map(String::as_str) == Some("while down") {
            vec!["while down", "across", "after"]
        } else {
            vec!["across", "after"]
        };
        assert_eq!(seen, want);
    });
    // The restarted node's log: it read the slot it found, and created none.
    let log = std::fs::read_to_string(dir.join("serve.log")).unwrap();
    assert!(log.contains("reading slot fawkes_cdc"), "{log}");
    assert!(!log.contains("created replication slot"), "{log}");
}

/// Without `wal_level = logical`, `serve` stops at start and says how to fix it.
#[test]
fn serve_refuses_a_database_that_cannot_capture() {
    let url = std::env::var("FAWKES_TEST_POSTGRES_URL").expect("FAWKES_TEST_POSTGRES_URL");
    let dir = support::temp_dir("cdc-refused");
    let out = Command::new(env!("CARGO_BIN_EXE_fawkes"))
        .args(["serve", "--port", "0", "--database-url", &url])
        .args([
            "--supabase-jwt-secret",
            SECRET,
            "--cdc-tables",
            "public.todos",
        ])
        .current_dir(&dir)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("change capture needs wal_level = logical, and this PostgreSQL has replica"),
        "{err}"
    );
    let out = Command::new(env!("CARGO_BIN_EXE_fawkes"))
        .args(["serve", "--port", "0", "--supabase-jwt-secret", SECRET])
        .args(["--cdc-tables", "public.todos"])
        .current_dir(&dir)
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr)
        .contains("--cdc-tables needs a PostgreSQL --database-url"));
}

/// Two nodes on one Redis: one reads the slot; killed with SIGKILL, the other takes over, and
/// a listener on the survivor gets every change once.
#[test]
fn another_node_takes_over_the_slot_when_its_reader_dies() {
    let pg = support::LogicalPostgres::start();
    app_schema(&pg);
    let redis = support::Redis::start();
    let redis_url = format!("redis://127.0.0.1:{}", redis.port);
    let dir = support::temp_dir("cdc-takeover");
    let node = |name: &str| {
        let d = dir.join(name);
        std::fs::create_dir_all(&d).unwrap();
        let extra = [
            "--redis-url",
            &redis_url,
            "--node-name",
            name,
            "--metrics-addr",
            "127.0.0.1:0",
        ];
        let s = serve_capturing(&d, &pg.url, "public.todos", &extra);
        support::wait_linked(&s);
        (s, d)
    };
    let reads = |d: &Path| {
        std::fs::read_to_string(d.join("serve.log"))
            .unwrap_or_default()
            .contains("reading slot fawkes_cdc")
    };
    let (a, dir_a) = node("a");
    let (b, dir_b) = node("b");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !reads(&dir_a) && !reads(&dir_b) {
        assert!(
            std::time::Instant::now() < deadline,
            "no node reads the slot"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        !(reads(&dir_a) && reads(&dir_b)),
        "both nodes read the slot"
    );
    // The listener on the node that does not read; the reader is killed.
    let (reader, reader_name, survivor, survivor_dir) = if reads(&dir_a) {
        (a, "a", b, dir_b)
    } else {
        (b, "b", a, dir_a)
    };
    let (_, service) = keys();
    // What the reader publishes on Redis, as a second reader would broadcast it again.
    let captured = capture_redis(&redis_url);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut ws = follow(&survivor.addr, &service).await;
        let mut js = follow_topic(&survivor.addr, &service, "postgres:public.todos").await;
        pg.sql(&["INSERT INTO todos (title) VALUES ('one')"]);
        assert_eq!(titles(&mut ws, Duration::from_secs(2)).await, ["one"]);
        assert_eq!(
            topic_titles(&mut js, Duration::from_millis(300)).await,
            ["one"]
        );
        drop(reader);
        pg.sql(&[
            "INSERT INTO todos (title) VALUES ('two')",
            "INSERT INTO todos (title) VALUES ('three')",
        ]);
        // The survivor takes the lock within a few seconds, and reads from where the dead node's
        // last batch ended.
        assert_eq!(
            titles(&mut ws, Duration::from_secs(6)).await,
            ["two", "three"]
        );
        assert_eq!(
            topic_titles(&mut js, Duration::from_millis(300)).await,
            ["two", "three"]
        );
        // A reader killed between broadcasting a batch and confirming it to the slot leaves the
        // batch to the next reader, which broadcasts it again: the followers drop the repeat.
        let again = captured.lock().unwrap().clone();
        assert!(
            again.iter().any(|m| m.windows(3).any(|w| w == b"one")),
            "the reader's broadcast of 'one' was not seen on Redis"
        );
        let mut redis = redis::Client::open(redis_url.as_str())
            .unwrap()
            .get_connection()
            .unwrap();
        for m in &again {
            let _: i64 = redis::cmd("PUBLISH")
                .arg("phx:Elixir.Fawkes.PubSub.Adapter")
                .arg(m.as_slice())
                .query(&mut redis)
                .unwrap();
        }
        assert_eq!(
            titles(&mut ws, Duration::from_secs(1)).await,
            [] as [&str; 0]
        );
        assert_eq!(
            topic_titles(&mut js, Duration::from_millis(300)).await,
            [] as [&str; 0]
        );
        pg.sql(&["INSERT INTO todos (title) VALUES ('four')"]);
        assert_eq!(titles(&mut ws, Duration::from_secs(2)).await, ["four"]);
        assert_eq!(
            topic_titles(&mut js, Duration::from_millis(300)).await,
            ["four"]
        );
        // The dead node comes back: it waits for the lock (the survivor keeps reading), and
        // its own followers get what is written from then on, once, as do the survivor's.
        let (back, back_dir) = node(reader_name);
        let mut back_ws = follow(&back.addr, &service).await;
        pg.sql(&["INSERT INTO todos (title) VALUES ('five')"]);
        assert_eq!(titles(&mut back_ws, Duration::from_secs(2)).await, ["five"]);
        assert_eq!(titles(&mut ws, Duration::from_millis(300)).await, ["five"]);
        assert_eq!(
            topic_titles(&mut js, Duration::from_millis(300)).await,
            ["five"]
        );
        let logged = std::fs::read_to_string(back_dir.join("serve.log")).unwrap();
        assert!(
            !logged.contains("reading slot fawkes_cdc"),
            "the node back reads the slot although the survivor holds it"
        );
    });
    assert!(reads(&survivor_dir));
}

/// Every message published on the Redis channels of Fawkes's PubSub from now on.
fn capture_redis(url: &str) -> std::sync::Arc<std::sync::Mutex<Vec<Vec<u8>>>> {
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut c = redis::Client::open(url).unwrap().get_connection().unwrap();
    let (ready_tx, ready) = std::sync::mpsc::channel();
    let out = seen.clone();
    std::thread::spawn(move || {
        let mut sub = c.as_pubsub();
        sub.subscribe("phx:Elixir.Fawkes.PubSub.Adapter").unwrap();
        ready_tx.send(()).unwrap();
        while let Ok(m) = sub.get_message() {
            out.lock().unwrap().push(m.get_payload_bytes().to_vec());
        }
    });
    ready.recv().unwrap();
    seen
}

/// A phoenix.js-like socket joined to a `postgres:` topic.
async fn follow_topic(addr: &str, key: &str, topic: &str) -> Ws {
    let url = format!("ws://{addr}/realtime/v1/websocket?apikey={key}&vsn=2.0.0");
    let mut ws = tokio_tungstenite::connect_async(url).await.unwrap().0;
    let join = json!(["1", "1", topic, "phx_join", {}]);
    ws.send(Message::Text(join.to_string())).await.unwrap();
    let reply = frame(&mut ws).await;
    assert_eq!(reply[4]["status"], "ok", "{reply}");
    ws
}

/// The titles of the `change` events that arrive within `quiet` of each other.
async fn topic_titles(ws: &mut Ws, quiet: Duration) -> Vec<String> {
    let mut out = Vec::new();
    while let Ok(Some(Ok(Message::Text(t)))) = tokio::time::timeout(quiet, ws.next()).await {
        let f: Value = serde_json::from_str(&t).unwrap();
        if f[3] == "change" {
            out.push(f[4]["record"]["title"].as_str().unwrap().to_owned());
        }
    }
    out
}

/// A slot that holds back more WAL than `--cdc-max-lag-bytes` (here behind a transaction left
/// open) is dropped and made again: followers get a `system` error, `/metrics` counts it, and
/// changes flow again once the slot is back.
#[test]
fn a_slot_over_its_lag_bound_is_dropped_and_made_again() {
    use diesel::{Connection, RunQueryDsl};
    let pg = support::LogicalPostgres::start();
    app_schema(&pg);
    pg.sql(&["CREATE TABLE filler (x int, pad text)"]);
    let dir = support::temp_dir("cdc-lag");
    let admin = support::create_user(&dir, &pg.url, &["--name", "root", "--admin"]);
    let extra = [
        "--cdc-max-lag-bytes",
        "4000000",
        "--metrics-addr",
        "127.0.0.1:0",
    ];
    let server = serve_capturing(&dir, &pg.url, "public.todos", &extra);
    let (_, service) = keys();
    let metric = |name: &str| -> i64 {
        let url = server.metrics_url();
        let addr = url
            .trim_start_matches("http://")
            .trim_end_matches("/metrics");
        let (_, _, body) = support::http_raw(addr, "GET", "/metrics", &[], "");
        body.lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .and_then(|v| v.parse().ok())
            .unwrap_or(-1)
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut ws = follow(&server.addr, &service).await;
        // A transaction left open holds the slot's restart point while WAL grows past the bound.
        let mut open = diesel::PgConnection::establish(&pg.url).unwrap();
        diesel::sql_query("BEGIN").execute(&mut open).unwrap();
        diesel::sql_query("INSERT INTO todos (title) VALUES ('held')")
            .execute(&mut open)
            .unwrap();
        pg.sql(&["INSERT INTO filler SELECT g, repeat('x', 100) FROM generate_series(1, 60000) g"]);
        let system = loop {
            let f = frame(&mut ws).await;
            if f[3] == "system" {
                break f;
            }
        };
        assert_eq!(system[4]["extension"], "postgres_changes");
        assert_eq!(system[4]["status"], "error");
        let message = system[4]["message"].as_str().unwrap();
        assert!(
            message.contains("over --cdc-max-lag-bytes 4000000: dropped and made again"),
            "{message}"
        );
        assert_eq!(metric("fawkes_cdc_slot_drops_total"), 1);
        // The new slot is made once the open transaction ends; its change is among those lost.
        diesel::sql_query("COMMIT").execute(&mut open).unwrap();
        std::thread::sleep(Duration::from_millis(500));
        pg.sql(&["INSERT INTO todos (title) VALUES ('after')"]);
        assert_eq!(titles(&mut ws, Duration::from_secs(3)).await, ["after"]);
        assert!(metric("fawkes_cdc_slot_lag_bytes") < 4_000_000);
        assert_eq!(metric("fawkes_cdc_reading"), 1);
    });
    // The inspector shows the same.
    let stats = support::admin_stats(&server.addr, &admin);
    let cdc = &stats["change_capture"];
    assert_eq!(
        (cdc["reading"].as_bool(), cdc["slot_drops"].as_i64()),
        (Some(true), Some(1)),
        "{stats}"
    );
    assert!(
        cdc["slot_lag_bytes"]
            .as_i64()
            .is_some_and(|l| l < 4_000_000),
        "{stats}"
    );
}

/// A follower whose filter matches none of a burst of changes queues none of them: with a
/// mailbox bound far below the burst it stays open, and still gets the change it wants. (Before
/// the filter ran on the publishing side, every change of the table went to every follower's
/// mailbox, and a busy table closed them with 1013.)
#[test]
fn a_follower_queues_only_the_changes_its_filter_wants() {
    let pg = support::LogicalPostgres::start();
    app_schema(&pg);
    let dir = support::temp_dir("cdc-filter-side");
    let server = serve_capturing(&dir, &pg.url, "public.todos", &["--max-queue", "50"]);
    let (_, service) = keys();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let url = format!(
            "ws://{}/realtime/v1/websocket?apikey={service}&vsn=2.0.0",
            server.addr
        );
        let mut ws = tokio_tungstenite::connect_async(url).await.unwrap().0;
        let join = json!(["1", "1", "realtime:f", "phx_join", {"config": {"postgres_changes": [
            {"event": "INSERT", "schema": "public", "table": "todos", "filter": "n=eq.-1"}]}}]);
        ws.send(Message::Text(join.to_string())).await.unwrap();
        loop {
            if frame(&mut ws).await[3] == "system" {
                break;
            }
        }
        pg.sql(&["INSERT INTO todos (title, n) SELECT 'noise', g FROM generate_series(1, 2000) g"]);
        pg.sql(&["INSERT INTO todos (title, n) VALUES ('wanted', -1)"]);
        assert_eq!(titles(&mut ws, Duration::from_secs(3)).await, ["wanted"]);
    });
    let log = std::fs::read_to_string(dir.join("serve.log")).unwrap();
    assert!(!log.contains("closing the slow client"), "{log}");
}

/// The inspector's change-capture section in Chromium
/// (`protocol_tests/js/test/browser/cdc.test.js`): the slot this node reads, its lag, and the
/// changes it broadcast as rows are written.
#[test]
fn the_inspector_shows_the_slot_in_chromium() {
    let pg = support::LogicalPostgres::start();
    app_schema(&pg);
    let dir = support::temp_dir("cdc-inspector");
    let admin = support::create_user(&dir, &pg.url, &["--name", "root", "--admin"]);
    let server = serve_capturing(&dir, &pg.url, "public.todos", &[]);
    support::node_test(
        "test/browser/cdc.test.js",
        &[
            ("FAWKES_APP_URL", server.url()),
            ("FAWKES_ADMIN_TOKEN", admin),
            ("FAWKES_PG_URL", pg.url.clone()),
        ],
        1,
    );
}

/// A `match` filter whose pattern compiles past `--realtime-max-filter-pattern-bytes` is
/// refused naming it; the same pattern under the default bound is served.
#[test]
fn a_filter_pattern_past_its_bound_is_refused() {
    let pg = support::LogicalPostgres::start();
    app_schema(&pg);
    let (_, service) = keys();
    let topic = r"postgres:public.todos:title=match.^[a-z]{300}$";
    let rt = tokio::runtime::Runtime::new().unwrap();
    for (bound, refused) in [("4096", true), ("262144", false)] {
        let dir = support::temp_dir("cdc-pattern");
        let extra = ["--realtime-max-filter-pattern-bytes", bound];
        let server = serve_capturing(&dir, &pg.url, "public.todos", &extra);
        rt.block_on(async {
            let url = format!(
                "ws://{}/realtime/v1/websocket?apikey={service}&vsn=2.0.0",
                server.addr
            );
            let mut ws = tokio_tungstenite::connect_async(url).await.unwrap().0;
            let join = json!(["1", "1", topic, "phx_join", {}]);
            ws.send(Message::Text(join.to_string())).await.unwrap();
            let reply = frame(&mut ws).await;
            if refused {
                assert_eq!(reply[4]["status"], "error", "{reply}");
                let why = reply[4]["response"]["reason"].as_str().unwrap();
                assert!(
                    why.starts_with(
                        r#"title=match: "^[a-z]{300}$" is not a regular expression this server runs"#
                    ),
                    "{why}"
                );
            } else {
                assert_eq!(reply[4]["status"], "ok", "{reply}");
            }
        });
    }
}
