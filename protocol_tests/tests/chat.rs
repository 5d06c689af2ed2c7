//! Chat's REST API (rooms, members, history) and its authorization, on SQLite and PostgreSQL.
//! The realtime side is driven through phoenix.js in `js/test/apps/chat.test.js`.

mod support;

use protocol_tests::client::Client;
use protocol_tests::matcher::Vars;
use serde_json::{json, Value};

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Runtime::new().unwrap()
}

fn rooms_members_and_history(backend: &str) {
    let app = support::start_app(backend);
    let (alice_id, alice) = app.user("alice", false);
    let (bob_id, bob) = app.user("bob", false);
    let (carol_id, carol) = app.user("carol", false);
    rt().block_on(async {
        let (status, general) = app.api("POST", "/api/channels", Some(&alice), Some(r#"{"name":"general"}"#)).await;
        assert_eq!(status, 201);
        let gid = general["id"].as_i64().unwrap();
        assert_eq!(general, json!({"id": gid, "name": "general", "private": false, "unread_count": 0}));
        let (_, secret) = app.api("POST", "/api/channels", Some(&alice), Some(r#"{"name":"secret","private":true}"#)).await;
        let sid = secret["id"].as_i64().unwrap();

        for (body, field) in [(r#"{}"#, "name"), (r#"{"name":"  "}"#, "name"), (r#"{"name":"x","private":"yes"}"#, "private")] {
            let (status, err) = app.api("POST", "/api/channels", Some(&alice), Some(body)).await;
            assert_eq!(status, 422, "{body}");
            assert!(err["errors"][field].is_array(), "{err}");
        }
        assert_eq!(app.api("POST", "/api/channels", None, Some(r#"{"name":"x"}"#)).await.0, 401);

        let members = |room: i64| format!("/api/channels/{room}/members");
        let add = |user: i64| format!(r#"{{"user_id":{user}}}"#);
        // Anyone may join a public room themselves, not add others; only admins do that.
        assert_eq!(app.api("POST", &members(gid), Some(&bob), Some(&add(carol_id))).await.0, 403);
        assert_eq!(app.api("POST", &members(gid), Some(&bob), Some(&add(bob_id))).await.0, 204);
        assert_eq!(app.api("POST", &members(sid), Some(&carol), Some(&add(carol_id))).await.0, 403);
        assert_eq!(app.api("POST", &members(sid), Some(&alice), Some(&add(bob_id))).await.0, 204);
        assert_eq!(app.api("POST", &members(sid), Some(&alice), Some(&add(99999))).await.0, 422);
        assert_eq!(app.api("POST", &members(99999), Some(&alice), Some(&add(bob_id))).await.0, 404);
        assert_eq!(
            app.api("GET", &members(sid), Some(&bob), None).await,
            (200, json!({"items": [
                {"user_id": alice_id, "name": "alice", "admin": true},
                {"user_id": bob_id, "name": "bob", "admin": false},
            ]}))
        );
        assert_eq!(app.api("GET", &members(sid), Some(&carol), None).await.0, 403);

        // The rooms I see: public ones, and private ones I belong to.
        let names = |v: Value| v["items"].as_array().unwrap().iter().map(|r| r["name"].as_str().unwrap().to_owned()).collect::<Vec<_>>();
        assert_eq!(names(app.api("GET", "/api/channels", Some(&carol), None).await.1), ["general"]);
        assert_eq!(names(app.api("GET", "/api/channels", Some(&bob), None).await.1), ["general", "secret"]);

        // Messages over the socket; unread counts and history over REST.
        let url = format!("ws://{}/socket", app.server.addr);
        let mut a = Client::connect("alice", &url, &format!("token={alice}&vsn=2.0.0")).await.unwrap();
        a.send(&format!(r#"["1","1","channel:{gid}","phx_join",{{}}]"#)).await.unwrap();
        a.expect(&format!(r#"["1","1","channel:{gid}","phx_reply",{{"response":{{"last_read_id":0,"messages":[],"seq":0}},"status":"ok"}}]"#), &mut Vars::new()).await.unwrap();
        for i in 0..3 {
            a.send(&format!(r#"["1","m{i}","channel:{gid}","new_message",{{"body":"m{i}"}}]"#)).await.unwrap();
        }
        let mut ids = Vec::new();
        while ids.len() < 3 {
            if let protocol_tests::client::Frame::Text(t) = a.recv().await.unwrap() {
                let f: Value = serde_json::from_str(&t).unwrap();
                if f[3] == "phx_reply" && f[4]["status"] == "ok" && f[1].as_str().is_some_and(|r| r.starts_with('m')) {
                    ids.push(f[4]["response"]["id"].as_i64().unwrap());
                }
            }
        }
        let (_, rooms) = app.api("GET", "/api/channels", Some(&bob), None).await;
        assert_eq!(rooms["items"][0]["unread_count"], 3);
        let (_, rooms) = app.api("GET", "/api/channels", Some(&alice), None).await;
        assert_eq!(rooms["items"][0]["unread_count"], 0, "one's own messages are read");
        let (status, page) = app.api("GET", &format!("/api/channels/{gid}/messages?limit=2"), Some(&bob), None).await;
        assert_eq!(status, 200);
        let got: Vec<i64> = page["items"].as_array().unwrap().iter().map(|m| m["id"].as_i64().unwrap()).collect();
        assert_eq!(got, [ids[2], ids[1]]);
        assert_eq!(page["next_before"], ids[1]);
        let (_, page) = app.api("GET", &format!("/api/channels/{gid}/messages?limit=2&before={}", ids[1]), Some(&bob), None).await;
        assert_eq!((page["items"][0]["id"].as_i64(), page["next_before"].clone()), (Some(ids[0]), Value::Null));
        assert_eq!(app.api("GET", &format!("/api/channels/{sid}/messages"), Some(&carol), None).await.0, 403);
        assert_eq!(app.api("GET", &format!("/api/channels/{gid}/messages?limit=500"), Some(&bob), None).await.0, 422);

        // Leaving: oneself, or an admin removing someone.
        assert_eq!(app.api("DELETE", &format!("/api/channels/{sid}/members/{alice_id}"), Some(&bob), None).await.0, 403);
        assert_eq!(app.api("DELETE", &format!("/api/channels/{sid}/members/{bob_id}"), Some(&bob), None).await.0, 204);
        assert_eq!(app.api("GET", &format!("/api/channels/{sid}/messages"), Some(&bob), None).await.0, 403);
        assert_eq!(app.api("DELETE", &format!("/api/channels/{gid}/members/{bob_id}"), Some(&alice), None).await.0, 204);
        assert_eq!(app.api("DELETE", &format!("/api/channels/{gid}/members/{bob_id}"), Some(&alice), None).await.0, 404);
    });
}

/// A room's members are bounded (each message records an event per member): one more is
/// refused with a clear reason.
fn rooms_are_bounded_in_members(backend: &str) {
    let app = support::start_app_configured(backend, |state| state.chat.max_room_members = 2);
    let (_, alice) = app.user("alice", false);
    let (bob_id, bob) = app.user("bob", false);
    let (carol_id, carol) = app.user("carol", false);
    rt().block_on(async {
        let (_, room) = app
            .api(
                "POST",
                "/api/channels",
                Some(&alice),
                Some(r#"{"name":"small"}"#),
            )
            .await;
        let members = format!("/api/channels/{}/members", room["id"]);
        let add = |user: i64| format!(r#"{{"user_id":{user}}}"#);
        assert_eq!(
            app.api("POST", &members, Some(&bob), Some(&add(bob_id)))
                .await
                .0,
            204
        );
        // Joining again is no new member.
        assert_eq!(
            app.api("POST", &members, Some(&bob), Some(&add(bob_id)))
                .await
                .0,
            204
        );
        assert_eq!(
            app.api("POST", &members, Some(&carol), Some(&add(carol_id)))
                .await,
            (
                422,
                json!({"errors": {"user_id": ["cannot join: the room is full (2 members)"]}})
            )
        );
        assert_eq!(
            app.api("DELETE", &format!("{members}/{bob_id}"), Some(&bob), None)
                .await
                .0,
            204
        );
        assert_eq!(
            app.api("POST", &members, Some(&carol), Some(&add(carol_id)))
                .await
                .0,
            204
        );
    });
}

/// `@everyone` in a room of 300 members, while messages in a second room sharing those members
/// are written side by side: every member's `user:<id>` stream gets its `mention` and
/// `unread_updated` with gap-free seqs, and no write fails (writes recording on the same
/// topics take them in one order, so they cannot deadlock on PostgreSQL).
fn large_rooms_fan_out_to_every_member(backend: &str) {
    use diesel::RunQueryDsl;
    let app = support::start_app(backend);
    let (alice_id, alice) = app.user("alice", false);
    let (bob_id, bob) = app.user("bob", false);
    let ids: Vec<i64> = (0..300)
        .map(|i| app.user(&format!("m{i}"), false).0)
        .collect();
    rt().block_on(async {
        let mut rooms = Vec::new();
        for name in ["big", "other"] {
            let (_, room) = app.api("POST", "/api/channels", Some(&alice), Some(&format!(r#"{{"name":"{name}"}}"#))).await;
            rooms.push(room["id"].as_i64().unwrap());
        }
        let add = format!(r#"{{"user_id":{bob_id}}}"#);
        assert_eq!(app.api("POST", &format!("/api/channels/{}/members", rooms[1]), Some(&bob), Some(&add)).await.0, 204);
        let mut c = app.state.store.conn().unwrap();
        for room in &rooms {
            for id in &ids {
                diesel::sql_query(format!("INSERT INTO room_members (room_id, user_id, admin, last_read_id, inserted_at) VALUES ({room}, {id}, 0, 0, 0)"))
                    .execute(&mut *c)
                    .unwrap();
            }
        }
        drop(c);

        let url = format!("ws://{}/socket", app.server.addr);
        let mut writers = Vec::new();
        for (token, room) in [(&alice, rooms[0]), (&bob, rooms[1])] {
            let mut w = Client::connect("w", &url, &format!("token={token}&vsn=2.0.0")).await.unwrap();
            w.send(&format!(r#"["1","1","channel:{room}","phx_join",{{}}]"#)).await.unwrap();
            writers.push((w, room));
        }
        // Five messages in each room, sent at once from both.
        for (w, room) in writers.iter_mut() {
            for i in 0..5 {
                // One mention first, then every member's count: a write that took topics in
                // the order it records them would hold user:<m250> while the other room's
                // write holds the lower ones.
                let body = match (*room == rooms[0], i % 2) {
                    (true, 0) => format!("@m250 {i}"),
                    (true, _) => format!("@everyone {i}"),
                    (false, _) => format!("{i}"),
                };
                w.send(&format!(r#"["1","m{i}","channel:{room}","new_message",{{"body":"{body}"}}]"#)).await.unwrap();
            }
        }
        for (w, _) in writers.iter_mut() {
            let mut ok = 0;
            while ok < 5 {
                let protocol_tests::client::Frame::Text(t) = w.recv().await.unwrap() else { continue };
                let f: Value = serde_json::from_str(&t).unwrap();
                if f[3] == "phx_reply" && f[1].as_str().is_some_and(|r| r.starts_with('m')) {
                    assert_eq!(f[4]["status"], "ok", "{f}");
                    ok += 1;
                }
            }
        }

        // A member's stream, replayed from the start: 5 mentions (big) and 10 unread counts
        // (5 per room), numbered 1 to 15, each room's counts rising 1 to 5.
        let member = ids[250];
        let token = app.state.store.conn().map(|mut c| fawkes::apps::accounts::create_token(&mut c, "m250").unwrap()).unwrap();
        let mut m = Client::connect("m", &url, &format!("token={token}&vsn=2.0.0")).await.unwrap();
        m.send(&format!(r#"["1","1","user:{member}","phx_join",{{"since":0}}]"#)).await.unwrap();
        let reply = loop {
            let protocol_tests::client::Frame::Text(t) = m.recv().await.unwrap() else { continue };
            let f: Value = serde_json::from_str(&t).unwrap();
            if f[3] == "phx_reply" { break f[4]["response"].clone(); }
        };
        assert_eq!(reply["seq"], 15, "{reply}");
        let missed = reply["missed"].as_array().unwrap();
        let seqs: Vec<i64> = missed.iter().map(|e| e["payload"]["seq"].as_i64().unwrap()).collect();
        assert_eq!(seqs, (1..=15).collect::<Vec<_>>());
        let count = |event: &str| missed.iter().filter(|e| e["event"] == event).count();
        assert_eq!((count("mention"), count("unread_updated")), (5, 10), "{reply}");
        for room in &rooms {
            let counts: Vec<i64> = missed
                .iter()
                .filter(|e| e["event"] == "unread_updated" && e["payload"]["channel_id"] == *room)
                .map(|e| e["payload"]["count"].as_i64().unwrap())
                .collect();
            assert_eq!(counts, [1, 2, 3, 4, 5], "room {room}");
        }
        assert_eq!(reply["unread"][rooms[0].to_string()], 5, "{reply}");
        let _ = alice_id;
    });
}

macro_rules! on_both_backends {
    ($($name:ident),*) => {
        mod sqlite { $(#[test] fn $name() { super::$name("sqlite") })* }
        mod postgres { $(#[test] fn $name() { super::$name("postgres") })* }
    };
}

on_both_backends!(
    rooms_members_and_history,
    rooms_are_bounded_in_members,
    large_rooms_fan_out_to_every_member
);
