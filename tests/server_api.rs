//! The server API (`/api/server/...`) of a real `fawkes serve`, over real sockets: off without a
//! key, 401 without the right one; a broadcast (one, or an array) reaches a joined
//! phoenix-protocol client as the exact frame; every bad input gets its exact status and body
//! and sends nothing; a disconnect closes the sockets of that id and no other; presence and
//! topics answer exactly what the clients see. Across two nodes over a real redis-server (and
//! one PostgreSQL database), node A's server API reaches a client of node B.

mod support;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;

/// The server key the tests' servers are given.
const KEY: &str = "server-api-test-key-0123456789abcdef";
/// The Phoenix app's secret_key_base: its Phoenix.Tokens give sockets the ids
/// `users_socket:<external id>`, as a Phoenix app's UserSocket does.
const SKB: &str = "server-api-test-secret-key-base-0123456789abcdef0123456789abcdef0123456789";

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// `fawkes ARGS...` in `dir`: its stdout, which must say it succeeded.
fn fawkes(dir: &Path, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_fawkes"))
        .args(args)
        .current_dir(dir)
        .env_remove("DATABASE_URL")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "fawkes {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn last_line(out: &str) -> String {
    out.lines().last().unwrap().to_owned()
}

struct User {
    id: i64,
    /// An API token, for the REST API.
    api_token: String,
    /// A Phoenix.Token, for sockets: their id is `socket_id`.
    phoenix_token: String,
    socket_id: String,
}

/// A user with an external id, their API token and a Phoenix.Token minted for them.
fn user(dir: &Path, db: &str, name: &str, external_id: &str) -> User {
    let out = fawkes(
        dir,
        &[
            "users",
            "create",
            "--database-url",
            db,
            "--name",
            name,
            "--community-member",
            "--external-id",
            external_id,
        ],
    );
    let id = out
        .split_once("(id ")
        .and_then(|(_, r)| r.split_once(')'))
        .map(|(id, _)| id.parse().unwrap())
        .unwrap_or_else(|| panic!("a user id in {out}"));
    let minted = fawkes(
        dir,
        &[
            "tokens",
            "phoenix",
            "--database-url",
            db,
            "--user",
            name,
            "--phoenix-secret-key-base",
            SKB,
        ],
    );
    User {
        id,
        api_token: last_line(&out),
        phoenix_token: last_line(&minted),
        socket_id: format!("users_socket:{external_id}"),
    }
}

/// A server API request with `auth` as its Authorization header: (status, head, body).
fn call(
    addr: &str,
    method: &str,
    path: &str,
    auth: Option<&str>,
    body: &str,
) -> (u16, String, String) {
    let mut headers = vec![("Content-Type", "application/json")];
    if let Some(a) = auth {
        headers.push(("Authorization", a));
    }
    support::http_raw(addr, method, path, &headers, body)
}

/// A server API request with the key: (status, body as JSON).
fn api(addr: &str, method: &str, path: &str, body: &str) -> (u16, Value) {
    let bearer = format!("Bearer {KEY}");
    let (status, _, body) = call(addr, method, path, Some(&bearer), body);
    let json = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body:?}"));
    (status, json)
}

/// A public chat room made by `owner` over REST: its id (its voice topic is `voice:<id>`,
/// a topic no app records).
fn room(addr: &str, owner: &User) -> i64 {
    let bearer = format!("Bearer {}", owner.api_token);
    let (status, _, body) = support::http_raw(
        addr,
        "POST",
        "/api/channels",
        &[
            ("Authorization", &bearer),
            ("Content-Type", "application/json"),
        ],
        r#"{"name": "lounge"}"#,
    );
    assert_eq!(status, 201, "{body}");
    serde_json::from_str::<Value>(&body).unwrap()["id"]
        .as_i64()
        .unwrap()
}

/// A `fawkes serve` with the server API on, signing users in with Phoenix.Tokens too.
fn serve(dir: &Path, db: &str, more: &[&str]) -> support::Serve {
    let mut args = vec![
        "--database-url",
        db,
        "--server-api-key",
        KEY,
        "--phoenix-secret-key-base",
        SKB,
    ];
    args.extend_from_slice(more);
    support::Serve::start(dir, &args)
}

async fn connect(addr: &str, token: &str) -> Ws {
    let url = format!("ws://{addr}/socket/websocket?vsn=2.0.0&token={token}");
    tokio_tungstenite::connect_async(url).await.unwrap().0
}

