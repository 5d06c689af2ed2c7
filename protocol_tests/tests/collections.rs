//! Collections on SQLite and PostgreSQL: REST records, `change` events with gap-free sequence
//! numbers, replay with `since`, and joins racing writers.

mod support;

use fawkes::apps::collections::rules::{Rule, RuleBook};
use fawkes::apps::collections::{apply, CollectionsConfig, Write, Writer};
use protocol_tests::client::{Client, Frame};
use protocol_tests::matcher::Vars;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use support::App;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Runtime::new().unwrap()
}

fn small_log() -> CollectionsConfig {
    CollectionsConfig {
        log_size: 5,
        join_limit: 50,
        max_reply_bytes: 20_000,
        rules: RuleBook::parse("[secret]\nlist = \"auth\"\nview = \"auth\"\n").unwrap(),
    }
}

/// Joins `collection:<name>` anonymously with these params; returns the reply's response.
async fn join(app: &App, name: &str, join_ref: &str, params: Value) -> (Client, Value) {
    let url = format!("ws://{}/socket", app.server.addr);
    let mut c = Client::connect("col", &url, "vsn=2.0.0").await.unwrap();
    let reply = rejoin(&mut c, name, join_ref, params).await;
    (c, reply)
}

async fn rejoin(c: &mut Client, name: &str, join_ref: &str, params: Value) -> Value {
    c.send(&format!(
        r#"["{join_ref}","{join_ref}","collection:{name}","phx_join",{params}]"#
    ))
    .await
    .unwrap();
    let reply = next_json(c).await;
    assert_eq!(reply[0], join_ref, "{reply}");
    assert_eq!(reply[3], "phx_reply", "{reply}");
    reply[4].clone()
}

async fn next_json(c: &mut Client) -> Value {
    match c.recv().await.unwrap() {
        Frame::Text(t) => serde_json::from_str(&t).unwrap(),
        other => panic!("expected a text frame, got {other:?}"),
    }
}

/// The next `change` broadcast's payload, checking the frame's shape.
async fn change(c: &mut Client, name: &str) -> Value {
    let f = next_json(c).await;
    // Changes pass through the channel's handle_out, so they carry its join_ref (as Phoenix
    // sends intercepted broadcasts).
    assert!(f[0].is_string(), "{f}");
    assert_eq!(
        (&f[1], &f[2], &f[3]),
        (
            &json!(null),
            &json!(format!("collection:{name}")),
            &json!("change")
        ),
        "{f}"
    );
    f[4].clone()
}

