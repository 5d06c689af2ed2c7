//! Membership holds while channels are open, on SQLite and PostgreSQL: a user removed from a
//! room (or leaving it, or leaving the community) gets `phx_close` on every channel of it at
//! once and nothing broadcast there after; every push is checked against membership as it is
//! now, not as it was at join.

mod support;

use protocol_tests::client::{Client, Frame};
use serde_json::{json, Value};
use std::time::Duration;
use support::App;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Runtime::new().unwrap()
}

const NOT_A_MEMBER: &str =
    "not a member of this room: join it first (POST /api/channels/:id/members)";

async fn connect(app: &App, token: &str) -> Client {
    let url = format!("ws://{}/socket", app.server.addr);
    Client::connect("client", &url, &format!("token={token}&vsn=2.0.0"))
        .await
        .unwrap()
}

/// Text frames as JSON until `done` says so (or 3 s pass, which fails).
async fn frames_until(c: &mut Client, mut done: impl FnMut(&[Value]) -> bool) -> Vec<Value> {
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    while !done(&got) {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match c.recv_within(left).await.unwrap() {
            Some(Frame::Text(t)) => got.push(serde_json::from_str(&t).unwrap()),
            Some(other) => panic!("unexpected frame {other:?}; so far {got:?}"),
            None => panic!("timed out; so far {got:?}"),
        }
    }
    got
}

/// Sends a push and returns its reply frame, skipping whatever else arrives meanwhile.
async fn push(
    c: &mut Client,
    join_ref: &str,
    ref_: &str,
    topic: &str,
    event: &str,
    payload: Value,
) -> Value {
    c.send(&json!([join_ref, ref_, topic, event, payload]).to_string())
        .await
        .unwrap();
    let frames = frames_until(c, |f| {
        f.last()
            .is_some_and(|f| f[1] == ref_ && f[3] == "phx_reply")
    })
    .await;
    frames.last().unwrap().clone()
}

/// Joins and returns the reply's `{"status", "response"}`.
async fn join(c: &mut Client, join_ref: &str, topic: &str) -> Value {
    push(c, join_ref, join_ref, topic, "phx_join", json!({})).await[4].clone()
}

fn is_close(f: &Value, topic: &str) -> bool {
    f[2] == topic && f[3] == "phx_close"
}

