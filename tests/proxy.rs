//! Channels proxied to the app's backend (`apps::proxy`), against `fawkes serve` and a real HTTP
//! backend: a Python process (standard library only) written here or the example's, over real
//! sockets. Joins, pushes, assigns, presence, close and leave; the signature; a slow, a dead, a
//! garbage-answering backend and a full queue, each failing with a clear reply, never a hang.

mod support;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use support::http_raw as http;
use tokio_tungstenite::tungstenite::Message;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

const SECRET: &str = "test-backend-secret";

/// A backend for the tests: `/join` wants `"password": "sesame"`; `/push` acts by event;
/// `/connect` by the connect param `let` (`in`: allowed with assigns, `ok`: allowed, `slow`,
/// `garbage`, `track`: an answer that does not apply; anything else refused);
/// `/leave` appends each request to `leaves.jsonl`. Every request is checked for its signature
/// (401 without a good one) and appended to `requests.jsonl`. With `CERT` and `KEY` (PEM files)
/// in its environment, it serves https.
const BACKEND: &str = r#"
import hashlib, hmac, json, os, sys, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
SECRET = os.environ["SECRET"].encode()
DIR = os.environ["DIR"]

def record(name, req):
    with open(os.path.join(DIR, name), "a") as f:
        f.write(json.dumps(req) + "\n")

def join(req):
    if req["payload"].get("password") != "sesame":
        return {"reply": {"status": "error", "response": {"reason": "wrong password"}}}
    nick = req["payload"].get("nick", "anon")
    ans = {"reply": {"status": "ok", "response": {"hello": nick}},
           "assigns": dict(req["assigns"], nick=nick, count=0)}
    if req["payload"].get("track"):
        ans["track"] = {"key": nick, "meta": {"nick": nick}}
    return ans

def push(req):
    ev, a = req["event"], req["assigns"]
    if ev == "shout":
        count = a["count"] + 1
        return {
            "reply": {"status": "ok", "response": {"count": count}},
            "broadcast": [{"event": "shouted", "payload": {"nick": a["nick"], "text": req["payload"]["text"]}},
                          {"topic": "lobby", "event": "elsewhere", "payload": {"n": count}}],
            "push": [{"event": "private", "payload": {"count": count}}],
            "assigns": dict(a, count=count),
        }
    if ev == "whoami":
        return {"reply": {"status": "ok", "response": req}}
    if ev == "custom":
        return {"reply": {"status": "later", "response": {"why": "custom status"}}}
    if ev == "noreply":
        return {"push": [{"event": "nothing_to_say", "payload": {}}]}
    if ev == "bye":
        return {"reply": {"status": "ok", "response": {"bye": True}}, "close": True}
    if ev == "slow":
        time.sleep(float(req["payload"].get("seconds", 3)))
        return {"reply": {"status": "ok", "response": {"slept": True}}}
    if ev == "garbage":
        return b"this is not json {"
    if ev == "badshape":
        return {"reply": "ok"}
    if ev == "huge":
        return {"reply": {"status": "ok", "response": {"pad": "x" * (2 * 1024 * 1024)}}}
    return {"reply": {"status": "error", "response": {"reason": "unknown " + ev}}}

def connect(req):
    how = req["params"].get("let", "")
    if how == "in":
        return {"assigns": {"role": req["params"].get("role", "guest"), "via": "connect"}}
    if how == "ok":
        return {"reply": {"status": "ok", "response": {}}}
    if how == "slow":
        time.sleep(3)
        return {}
    if how == "garbage":
        return b"<html>not json"
    if how == "track":
        return {"track": {"key": "k"}}
    return {"reply": {"status": "error", "response": {"reason": "not you"}}}

def leave(req):
    record("leaves.jsonl", req)
    return {}

class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length") or 0))
        good = "sha256=" + hmac.new(SECRET, body, hashlib.sha256).hexdigest()
        if not hmac.compare_digest(good, self.headers.get("x-fawkes-signature", "")):
            return self.send(401, b'{"error":"bad signature"}')
        req = json.loads(body)
        record("requests.jsonl", req)
        out = {"/join": join, "/push": push, "/leave": leave, "/connect": connect}[self.path](req)
        self.send(200, out if isinstance(out, bytes) else json.dumps(out).encode())
    def send(self, status, data):
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
    def log_message(self, *a):
        pass

class S(ThreadingHTTPServer):
    def handle_error(self, request, client_address):
        pass  # a client that gave up (a timeout, an answer over its cap): expected here

s = S(("127.0.0.1", int(sys.argv[1])), H)
if os.environ.get("CERT"):
    import ssl
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(os.environ["CERT"], os.environ["KEY"])
    s.socket = ctx.wrap_socket(s.socket, server_side=True)
print("listening on", s.server_address[1], flush=True)
s.serve_forever()
"#;

/// A backend process, killed on drop.
struct Backend {
    child: Child,
    port: u16,
    scheme: &'static str,
}

impl Backend {
    /// `script` (a path) on `port` (0: any), with the secret and `dir` for its records.
    fn start(script: &Path, dir: &Path, port: u16, secret: &str) -> Backend {
        Backend::start_with(script, dir, port, secret, &[])
    }

