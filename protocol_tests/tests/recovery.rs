//! No missed event after a reconnect, on every recorded topic, on SQLite and PostgreSQL: a
//! client that rejoins `community:feed`, `channel:<id>`, `thread:<id>` and `user:<id>` with
//! `{"since": S}` gets exactly the events it missed, in order, once; past retention it gets
//! `"reset": true`; with writers racing its rejoins, its view ends equal to the database.

mod support;

use fawkes::history::{HistoryConfig, Retention};
use protocol_tests::client::{Client, Frame};
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::time::Duration;
use support::App;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Runtime::new().unwrap()
}

async fn connect(app: &App, token: &str) -> Client {
    let url = format!("ws://{}/socket", app.server.addr);
    Client::connect("client", &url, &format!("token={token}&vsn=2.0.0"))
        .await
        .unwrap()
}

async fn next_json(c: &mut Client, wait: Duration) -> Option<Value> {
    match c.recv_within(wait).await.unwrap() {
        Some(Frame::Text(t)) => Some(serde_json::from_str(&t).unwrap()),
        None => None,
        Some(other) => panic!("unexpected {other:?}"),
    }
}

/// Joins and returns the reply's response, skipping presence frames on the way.
async fn join(c: &mut Client, join_ref: &str, topic: &str, params: Value) -> Value {
    c.send(&json!([join_ref, join_ref, topic, "phx_join", params]).to_string())
        .await
        .unwrap();
    loop {
        let f = next_json(c, Duration::from_secs(5))
            .await
            .expect("a join reply");
        if f[1] == join_ref && f[3] == "phx_reply" {
            assert_eq!(f[4]["status"], "ok", "{f}");
            return f[4]["response"].clone();
        }
    }
}

/// Recorded events a live client receives within `quiet` of silence: (topic, event, payload).
async fn live_events(c: &mut Client, quiet: Duration) -> Vec<(String, String, Value)> {
    let mut out = Vec::new();
    while let Some(f) = next_json(c, quiet).await {
        if f[4].get("seq").is_some() && f[3] != "phx_reply" {
            out.push((
                f[2].as_str().unwrap().into(),
                f[3].as_str().unwrap().into(),
                f[4].clone(),
            ));
        }
    }
    out
}

