//! The community feed end to end, on SQLite and on PostgreSQL: REST writes broadcast their
//! exact payloads on `community:feed` after commit; bad input changes and broadcasts nothing.

mod support;

use protocol_tests::client::Client;
use protocol_tests::matcher::Vars;
use serde_json::{json, Value};
use std::time::Duration;
use support::App;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Runtime::new().unwrap()
}

async fn joined(app: &App, mount: &str, token: &str) -> Client {
    let url = format!("ws://{}/{mount}", app.server.addr);
    let mut c = Client::connect("feed", &url, &format!("token={token}&vsn=2.0.0"))
        .await
        .unwrap();
    c.send(r#"["1","1","community:feed","phx_join",{}]"#)
        .await
        .unwrap();
    // The reply carries the feed's latest seq (see tests/recovery.rs).
    c.expect(
        r#"["1","1","community:feed","phx_reply",{"response":{"seq":"$seq"},"status":"ok"}]"#,
        &mut Vars::new(),
    )
    .await
    .unwrap();
    c
}

/// The broadcast frame for `event` with exactly this payload (keys sorted, as sent), plus the
/// `seq` the feed's stream gave it.
async fn expect_event(c: &mut Client, event: &str, payload: &Value) {
    let mut with_seq = payload.clone();
    with_seq["seq"] = json!("$seq");
    let frame = format!(r#"[null,null,"community:feed","{event}",{with_seq}]"#);
    c.expect(&frame, &mut Vars::new()).await.unwrap();
}

fn events_reach_joined_clients(backend: &str) {
    let app = support::start_app(backend);
    let (alice_id, alice) = app.user("alice", true);
    let (bob_id, bob) = app.user("bob", true);
    let (_, carol) = app.user("carol", false);
    rt().block_on(async {
        // Both mounts serve the feed; the iOS app uses /community.
        let mut a = joined(&app, "community", &alice).await;
        let mut b = joined(&app, "socket", &bob).await;

        // Who may not join, and who may not connect.
        let url = format!("ws://{}/socket", app.server.addr);
        for q in [format!("token={carol}&vsn=2.0.0"), "vsn=2.0.0".to_string()] {
            let mut c = Client::connect("c", &url, &q).await.unwrap();
            c.send(r#"["1","1","community:feed","phx_join",{}]"#).await.unwrap();
            c.expect(r#"["1","1","community:feed","phx_reply",{"response":{"reason":"unauthorized"},"status":"error"}]"#, &mut Vars::new()).await.unwrap();
        }
        assert!(Client::connect("x", &url, "token=nope&vsn=2.0.0").await.is_err());

        let (status, post) = app.api("POST", "/api/community/posts", Some(&bob), Some(r#"{"body":"hello feed"}"#)).await;
        assert_eq!(status, 201, "{post}");
        let id = post["id"].as_i64().unwrap();
        assert_eq!(post["body"], "hello feed");
        assert_eq!(post["user_id"], bob_id);
        assert_eq!(post["author_name"], "bob");
        assert_eq!(post["likes_count"], 0);
        assert_eq!(post["liked_by_user_ids"], json!([]));
        assert_eq!(post["comments_count"], 0);
        assert_eq!(post["inserted_at"], post["updated_at"]);
        let keys: Vec<&String> = post.as_object().unwrap().keys().collect();
        assert_eq!(keys, ["author_name", "body", "comments_count", "id", "inserted_at", "liked_by_user_ids", "likes_count", "updated_at", "user_id"]);
        expect_event(&mut a, "new_post", &post).await;
        expect_event(&mut b, "new_post", &post).await;

        let (status, edited) = app.api("PATCH", &format!("/api/community/posts/{id}"), Some(&bob), Some(r#"{"body":"edited"}"#)).await;
        assert_eq!(status, 200);
        assert_eq!(edited["body"], "edited");
        expect_event(&mut a, "post_updated", &edited).await;

        let (status, likes) = app.api("POST", &format!("/api/community/posts/{id}/like"), Some(&alice), None).await;
        assert_eq!((status, &likes), (200, &json!({"id": id, "likes_count": 1, "liked_by_user_ids": [alice_id]})));
        expect_event(&mut a, "post_likes_updated", &likes).await;
        let (_, likes) = app.api("POST", &format!("/api/community/posts/{id}/like"), Some(&bob), None).await;
        assert_eq!(likes, json!({"id": id, "likes_count": 2, "liked_by_user_ids": [alice_id, bob_id]}));
        expect_event(&mut a, "post_likes_updated", &likes).await;
        let (_, likes) = app.api("POST", &format!("/api/community/posts/{id}/like"), Some(&alice), None).await;
        assert_eq!(likes, json!({"id": id, "likes_count": 1, "liked_by_user_ids": [bob_id]}));
        expect_event(&mut a, "post_likes_updated", &likes).await;

        let (status, comment) = app.api("POST", &format!("/api/community/posts/{id}/comments"), Some(&alice), Some(r#"{"body":"nice"}"#)).await;
        assert_eq!(status, 201);
        let keys: Vec<&String> = comment.as_object().unwrap().keys().collect();
        assert_eq!(keys, ["author_name", "body", "id", "inserted_at", "post_id", "user_id"]);
        assert_eq!((comment["post_id"].as_i64(), comment["user_id"].as_i64()), (Some(id), Some(alice_id)));
        expect_event(&mut a, "post_comments_updated", &json!({"id": id, "comments_count": 1})).await;
        let (status, list) = app.api("GET", &format!("/api/community/posts/{id}/comments"), Some(&bob), None).await;
        assert_eq!((status, list), (200, json!({"items": [comment]})));
        // Reads need membership, as the channel does: 403 for carol, 401 for no one.
        for path in ["/api/community/posts".to_owned(), format!("/api/community/posts/{id}"), format!("/api/community/posts/{id}/comments")] {
            assert_eq!(app.api("GET", &path, Some(&carol), None).await, (403, json!({"errors": {"detail": "Forbidden"}})), "{path}");
            assert_eq!(app.api("GET", &path, None, None).await.0, 401, "{path}");
        }
        let cid = comment["id"].as_i64().unwrap();
        assert_eq!(app.api("DELETE", &format!("/api/community/comments/{cid}"), Some(&alice), None).await.0, 204);
        expect_event(&mut a, "post_comments_updated", &json!({"id": id, "comments_count": 0})).await;

        let (status, shown) = app.api("GET", &format!("/api/community/posts/{id}"), Some(&alice), None).await;
        assert_eq!(status, 200);
        assert_eq!(shown["likes_count"], 1);
        assert_eq!(app.api("DELETE", &format!("/api/community/posts/{id}"), Some(&bob), None).await.0, 204);
        expect_event(&mut a, "post_deleted", &json!({"id": id})).await;
        expect_event(&mut b, "post_updated", &edited).await;
        assert_eq!(app.api("GET", &format!("/api/community/posts/{id}"), Some(&alice), None).await.0, 404);
    });
}

/// method, path, token, body, expected status, expected JSON (`Null`: a malformed-JSON 400).
type Case<'a> = (
    &'a str,
    &'a str,
    Option<&'a str>,
    Option<&'a str>,
    u16,
    Value,
);

fn bad_input_writes_and_broadcasts_nothing(backend: &str) {
    let app = support::start_app(backend);
    let (_, alice) = app.user("alice", true);
    let (_, bob) = app.user("bob", true);
    let (_, carol) = app.user("carol", false);
    rt().block_on(async {
        let (_, post) = app
            .api(
                "POST",
                "/api/community/posts",
                Some(&bob),
                Some(r#"{"body":"keep"}"#),
            )
            .await;
        let id = post["id"].as_i64().unwrap();
        let mut a = joined(&app, "socket", &alice).await;
        let long = format!(r#"{{"body":"{}"}}"#, "x".repeat(10_001));
        let posts = "/api/community/posts";
        let this = format!("/api/community/posts/{id}");
        let like = format!("{this}/like");
        let comments = format!("{this}/comments");
        let cases: Vec<Case> = vec![
            (
                "POST",
                posts,
                None,
                Some(r#"{"body":"x"}"#),
                401,
                json!({"errors": {"detail": "Unauthorized"}}),
            ),
            (
                "POST",
                posts,
                Some("wrong"),
                Some(r#"{"body":"x"}"#),
                401,
                json!({"errors": {"detail": "Unauthorized"}}),
            ),
            (
                "GET",
                posts,
                None,
                None,
                401,
                json!({"errors": {"detail": "Unauthorized"}}),
            ),
            (
                "GET",
                "/api/me",
                None,
                None,
                401,
                json!({"errors": {"detail": "Unauthorized"}}),
            ),
            (
                "POST",
                posts,
                Some(&alice),
                Some(r#"{"body":"#),
                400,
                Value::Null,
            ),
            (
                "POST",
                posts,
                Some(&alice),
                Some(r#"["body"]"#),
                422,
                json!({"errors": {"body": ["must be a JSON object"]}}),
            ),
            (
                "POST",
                posts,
                Some(&alice),
                Some(r#"{}"#),
                422,
                json!({"errors": {"body": ["can't be blank"]}}),
            ),
            (
                "POST",
                posts,
                Some(&alice),
                Some(r#"{"body":"  "}"#),
                422,
                json!({"errors": {"body": ["can't be blank"]}}),
            ),
            (
                "POST",
                posts,
                Some(&alice),
                Some(r#"{"body":5}"#),
                422,
                json!({"errors": {"body": ["is invalid"]}}),
            ),
            (
                "POST",
                posts,
                Some(&alice),
                Some(&long),
                422,
                json!({"errors": {"body": ["should be at most 10000 character(s)"]}}),
            ),
            (
                "POST",
                posts,
                Some(&carol),
                Some(r#"{"body":"x"}"#),
                403,
                json!({"errors": {"detail": "Forbidden"}}),
            ),
            (
                "POST",
                &like,
                Some(&carol),
                None,
                403,
                json!({"errors": {"detail": "Forbidden"}}),
            ),
            (
                "POST",
                &comments,
                Some(&carol),
                Some(r#"{"body":"x"}"#),
                403,
                json!({"errors": {"detail": "Forbidden"}}),
            ),
            (
                "PATCH",
                &this,
                Some(&alice),
                Some(r#"{"body":"mine now"}"#),
                403,
                json!({"errors": {"detail": "Forbidden"}}),
            ),
            (
                "DELETE",
                &this,
                Some(&alice),
                None,
                403,
                json!({"errors": {"detail": "Forbidden"}}),
            ),
            (
                "GET",
                "/api/community/posts/99999",
                Some(&alice),
                None,
                404,
                json!({"errors": {"detail": "Not Found"}}),
            ),
            (
                "GET",
                "/api/community/posts/abc",
                Some(&alice),
                None,
                404,
                json!({"errors": {"detail": "Not Found"}}),
            ),
            (
                "PATCH",
                "/api/community/posts/99999",
                Some(&bob),
                Some(r#"{"body":"x"}"#),
                404,
                json!({"errors": {"detail": "Not Found"}}),
            ),
            (
                "POST",
                "/api/community/posts/99999/like",
                Some(&alice),
                None,
                404,
                json!({"errors": {"detail": "Not Found"}}),
            ),
            (
                "POST",
                "/api/community/posts/99999/comments",
                Some(&alice),
                Some(r#"{"body":"x"}"#),
                404,
                json!({"errors": {"detail": "Not Found"}}),
            ),
            (
                "DELETE",
                "/api/community/comments/99999",
                Some(&alice),
                None,
                404,
                json!({"errors": {"detail": "Not Found"}}),
            ),
            (
                "GET",
                "/api/community/posts?limit=0",
                Some(&alice),
                None,
                422,
                json!({"errors": {"limit": ["must be between 1 and 100"]}}),
            ),
            (
                "GET",
                "/api/community/posts?limit=101",
                Some(&alice),
                None,
                422,
                json!({"errors": {"limit": ["must be between 1 and 100"]}}),
            ),
            (
                "GET",
                "/api/community/posts?limit=x",
                Some(&alice),
                None,
                422,
                json!({"errors": {"limit": ["must be between 1 and 100"]}}),
            ),
            (
                "GET",
                "/api/community/posts?before=x",
                Some(&alice),
                None,
                422,
                json!({"errors": {"before": ["is invalid"]}}),
            ),
        ];
        for (method, path, token, body, status, expected) in cases {
            let (got, json) = app.api(method, path, token, body).await;
            assert_eq!(got, status, "{method} {path} {body:?}: {json}");
            if expected.is_null() {
                assert!(
                    json["errors"]["detail"]
                        .as_str()
                        .is_some_and(|d| d.starts_with("malformed JSON")),
                    "{json}"
                );
            } else {
                assert_eq!(json, expected, "{method} {path} {body:?}");
            }
        }
        let (_, list) = app.api("GET", posts, Some(&alice), None).await;
        assert_eq!(list, json!({"items": [post], "next_before": null}));
        a.expect_silence(300).await.unwrap();
    });
}

fn pages_newest_first(backend: &str) {
    let app = support::start_app(backend);
    let (_, alice) = app.user("alice", true);
    rt().block_on(async {
        let mut ids = Vec::new();
        for i in 0..5 {
            let (_, p) = app
                .api(
                    "POST",
                    "/api/community/posts",
                    Some(&alice),
                    Some(&format!(r#"{{"body":"p{i}"}}"#)),
                )
                .await;
            ids.push(p["id"].as_i64().unwrap());
        }
        ids.reverse();
        let mut seen = Vec::new();
        let mut before: Option<i64> = None;
        loop {
            let path = match before {
                Some(b) => format!("/api/community/posts?limit=2&before={b}"),
                None => "/api/community/posts?limit=2".into(),
            };
            let (status, page) = app.api("GET", &path, Some(&alice), None).await;
            assert_eq!(status, 200);
            seen.extend(
                page["items"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|p| p["id"].as_i64().unwrap()),
            );
            match page["next_before"].as_i64() {
                Some(n) => {
                    assert_eq!(Some(n), seen.last().copied());
                    before = Some(n);
                }
                None => break,
            }
        }
        assert_eq!(seen, ids);
    });
}

fn accounts_membership_and_revocation(backend: &str) {
    let app = support::start_app(backend);
    let (id, token) = app.user("Dave", false);
    rt().block_on(async {
        assert_eq!(
            app.api("GET", "/api/me", Some(&token), None).await,
            (
                200,
                json!({"id": id, "name": "Dave", "community_member": false})
            )
        );
        assert_eq!(
            app.api("POST", "/api/community/join", Some(&token), None)
                .await
                .0,
            204
        );
        assert_eq!(
            app.api("GET", "/api/me", Some(&token), None).await.1["community_member"],
            true
        );
        let mut c = joined(&app, "community", &token).await;
        assert_eq!(
            app.api("DELETE", "/api/community/join", Some(&token), None)
                .await
                .0,
            204
        );
        assert_eq!(
            app.api("GET", "/api/me", Some(&token), None).await.1["community_member"],
            false
        );
        // Leaving the community ends the joined feed (see tests/membership.rs).
        c.expect(
            r#"["1","1","community:feed","phx_close",{}]"#,
            &mut Vars::new(),
        )
        .await
        .unwrap();
        // Names are unique whatever their case.
        let mut conn = app.state.store.conn().unwrap();
        assert!(fawkes::apps::accounts::create_user(&mut conn, "dave", false).is_err());
        // Revoking the token closes its live socket at once, and it can connect no more.
        assert!(fawkes::apps::accounts::revoke_token(&mut conn, &token).unwrap());
        c.expect_close_within(1001, Duration::from_secs(3))
            .await
            .unwrap();
        let url = format!("ws://{}/socket", app.server.addr);
        assert!(
            Client::connect("x", &url, &format!("token={token}&vsn=2.0.0"))
                .await
                .is_err()
        );
        assert_eq!(app.api("GET", "/api/me", Some(&token), None).await.0, 401);
    });
}

macro_rules! on_both_backends {
    ($($name:ident),*) => {
        mod sqlite { $(#[test] fn $name() { super::$name("sqlite") })* }
        mod postgres { $(#[test] fn $name() { super::$name("postgres") })* }
    };
}

on_both_backends!(
    events_reach_joined_clients,
    bad_input_writes_and_broadcasts_nothing,
    pages_newest_first,
    accounts_membership_and_revocation
);