    /// The same with more environment (`CERT` and `KEY`: https).
    fn start_with(
        script: &Path,
        dir: &Path,
        port: u16,
        secret: &str,
        env: &[(&str, &Path)],
    ) -> Backend {
        let mut child = Command::new("python3")
            .arg(script)
            .arg(port.to_string())
            .env("SECRET", secret)
            .env("FAWKES_BACKEND_SECRET", secret)
            .env("DIR", dir)
            .envs(env.iter().map(|(k, v)| (k, v.as_os_str())))
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 must be installed");
        let mut line = String::new();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        out.read_line(&mut line).unwrap();
        // What it prints later (the example logs leaves) is read and dropped.
        std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
        let port = line
            .trim()
            .strip_prefix("listening on ")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("backend did not start: {line:?}"));
        let scheme = if env.iter().any(|(k, _)| *k == "CERT") {
            "https"
        } else {
            "http"
        };
        Backend {
            child,
            port,
            scheme,
        }
    }

    fn test(dir: &Path) -> Backend {
        let script = dir.join("backend.py");
        std::fs::write(&script, BACKEND).unwrap();
        Backend::start(&script, dir, 0, SECRET)
    }

    fn url(&self, path: &str) -> String {
        format!("{}://127.0.0.1:{}{path}", self.scheme, self.port)
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The backend's records in `dir/name`, one JSON object a line.
fn records(dir: &Path, name: &str) -> Vec<Value> {
    std::fs::read_to_string(dir.join(name))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

async fn connect(addr: &str, query: &str) -> Ws {
    let url = format!("ws://{addr}/socket/websocket?vsn=2.0.0{query}");
    tokio_tungstenite::connect_async(url).await.unwrap().0
}

async fn send(ws: &mut Ws, join_ref: &str, ref_: &str, topic: &str, event: &str, payload: Value) {
    let frame = json!([join_ref, ref_, topic, event, payload]).to_string();
    ws.send(Message::Text(frame)).await.unwrap();
}

/// The next frame matching `want`, skipping others; panics after 10 s.
async fn next(ws: &mut Ws, want: impl Fn(&Value) -> bool) -> Value {
    let mut skipped = Vec::new();
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .unwrap_or_else(|_| panic!("no frame within 10 s; skipped {skipped:?}"));
        let Some(Ok(Message::Text(t))) = msg else {
            panic!("expected a text frame, got {msg:?}");
        };
        let f: Value = serde_json::from_str(&t).unwrap();
        if want(&f) {
            return f;
        }
        skipped.push(f);
    }
}

/// The reply to `ref_`: `{status, response}`.
async fn reply(ws: &mut Ws, ref_: &str) -> Value {
    next(ws, |f| f[3] == "phx_reply" && f[1] == ref_).await[4].clone()
}

async fn join(ws: &mut Ws, join_ref: &str, topic: &str, payload: Value) -> Value {
    send(ws, join_ref, join_ref, topic, "phx_join", payload).await;
    reply(ws, join_ref).await
}

async fn push(
    ws: &mut Ws,
    join_ref: &str,
    ref_: &str,
    topic: &str,
    event: &str,
    p: Value,
) -> Value {
    send(ws, join_ref, ref_, topic, event, p).await;
    reply(ws, ref_).await
}

/// `fawkes_backend_requests_total{outcome}` and the other backend series, by full name.
fn metric(metrics: &str, series: &str) -> f64 {
    let body = http(metrics, "GET", "/metrics", &[], "").2;
    body.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.strip_prefix(' ')))
        .map(|v| v.trim().parse().unwrap())
        .unwrap_or_else(|| panic!("{series} is not exposed:\n{body}"))
}

fn outcome(metrics: &str, o: &str) -> f64 {
    metric(
        metrics,
        &format!("fawkes_backend_requests_total{{outcome=\"{o}\"}}"),
    )
}

fn metrics_addr(server: &support::Serve) -> String {
    server
        .metrics_url()
        .strip_prefix("http://")
        .and_then(|u| u.strip_suffix("/metrics"))
        .unwrap()
        .to_owned()
}