fn removal_closes_every_channel_of_the_room(backend: &str) {
    let app = support::start_app(backend);
    let (_, alice) = app.user("alice", true);
    let (bob_id, bob) = app.user("bob", true);
    rt().block_on(async {
        let (_, room) = app.api("POST", "/api/channels", Some(&alice), Some(r#"{"name":"secret","private":true}"#)).await;
        let rid = room["id"].as_i64().unwrap();
        let add = format!(r#"{{"user_id":{bob_id}}}"#);
        assert_eq!(app.api("POST", &format!("/api/channels/{rid}/members"), Some(&alice), Some(&add)).await.0, 204);
        let room_topic = format!("channel:{rid}");

        let mut a = connect(&app, &alice).await;
        assert_eq!(join(&mut a, "1", &room_topic).await["status"], "ok");
        let parent = push(&mut a, "1", "2", &room_topic, "new_message", json!({"body": "a thread"})).await;
        let pid = parent[4]["response"]["id"].as_i64().unwrap();
        let thread_topic = format!("thread:{pid}");
        let voice_topic = format!("voice:{rid}");

        let mut b = connect(&app, &bob).await;
        for (r, topic) in [("1", &room_topic), ("2", &thread_topic), ("3", &voice_topic)] {
            assert_eq!(join(&mut b, r, topic).await["status"], "ok", "{topic}");
        }
        // What the joins bring (presence), then quiet.
        while b.recv_within(Duration::from_millis(300)).await.unwrap().is_some() {}

        assert_eq!(app.api("DELETE", &format!("/api/channels/{rid}/members/{bob_id}"), Some(&alice), None).await.0, 204);
        // Right after the 204: a message and a thread reply bob must never see.
        push(&mut a, "1", "3", &room_topic, "new_message", json!({"body": "after bob left"})).await;
        push(&mut a, "1", "4", &room_topic, "new_message", json!({"body": "reply", "parent_id": pid})).await;
        let topics = [room_topic.clone(), thread_topic.clone(), voice_topic.clone()];
        let frames = frames_until(&mut b, |f| topics.iter().all(|t| f.iter().any(|x| is_close(x, t)))).await;
        for f in &frames {
            assert_eq!(f[3], "phx_close", "bob got {f} after his removal");
            assert_eq!(f[0], f[1], "phx_close carries the join_ref as its ref, as Phoenix sends it");
            assert_eq!(f[4], json!({}));
        }
        assert_eq!(frames.len(), 3, "{frames:?}");
        b.expect_silence(500).await.unwrap();

        // The channels are gone: pushes are unmatched, and he cannot come back.
        let reply = push(&mut b, "1", "9", &room_topic, "new_message", json!({"body": "still here?"})).await;
        assert_eq!(reply, json!([null, "9", room_topic, "phx_reply", {"response": {"reason": "unmatched topic"}, "status": "error"}]));
        assert_eq!(join(&mut b, "10", &room_topic).await, json!({"response": {"reason": "unauthorized"}, "status": "error"}));
        assert_eq!(join(&mut b, "11", &voice_topic).await["status"], "error");
        let (_, history) = app.api("GET", &format!("/api/channels/{rid}/messages"), Some(&alice), None).await;
        assert_eq!(history["items"].as_array().unwrap().len(), 2, "bob's push stored nothing: {history}");
    });
}

fn pushes_need_membership_now(backend: &str) {
    let app = support::start_app(backend);
    let (_, alice) = app.user("alice", true);
    let (bob_id, bob) = app.user("bob", true);
    rt().block_on(async {
        let (_, room) = app
            .api(
                "POST",
                "/api/channels",
                Some(&alice),
                Some(r#"{"name":"general"}"#),
            )
            .await;
        let rid = room["id"].as_i64().unwrap();
        let topic = format!("channel:{rid}");
        let members = format!("/api/channels/{rid}/members");
        let me = format!(r#"{{"user_id":{bob_id}}}"#);
        let mut a = connect(&app, &alice).await;
        assert_eq!(join(&mut a, "1", &topic).await["status"], "ok");
        let msg = push(
            &mut a,
            "1",
            "2",
            &topic,
            "new_message",
            json!({"body": "hello"}),
        )
        .await[4]["response"]
            .clone();
        let mid = msg["id"].as_i64().unwrap();

        let mut b = connect(&app, &bob).await;
        assert_eq!(
            app.api("POST", &members, Some(&bob), Some(&me)).await.0,
            204
        );
        assert_eq!(join(&mut b, "1", &topic).await["status"], "ok");
        while b
            .recv_within(Duration::from_millis(300))
            .await
            .unwrap()
            .is_some()
        {}
        // Leaving the room oneself ends the channel too.
        assert_eq!(
            app.api("DELETE", &format!("{members}/{bob_id}"), Some(&bob), None)
                .await
                .0,
            204
        );
        let frames = frames_until(&mut b, |f| f.iter().any(|x| is_close(x, &topic))).await;
        assert_eq!(frames, vec![json!(["1", "1", topic, "phx_close", {}])]);

        // A public room may be read by anyone, and written by members only.
        let rejoined = join(&mut b, "2", &topic).await;
        assert_eq!(rejoined["status"], "ok");
        assert_eq!(rejoined["response"]["last_read_id"], Value::Null);
        let refused = json!({"response": {"reason": NOT_A_MEMBER}, "status": "error"});
        for (r, event, payload) in [
            ("3", "new_message", json!({"body": "hi"})),
            ("4", "react", json!({"message_id": mid, "emoji": "👍"})),
            ("5", "mark_read", json!({"message_id": mid})),
            ("6", "typing_start", json!({})),
            ("7", "edit_message", json!({"id": mid, "body": "x"})),
        ] {
            assert_eq!(
                push(&mut b, "2", r, &topic, event, payload).await[4],
                refused,
                "{event}"
            );
        }
        assert_eq!(
            push(&mut b, "2", "8", &topic, "load_history", json!({})).await[4]["status"],
            "ok"
        );
        // One REST call makes him a member; the same channel may then post.
        assert_eq!(
            app.api("POST", &members, Some(&bob), Some(&me)).await.0,
            204
        );
        assert_eq!(
            push(
                &mut b,
                "2",
                "9",
                &topic,
                "new_message",
                json!({"body": "now a member"})
            )
            .await[4]["status"],
            "ok"
        );
        assert_eq!(
            push(
                &mut b,
                "2",
                "10",
                &topic,
                "mark_read",
                json!({"message_id": mid})
            )
            .await[4]["status"],
            "ok"
        );
    });
}

fn leaving_the_community_closes_the_feed(backend: &str) {
    let app = support::start_app(backend);
    let (_, alice) = app.user("alice", true);
    let (_, bob) = app.user("bob", true);
    rt().block_on(async {
        let mut b = connect(&app, &bob).await;
        assert_eq!(join(&mut b, "1", "community:feed").await["status"], "ok");
        assert_eq!(
            app.api("DELETE", "/api/community/join", Some(&bob), None)
                .await
                .0,
            204
        );
        assert_eq!(
            app.api(
                "POST",
                "/api/community/posts",
                Some(&alice),
                Some(r#"{"body":"after bob left"}"#)
            )
            .await
            .0,
            201
        );
        let frames = frames_until(&mut b, |f| !f.is_empty()).await;
        assert_eq!(
            frames,
            vec![json!(["1", "1", "community:feed", "phx_close", {}])]
        );
        b.expect_silence(500).await.unwrap();
        assert_eq!(
            join(&mut b, "2", "community:feed").await,
            json!({"response": {"reason": "unauthorized"}, "status": "error"})
        );
        // Joining again brings the feed back.
        assert_eq!(
            app.api("POST", "/api/community/join", Some(&bob), None)
                .await
                .0,
            204
        );
        assert_eq!(join(&mut b, "3", "community:feed").await["status"], "ok");
        assert_eq!(
            app.api(
                "POST",
                "/api/community/posts",
                Some(&alice),
                Some(r#"{"body":"welcome back"}"#)
            )
            .await
            .0,
            201
        );
        let frames = frames_until(&mut b, |f| !f.is_empty()).await;
        assert_eq!(
            (&frames[0][2], &frames[0][3], &frames[0][4]["body"]),
            (
                &json!("community:feed"),
                &json!("new_post"),
                &json!("welcome back")
            )
        );
    });
}

macro_rules! on_both_backends {
    ($($name:ident),*) => {
        mod sqlite { $(#[test] fn $name() { super::$name("sqlite") })* }
        mod postgres { $(#[test] fn $name() { super::$name("postgres") })* }
    };
}

on_both_backends!(
    removal_closes_every_channel_of_the_room,
    pushes_need_membership_now,
    leaving_the_community_closes_the_feed
);
