//! U+0000 in what clients write, on SQLite and PostgreSQL: PostgreSQL's `text` and `jsonb`
//! cannot hold it, so every writer refuses it (422 over REST, an error reply over a channel) on
//! both backends alike, and nothing stored can break a later read (a sorted listing cast to
//! `jsonb` used to answer 500 for everyone).

mod support;

use protocol_tests::client::Client;
use protocol_tests::matcher::Vars;
use serde_json::json;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Runtime::new().unwrap()
}

fn refused(field: &str) -> serde_json::Value {
    json!({"errors": {field: ["must not contain the NUL character (\\u0000)"]}})
}

fn nul_is_refused_wherever_clients_write(backend: &str) {
    let app = support::start_app(backend);
    let (_, alice) = app.user("alice", true);
    rt().block_on(async {
        let records = "/api/collections/notes/records";
        let (status, ok) = app
            .api("POST", records, Some(&alice), Some(r#"{"title":"b"}"#))
            .await;
        assert_eq!(status, 201, "{ok}");
        let id = ok["id"].as_str().unwrap().to_owned();
        for body in [
            r#"{"title":"a\u0000"}"#,
            r#"{"title":{"deep":["x","\u0000"]}}"#,
            r#"{"title":{"k\u0000":1}}"#,
        ] {
            assert_eq!(
                app.api("POST", records, Some(&alice), Some(body)).await,
                (422, refused("title")),
                "{body}"
            );
            let one = format!("{records}/{id}");
            assert_eq!(
                app.api("PATCH", &one, Some(&alice), Some(body)).await,
                (422, refused("title")),
                "{body}"
            );
        }
        assert_eq!(
            app.api("POST", records, Some(&alice), Some(r#"{"t\u0000":1}"#))
                .await,
            (422, refused("t\u{0}"))
        );
        // What was refused left nothing behind: a sorted listing still answers.
        let (status, page) = app
            .api("GET", &format!("{records}?sort=title"), Some(&alice), None)
            .await;
        assert_eq!(status, 200, "{page}");
        assert_eq!(page["totalItems"], 1, "{page}");
        assert_eq!(page["items"][0]["title"], "b", "{page}");

        // Feed posts and room names (REST), chat messages (a channel push).
        assert_eq!(
            app.api("POST", "/api/community/posts", Some(&alice), Some(r#"{"body":"x\u0000y"}"#))
                .await,
            (422, refused("body"))
        );
        assert_eq!(
            app.api("POST", "/api/channels", Some(&alice), Some(r#"{"name":"\u0000"}"#))
                .await,
            (422, refused("name"))
        );
        let (status, room) = app
            .api("POST", "/api/channels", Some(&alice), Some(r#"{"name":"general"}"#))
            .await;
        assert_eq!(status, 201, "{room}");
        let rid = room["id"].as_i64().unwrap();
        let url = format!("ws://{}/socket", app.server.addr);
        let mut a = Client::connect("alice", &url, &format!("token={alice}&vsn=2.0.0"))
            .await
            .unwrap();
        let mut vars = Vars::new();
        a.send(&format!(r#"["1","1","channel:{rid}","phx_join",{{}}]"#))
            .await
            .unwrap();
        a.expect(
            &format!(r#"["1","1","channel:{rid}","phx_reply",{{"response":{{"last_read_id":0,"messages":[],"seq":0}},"status":"ok"}}]"#),
            &mut vars,
        )
        .await
        .unwrap();
        a.send(&format!(
            r#"["1","2","channel:{rid}","new_message",{{"body":"a\u0000b"}}]"#
        ))
        .await
        .unwrap();
        // The presence diff of one's own join may come first.
        let reply = loop {
            let protocol_tests::client::Frame::Text(t) = a.recv().await.unwrap() else {
                continue;
            };
            let f: serde_json::Value = serde_json::from_str(&t).unwrap();
            if f[3] == "phx_reply" {
                break f;
            }
        };
        assert_eq!(
            reply,
            json!(["1", "2", format!("channel:{rid}"), "phx_reply",
                {"response": {"reason": "body must not contain the NUL character (\\u0000)"}, "status": "error"}])
        );
    });
}

macro_rules! on_both_backends {
    ($($name:ident),*) => {
        mod sqlite { $(#[test] fn $name() { super::$name("sqlite") })* }
        mod postgres { $(#[test] fn $name() { super::$name("postgres") })* }
    };
}

on_both_backends!(nul_is_refused_wherever_clients_write);