fn a_rejoin_gets_exactly_what_it_missed(backend: &str) {
    let app = support::start_app(backend);
    let (_, alice) = app.user("alice", true);
    let (bob_id, bob) = app.user("bob", true);
    rt().block_on(async {
        let (_, room) = app.api("POST", "/api/channels", Some(&alice), Some(r#"{"name":"general"}"#)).await;
        let rid = room["id"].as_i64().unwrap();
        let add = format!(r#"{{"user_id":{bob_id}}}"#);
        app.api("POST", &format!("/api/channels/{rid}/members"), Some(&bob), Some(&add)).await;
        let mut a = connect(&app, &alice).await;
        join(&mut a, "1", &format!("channel:{rid}"), json!({})).await;
        a.send(&json!(["1", "2", format!("channel:{rid}"), "new_message", {"body": "a thread"}]).to_string()).await.unwrap();
        let mut parent = None;
        while parent.is_none() {
            let f = next_json(&mut a, Duration::from_secs(5)).await.unwrap();
            if f[1] == "2" {
                parent = f[4]["response"]["id"].as_i64();
            }
        }
        let pid = parent.unwrap();
        let topics = ["community:feed".to_string(), format!("channel:{rid}"), format!("thread:{pid}"), format!("user:{bob_id}")];

        // Bob joins everything, notes each topic's seq, and a watcher sees what goes out live.
        let mut b = connect(&app, &bob).await;
        let mut seqs = Vec::new();
        for (i, t) in topics.iter().enumerate() {
            let reply = join(&mut b, &format!("{}", i + 1), t, json!({})).await;
            seqs.push(reply["seq"].as_i64().expect("a seq in every join reply"));
        }
        let mut watcher = connect(&app, &bob).await;
        for (i, t) in topics.iter().enumerate() {
            join(&mut watcher, &format!("{}", i + 1), t, json!({})).await;
        }
        live_events(&mut watcher, Duration::from_millis(300)).await;
        b.drop_connection();

        // While bob is away: three posts, two messages, one thread reply, one mention.
        for i in 0..3 {
            assert_eq!(app.api("POST", "/api/community/posts", Some(&alice), Some(&format!(r#"{{"body":"post {i}"}}"#))).await.0, 201);
        }
        for (r, body) in [("3", json!({"body": "hello"})), ("4", json!({"body": "hi @bob"})), ("5", json!({"body": "in thread", "parent_id": pid}))] {
            a.send(&json!(["1", r, format!("channel:{rid}"), "new_message", body]).to_string()).await.unwrap();
        }
        let live = live_events(&mut watcher, Duration::from_millis(500)).await;

        // Bob comes back with the seqs he had: each topic answers exactly what went out live.
        let mut back = connect(&app, &bob).await;
        let mut missed_all = Vec::new();
        for (i, t) in topics.iter().enumerate() {
            let reply = join(&mut back, &format!("{}", i + 10), t, json!({"since": seqs[i]})).await;
            let missed = reply["missed"].as_array().unwrap_or_else(|| panic!("{t}: {reply}")).clone();
            let expected: Vec<&(String, String, Value)> = live.iter().filter(|(topic, ..)| topic == t).collect();
            assert_eq!(missed.len(), expected.len(), "{t}: {missed:?} vs {expected:?}");
            for (m, (_, event, payload)) in missed.iter().zip(&expected) {
                assert_eq!((&m["event"], &m["payload"], &m["seq"]), (&json!(event), payload, &payload["seq"]));
            }
            let seqs_seen: Vec<i64> = missed.iter().map(|m| m["seq"].as_i64().unwrap()).collect();
            let consecutive: Vec<i64> = (seqs[i] + 1..=reply["seq"].as_i64().unwrap()).collect();
            assert_eq!(seqs_seen, consecutive, "{t}: consecutive, from just after since to the reply's seq");
            missed_all.extend(missed.iter().map(|m| (t.clone(), m["event"].as_str().unwrap().to_owned())));
        }
        let count = |t: &str, e: &str| missed_all.iter().filter(|(topic, ev)| topic.starts_with(t) && ev == e).count();
        assert_eq!(count("community:feed", "new_post"), 3);
        assert_eq!(count("channel:", "new_message"), 2);
        assert_eq!(count("thread:", "new_message"), 1);
        assert_eq!(count("user:", "mention"), 1);
        // And nothing of it again: the rejoined channels are quiet.
        assert_eq!(live_events(&mut back, Duration::from_millis(300)).await, vec![]);

        // A seq the stream never reached, and a malformed since.
        let reply = join(&mut back, "20", "community:feed", json!({"since": 999})).await;
        assert_eq!(reply, json!({"seq": seqs[0] + 3, "reset": true}));
        back.send(r#"["21","21","community:feed","phx_join",{"since":"x"}]"#).await.unwrap();
        let mut f = next_json(&mut back, Duration::from_secs(5)).await.unwrap();
        while f[3] == "phx_close" {
            // The joins above replaced one another.
            f = next_json(&mut back, Duration::from_secs(5)).await.unwrap();
        }
        assert_eq!(f, json!(["21", "21", "community:feed", "phx_reply", {"response": {"reason": "since must be a non-negative integer"}, "status": "error"}]));
    });
}

fn past_retention_a_rejoin_is_told_to_reset(backend: &str) {
    let app = support::start_app_configured(backend, |state| {
        let config = HistoryConfig {
            default: Retention {
                max_events: 2,
                max_age: Duration::from_secs(3600),
            },
            by_prefix: vec![(
                "user:".into(),
                Retention {
                    max_events: 100,
                    max_age: Duration::from_secs(1),
                },
            )],
        };
        state.history = fawkes::history::History::new(state.store.clone(), config);
    });
    let (_, alice) = app.user("alice", true);
    rt().block_on(async {
        for i in 0..3 {
            app.api(
                "POST",
                "/api/community/posts",
                Some(&alice),
                Some(&format!(r#"{{"body":"p{i}"}}"#)),
            )
            .await;
        }
        let mut c = connect(&app, &alice).await;
        // Two kept: since 1 is served, since 0 is not.
        let reply = join(&mut c, "1", "community:feed", json!({"since": 1})).await;
        assert_eq!(reply["missed"].as_array().unwrap().len(), 2);
        let reply = join(&mut c, "2", "community:feed", json!({"since": 0})).await;
        assert_eq!(reply, json!({"seq": 3, "reset": true}));
        // By age: user: streams keep a second.
        let (_, room) = app
            .api(
                "POST",
                "/api/channels",
                Some(&alice),
                Some(r#"{"name":"r"}"#),
            )
            .await;
        let rid = room["id"].as_i64().unwrap();
        let (bob_id, bob) = app.user("bob", true);
        app.api(
            "POST",
            &format!("/api/channels/{rid}/members"),
            Some(&bob),
            Some(&format!(r#"{{"user_id":{bob_id}}}"#)),
        )
        .await;
        join(&mut c, "3", &format!("channel:{rid}"), json!({})).await;
        c.send(
            &json!(["3", "4", format!("channel:{rid}"), "new_message", {"body": "hey @bob"}])
                .to_string(),
        )
        .await
        .unwrap();
        let mut b = connect(&app, &bob).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let fresh = join(&mut b, "1", &format!("user:{bob_id}"), json!({"since": 0})).await;
        assert_eq!(
            fresh["missed"].as_array().map(Vec::len),
            Some(2),
            "a mention and an unread count: {fresh}"
        );
        tokio::time::sleep(Duration::from_millis(1200)).await;
        let stale = join(&mut b, "2", &format!("user:{bob_id}"), json!({"since": 0})).await;
        assert_eq!(stale["reset"], true, "{stale}");
        // A topic with no new event is not trimmed by its writes: the sweep deletes its
        // expired events (here the two of user:<bob>), and nothing else.
        let mut c = app.state.store.conn().unwrap();
        assert_eq!(fawkes::history::sweep_expired(&mut c).unwrap(), 2);
        assert_eq!(fawkes::history::sweep_expired(&mut c).unwrap(), 0);
        let reply = join(&mut b, "3", "community:feed", json!({"since": 1})).await;
        assert_eq!(
            reply["missed"].as_array().unwrap().len(),
            2,
            "the feed keeps its events"
        );
    });
}

/// Writers post while readers leave and rejoin with `since`: each reader's view of the feed,
/// built only from join replies and events, ends equal to the database.
fn rejoins_racing_writers_end_equal_to_the_database(backend: &str) {
    let app = support::start_app(backend);
    let (_, writer) = app.user("writer", true);
    let (_, reader) = app.user("reader", true);
    rt().block_on(async {
        let writers: Vec<_> = (0..3)
            .map(|w| {
                let (addr, token) = (app.server.addr.to_string(), writer.clone());
                tokio::spawn(async move {
                    let mut mine = Vec::new();
                    for i in 0..15 {
                        let delete = i % 4 == 3 && !mine.is_empty();
                        let req = if delete {
                            let id: i64 = mine.remove(0);
                            format!("DELETE /api/community/posts/{id} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nAuthorization: Bearer {token}\r\nContent-Length: 0\r\n\r\n")
                        } else {
                            let body = format!(r#"{{"body":"w{w} {i}"}}"#);
                            format!("POST /api/community/posts HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len())
                        };
                        let (status, _, body) = protocol_tests::client::http(&addr, &req).await.unwrap();
                        if !delete {
                            assert_eq!(status, 201);
                            let v: Value = serde_json::from_slice(&body).unwrap();
                            mine.push(v["id"].as_i64().unwrap());
                        }
                    }
                })
            })
            .collect();
        let readers: Vec<_> = (0..3)
            .map(|r| {
                let url = format!("ws://{}/socket", app.server.addr);
                let token = reader.clone();
                tokio::spawn(async move {
                    let mut posts: BTreeSet<i64> = BTreeSet::new();
                    let mut last = 0;
                    let mut c = Client::connect("r", &url, &format!("token={token}&vsn=2.0.0")).await.unwrap();
                    for round in 0..6 {
                        let jr = format!("{}", round + 1);
                        // The first join asks from the start, so the view begins empty.
                        let reply = join(&mut c, &jr, "community:feed", json!({"since": last})).await;
                        assert!(reply.get("reset").is_none(), "{reply}");
                        for m in reply["missed"].as_array().unwrap() {
                            apply(&mut posts, &mut last, m["event"].as_str().unwrap(), &m["payload"]);
                        }
                        assert_eq!(last, reply["seq"].as_i64().unwrap());
                        let until = tokio::time::Instant::now() + Duration::from_millis(100 + 40 * r);
                        while let Ok(Some(Frame::Text(t))) = c.recv_within(until.saturating_duration_since(tokio::time::Instant::now())).await {
                            let f: Value = serde_json::from_str(&t).unwrap();
                            if f[3] != "phx_reply" && f[3] != "phx_close" {
                                apply(&mut posts, &mut last, f[3].as_str().unwrap(), &f[4]);
                            }
                        }
                        c.send(&json!([jr, "l", "community:feed", "phx_leave", {}]).to_string()).await.unwrap();
                    }
                    (posts, last)
                })
            })
            .collect();
        for w in writers {
            w.await.unwrap();
        }
        let (_, db) = app.api("GET", "/api/community/posts?limit=100", Some(&writer), None).await;
        let db: BTreeSet<i64> = db["items"].as_array().unwrap().iter().map(|p| p["id"].as_i64().unwrap()).collect();
        for r in readers {
            let (mut posts, mut last) = r.await.unwrap();
            // One last rejoin catches up with whatever came after the reader's rounds.
            let url = format!("ws://{}/socket", app.server.addr);
            let mut c = Client::connect("r", &url, &format!("token={reader}&vsn=2.0.0")).await.unwrap();
            let reply = join(&mut c, "9", "community:feed", json!({"since": last})).await;
            for m in reply["missed"].as_array().unwrap() {
                apply(&mut posts, &mut last, m["event"].as_str().unwrap(), &m["payload"]);
            }
            assert_eq!(posts, db, "a reader's view equals the database");
        }
    });
}

/// Applies a feed event to a reader's view; every seq must be the next one (no gap, no overlap).
fn apply(posts: &mut BTreeSet<i64>, last: &mut i64, event: &str, payload: &Value) {
    let seq = payload["seq"]
        .as_i64()
        .unwrap_or_else(|| panic!("{event} {payload} has no seq"));
    assert_eq!(
        seq,
        *last + 1,
        "{event} {payload}: expected seq {}",
        *last + 1
    );
    *last = seq;
    let id = payload["id"].as_i64().unwrap();
    match event {
        "new_post" => assert!(posts.insert(id)),
        "post_deleted" => assert!(posts.remove(&id)),
        _ => {}
    }
}

macro_rules! on_both_backends {
    ($($name:ident),*) => {
        mod sqlite { $(#[test] fn $name() { super::$name("sqlite") })* }
        mod postgres { $(#[test] fn $name() { super::$name("postgres") })* }
    };
}

on_both_backends!(
    a_rejoin_gets_exactly_what_it_missed,
    past_retention_a_rejoin_is_told_to_reset,
    rejoins_racing_writers_end_equal_to_the_database
);
