//! Collection rules on SQLite and PostgreSQL, for every action over REST and joins, as the
//! record's owner, another user, an admin and an anonymous client. A refused write is a 403
//! (401 without a token) that stores and broadcasts nothing.

mod support;

use fawkes::apps::accounts::NewUser;
use fawkes::apps::collections::rules::RuleBook;
use fawkes::apps::collections::CollectionsConfig;
use protocol_tests::client::{Client, Frame};
use serde_json::{json, Value};
use std::time::Duration;
use support::App;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Runtime::new().unwrap()
}

const RULES: &str = r#"
[notes]
list = "owner"
view = "owner"
update = "owner"
delete = "owner"

[menu]
create = "admin"
update = "admin"
delete = "admin"

[board]
list = "auth"
view = "auth"
create = "public"
update = "auth"
delete = "admin"
"#;

struct Who {
    alice: String,
    bob: String,
    root: String,
}

fn start(backend: &str) -> (App, Who) {
    let app = support::start_app_configured(backend, |state| {
        state.collections = CollectionsConfig {
            rules: RuleBook::parse(RULES).unwrap(),
            ..Default::default()
        }
    });
    let (_, alice) = app.user("alice", false);
    let (_, bob) = app.user("bob", false);
    let (_, root) = app.new_user(NewUser {
        name: "root".into(),
        admin: true,
        ..Default::default()
    });
    (app, Who { alice, bob, root })
}

fn records(name: &str) -> String {
    format!("/api/collections/{name}/records")
}

async fn create(app: &App, name: &str, token: Option<&str>, body: &str) -> (u16, Value) {
    app.api("POST", &records(name), token, Some(body)).await
}

async fn ids(app: &App, name: &str, token: Option<&str>) -> (u16, Vec<String>) {
    let (status, page) = app.api("GET", &records(name), token, None).await;
    let ids = page["items"].as_array().map_or(vec![], |a| {
        a.iter()
            .map(|r| r["id"].as_str().unwrap().to_owned())
            .collect()
    });
    (status, ids)
}

/// Joins `collection:<name>` (anonymously without a token); the reply's response and status.
async fn join(app: &App, name: &str, token: Option<&str>, params: Value) -> (Client, Value) {
    let url = format!("ws://{}/socket", app.server.addr);
    let q = token.map_or("vsn=2.0.0".to_owned(), |t| format!("token={t}&vsn=2.0.0"));
    let mut c = Client::connect("c", &url, &q).await.unwrap();
    c.send(&json!(["1", "1", format!("collection:{name}"), "phx_join", params]).to_string())
        .await
        .unwrap();
    let reply = next(&mut c).await.expect("a join reply");
    (c, reply[4].clone())
}

async fn next(c: &mut Client) -> Option<Value> {
    match c.recv_within(Duration::from_millis(500)).await.unwrap() {
        Some(Frame::Text(t)) => Some(serde_json::from_str(&t).unwrap()),
        None => None,
        Some(other) => panic!("unexpected {other:?}"),
    }
}

/// The `change` events a client gets within half a second of quiet: (action, record id, seq).
async fn changes(c: &mut Client) -> Vec<(String, String, i64)> {
    let mut out = Vec::new();
    while let Some(f) = next(c).await {
        assert_eq!(f[3], "change", "{f}");
        let keys: Vec<&String> = f[4].as_object().unwrap().keys().collect();
        assert_eq!(
            keys,
            ["action", "record", "seq"],
            "nothing more, the owner never: {f}"
        );
        out.push((
            f[4]["action"].as_str().unwrap().into(),
            f[4]["record"]["id"].as_str().unwrap().into(),
            f[4]["seq"].as_i64().unwrap(),
        ));
    }
    out
}