async fn next(ws: &mut Ws) -> Message {
    match tokio::time::timeout(Duration::from_secs(5), ws.next()).await {
        Ok(Some(Ok(m))) => m,
        other => panic!("expected a frame within 5 s, got {other:?}"),
    }
}

async fn text(ws: &mut Ws) -> String {
    match next(ws).await {
        Message::Text(t) => t,
        other => panic!("expected a text frame, got {other:?}"),
    }
}

/// Reads frames until each of `events` has come once, in any order (presence events of a join
/// race its reply); any other frame fails. The frames, by event.
async fn expect_events(ws: &mut Ws, events: &[&str]) -> HashMap<String, Value> {
    let mut seen = HashMap::new();
    while seen.len() < events.len() {
        let t = text(ws).await;
        let f: Value = serde_json::from_str(&t).unwrap();
        let event = f[3].as_str().unwrap_or_default().to_owned();
        assert!(
            events.contains(&event.as_str()) && !seen.contains_key(&event),
            "unexpected frame {t} (waiting for {events:?})"
        );
        seen.insert(event, f);
    }
    seen
}

/// Joins `topic` (join ref and ref `r`); the reply must be ok. The join's frames, by event:
/// `phx_reply` and the voice channel's `presence_state` and own `presence_diff`.
async fn join_voice(ws: &mut Ws, topic: &str, r: &str) -> HashMap<String, Value> {
    let frame = json!([r, r, topic, "phx_join", {}]).to_string();
    ws.send(Message::Text(frame)).await.unwrap();
    let got = expect_events(ws, &["phx_reply", "presence_state", "presence_diff"]).await;
    assert_eq!(got["phx_reply"][4]["status"], "ok", "{got:?}");
    got
}

/// A heartbeat gets its reply: the socket is open and nothing else came first.
async fn heartbeat(ws: &mut Ws, r: &str) {
    let frame = json!([null, r, "phoenix", "heartbeat", {}]).to_string();
    ws.send(Message::Text(frame)).await.unwrap();
    let reply: Value = serde_json::from_str(&text(ws).await).unwrap();
    assert_eq!(
        reply,
        json!([null, r, "phoenix", "phx_reply", {"status": "ok", "response": {}}])
    );
}

/// The socket is closed by the server with 1001 (Phoenix's `disconnect`), and then ends.
async fn closed_going_away(ws: &mut Ws) {
    match next(ws).await {
        Message::Close(Some(f)) => assert_eq!(f.code, CloseCode::Away),
        other => panic!("expected a 1001 close, got {other:?}"),
    }
    let end = tokio::time::timeout(Duration::from_secs(5), ws.next()).await;
    assert!(
        matches!(end, Ok(None) | Ok(Some(Err(_)))),
        "the socket should end, got {end:?}"
    );
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Runtime::new().unwrap()
}