fn serve(dir: &Path, args: &[&str]) -> support::Serve {
    let db = dir.join("fawkes.db");
    let mut all = vec![
        "--database-url",
        db.to_str().unwrap(),
        "--metrics-addr",
        "127.0.0.1:0",
    ];
    all.extend_from_slice(args);
    support::Serve::start(dir, &all)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// The whole protocol against a backend declared in `fawkes.toml` (with a second, URL-less
/// channel from the flags): joins decided by the backend, its reason given to the refused;
/// pushes answered, broadcast (to this topic and another), pushed to the caller alone; assigns
/// carried from answer to request; presence tracked by a join answer; what each request tells
/// the backend; a custom status and no reply at all; close; the leave told to `leave_url`.
#[test]
fn the_backend_decides_joins_pushes_presence_and_close() {
    let dir = support::temp_dir("proxy-protocol");
    let b = Backend::test(&dir);
    std::fs::write(
        dir.join("fawkes.toml"),
        format!(
            "backend-secret = \"{SECRET}\"\n\n[[channels]]\ntopic = \"room:*\"\njoin_url = \"{}\"\n\
             push_url = \"{}\"\nleave_url = \"{}\"\n",
            b.url("/join"),
            b.url("/push"),
            b.url("/leave")
        ),
    )
    .unwrap();
    let alice = support::create_user(
        &dir,
        dir.join("fawkes.db").to_str().unwrap(),
        &["--name", "alice"],
    );
    let server = serve(&dir, &["--channel-topic", "lobby"]);
    let metrics = metrics_addr(&server);
    runtime().block_on(async {
        let mut a = connect(&server.addr, &format!("&token={alice}&color=red")).await;
        let mut o = connect(&server.addr, "").await;

        let r = join(&mut a, "1", "room:1", json!({"password": "nope"})).await;
        assert_eq!(r, json!({"status": "error", "response": {"reason": "wrong password"}}));

        let r = join(&mut o, "1", "room:1", json!({"password": "sesame", "nick": "olga", "track": true})).await;
        assert_eq!(r, json!({"status": "ok", "response": {"hello": "olga"}}));
        let state = next(&mut o, |f| f[3] == "presence_state").await;
        assert_eq!(state[4]["olga"]["metas"][0]["nick"], "olga");

        let r = join(&mut a, "2", "room:1", json!({"password": "sesame", "nick": "alice", "track": true})).await;
        assert_eq!(r, json!({"status": "ok", "response": {"hello": "alice"}}));
        let state = next(&mut a, |f| f[3] == "presence_state").await;
        let mut keys: Vec<&String> = state[4].as_object().unwrap().keys().collect();
        keys.sort();
        assert_eq!(keys, ["alice", "olga"]);
        let diff = next(&mut o, |f| f[3] == "presence_diff").await;
        assert_eq!(diff[4]["joins"]["alice"]["metas"][0]["nick"], "alice");

        let r = join(&mut o, "5", "lobby", json!({})).await;
        assert_eq!(r, json!({"status": "ok", "response": {}}));

        // A push: its reply, the private push first, the broadcast to both (and one to another
        // topic); assigns carried.
        for count in 1..=2 {
            let ref_ = format!("s{count}");
            send(&mut a, "2", &ref_, "room:1", "shout", json!({"text": "hi"})).await;
            // The answer's push comes before its reply, as a push before `{:reply, ...}` does.
            let private = next(&mut a, |f| f[3] == "private" || f[1] == ref_.as_str()).await;
            assert_eq!(private, json!(["2", null, "room:1", "private", {"count": count}]));
            // The broadcast reaches the sender too, before or after the reply.
            let shouted = json!([null, null, "room:1", "shouted", {"nick": "alice", "text": "hi"}]);
            let mut seen = next(&mut a, |f| f[1] == ref_.as_str() || f[3] == "shouted").await;
            if seen == shouted {
                seen = next(&mut a, |f| f[1] == ref_.as_str()).await;
            } else {
                assert_eq!(next(&mut a, |f| f[3] == "shouted").await, shouted);
            }
            assert_eq!(seen[4], json!({"status": "ok", "response": {"count": count}}));
            assert_eq!(next(&mut o, |f| f[3] == "shouted").await, shouted);
            let e = next(&mut o, |f| f[3] == "elsewhere").await;
            assert_eq!(e, json!([null, null, "lobby", "elsewhere", {"n": count}]));
        }

        // What the backend is told.
        let r = push(&mut a, "2", "w", "room:1", "whoami", json!({"x": 1})).await;
        let req = &r["response"];
        assert_eq!(req["topic"], "room:1");
        assert_eq!(req["event"], "whoami");
        assert_eq!(req["payload"], json!({"x": 1}));
        assert_eq!(req["params"]["color"], "red");
        assert_eq!(req["params"]["vsn"], "2.0.0");
        assert_eq!(req["user"]["claims"]["kind"], "api_token");
        assert_eq!(req["user"]["claims"]["name"], "alice");
        assert_eq!(req["user"]["id"], req["user"]["claims"]["fawkes_user_id"]);
        assert!(req["socket_id"].as_str().unwrap().starts_with("api_token:"));
        assert_eq!(req["join_ref"], "2");
        assert_eq!(req["ref"], "w");
        assert!(req["node"].as_str().is_some_and(|n| !n.is_empty()));
        assert_eq!(req["assigns"], json!({"nick": "alice", "count": 2}));
        let r = push(&mut o, "1", "w", "room:1", "whoami", json!({})).await;
        assert_eq!(r["response"]["user"], Value::Null);
        assert_eq!(r["response"]["socket_id"], Value::Null);

        // Any status passes through; no reply is no reply (the push comes, the reply does not).
        let r = push(&mut a, "2", "c", "room:1", "custom", json!({})).await;
        assert_eq!(r, json!({"status": "later", "response": {"why": "custom status"}}));
        send(&mut a, "2", "n", "room:1", "noreply", json!({})).await;
        next(&mut a, |f| f[3] == "nothing_to_say").await;
        let r = push(&mut a, "2", "after", "room:1", "custom", json!({})).await;
        assert_eq!(r["status"], "later");

        // The flags' channel: no join_url accepts, no push_url refuses with a reason.
        let r = join(&mut a, "3", "lobby", json!({})).await;
        assert_eq!(r, json!({"status": "ok", "response": {}}));
        let r = push(&mut a, "3", "l", "lobby", "anything", json!({})).await;
        assert_eq!(
            r,
            json!({"status": "error", "response": {"reason": "this channel takes no pushes (no push_url)"}})
        );

        // close: the reply, then phx_close; the others see the leave; the backend is told.
        send(&mut a, "2", "bye", "room:1", "bye", json!({})).await;
        let r = next(&mut a, |f| f[1] == "bye").await;
        assert_eq!(r, json!(["2", "bye", "room:1", "phx_reply", {"status": "ok", "response": {"bye": true}}]));
        let close = next(&mut a, |f| f[2] == "room:1").await;
        assert_eq!(close[3], "phx_close");
        let diff = next(&mut o, |f| f[3] == "presence_diff").await;
        assert_eq!(diff[4]["leaves"]["alice"]["metas"][0]["nick"], "alice");
        // A leave by the client, too.
        send(&mut o, "1", "lv", "room:1", "phx_leave", json!({})).await;
        reply(&mut o, "lv").await;
    });
    // leave_url is fire and forget: wait for both to land.
    let mut leaves = Vec::new();
    for _ in 0..100 {
        leaves = records(&dir, "leaves.jsonl");
        if leaves.len() == 2 {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut told: Vec<(String, String)> = leaves
        .iter()
        .map(|l| {
            assert_eq!(l["event"], "phx_leave");
            (
                l["assigns"]["nick"].as_str().unwrap().to_owned(),
                l["payload"]["reason"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    told.sort();
    assert_eq!(
        told,
        [
            ("alice".into(), "normal".into()),
            ("olga".into(), "left".into())
        ]
    );
    // Nothing failed.
    assert_eq!(
        outcome(&metrics, "timeout") + outcome(&metrics, "bad_answer"),
        0.0
    );
    assert!(outcome(&metrics, "ok") >= 12.0);
}

/// `fawkes serve` with one channel, `room:*`, on backend `b`, and `extra` flags.
fn serve_room(dir: &Path, b: &Backend, secret: &str, extra: &[&str]) -> support::Serve {
    let (join, push, leave) = (b.url("/join"), b.url("/push"), b.url("/leave"));
    let mut args = vec![
        "--channel-topic",
        "room:*",
        "--channel-join-url",
        &join,
        "--channel-push-url",
        &push,
        "--channel-leave-url",
        &leave,
        "--backend-secret",
        secret,
    ];
    args.extend_from_slice(extra);
    serve(dir, &args)
}

/// The example's backend (examples/proxy_chat) trusts only signed requests: one with a bad or
/// no signature is refused (401) and so is every join of a server signing with another secret;
/// through a server with its secret, the chat works: the nick check, the profanity filter.
#[test]
fn the_example_backend_checks_signatures_and_filters_the_chat() {
    let dir = support::temp_dir("proxy-example");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/proxy_chat/backend.py");
    let b = Backend::start(&script, &dir, 0, "s3cret");
    let addr = format!("127.0.0.1:{}", b.port);
    let body = r#"{"topic":"room:lobby","event":"phx_join","payload":{"nick":"eve"},"assigns":{}}"#;
    let (status, _, text) = http(&addr, "POST", "/join", &[], body);
    assert_eq!(
        (status, text.as_str()),
        (401, r#"{"error": "bad signature"}"#)
    );
    let forged = format!("sha256={}", "0".repeat(64));
    let (status, _, _) = http(
        &addr,
        "POST",
        "/join",
        &[("x-fawkes-signature", &forged)],
        body,
    );
    assert_eq!(status, 401);
    let (status, _, text) = http(
        &addr,
        "POST",
        "/join",
        &[(
            "x-fawkes-signature",
            &fawkes::apps::proxy::client::signature(b"s3cret", body.as_bytes()),
        )],
        body,
    );
    assert_eq!(status, 200, "{text}");

    let wrong = serve_room(
        &support::temp_dir("proxy-example-wrong"),
        &b,
        "not-the-secret",
        &[],
    );
    let good = serve_room(&dir, &b, "s3cret", &[]);
    let metrics = metrics_addr(&wrong);
    runtime().block_on(async {
        let mut w = connect(&wrong.addr, "").await;
        let r = join(&mut w, "1", "room:lobby", json!({"nick": "eve"})).await;
        assert_eq!(
            r,
            json!({"status": "error", "response": {"reason": "backend unavailable"}})
        );

        let mut a = connect(&good.addr, "").await;
        let mut c = connect(&good.addr, "").await;
        let r = join(&mut a, "1", "room:lobby", json!({"nick": "no spaces"})).await;
        assert_eq!(
            r["response"]["reason"],
            "pick a nick: 1-20 letters, digits, _ or -"
        );
        let r = join(&mut a, "1", "room:staff", json!({"nick": "ann"})).await;
        assert_eq!(
            r,
            json!({"status": "error", "response": {"reason": "staff only"}})
        );
        let r = join(&mut a, "2", "room:lobby", json!({"nick": "ann"})).await;
        assert_eq!(r, json!({"status": "ok", "response": {"welcome": "ann"}}));
        let r = join(&mut c, "1", "room:lobby", json!({"nick": "cy"})).await;
        assert_eq!(r["status"], "ok");
        let state = next(&mut c, |f| f[3] == "presence_state").await;
        assert_eq!(state[4]["ann"]["metas"][0]["nick"], "ann");
        let r = push(
            &mut a,
            "2",
            "m",
            "room:lobby",
            "new_msg",
            json!({"body": "what the Heck, darn it"}),
        )
        .await;
        assert_eq!(r, json!({"status": "ok", "response": {"sent": 1}}));
        let msg = next(&mut c, |f| f[3] == "new_msg").await;
        assert_eq!(
            msg[4],
            json!({"nick": "ann", "body": "what the ****, **** it"})
        );
    });
    assert_eq!(outcome(&metrics, "http_error"), 1.0);
}

/// A backend slower than the channel's timeout: the push is answered `backend unavailable`
/// at the timeout, not when the backend gets round to it; meanwhile another socket's push to
/// the same backend is answered at once. The timeout is counted.
#[test]
fn a_slow_backend_times_out_and_holds_no_one_else() {
    let dir = support::temp_dir("proxy-slow");
    let b = Backend::test(&dir);
    let server = serve_room(&dir, &b, SECRET, &["--channel-timeout-ms", "1500"]);
    let metrics = metrics_addr(&server);
    runtime().block_on(async {
        let mut a = connect(&server.addr, "").await;
        let mut c = connect(&server.addr, "").await;
        for ws in [&mut a, &mut c] {
            let r = join(ws, "1", "room:1", json!({"password": "sesame"})).await;
            assert_eq!(r["status"], "ok");
        }
        send(&mut a, "1", "slow", "room:1", "slow", json!({"seconds": 4})).await;
        // The slow push is on its way before the other is sent.
        for _ in 0..100 {
            if records(&dir, "requests.jsonl")
                .iter()
                .any(|r| r["event"] == "slow")
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let r = push(&mut c, "1", "q", "room:1", "custom", json!({})).await;
        assert_eq!(r["status"], "later");
        let r = reply(&mut a, "slow").await;
        assert_eq!(
            r,
            json!({"status": "error", "response": {"reason": "backend unavailable"}})
        );
        // The socket goes on.
        let r = push(&mut a, "1", "after", "room:1", "custom", json!({})).await;
        assert_eq!(r["status"], "later");
    });
    assert_eq!(outcome(&metrics, "timeout"), 1.0);
}

/// A backend that is down: joins fail with `backend unavailable`; after
/// --backend-circuit-failures of them the circuit opens and joins fail without a request
/// (counted as circuit_open); once the backend is back, the next try after
/// --backend-circuit-open-ms closes it and joins work again.
#[test]
fn a_dead_backend_fails_fast_and_recovers() {
    let dir = support::temp_dir("proxy-down");
    let mut b = Backend::test(&dir);
    let server = serve_room(
        &dir,
        &b,
        SECRET,
        &[
            "--backend-circuit-failures",
            "2",
            "--backend-circuit-open-ms",
            "300",
        ],
    );
    let metrics = metrics_addr(&server);
    let db = dir.join("fawkes.db");
    let admin = support::create_user(&dir, db.to_str().unwrap(), &["--name", "root", "--admin"]);
    let port = b.port;
    b.stop();
    let unavailable = json!({"status": "error", "response": {"reason": "backend unavailable"}});
    runtime().block_on(async {
        let mut a = connect(&server.addr, "").await;
        for i in 0..4 {
            let r = join(
                &mut a,
                &format!("{i}"),
                "room:1",
                json!({"password": "sesame"}),
            )
            .await;
            assert_eq!(r, unavailable);
        }
    });
    assert_eq!(outcome(&metrics, "unreachable"), 2.0);
    assert_eq!(outcome(&metrics, "circuit_open"), 2.0);
    assert_eq!(metric(&metrics, "fawkes_backend_circuits_open"), 1.0);
    // The inspector shows the backend with its circuit open, and the requests by outcome.
    let stats = support::admin_stats(&server.addr, &admin);
    assert_eq!(
        stats["backends"],
        json!([{"origin": format!("http://127.0.0.1:{port}"), "in_flight": 0, "waiting": 0,
                "circuit_open": true, "failures_in_a_row": 2}])
    );
    assert_eq!(stats["backend_requests"]["unreachable"], 2);
    assert_eq!(stats["backend_requests"]["circuit_open"], 2);

    let script = dir.join("backend.py");
    let _back = Backend::start(&script, &dir, port, SECRET);
    std::thread::sleep(Duration::from_millis(400));
    runtime().block_on(async {
        let mut a = connect(&server.addr, "").await;
        let r = join(&mut a, "9", "room:1", json!({"password": "sesame"})).await;
        assert_eq!(r["status"], "ok");
    });
    assert_eq!(metric(&metrics, "fawkes_backend_circuits_open"), 0.0);
    assert_eq!(metric(&metrics, "fawkes_backend_circuit_opened_total"), 1.0);
    let stats = support::admin_stats(&server.addr, &admin);
    assert_eq!(stats["backends"][0]["circuit_open"], false);
    assert_eq!(stats["backends"][0]["failures_in_a_row"], 0);
}

/// Answers that are not JSON, not of the protocol's shape, or over --backend-max-body-bytes
/// are `bad backend answer` replies (each counted), and the channel goes on.
#[test]
fn garbage_and_huge_answers_are_clear_errors() {
    let dir = support::temp_dir("proxy-garbage");
    let b = Backend::test(&dir);
    let server = serve_room(&dir, &b, SECRET, &["--backend-max-body-bytes", "65536"]);
    let metrics = metrics_addr(&server);
    let bad = json!({"status": "error", "response": {"reason": "bad backend answer"}});
    runtime().block_on(async {
        let mut a = connect(&server.addr, "").await;
        let r = join(&mut a, "1", "room:1", json!({"password": "sesame"})).await;
        assert_eq!(r["status"], "ok");
        for (i, event) in ["garbage", "badshape", "huge"].iter().enumerate() {
            let r = push(&mut a, "1", &i.to_string(), "room:1", event, json!({})).await;
            assert_eq!(r, bad, "{event}");
        }
        let r = push(&mut a, "1", "ok", "room:1", "custom", json!({})).await;
        assert_eq!(r["status"], "later");
    });
    assert_eq!(outcome(&metrics, "bad_answer"), 2.0);
    assert_eq!(outcome(&metrics, "too_large"), 1.0);
    // Failures of a live backend do not open its circuit.
    assert_eq!(metric(&metrics, "fawkes_backend_circuits_open"), 0.0);
}

/// With one request in flight allowed and one queued, a third is refused at once
/// (`backend unavailable`, counted as queue_full) while the first two are answered.
#[test]
fn a_full_queue_refuses_at_once() {
    let dir = support::temp_dir("proxy-queue");
    let b = Backend::test(&dir);
    let server = serve_room(
        &dir,
        &b,
        SECRET,
        &["--backend-max-concurrency", "1", "--backend-max-queue", "1"],
    );
    let metrics = metrics_addr(&server);
    runtime().block_on(async {
        let mut socks = Vec::new();
        for _ in 0..3 {
            let mut s = connect(&server.addr, "").await;
            let r = join(&mut s, "1", "room:1", json!({"password": "sesame"})).await;
            assert_eq!(r["status"], "ok");
            socks.push(s);
        }
        send(
            &mut socks[0],
            "1",
            "a",
            "room:1",
            "slow",
            json!({"seconds": 1.5}),
        )
        .await;
        for _ in 0..100 {
            if records(&dir, "requests.jsonl")
                .iter()
                .any(|r| r["event"] == "slow")
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        send(
            &mut socks[1],
            "1",
            "b",
            "room:1",
            "slow",
            json!({"seconds": 0.1}),
        )
        .await;
        // The second is queued: wait until the gauge says so.
        for _ in 0..100 {
            if metric(&metrics, "fawkes_backend_queued") == 1.0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(metric(&metrics, "fawkes_backend_in_flight"), 1.0);
        let r = push(&mut socks[2], "1", "c", "room:1", "custom", json!({})).await;
        assert_eq!(
            r,
            json!({"status": "error", "response": {"reason": "backend unavailable"}})
        );
        assert_eq!(reply(&mut socks[0], "a").await["status"], "ok");
        assert_eq!(reply(&mut socks[1], "b").await["status"], "ok");
        // Read before the sockets close (their leaves are requests too).
        assert_eq!(outcome(&metrics, "queue_full"), 1.0);
        assert_eq!(metric(&metrics, "fawkes_backend_queued"), 0.0);
        assert_eq!(metric(&metrics, "fawkes_backend_in_flight"), 0.0);
    });
}

/// A declared pattern that would serve a built-in app's topics, declared channels (or a
/// connect_url) without a secret, or a CA file without a certificate stop `fawkes serve` at
/// start with an error that says so.
#[test]
fn overlapping_or_unsigned_declarations_are_refused_at_start() {
    let dir = support::temp_dir("proxy-refused");
    let run = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_fawkes"))
            .args(["serve", "--port", "0", "--database-url"])
            .arg(dir.join("fawkes.db"))
            .args(args)
            .current_dir(&dir)
            .output()
            .unwrap();
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let e = run(&["--channel-topic", "chan*", "--backend-secret", "x"]);
    assert!(
        e.contains(
            "declared channel \"chan*\" overlaps the channel already served at \"channel:*\""
        ),
        "{e}"
    );
    let e = run(&["--channel-topic", "community:feed", "--backend-secret", "x"]);
    assert!(
        e.contains("overlaps the channel already served at \"community:feed\""),
        "{e}"
    );
    let e = run(&["--channel-topic", "room:*"]);
    assert!(
        e.contains("declared channels and --connect-url need --backend-secret"),
        "{e}"
    );
    let e = run(&["--connect-url", "http://127.0.0.1:9/connect"]);
    assert!(
        e.contains("declared channels and --connect-url need --backend-secret"),
        "{e}"
    );
    std::fs::write(dir.join("empty.pem"), "").unwrap();
    let e = run(&[
        "--channel-topic",
        "room:*",
        "--backend-secret",
        "x",
        "--channel-join-url",
        "https://x/j",
        "--backend-ca-file",
        "empty.pem",
    ]);
    assert!(e.contains("empty.pem: no certificate"), "{e}");
}

/// The HTTP status a WebSocket connect gets: 101 when upgraded, else the refusal's.
async fn ws_status(addr: &str, query: &str) -> u16 {
    let url = format!("ws://{addr}/socket/websocket?vsn=2.0.0{query}");
    match tokio_tungstenite::connect_async(url).await {
        Ok(_) => 101,
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => r.status().as_u16(),
        Err(e) => panic!("{e}"),
    }
}

/// What a LongPoll session open answers: `{"status":410,"token":…}` or a refusal's status.
fn longpoll_open(addr: &str, query: &str) -> Value {
    let (status, _, body) = http(
        addr,
        "GET",
        &format!("/socket/longpoll?vsn=2.0.0{query}"),
        &[],
        "",
    );
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

/// `--connect-url` decides every socket connect, as Phoenix's `connect/3`: allowed (and its
/// `assigns` start each channel of the socket, carried into the join request and kept after),
/// refused with HTTP 403 on WebSocket and `{"status":403}` on LongPoll (the reason is logged,
/// not sent), and no usable answer (slow past --connect-timeout-ms, garbage, an answer key that
/// does not apply) refused as a connect that could not decide (500), never a hang. What the
/// backend is told; each verdict counted.
#[test]
fn connect_url_allows_refuses_and_starts_channels_with_its_assigns() {
    let dir = support::temp_dir("proxy-connect");
    let b = Backend::test(&dir);
    let alice = support::create_user(
        &dir,
        dir.join("fawkes.db").to_str().unwrap(),
        &["--name", "alice"],
    );
    let connect_url = b.url("/connect");
    let server = serve_room(
        &dir,
        &b,
        SECRET,
        &[
            "--connect-url",
            &connect_url,
            "--connect-timeout-ms",
            "1000",
        ],
    );
    let metrics = metrics_addr(&server);
    let connects = |dir: &Path| -> Vec<Value> {
        records(dir, "requests.jsonl")
            .into_iter()
            .filter(|r| r["event"] == "connect")
            .collect()
    };
    runtime().block_on(async {
        let mut a = connect(&server.addr, &format!("&let=in&role=mod&token={alice}")).await;
        let told = connects(&dir);
        assert_eq!(told.len(), 1);
        let req = &told[0];
        let keys: Vec<&String> = req.as_object().unwrap().keys().collect();
        assert_eq!(keys, ["event", "node", "params", "socket_id", "user"]);
        assert_eq!(req["params"]["role"], "mod");
        assert_eq!(req["params"]["vsn"], "2.0.0");
        assert_eq!(req["user"]["claims"]["name"], "alice");
        assert!(req["socket_id"].as_str().unwrap().starts_with("api_token:"));
        assert!(req["node"].as_str().is_some_and(|n| !n.is_empty()));

        let r = join(
            &mut a,
            "1",
            "room:1",
            json!({"password": "sesame", "nick": "al"}),
        )
        .await;
        assert_eq!(r["status"], "ok");
        let joined = records(&dir, "requests.jsonl")
            .into_iter()
            .find(|r| r["event"] == "phx_join")
            .unwrap();
        assert_eq!(joined["assigns"], json!({"role": "mod", "via": "connect"}));
        let r = push(&mut a, "1", "w", "room:1", "whoami", json!({})).await;
        assert_eq!(
            r["response"]["assigns"],
            json!({"role": "mod", "via": "connect", "nick": "al", "count": 0})
        );
        // Allowed without assigns: channels start from `{}`.
        let mut o = connect(&server.addr, "&let=ok").await;
        join(
            &mut o,
            "1",
            "room:1",
            json!({"password": "sesame", "nick": "ok"}),
        )
        .await;
        let r = push(&mut o, "1", "w", "room:1", "whoami", json!({})).await;
        assert_eq!(r["response"]["assigns"], json!({"nick": "ok", "count": 0}));

        assert_eq!(ws_status(&server.addr, "&let=no").await, 403);
        assert_eq!(ws_status(&server.addr, "").await, 403);
        let started = std::time::Instant::now();
        assert_eq!(ws_status(&server.addr, "&let=slow").await, 500);
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(ws_status(&server.addr, "&let=garbage").await, 500);
        assert_eq!(ws_status(&server.addr, "&let=track").await, 500);
    });
    // LongPoll: the same check, once per session.
    assert_eq!(
        longpoll_open(&server.addr, "&let=no"),
        json!({"status": 403})
    );
    let open = longpoll_open(&server.addr, "&let=in");
    assert_eq!(open["status"], 410);
    assert!(open["token"].as_str().is_some_and(|t| !t.is_empty()));
    assert_eq!(
        longpoll_open(&server.addr, "&let=garbage"),
        json!({"status": 500})
    );
    let verdict = |v: &str| {
        metric(
            &metrics,
            &format!("fawkes_backend_connects_total{{verdict=\"{v}\"}}"),
        )
    };
    assert_eq!(verdict("allowed"), 3.0);
    assert_eq!(verdict("refused"), 3.0);
    assert_eq!(verdict("failed"), 4.0);
    assert_eq!(outcome(&metrics, "timeout"), 1.0);
    assert_eq!(outcome(&metrics, "bad_answer"), 3.0);
}

/// A connect_url backend that is down: connects are refused at once (500), counted, and the
/// circuit then fails them without a request; back up, connects are allowed again.
#[test]
fn connect_url_down_refuses_connects_fast() {
    let dir = support::temp_dir("proxy-connect-down");
    let mut b = Backend::test(&dir);
    let connect_url = b.url("/connect");
    let server = serve(
        &dir,
        &[
            "--connect-url",
            &connect_url,
            "--backend-secret",
            SECRET,
            "--backend-circuit-failures",
            "2",
            "--backend-circuit-open-ms",
            "300",
        ],
    );
    let metrics = metrics_addr(&server);
    let port = b.port;
    b.stop();
    runtime().block_on(async {
        for _ in 0..3 {
            let started = std::time::Instant::now();
            assert_eq!(ws_status(&server.addr, "&let=ok").await, 500);
            assert!(started.elapsed() < Duration::from_secs(2));
        }
    });
    assert_eq!(
        metric(
            &metrics,
            "fawkes_backend_connects_total{verdict=\"failed\"}"
        ),
        3.0
    );
    assert_eq!(outcome(&metrics, "unreachable"), 2.0);
    assert_eq!(outcome(&metrics, "circuit_open"), 1.0);
    let script = dir.join("backend.py");
    let _back = Backend::start(&script, &dir, port, SECRET);
    std::thread::sleep(Duration::from_millis(400));
    runtime().block_on(async {
        let mut s = connect(&server.addr, "&let=in").await;
        send(&mut s, "", "hb", "phoenix", "heartbeat", json!({})).await;
        assert_eq!(
            reply(&mut s, "hb").await,
            json!({"status": "ok", "response": {}})
        );
    });
    assert_eq!(
        metric(
            &metrics,
            "fawkes_backend_connects_total{verdict=\"allowed\"}"
        ),
        1.0
    );
}

/// An https backend whose certificate a private CA signed: trusted with --backend-ca-file
/// naming that CA (joins and pushes work as over http); not trusted with the system's roots
/// nor with another CA's file: `backend unavailable`, counted as unreachable, never a hang.
#[test]
fn https_backends_are_checked_against_the_ca_file() {
    let dir = support::temp_dir("proxy-https");
    support::make_ca(&dir, "ca");
    support::make_ca(&dir, "other");
    support::make_server_cert(&dir, "ca");
    let script = dir.join("backend.py");
    std::fs::write(&script, BACKEND).unwrap();
    let b = Backend::start_with(
        &script,
        &dir,
        0,
        SECRET,
        &[
            ("CERT", &dir.join("server.pem")),
            ("KEY", &dir.join("server.key")),
        ],
    );
    assert!(b.url("/join").starts_with("https://127.0.0.1:"));
    let ca = dir.join("ca.pem");
    let other = dir.join("other.pem");
    let trusted = serve_room(
        &support::temp_dir("proxy-https-ca"),
        &b,
        SECRET,
        &["--backend-ca-file", ca.to_str().unwrap()],
    );
    let system = serve_room(&support::temp_dir("proxy-https-system"), &b, SECRET, &[]);
    let wrong = serve_room(
        &support::temp_dir("proxy-https-other"),
        &b,
        SECRET,
        &["--backend-ca-file", other.to_str().unwrap()],
    );
    let unavailable = json!({"status": "error", "response": {"reason": "backend unavailable"}});
    runtime().block_on(async {
        let mut a = connect(&trusted.addr, "").await;
        let r = join(
            &mut a,
            "1",
            "room:1",
            json!({"password": "sesame", "nick": "tls"}),
        )
        .await;
        assert_eq!(r, json!({"status": "ok", "response": {"hello": "tls"}}));
        for i in 0..3 {
            let r = push(&mut a, "1", &format!("w{i}"), "room:1", "whoami", json!({})).await;
            assert_eq!(r["response"]["assigns"], json!({"nick": "tls", "count": 0}));
        }
        for server in [&system, &wrong] {
            let mut s = connect(&server.addr, "").await;
            let r = join(&mut s, "1", "room:1", json!({"password": "sesame"})).await;
            assert_eq!(r, unavailable);
        }
    });
    assert_eq!(outcome(&metrics_addr(&trusted), "ok"), 4.0);
    for server in [&system, &wrong] {
        let m = metrics_addr(server);
        assert_eq!((outcome(&m, "unreachable"), outcome(&m, "ok")), (1.0, 0.0));
    }
    // The backend saw only the trusted server's requests (and perhaps its leave by now).
    let seen: Vec<Value> = records(&dir, "requests.jsonl")
        .into_iter()
        .map(|r| r["event"].clone())
        .filter(|e| e != "phx_leave")
        .collect();
    assert_eq!(seen, ["phx_join", "whoami", "whoami", "whoami"]);
}

/// Two nodes over one redis-server and one PostgreSQL database, the same channel declared on
/// both: a client on B joins, then a client on A joins with a track in the join answer; B's
/// client gets the presence diff, and a later joiner on B the whole state; a push on A whose
/// answer broadcasts reaches B's client as the exact frame. Each node names itself in `node`.
#[test]
fn a_proxied_channel_spans_two_nodes() {
    let redis = support::Redis::start();
    let pg = support::fresh_postgres("proxy_cluster");
    let dir = support::temp_dir("proxy-cluster");
    let (dir_a, dir_b) = (dir.join("a"), dir.join("b"));
    std::fs::create_dir_all(&dir_a).unwrap();
    std::fs::create_dir_all(&dir_b).unwrap();
    let b = Backend::test(&dir);
    let redis_url = format!("redis://127.0.0.1:{}", redis.port);
    let (join_url, push_url) = (b.url("/join"), b.url("/push"));
    let node = |dir: &Path, name: &str| {
        support::Serve::start(
            dir,
            &[
                "--database-url",
                &pg,
                "--redis-url",
                &redis_url,
                "--node-name",
                name,
                "--metrics-addr",
                "127.0.0.1:0",
                "--channel-topic",
                "room:*",
                "--channel-join-url",
                &join_url,
                "--channel-push-url",
                &push_url,
                "--backend-secret",
                SECRET,
            ],
        )
    };
    let node_a = node(&dir_a, "a");
    let node_b = node(&dir_b, "b");
    support::wait_linked(&node_a);
    support::wait_linked(&node_b);
    runtime().block_on(async {
        let mut y = connect(&node_b.addr, "").await;
        let r = join(
            &mut y,
            "1",
            "room:1",
            json!({"password": "sesame", "nick": "yb"}),
        )
        .await;
        assert_eq!(r, json!({"status": "ok", "response": {"hello": "yb"}}));

        let mut x = connect(&node_a.addr, "").await;
        let r = join(
            &mut x,
            "1",
            "room:1",
            json!({"password": "sesame", "nick": "xa", "track": true}),
        )
        .await;
        assert_eq!(r, json!({"status": "ok", "response": {"hello": "xa"}}));
        let state = next(&mut x, |f| f[3] == "presence_state").await;
        assert_eq!(state[4]["xa"]["metas"][0]["nick"], "xa");

        // Presence tracked by A's join answer, seen on B.
        let diff = next(&mut y, |f| f[3] == "presence_diff").await;
        assert_eq!(diff[4]["joins"]["xa"]["metas"][0]["nick"], "xa");
        assert_eq!(diff[4]["leaves"], json!({}));
        let mut z = connect(&node_b.addr, "").await;
        let r = join(
            &mut z,
            "1",
            "room:1",
            json!({"password": "sesame", "nick": "zb", "track": true}),
        )
        .await;
        assert_eq!(r["status"], "ok");
        let state = next(&mut z, |f| f[3] == "presence_state").await;
        let mut keys: Vec<&String> = state[4].as_object().unwrap().keys().collect();
        keys.sort();
        assert_eq!(keys, ["xa", "zb"]);

        // A push on A whose answer broadcasts: the exact frame on B.
        let r = push(&mut x, "1", "s", "room:1", "shout", json!({"text": "hi"})).await;
        assert_eq!(r, json!({"status": "ok", "response": {"count": 1}}));
        let shouted = json!([null, null, "room:1", "shouted", {"nick": "xa", "text": "hi"}]);
        assert_eq!(next(&mut y, |f| f[3] == "shouted").await, shouted);
        assert_eq!(next(&mut z, |f| f[3] == "shouted").await, shouted);
    });
    let nodes: Vec<(String, String)> = records(&dir, "requests.jsonl")
        .iter()
        .map(|r| {
            let who = r["payload"]["nick"]
                .as_str()
                .or(r["assigns"]["nick"].as_str())
                .unwrap()
                .to_owned();
            (who, r["node"].as_str().unwrap().to_owned())
        })
        .collect();
    assert_eq!(
        nodes,
        [
            ("yb".into(), "b".into()),
            ("xa".into(), "a".into()),
            ("zb".into(), "b".into()),
            ("xa".into(), "a".into())
        ]
    );
}