fn defaults_let_anyone_read_and_owners_write(backend: &str) {
    let (app, w) = start(backend);
    rt().block_on(async {
        let (_, resp) = join(&app, "orders", None, json!({})).await;
        assert_eq!(resp["status"], "ok");
        let (mut watcher, _) = join(&app, "orders", None, json!({})).await;

        assert_eq!(
            create(&app, "orders", None, r#"{"item":"tea"}"#).await.0,
            401
        );
        let (status, a) = create(&app, "orders", Some(&w.alice), r#"{"item":"tea"}"#).await;
        assert_eq!(status, 201);
        let a = a["id"].as_str().unwrap().to_owned();
        let b = create(&app, "orders", Some(&w.bob), r#"{"item":"cake"}"#)
            .await
            .1["id"]
            .as_str()
            .unwrap()
            .to_owned();
        assert_eq!(
            ids(&app, "orders", None).await,
            (200, vec![a.clone(), b.clone()])
        );
        assert_eq!(
            app.api("GET", &format!("{}/{a}", records("orders")), None, None)
                .await
                .0,
            200
        );

        let path = |id: &str| format!("{}/{id}", records("orders"));
        let forbidden = json!({"errors": {"detail": "Forbidden"}});
        assert_eq!(
            app.api("PATCH", &path(&a), None, Some(r#"{"item":"x"}"#))
                .await
                .0,
            401
        );
        assert_eq!(
            app.api("PATCH", &path(&a), Some(&w.bob), Some(r#"{"item":"x"}"#))
                .await,
            (403, forbidden.clone())
        );
        assert_eq!(
            app.api("DELETE", &path(&a), Some(&w.bob), None).await,
            (403, forbidden.clone())
        );
        assert_eq!(app.api("DELETE", &path(&a), None, None).await.0, 401);
        assert_eq!(
            app.api("GET", &path(&a), None, None).await.1["item"],
            "tea",
            "nothing stored"
        );
        assert_eq!(
            app.api(
                "PATCH",
                &path(&a),
                Some(&w.alice),
                Some(r#"{"item":"green tea"}"#)
            )
            .await
            .0,
            200
        );
        assert_eq!(
            app.api(
                "PATCH",
                &path(&a),
                Some(&w.root),
                Some(r#"{"item":"matcha"}"#)
            )
            .await
            .0,
            200
        );
        assert_eq!(
            app.api("DELETE", &path(&b), Some(&w.root), None).await.0,
            204
        );
        assert_eq!(
            app.api("DELETE", &path(&a), Some(&w.alice), None).await.0,
            204
        );
        // Only the writes that happened were broadcast, with consecutive seqs.
        let seen = changes(&mut watcher).await;
        let expected = [
            ("create", &a, 1),
            ("create", &b, 2),
            ("update", &a, 3),
            ("update", &a, 4),
            ("delete", &b, 5),
            ("delete", &a, 6),
        ];
        assert_eq!(
            seen,
            expected.map(|(x, id, s)| (x.to_owned(), id.clone(), s))
        );
    });
}

fn owner_rules_show_and_change_only_ones_own(backend: &str) {
    let (app, w) = start(backend);
    rt().block_on(async {
        assert_eq!(create(&app, "notes", None, "{}").await.0, 401);
        let n1 = create(&app, "notes", Some(&w.alice), r#"{"t":"alice's"}"#)
            .await
            .1["id"]
            .as_str()
            .unwrap()
            .to_owned();
        let n2 = create(&app, "notes", Some(&w.bob), r#"{"t":"bob's"}"#)
            .await
            .1["id"]
            .as_str()
            .unwrap()
            .to_owned();
        assert_eq!(ids(&app, "notes", None).await.0, 401);
        assert_eq!(
            ids(&app, "notes", Some(&w.alice)).await,
            (200, vec![n1.clone()])
        );
        assert_eq!(
            ids(&app, "notes", Some(&w.bob)).await,
            (200, vec![n2.clone()])
        );
        assert_eq!(
            ids(&app, "notes", Some(&w.root)).await,
            (200, vec![n1.clone(), n2.clone()])
        );
        let path = |id: &str| format!("{}/{id}", records("notes"));
        assert_eq!(app.api("GET", &path(&n1), None, None).await.0, 401);
        assert_eq!(app.api("GET", &path(&n1), Some(&w.bob), None).await.0, 403);
        assert_eq!(
            app.api("GET", &path(&n1), Some(&w.alice), None).await.0,
            200
        );
        assert_eq!(app.api("GET", &path(&n1), Some(&w.root), None).await.0, 200);

        // Joins: the same view, and only one's own changes follow.
        assert_eq!(
            join(&app, "notes", None, json!({})).await.1,
            json!({"response": {"reason": "unauthorized"}, "status": "error"})
        );
        let (mut ca, ra) = join(&app, "notes", Some(&w.alice), json!({})).await;
        assert_eq!(
            ra["response"]["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r["id"].clone())
                .collect::<Vec<_>>(),
            [json!(n1)]
        );
        let (mut cr, rr) = join(&app, "notes", Some(&w.root), json!({})).await;
        assert_eq!(rr["response"]["items"].as_array().unwrap().len(), 2);
        let n3 = create(&app, "notes", Some(&w.bob), "{}").await.1["id"]
            .as_str()
            .unwrap()
            .to_owned();
        let n4 = create(&app, "notes", Some(&w.alice), "{}").await.1["id"]
            .as_str()
            .unwrap()
            .to_owned();
        assert_eq!(
            changes(&mut ca).await,
            [("create".to_owned(), n4.clone(), 4)]
        );
        assert_eq!(
            changes(&mut cr).await,
            [
                ("create".to_owned(), n3.clone(), 3),
                ("create".to_owned(), n4.clone(), 4)
            ]
        );
        // A `since` replay holds one's own changes only.
        let (_, replay) = join(&app, "notes", Some(&w.alice), json!({"since": 0})).await;
        let seqs: Vec<i64> = replay["response"]["changes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["seq"].as_i64().unwrap())
            .collect();
        assert_eq!(seqs, [1, 4]);
        assert!(replay["response"]["changes"]
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c.get("owner").is_none()));

        assert_eq!(
            app.api("PATCH", &path(&n1), Some(&w.bob), Some("{}"))
                .await
                .0,
            403
        );
        assert_eq!(
            app.api("DELETE", &path(&n1), Some(&w.bob), None).await.0,
            403
        );
        assert_eq!(
            app.api("PATCH", &path(&n1), Some(&w.alice), Some(r#"{"t":"mine"}"#))
                .await
                .0,
            200
        );
        assert_eq!(
            app.api("DELETE", &path(&n2), Some(&w.root), None).await.0,
            204
        );
    });
}

fn admin_and_auth_rules(backend: &str) {
    let (app, w) = start(backend);
    rt().block_on(async {
        // menu: anyone reads, only admins write.
        assert_eq!(
            create(&app, "menu", Some(&w.alice), r#"{"dish":"soup"}"#)
                .await
                .0,
            403
        );
        assert_eq!(
            create(&app, "menu", None, r#"{"dish":"soup"}"#).await.0,
            401
        );
        let (status, dish) = create(&app, "menu", Some(&w.root), r#"{"dish":"soup"}"#).await;
        assert_eq!(status, 201);
        let path = format!("{}/{}", records("menu"), dish["id"].as_str().unwrap());
        assert_eq!(
            app.api("PATCH", &path, Some(&w.alice), Some("{}")).await.0,
            403
        );
        assert_eq!(app.api("DELETE", &path, Some(&w.alice), None).await.0, 403);
        assert_eq!(ids(&app, "menu", None).await.1.len(), 1);
        assert_eq!(join(&app, "menu", None, json!({})).await.1["status"], "ok");
        assert_eq!(
            app.api("PATCH", &path, Some(&w.root), Some(r#"{"price":3}"#))
                .await
                .0,
            200
        );
        assert_eq!(app.api("DELETE", &path, Some(&w.root), None).await.0, 204);

        // board: anyone posts, signed-in users read and edit, admins delete.
        let (status, card) = create(&app, "board", None, r#"{"todo":"mop"}"#).await;
        assert_eq!(status, 201);
        let path = format!("{}/{}", records("board"), card["id"].as_str().unwrap());
        assert_eq!(ids(&app, "board", None).await.0, 401);
        assert_eq!(app.api("GET", &path, None, None).await.0, 401);
        assert_eq!(ids(&app, "board", Some(&w.bob)).await.1.len(), 1);
        assert_eq!(
            join(&app, "board", None, json!({})).await.1["status"],
            "error"
        );
        assert_eq!(
            join(&app, "board", Some(&w.bob), json!({})).await.1["status"],
            "ok"
        );
        assert_eq!(app.api("PATCH", &path, None, Some("{}")).await.0, 401);
        assert_eq!(
            app.api("PATCH", &path, Some(&w.bob), Some(r#"{"done":true}"#))
                .await
                .0,
            200
        );
        assert_eq!(app.api("DELETE", &path, Some(&w.bob), None).await.0, 403);
        assert_eq!(app.api("DELETE", &path, Some(&w.root), None).await.0, 204);
        // A bad token is a 401 even where anyone may write.
        assert_eq!(
            create(&app, "board", Some("not-a-token"), "{}").await.0,
            401
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
    defaults_let_anyone_read_and_owners_write,
    owner_rules_show_and_change_only_ones_own,
    admin_and_auth_rules
);