fn rest_records_and_change_events(backend: &str) {
    let app = support::start_app_with(backend, small_log());
    let (_, token) = app.user("writer", false);
    rt().block_on(async {
        let (mut a, reply) = join(&app, "orders", "1", json!({})).await;
        assert_eq!(reply, json!({"response": {"items": [], "seq": 0}, "status": "ok"}));
        let (mut b, _) = join(&app, "orders", "2", json!({})).await;

        let (status, rec) = app.api("POST", "/api/collections/orders/records", Some(&token), Some(r#"{"item":"tea","qty":2,"id":"mine","seq":99}"#)).await;
        assert_eq!(status, 201, "{rec}");
        let id = rec["id"].as_str().unwrap().to_owned();
        assert_ne!(id, "mine");
        assert_eq!(rec["item"], "tea");
        assert!(rec.get("seq").is_none());
        assert_eq!(rec["created"], rec["updated"]);
        assert_eq!(rec["created"].as_str().unwrap().len(), 24, "ISO-8601 with milliseconds: {rec}");
        let created = json!({"action": "create", "record": rec, "seq": 1});
        assert_eq!(change(&mut a, "orders").await, created);
        assert_eq!(change(&mut b, "orders").await, created);

        let (status, upd) = app.api("PATCH", &format!("/api/collections/orders/records/{id}"), Some(&token), Some(r#"{"qty":3,"note":"hot"}"#)).await;
        assert_eq!(status, 200);
        assert_eq!((&upd["item"], &upd["qty"], &upd["note"], &upd["created"]), (&json!("tea"), &json!(3), &json!("hot"), &rec["created"]));
        let updated = json!({"action": "update", "record": upd, "seq": 2});
        assert_eq!(change(&mut a, "orders").await, updated);
        assert_eq!(change(&mut b, "orders").await, updated);

        assert_eq!(app.api("GET", &format!("/api/collections/orders/records/{id}"), None, None).await, (200, upd.clone()));
        assert_eq!(app.api("DELETE", &format!("/api/collections/orders/records/{id}"), Some(&token), None).await.0, 204);
        let deleted = json!({"action": "delete", "record": upd, "seq": 3});
        assert_eq!(change(&mut a, "orders").await, deleted);
        assert_eq!(change(&mut b, "orders").await, deleted);

        // Bad input: nothing written, nothing broadcast.
        let path = "/api/collections/orders/records";
        for (method, p, tok, body, status) in [
            ("POST", path.to_string(), None, Some("{}"), 401),
            ("POST", path.to_string(), Some("bad"), Some("{}"), 401),
            ("POST", path.to_string(), Some(token.as_str()), Some("[1]"), 422),
            ("POST", path.to_string(), Some(token.as_str()), Some("{"), 400),
            ("PATCH", format!("{path}/nope"), Some(token.as_str()), Some("{}"), 404),
            ("DELETE", format!("{path}/nope"), Some(token.as_str()), None, 404),
            ("GET", format!("{path}/nope"), None, None, 404),
            ("POST", "/api/collections/Bad-Name/records".to_string(), Some(token.as_str()), Some("{}"), 404),
            ("GET", format!("{path}?perPage=0"), None, None, 400),
            ("GET", format!("{path}?perPage=x"), None, None, 400),
            ("GET", format!("{path}?page=-1"), None, None, 400),
            ("GET", format!("{path}?page=4611686018427387905"), None, None, 400),
            ("GET", format!("{path}?page=99999999999999999999"), None, None, 400),
            ("GET", format!("{path}?sort=a;b"), None, None, 400),
            ("GET", format!("{path}?sort=a'--"), None, None, 400),
        ] {
            assert_eq!(app.api(method, &p, tok, body).await.0, status, "{method} {p} {body:?}");
        }
        a.expect_silence(200).await.unwrap();

        // Other events get an error reply and the channel lives on; reload answers items + seq.
        a.send(r#"["1","5","collection:orders","frobnicate",{}]"#).await.unwrap();
        a.expect(r#"["1","5","collection:orders","phx_reply",{"response":{"reason":"unknown event \"frobnicate\""},"status":"error"}]"#, &mut Vars::new()).await.unwrap();
        a.send(r#"["1","6","collection:orders","reload",{}]"#).await.unwrap();
        a.expect(r#"["1","6","collection:orders","phx_reply",{"response":{"items":[],"seq":3},"status":"ok"}]"#, &mut Vars::new()).await.unwrap();
    });
}

fn pages_and_sorts(backend: &str) {
    let app = support::start_app(backend);
    let (_, token) = app.user("writer", false);
    rt().block_on(async {
        for (name, price) in [("c", 3), ("a", 10), ("b", 2)] {
            app.api(
                "POST",
                "/api/collections/menu/records",
                Some(&token),
                Some(&format!(r#"{{"name":"{name}","price":{price}}}"#)),
            )
            .await;
        }
        let names = |v: &Value| {
            v["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r["name"].as_str().unwrap().to_owned())
                .collect::<Vec<_>>()
        };
        let (_, all) = app
            .api("GET", "/api/collections/menu/records", None, None)
            .await;
        assert_eq!(
            (
                all["page"].clone(),
                all["perPage"].clone(),
                all["totalItems"].clone(),
                all["totalPages"].clone()
            ),
            (json!(1), json!(30), json!(3), json!(1))
        );
        assert_eq!(names(&all), ["c", "a", "b"]);
        let (_, p) = app
            .api(
                "GET",
                "/api/collections/menu/records?sort=-price&perPage=2&page=1",
                None,
                None,
            )
            .await;
        assert_eq!(
            (names(&p), p["totalPages"].clone()),
            (vec!["a".to_string(), "c".into()], json!(2))
        );
        let (_, p) = app
            .api(
                "GET",
                "/api/collections/menu/records?sort=name&perPage=2&page=2",
                None,
                None,
            )
            .await;
        assert_eq!(names(&p), ["c"]);
        let (_, p) = app
            .api(
                "GET",
                "/api/collections/menu/records?perPage=100000",
                None,
                None,
            )
            .await;
        assert_eq!(p["perPage"], 500);
        let (_, p) = app
            .api("GET", "/api/collections/empty/records", None, None)
            .await;
        assert_eq!(
            p,
            json!({"page": 1, "perPage": 30, "totalItems": 0, "totalPages": 0, "items": []})
        );
        // A page past the end is empty, not an error.
        let (status, p) = app
            .api(
                "GET",
                "/api/collections/menu/records?page=1000000&perPage=500",
                None,
                None,
            )
            .await;
        assert_eq!(
            (status, p["items"].clone(), p["totalItems"].clone()),
            (200, json!([]), json!(3))
        );
        let (status, p) = app
            .api(
                "GET",
                "/api/collections/menu/records?page=4611686018427387905",
                None,
                None,
            )
            .await;
        assert_eq!(
            (status, p),
            (
                400,
                json!({"errors": {"detail": "page 4611686018427387905 is out of range"}})
            )
        );

        // Values of every JSON type sort the same way on both databases, in SQL: missing and
        // null, booleans, numbers, strings by bytes, then arrays and objects.
        for v in [
            r#""b""#,
            "2.5",
            "true",
            "null",
            r#""B""#,
            "-1",
            "false",
            "[1]",
            r#""é""#,
            "10",
            r#"{"k":1}"#,
            "MISSING",
        ] {
            let body = if v == "MISSING" {
                r#"{"label":"missing"}"#.to_string()
            } else {
                format!(r#"{{"label":{v},"v":{v}}}"#)
            };
            assert_eq!(
                app.api(
                    "POST",
                    "/api/collections/mixed/records",
                    Some(&token),
                    Some(&body)
                )
                .await
                .0,
                201
            );
        }
        let labels = |v: &Value| {
            v["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r["label"].to_string())
                .collect::<Vec<_>>()
        };
        let (_, asc) = app
            .api("GET", "/api/collections/mixed/records?sort=v", None, None)
            .await;
        assert_eq!(
            labels(&asc),
            [
                r#"null"#,
                r#""missing""#,
                "false",
                "true",
                "-1",
                "2.5",
                "10",
                r#""B""#,
                r#""b""#,
                r#""é""#,
                "[1]",
                r#"{"k":1}"#
            ],
            "null and missing tie, in creation order"
        );
        let (_, desc) = app
            .api(
                "GET",
                "/api/collections/mixed/records?sort=-v&perPage=3&page=2",
                None,
                None,
            )
            .await;
        assert_eq!(labels(&desc), [r#""b""#, r#""B""#, "10"]);
        let (_, by_id) = app
            .api(
                "GET",
                "/api/collections/mixed/records?sort=-id&perPage=500",
                None,
                None,
            )
            .await;
        let ids: Vec<String> = by_id["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["id"].as_str().unwrap().to_owned())
            .collect();
        let mut sorted = ids.clone();
        sorted.sort_by(|a, b| b.cmp(a));
        assert_eq!(ids, sorted);
    });
}

fn since_replays_exactly_what_was_missed(backend: &str) {
    let app = support::start_app_with(backend, small_log());
    let (_, token) = app.user("writer", false);
    rt().block_on(async {
        let write = |body: String| {
            let (app, token) = (&app, token.clone());
            async move { app.api("POST", "/api/collections/feed/records", Some(&token), Some(&body)).await.1 }
        };
        write(r#"{"n":0}"#.into()).await;
        let (c, reply) = join(&app, "feed", "1", json!({})).await;
        assert_eq!(reply["response"]["seq"], 1);
        c.close().await;
        let mut missed = Vec::new();
        for n in 1..=3 {
            missed.push(write(format!(r#"{{"n":{n}}}"#)).await);
        }
        let (_, reply) = join(&app, "feed", "2", json!({"since": 1})).await;
        let changes: Vec<Value> = missed.iter().enumerate().map(|(i, r)| json!({"action": "create", "record": r, "seq": i as i64 + 2})).collect();
        assert_eq!(reply, json!({"response": {"changes": changes, "seq": 4}, "status": "ok"}));
        // Up to date already: no changes.
        let (_, reply) = join(&app, "feed", "3", json!({"since": 4})).await;
        assert_eq!(reply["response"], json!({"changes": [], "seq": 4}));
        // The log keeps 5 changes: missing 6 means a reset with everything.
        for n in 4..=9 {
            write(format!(r#"{{"n":{n}}}"#)).await;
        }
        let (_, reply) = join(&app, "feed", "4", json!({"since": 4})).await;
        let r = &reply["response"];
        assert_eq!((r["reset"].clone(), r["seq"].clone(), r["items"].as_array().unwrap().len()), (json!(true), json!(10), 10));
        // Exactly 5 back is still served.
        let (_, reply) = join(&app, "feed", "5", json!({"since": 5})).await;
        assert_eq!(reply["response"]["changes"].as_array().unwrap().len(), 5);
        // A since beyond the latest seq gets a reset too; a malformed one is refused.
        let (_, reply) = join(&app, "feed", "6", json!({"since": 99})).await;
        assert_eq!(reply["response"]["reset"], true);
        let (_, reply) = join(&app, "feed", "7", json!({"since": "x"})).await;
        assert_eq!(reply, json!({"response": {"reason": "since must be a non-negative integer"}, "status": "error"}));
    });
}

fn limits_and_private_collections(backend: &str) {
    let app = support::start_app_with(backend, small_log());
    let (_, token) = app.user("writer", false);
    rt().block_on(async {
        for _ in 0..51 {
            app.api("POST", "/api/collections/big/records", Some(&token), Some("{}")).await;
        }
        let (_, reply) = join(&app, "big", "1", json!({})).await;
        assert_eq!(reply, json!({"response": {"reason": "collection has 51 records, over the join limit of 50: page through the REST API instead"}, "status": "error"}));
        // Bytes bound a reply too (20,000 here): three records of 8,000 bytes are too many.
        let wide = format!(r#"{{"text":"{}"}}"#, "w".repeat(8_000));
        for _ in 0..3 {
            assert_eq!(app.api("POST", "/api/collections/wide/records", Some(&token), Some(&wide)).await.0, 201);
        }
        let (mut c, reply) = join(&app, "wide", "1", json!({})).await;
        let why = reply["response"]["reason"].as_str().unwrap().to_owned();
        assert!(why.starts_with("the reply would be 24") && why.ends_with("bytes, over the limit of 20000: page through the REST API instead"), "{why}");
        let (_, page) = app.api("GET", "/api/collections/wide/records?perPage=1", None, None).await;
        assert_eq!(page["totalItems"], 3, "REST pages through it");
        let _ = &mut c;
        // Private: anonymous joins and reads are refused, a token lets them in.
        let (_, reply) = join(&app, "secret", "1", json!({})).await;
        assert_eq!(reply["response"], json!({"reason": "unauthorized"}));
        assert_eq!(app.api("GET", "/api/collections/secret/records", None, None).await.0, 401);
        assert_eq!(app.api("GET", "/api/collections/secret/records", Some(&token), None).await.0, 200);
        let url = format!("ws://{}/socket", app.server.addr);
        let mut c = Client::connect("c", &url, &format!("token={token}&vsn=2.0.0")).await.unwrap();
        assert_eq!(rejoin(&mut c, "secret", "1", json!({})).await["status"], "ok");
    });
}

/// Writers on several threads, straight into the store (no in-process ordering): the
/// database alone keeps sequence numbers gap-free.
fn concurrent_writers_get_gap_free_seqs(backend: &str) {
    let app = support::start_app(backend);
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let store = app.state.store.clone();
            std::thread::spawn(move || {
                use diesel::Connection;
                let mut c = store.conn().unwrap();
                (0..25)
                    .map(|_| {
                        let change = (*c)
                            .transaction(|c| {
                                let anyone = Writer {
                                    user: None,
                                    rule: Rule::Public,
                                };
                                let config = fawkes::history::HistoryConfig::default();
                                let mut rec = fawkes::history::Recorder::new(&config);
                                apply(
                                    c,
                                    &mut rec,
                                    "race",
                                    Write::Create(Default::default()),
                                    10_000,
                                    &anyone,
                                )
                            })
                            .unwrap();
                        change.payload["seq"].as_i64().unwrap()
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut seqs: Vec<i64> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    seqs.sort();
    assert_eq!(seqs, (1..=100).collect::<Vec<_>>());
}

/// Writers hammer a collection over REST while clients join, leave and rejoin with `since`:
/// every client sees consecutive seqs and ends with exactly the database's records.
fn joins_racing_writers_see_no_gap_and_no_overlap(backend: &str) {
    let app = support::start_app_with(
        backend,
        CollectionsConfig {
            log_size: 10_000,
            join_limit: 10_000,
            ..Default::default()
        },
    );
    let (_, token) = app.user("writer", false);
    let url = format!("ws://{}/socket", app.server.addr);
    rt().block_on(async {
        let writers: Vec<_> = (0..3)
            .map(|w| {
                let (addr, token) = (app.server.addr.to_string(), token.clone());
                tokio::spawn(async move {
                    let mut ids: Vec<String> = Vec::new();
                    for i in 0..40 {
                        let (method, path, body) = match (i % 4, ids.last()) {
                            (3, Some(id)) => ("DELETE", format!("/api/collections/race/records/{id}"), String::new()),
                            (2, Some(id)) => ("PATCH", format!("/api/collections/race/records/{id}"), format!(r#"{{"w":{w},"i":{i}}}"#)),
                            _ => ("POST", "/api/collections/race/records".into(), format!(r#"{{"w":{w},"i":{i}}}"#)),
                        };
                        let req = format!("{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Bearer {token}\r\nContent-Length: {}\r\n\r\n{body}", body.len());
                        let (status, _, resp) = protocol_tests::client::http(&addr, &req).await.unwrap();
                        match method {
                            "POST" => ids.push(serde_json::from_slice::<Value>(&resp).unwrap()["id"].as_str().unwrap().to_owned()),
                            "DELETE" => { ids.pop(); }
                            _ => {}
                        }
                        assert!(matches!(status, 200 | 201 | 204), "{method} {path}: {status}");
                    }
                })
            })
            .collect();
        let clients: Vec<_> = (0..4)
            .map(|k| {
                let url = url.clone();
                tokio::spawn(async move {
                    let mut c = Client::connect("racer", &url, "vsn=2.0.0").await.unwrap();
                    let mut state: BTreeMap<String, Value> = BTreeMap::new();
                    let mut seq = 0;
                    for round in 0..6 {
                        let jr = format!("{k}-{round}");
                        let params = if round == 0 { json!({}) } else { json!({"since": seq}) };
                        let r = rejoin(&mut c, "race", &jr, params).await;
                        let r = &r["response"];
                        if let Some(items) = r["items"].as_array() {
                            state = items.iter().map(|i| (i["id"].as_str().unwrap().to_owned(), i.clone())).collect();
                        } else {
                            for ch in r["changes"].as_array().unwrap() {
                                seq = apply_change(&mut state, seq, ch);
                            }
                        }
                        seq = r["seq"].as_i64().unwrap();
                        // Follow the live changes for a while, then leave.
                        let until = std::time::Instant::now() + std::time::Duration::from_millis(60);
                        while std::time::Instant::now() < until {
                            match c.recv_within(std::time::Duration::from_millis(20)).await.unwrap() {
                                Some(Frame::Text(t)) => {
                                    let f: Value = serde_json::from_str(&t).unwrap();
                                    assert_eq!(f[3], "change", "{f}");
                                    seq = apply_change(&mut state, seq, &f[4]);
                                }
                                None => {}
                                other => panic!("{other:?}"),
                            }
                        }
                        c.send(&format!(r#"["{jr}","l{jr}","collection:race","phx_leave",{{}}]"#)).await.unwrap();
                        // Drain up to our leave's close; changes before it still count.
                        loop {
                            let f = next_json(&mut c).await;
                            if f[3] == "phx_close" { break; }
                            if f[3] == "change" { seq = apply_change(&mut state, seq, &f[4]); }
                        }
                    }
                    // Final catch-up once the writers are done is done by the caller.
                    (c, state, seq)
                })
            })
            .collect();
        for w in writers {
            w.await.unwrap();
        }
        let (_, db) = app.api("GET", "/api/collections/race/records?perPage=500", None, None).await;
        let db: BTreeMap<String, Value> = db["items"].as_array().unwrap().iter().map(|i| (i["id"].as_str().unwrap().to_owned(), i.clone())).collect();
        for client in clients {
            let (mut c, mut state, mut seq) = client.await.unwrap();
            let r = rejoin(&mut c, "race", "final", json!({"since": seq})).await;
            for ch in r["response"]["changes"].as_array().unwrap() {
                seq = apply_change(&mut state, seq, ch);
            }
            assert_eq!(seq, r["response"]["seq"].as_i64().unwrap());
            assert_eq!(state, db);
        }
    });
}

/// Applies one change, checking it is the very next sequence number.
fn apply_change(state: &mut BTreeMap<String, Value>, seq: i64, ch: &Value) -> i64 {
    let s = ch["seq"].as_i64().unwrap();
    assert_eq!(s, seq + 1, "gap or overlap: at {seq}, got {ch}");
    let id = ch["record"]["id"].as_str().unwrap().to_owned();
    match ch["action"].as_str().unwrap() {
        "delete" => {
            state.remove(&id);
        }
        _ => {
            state.insert(id, ch["record"].clone());
        }
    }
    s
}

macro_rules! on_both_backends {
    ($($name:ident),*) => {
        mod sqlite { $(#[test] fn $name() { super::$name("sqlite") })* }
        mod postgres { $(#[test] fn $name() { super::$name("postgres") })* }
    };
}

on_both_backends!(
    rest_records_and_change_events,
    pages_and_sorts,
    since_replays_exactly_what_was_missed,
    limits_and_private_collections,
    concurrent_writers_get_gap_free_seqs,
    joins_racing_writers_see_no_gap_and_no_overlap
);
