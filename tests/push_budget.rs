//! A socket's budget for costly pushes, against `fawkes serve`: collection reloads, chat
//! history and voice signals each run a query or send a large reply, so an anonymous socket
//! sending many small pushes is refused past its budget (`rate_limited`, with how long to
//! wait) instead of costing seconds of CPU; other sockets keep theirs; refusals are counted.

mod support;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::time::Duration;
use support::http_raw as http;
use tokio_tungstenite::tungstenite::Message;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(addr: &str, query: &str) -> Ws {
    let url = format!("ws://{addr}/socket/websocket?vsn=2.0.0{query}");
    tokio_tungstenite::connect_async(url).await.unwrap().0
}

/// The reply to `ref_`, skipping other frames (presence, broadcasts).
async fn reply(ws: &mut Ws, ref_: &str) -> Value {
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .expect("a reply within 5 s");
        let Some(Ok(Message::Text(t))) = msg else {
            panic!("expected a text frame, got {msg:?}");
        };
        let f: Value = serde_json::from_str(&t).unwrap();
        if f[3] == "phx_reply" && f[1] == ref_ {
            return f[4].clone();
        }
    }
}

async fn push(ws: &mut Ws, topic: &str, ref_: &str, event: &str, payload: Value) -> Value {
    let frame = json!(["1", ref_, topic, event, payload]).to_string();
    ws.send(Message::Text(frame)).await.unwrap();
    reply(ws, ref_).await
}

fn refused(r: &Value) -> Option<u64> {
    (r["status"] == "error" && r["response"]["reason"] == "rate_limited").then(|| {
        r["response"]["retry_after_ms"]
            .as_u64()
            .expect("retry_after_ms")
    })
}

fn refusals_counted(metrics: &str) -> f64 {
    let body = http(metrics, "GET", "/metrics", &[], "").2;
    body.lines()
        .find_map(|l| l.strip_prefix("fawkes_costly_pushes_refused_total "))
        .map(|v| v.trim().parse().unwrap())
        .expect("the counter is exposed")
}

#[test]
fn costly_pushes_spend_a_per_socket_budget() {
    let dir = support::temp_dir("push-budget");
    let db = dir.join("fawkes.db");
    let db = db.to_str().unwrap();
    let alice = support::create_user(&dir, db, &["--name", "alice", "--community-member"]);
    let server = support::Serve::start(
        &dir,
        &[
            "--database-url",
            db,
            "--metrics-addr",
            "127.0.0.1:0",
            "--max-costly-pushes-per-second",
            "5",
            "--max-costly-reply-bytes-per-second",
            "100000",
        ],
    );
    let metrics = server
        .metrics_url()
        .trim_start_matches("http://")
        .trim_end_matches("/metrics")
        .to_owned();
    let addr = server.addr.as_str();
    let auth = format!("Bearer {alice}");
    let json_h = ("Content-Type", "application/json");
    let create = |collection: &str, text: String| {
        let body = json!({ "text": text }).to_string();
        let path = format!("/api/collections/{collection}/records");
        let (status, _, _) = http(
            addr,
            "POST",
            &path,
            &[("Authorization", &auth), json_h],
            &body,
        );
        assert_eq!(status, 201);
    };
    create("tiny", "t".into());
    // A collection whose reload answers about 60 kB.
    for i in 0..6 {
        create("notes", format!("{i}{}", "x".repeat(10_000)));
    }
    let (status, _, room) = http(
        addr,
        "POST",
        "/api/channels",
        &[("Authorization", &auth), json_h],
        r#"{"name":"general"}"#,
    );
    assert_eq!(status, 201, "{room}");
    let room: Value = serde_json::from_str(&room).unwrap();
    let room = room["id"].as_i64().unwrap();
    assert_eq!(refusals_counted(&metrics), 0.0);
    let statuses = |answers: &[Value]| -> Vec<String> {
        answers
            .iter()
            .map(|r| match refused(r) {
                Some(_) => "rate_limited".to_owned(),
                None => r["status"].as_str().unwrap().to_owned(),
            })
            .collect()
    };

    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        // Anonymous reloads of a small collection: 5 pushes a second, a burst of 5, then
        // refused with the time to the next one (a fifth of a second at most).
        let mut anon = connect(addr, "").await;
        let r = push(&mut anon, "collection:tiny", "j", "phx_join", json!({})).await;
        assert_eq!(r["status"], "ok", "{r}");
        let mut answers = Vec::new();
        for i in 0..8 {
            answers.push(
                push(
                    &mut anon,
                    "collection:tiny",
                    &format!("r{i}"),
                    "reload",
                    json!({}),
                )
                .await,
            );
        }
        let mut want = vec!["ok"; 5];
        want.extend(["rate_limited"; 3]);
        assert_eq!(statuses(&answers), want);
        let waits: Vec<u64> = answers.iter().filter_map(refused).collect();
        assert!(waits.iter().all(|w| (1..=200).contains(w)), "{waits:?}");
        assert_eq!(refusals_counted(&metrics), 3.0);

        // Large replies: 100 kB a second. The first reload (60 kB) fits, the second goes out
        // and puts the budget 20 kB in debt, the third waits that debt out: about 0.2 s.
        let mut big = connect(addr, "").await;
        let r = push(&mut big, "collection:notes", "j", "phx_join", json!({})).await;
        assert_eq!(r["status"], "ok");
        let mut answers = Vec::new();
        for i in 0..3 {
            answers.push(
                push(
                    &mut big,
                    "collection:notes",
                    &format!("r{i}"),
                    "reload",
                    json!({}),
                )
                .await,
            );
        }
        let size = answers[0]["response"].to_string().len();
        assert!((60_000..61_000).contains(&size), "{size}");
        assert_eq!(statuses(&answers), ["ok", "ok", "rate_limited"]);
        let wait = refused(&answers[2]).unwrap();
        assert!((150..=250).contains(&wait), "{wait}");
        assert_eq!(refusals_counted(&metrics), 4.0);

        // A signed-in socket has a budget of its own: chat history and voice pushes spend it.
        let mut a = connect(addr, &format!("&token={alice}")).await;
        let topic = format!("channel:{room}");
        assert_eq!(
            push(&mut a, &topic, "j", "phx_join", json!({})).await["status"],
            "ok"
        );
        let voice = format!("voice:{room}");
        assert_eq!(
            push(&mut a, &voice, "v", "phx_join", json!({})).await["status"],
            "ok"
        );
        let mut answers = Vec::new();
        for i in 0..3 {
            answers.push(push(&mut a, &topic, &format!("h{i}"), "load_history", json!({})).await);
            let mute = json!({"muted": true, "deafened": false});
            answers.push(push(&mut a, &voice, &format!("m{i}"), "set_mute", mute).await);
        }
        answers.push(push(&mut a, &topic, "t", "typing_start", json!({})).await);
        let mut want = vec!["ok"; 5];
        want.extend(["rate_limited"; 2]);
        assert_eq!(statuses(&answers), want);
        assert_eq!(refusals_counted(&metrics), 6.0);

        // The budget refills: after the wait, the first socket reloads again.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let r = push(&mut anon, "collection:tiny", "again", "reload", json!({})).await;
        assert_eq!(r["status"], "ok", "{r}");
    });
}