#[test]
fn off_without_a_key_and_401_without_the_right_one() {
    let dir = support::temp_dir("server-api-auth");
    let db = dir.join("fawkes.db");
    let db = db.to_str().unwrap();
    // The key from a file named in the config file, as a deployment would keep it.
    std::fs::write(dir.join("key.txt"), format!("{KEY}\n")).unwrap();
    std::fs::write(
        dir.join("fawkes.toml"),
        "server-api-key-file = \"key.txt\"\n",
    )
    .unwrap();
    let on = support::Serve::start(&dir, &["--database-url", db]);
    let calls = [
        (
            "POST",
            "/api/server/broadcast",
            r#"{"topic": "room:1", "event": "e", "payload": {}}"#,
            202,
            json!({"broadcasts": 1}),
        ),
        (
            "POST",
            "/api/server/disconnect",
            r#"{"socket_id": "users_socket:nobody"}"#,
            202,
            json!({"socket_id": "users_socket:nobody"}),
        ),
        ("GET", "/api/server/presence/room:1", "", 200, json!({})),
        ("GET", "/api/server/topics", "", 200, json!({"topics": []})),
    ];
    let missing =
        json!({"errors": {"detail": "give the server API key as Authorization: Bearer <key>"}});
    let wrong = json!({"errors": {"detail": "wrong server API key"}});
    let right = format!("Bearer {KEY}");
    let (short, long) = (
        format!("Bearer {}", &KEY[..KEY.len() - 1]),
        format!("Bearer {KEY}x"),
    );
    let basic = format!("Basic {KEY}");
    for (method, path, body, status, answer) in &calls {
        for (auth, want) in [
            (None, &missing),
            (Some(basic.as_str()), &missing),
            (Some("Bearer nope"), &wrong),
            (Some(short.as_str()), &wrong),
            (Some(long.as_str()), &wrong),
        ] {
            let (got, head, text) = call(&on.addr, method, path, auth, body);
            assert_eq!(got, 401, "{method} {path} with {auth:?}: {text}");
            assert_eq!(&serde_json::from_str::<Value>(&text).unwrap(), want);
            assert!(
                head.to_lowercase().contains("www-authenticate: bearer"),
                "{head}"
            );
        }
        let (got, _, text) = call(&on.addr, method, path, Some(&right), body);
        assert_eq!(got, *status, "{method} {path}: {text}");
        assert_eq!(&serde_json::from_str::<Value>(&text).unwrap(), answer);
    }
    // `config print` says where the key came from, never the key.
    let printed = fawkes(&dir, &["config", "print"]);
    assert!(
        printed.contains("server-api-key-file = key.txt  # file"),
        "{printed}"
    );
    drop(on);
    std::fs::remove_file(dir.join("fawkes.toml")).unwrap();
    let printed = fawkes(&dir, &["config", "print", "--server-api-key", KEY]);
    assert!(
        printed.contains("server-api-key = ***  # flag") && !printed.contains(KEY),
        "{printed}"
    );

    // Without a key there is no server API at all, whatever a caller sends.
    let off = support::Serve::start(&dir, &["--database-url", db]);
    for (method, path, body, _, _) in &calls {
        for auth in [None, Some(right.as_str())] {
            let (got, _, text) = call(&off.addr, method, path, auth, body);
            assert_eq!((got, text.as_str()), (404, ""), "{method} {path}");
        }
    }
    drop(off);

    // An empty key would let anyone in: refused at start.
    let out = Command::new(env!("CARGO_BIN_EXE_fawkes"))
        .args(["serve", "--port", "0", "--database-url", db])
        .args(["--server-api-key", ""])
        .current_dir(&dir)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("fawkes: the server API key is empty"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn broadcasts_reach_joined_clients_as_the_exact_frames_and_bad_input_sends_nothing() {
    let dir = support::temp_dir("server-api-broadcast");
    let db = dir.join("fawkes.db");
    let db = db.to_str().unwrap();
    let alice = user(&dir, db, "alice", "101");
    let server = serve(
        &dir,
        db,
        &[
            "--server-api-max-body-bytes",
            "300",
            "--server-api-max-broadcasts",
            "3",
            "--max-topic-bytes",
            "24",
        ],
    );
    let addr = server.addr.clone();
    let id = room(&addr, &alice);
    let topic = format!("voice:{id}");
    rt().block_on(async {
        let mut ws = connect(&addr, &alice.phoenix_token).await;
        join_voice(&mut ws, &topic, "1").await;

        // One broadcast: Endpoint.broadcast's frame, as a V2 client gets it.
        let one = json!({"topic": topic, "event": "new_msg", "payload": {"body": "hi", "n": 1}});
        let (status, body) = api(&addr, "POST", "/api/server/broadcast", &one.to_string());
        assert_eq!((status, body), (202, json!({"broadcasts": 1})));
        assert_eq!(
            text(&mut ws).await,
            format!(r#"[null,null,"{topic}","new_msg",{{"body":"hi","n":1}}]"#)
        );

        // An array: each sent, in order; one to a topic nobody is on changes nothing here.
        let many = json!([
            {"topic": topic, "event": "first", "payload": {"i": 1}},
            {"topic": "room:nobody", "event": "lost", "payload": {}},
            {"topic": topic, "event": "second", "payload": {"i": 2}},
        ]);
        let (status, body) = api(&addr, "POST", "/api/server/broadcast", &many.to_string());
        assert_eq!((status, body), (202, json!({"broadcasts": 3})));
        assert_eq!(
            text(&mut ws).await,
            format!(r#"[null,null,"{topic}","first",{{"i":1}}]"#)
        );
        assert_eq!(
            text(&mut ws).await,
            format!(r#"[null,null,"{topic}","second",{{"i":2}}]"#)
        );

        // Bad input: its exact answer, and nothing sent (a good broadcast in a bad array
        // included).
        let good = json!({"topic": topic, "event": "e", "payload": {}});
        let four = json!([good, good, good, good]).to_string();
        let long_topic = "t".repeat(25);
        let recorded = "is a recorded topic (community:feed, collection:*, channel:*, thread:*, \
                        user:*, community_member:*): its events come from the apps' writes";
        let cases: Vec<(&str, String, u16, Value)> = vec![
            (
                "broadcast",
                "{".into(),
                400,
                json!({"errors": {"detail": "malformed JSON: EOF while parsing an object at line 1 column 1"}}),
            ),
            (
                "broadcast",
                "42".into(),
                422,
                json!({"errors": {"body": ["must be a broadcast object or a non-empty array of them"]}}),
            ),
            (
                "broadcast",
                "[]".into(),
                422,
                json!({"errors": {"body": ["must not be an empty array"]}}),
            ),
            (
                "broadcast",
                four,
                422,
                json!({"errors": {"body": ["holds 4 broadcasts, over the limit of 3 (--server-api-max-broadcasts)"]}}),
            ),
            (
                "broadcast",
                "{}".into(),
                422,
                json!({"errors": {"topic": ["can't be blank"], "event": ["can't be blank"], "payload": ["can't be blank"]}}),
            ),
            (
                "broadcast",
                r#"{"topic": "", "event": 5, "payload": []}"#.into(),
                422,
                json!({"errors": {"topic": ["can't be blank"], "event": ["must be a string"], "payload": ["must be a JSON object"]}}),
            ),
            (
                "broadcast",
                r#"{"topic": null, "event": "", "payload": "x"}"#.into(),
                422,
                json!({"errors": {"topic": ["can't be blank"], "event": ["can't be blank"], "payload": ["must be a JSON object"]}}),
            ),
            (
                "broadcast",
                json!({"topic": long_topic, "event": "e", "payload": {}}).to_string(),
                422,
                json!({"errors": {"topic": ["must be at most 24 bytes"]}}),
            ),
            (
                "broadcast",
                r#"{"topic": "collection:notes", "event": "e", "payload": {}}"#.into(),
                422,
                json!({"errors": {"topic": [recorded]}}),
            ),
            (
                "broadcast",
                json!({"topic": topic, "event": "e", "paylod": {}}).to_string(),
                422,
                json!({"errors": {
                    "paylod": ["is not a field here (expected topic, event, payload)"],
                    "payload": ["can't be blank"],
                }}),
            ),
            (
                "broadcast",
                json!([good, "x", {"topic": topic, "event": "e", "payload": 1}]).to_string(),
                422,
                json!({"errors": {
                    "[1]": ["must be an object with topic, event and payload"],
                    "[2].payload": ["must be a JSON object"],
                }}),
            ),
            (
                "broadcast",
                json!({"topic": topic, "event": "e", "payload": {"pad": "x".repeat(300)}})
                    .to_string(),
                413,
                json!({"errors": {"detail": "the body is over 300 bytes (--server-api-max-body-bytes)"}}),
            ),
            (
                "disconnect",
                "nope".into(),
                400,
                json!({"errors": {"detail": "malformed JSON: expected ident at line 1 column 2"}}),
            ),
            (
                "disconnect",
                "{}".into(),
                422,
                json!({"errors": {"socket_id": ["can't be blank"]}}),
            ),
            (
                "disconnect",
                r#"{"socket_id": 7}"#.into(),
                422,
                json!({"errors": {"socket_id": ["must be a string"]}}),
            ),
            (
                "disconnect",
                r#"["users_socket:101"]"#.into(),
                422,
                json!({"errors": {"body": ["must be an object with socket_id"]}}),
            ),
            (
                "disconnect",
                json!({"socket_id": long_topic}).to_string(),
                422,
                json!({"errors": {"socket_id": ["must be at most 24 bytes"]}}),
            ),
            (
                "disconnect",
                r#"{"socket_id": "users_socket:101", "why": "x"}"#.into(),
                422,
                json!({"errors": {"why": ["is not a field here (expected socket_id)"]}}),
            ),
        ];
        for (route, body, status, answer) in &cases {
            let path = format!("/api/server/{route}");
            assert_eq!(
                api(&addr, "POST", &path, body),
                (*status, answer.clone()),
                "POST {path} {body}"
            );
        }
        for (path, answer) in [
            (
                "/api/server/presence/".to_owned(),
                json!({"errors": {"topic": ["can't be blank"]}}),
            ),
            (
                format!("/api/server/presence/{long_topic}"),
                json!({"errors": {"topic": ["must be at most 24 bytes"]}}),
            ),
        ] {
            assert_eq!(api(&addr, "GET", &path, ""), (422, answer), "{path}");
        }
        // A body over the bound without a Content-Length (chunked) is cut off just the same.
        let mut s = std::net::TcpStream::connect(&addr).unwrap();
        let chunk = "x".repeat(200);
        let req = format!(
            "POST /api/server/broadcast HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
             Authorization: Bearer {KEY}\r\nTransfer-Encoding: chunked\r\n\r\n\
             c8\r\n{chunk}\r\nc8\r\n{chunk}\r\n0\r\n\r\n"
        );
        s.write_all(req.as_bytes()).unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        assert!(out.starts_with("HTTP/1.1 413"), "{out}");
        assert!(
            out.ends_with(
                r#"{"errors":{"detail":"the body is over 300 bytes (--server-api-max-body-bytes)"}}"#
            ),
            "{out}"
        );

        // The socket got none of that: the next frame is the next good broadcast.
        let after = json!({"topic": topic, "event": "after", "payload": {}});
        let (status, _) = api(&addr, "POST", "/api/server/broadcast", &after.to_string());
        assert_eq!(status, 202);
        assert_eq!(
            text(&mut ws).await,
            format!(r#"[null,null,"{topic}","after",{{}}]"#)
        );
    });
}

#[test]
fn disconnect_closes_every_socket_of_that_id_and_no_other() {
    let dir = support::temp_dir("server-api-disconnect");
    let db = dir.join("fawkes.db");
    let db = db.to_str().unwrap();
    let alice = user(&dir, db, "alice", "101");
    let bob = user(&dir, db, "bob", "102");
    let server = serve(&dir, db, &[]);
    let addr = server.addr.clone();
    rt().block_on(async {
        // Alice in two tabs, Bob in one.
        let mut a1 = connect(&addr, &alice.phoenix_token).await;
        let mut a2 = connect(&addr, &alice.phoenix_token).await;
        let mut b = connect(&addr, &bob.phoenix_token).await;
        for ws in [&mut a1, &mut a2, &mut b] {
            heartbeat(ws, "1").await;
        }
        let (status, body) = api(
            &addr,
            "POST",
            "/api/server/disconnect",
            &json!({"socket_id": alice.socket_id}).to_string(),
        );
        assert_eq!(
            (status, body),
            (202, json!({"socket_id": "users_socket:101"}))
        );
        closed_going_away(&mut a1).await;
        closed_going_away(&mut a2).await;
        heartbeat(&mut b, "2").await;
    });
}

#[test]
fn presence_and_topics_answer_what_the_clients_see() {
    let dir = support::temp_dir("server-api-presence");
    let db = dir.join("fawkes.db");
    let db = db.to_str().unwrap();
    let alice = user(&dir, db, "alice", "101");
    let bob = user(&dir, db, "bob", "102");
    let server = serve(&dir, db, &[]);
    let addr = server.addr.clone();
    let id = room(&addr, &alice);
    let topic = format!("voice:{id}");
    rt().block_on(async {
        let mut a = connect(&addr, &alice.phoenix_token).await;
        join_voice(&mut a, &topic, "1").await;
        let mut b = connect(&addr, &bob.phoenix_token).await;
        let joined = join_voice(&mut b, &topic, "1").await;
        expect_events(&mut a, &["presence_diff", "peer_joined"]).await;

        // The list is what the last joiner's presence_state carries: both, one meta each.
        let state = joined["presence_state"][4].clone();
        let (status, list) = api(&addr, "GET", &format!("/api/server/presence/{topic}"), "");
        assert_eq!((status, &list), (200, &state));
        let mut keys: Vec<&String> = list.as_object().unwrap().keys().collect();
        keys.sort();
        let mut want = [alice.id.to_string(), bob.id.to_string()];
        want.sort();
        assert_eq!(keys, want.iter().collect::<Vec<_>>());
        for (_, entry) in list.as_object().unwrap() {
            let metas = entry["metas"].as_array().unwrap();
            assert_eq!(metas.len(), 1);
            let mut meta = metas[0].as_object().unwrap().clone();
            assert!(meta.remove("phx_ref").unwrap().is_string());
            assert_eq!(
                Value::Object(meta),
                json!({"muted": false, "deafened": false})
            );
        }
        assert_eq!(
            api(&addr, "GET", "/api/server/presence/voice:0", ""),
            (200, json!({}))
        );

        // Topics: each joined channel's subscriptions (a voice channel also listens on its
        // user's own signaling topic and on its room's stream, which may end it) and each
        // socket id.
        let subs = |t: String, n: u64| json!({"topic": t, "subscribers": n});
        let mut want = vec![
            subs(format!("channel:{id}"), 2),
            subs(alice.socket_id.clone(), 1),
            subs(bob.socket_id.clone(), 1),
            subs(topic.clone(), 2),
            subs(format!("{topic}:user:{}", alice.id), 1),
            subs(format!("{topic}:user:{}", bob.id), 1),
        ];
        want.sort_by(|x, y| x["topic"].as_str().cmp(&y["topic"].as_str()));
        assert_eq!(
            api(&addr, "GET", "/api/server/topics", ""),
            (200, json!({ "topics": want }))
        );

        // Bob leaves: his presence and his subscriptions go.
        drop(b);
        let deadline = Instant::now() + Duration::from_secs(5);
        let only_alice = loop {
            let (_, list) = api(&addr, "GET", &format!("/api/server/presence/{topic}"), "");
            if list.as_object().unwrap().len() == 1 || Instant::now() > deadline {
                break list;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert_eq!(
            only_alice,
            json!({ alice.id.to_string(): state[alice.id.to_string()] })
        );
        let mut want = vec![
            subs(format!("channel:{id}"), 1),
            subs(alice.socket_id.clone(), 1),
            subs(topic.clone(), 1),
            subs(format!("{topic}:user:{}", alice.id), 1),
        ];
        want.sort_by(|x, y| x["topic"].as_str().cmp(&y["topic"].as_str()));
        assert_eq!(
            api(&addr, "GET", "/api/server/topics", ""),
            (200, json!({ "topics": want }))
        );
    });
}

#[test]
fn across_two_nodes_node_a_reaches_the_clients_of_node_b() {
    let redis = support::Redis::start();
    let pg = support::fresh_postgres("server_api");
    let dir = support::temp_dir("server-api-cluster");
    let (dir_a, dir_b) = (dir.join("a"), dir.join("b"));
    std::fs::create_dir_all(&dir_a).unwrap();
    std::fs::create_dir_all(&dir_b).unwrap();
    let alice = user(&dir, &pg, "alice", "101");
    let bob = user(&dir, &pg, "bob", "102");
    let redis_url = format!("redis://127.0.0.1:{}", redis.port);
    let node = |dir: &Path, name: &str| {
        let args = [
            "--redis-url",
            &redis_url,
            "--node-name",
            name,
            "--metrics-addr",
            "127.0.0.1:0",
        ];
        serve(dir, &pg, &args)
    };
    let a = node(&dir_a, "a");
    let b = node(&dir_b, "b");
    support::wait_linked(&a);
    support::wait_linked(&b);
    let id = room(&a.addr, &alice);
    let topic = format!("voice:{id}");
    rt().block_on(async {
        let mut alice_ws = connect(&b.addr, &alice.phoenix_token).await;
        let joined = join_voice(&mut alice_ws, &topic, "1").await;
        let mut bob_ws = connect(&b.addr, &bob.phoenix_token).await;
        heartbeat(&mut bob_ws, "1").await;

        // A broadcast through A's server API: the exact frame on B.
        let one = json!({"topic": topic, "event": "new_msg", "payload": {"body": "from a"}});
        let (status, body) = api(&a.addr, "POST", "/api/server/broadcast", &one.to_string());
        assert_eq!((status, body), (202, json!({"broadcasts": 1})));
        assert_eq!(
            text(&mut alice_ws).await,
            format!(r#"[null,null,"{topic}","new_msg",{{"body":"from a"}}]"#)
        );

        // A's presence is every node's: Alice, tracked on B, once replicated.
        let state = joined["presence_state"][4].clone();
        let path = format!("/api/server/presence/{topic}");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let (status, list) = api(&a.addr, "GET", &path, "");
            assert_eq!(status, 200);
            if list == state {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "A lists {list}, B's client was told {state}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // Subscriber counts are each node's own: A has no clients.
        assert_eq!(
            api(&a.addr, "GET", "/api/server/topics", ""),
            (200, json!({"topics": []}))
        );

        // A disconnect through A closes Bob's socket on B, and not Alice's.
        let (status, _) = api(
            &a.addr,
            "POST",
            "/api/server/disconnect",
            &json!({"socket_id": bob.socket_id}).to_string(),
        );
        assert_eq!(status, 202);
        closed_going_away(&mut bob_ws).await;
        heartbeat(&mut alice_ws, "2").await;
    });
}
