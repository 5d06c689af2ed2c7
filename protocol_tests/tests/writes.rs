//! Recorded writes on PostgreSQL: transactions run side by side (one waiting on a lock does
//! not hold up writes to other topics), their broadcasts still leave in commit order, and the
//! writes waiting at once are bounded: one more is refused at once with 503.

mod support;

use diesel::RunQueryDsl;
use fawkes::history::{History, HistoryConfig};
use protocol_tests::client::Client;
use protocol_tests::matcher::Vars;
use serde_json::{json, Value};
use std::time::Duration;

#[test]
fn writes_run_side_by_side_and_their_queue_is_bounded() {
    let app = support::start_app_configured("postgres", |state| {
        state.history =
            History::new(state.store.clone(), HistoryConfig::default()).with_max_pending_writes(3);
    });
    let (_, alice) = app.user("alice", true);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let app = std::sync::Arc::new(app);
    let post = |body: &'static str| {
        let (app, alice) = (app.clone(), alice.clone());
        async move {
            let body = json!({ "body": body }).to_string();
            app.api("POST", "/api/community/posts", Some(&alice), Some(&body))
                .await
        }
    };
    rt.block_on(async {
        assert_eq!(post("first").await.0, 201);
        let url = format!("ws://{}/socket", app.server.addr);
        let mut feed = Client::connect("feed", &url, &format!("token={alice}&vsn=2.0.0"))
            .await
            .unwrap();
        feed.send(r#"["1","1","community:feed","phx_join",{}]"#)
            .await
            .unwrap();
        feed.expect(
            r#"["1","1","community:feed","phx_reply",{"response":{"seq":1},"status":"ok"}]"#,
            &mut Vars::new(),
        )
        .await
        .unwrap();

        // Another session holds the feed's sequence row: the next posts wait on it.
        let mut blocker = app.state.store.conn().unwrap();
        diesel::sql_query("BEGIN").execute(&mut *blocker).unwrap();
        diesel::sql_query("SELECT seq FROM topic_seqs WHERE topic = 'community:feed' FOR UPDATE")
            .execute(&mut *blocker)
            .unwrap();
        let second = tokio::spawn(post("second"));
        let third = tokio::spawn(post("third"));
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(
            !second.is_finished() && !third.is_finished(),
            "they wait on the row"
        );

        // A write to another topic does not wait behind them.
        let (status, record) = tokio::time::timeout(
            Duration::from_secs(5),
            app.api(
                "POST",
                "/api/collections/notes/records",
                Some(&alice),
                Some(r#"{"n":1}"#),
            ),
        )
        .await
        .expect("a write to another topic is not held up by a waiting one");
        assert_eq!(status, 201, "{record}");

        // Three writes wait at once (the bound): a fourth is refused at once.
        let fourth = tokio::spawn(post("fourth"));
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!fourth.is_finished());
        let refused = tokio::time::timeout(Duration::from_secs(5), post("fifth"))
            .await
            .expect("refused at once");
        assert_eq!(refused.0, 503, "{refused:?}");
        let detail = refused.1["errors"]["detail"].as_str().unwrap().to_owned();
        assert_eq!(
            detail,
            "too busy, try again later: 3 writes already waiting"
        );

        diesel::sql_query("COMMIT").execute(&mut *blocker).unwrap();
        let mut bodies = Vec::new();
        for task in [second, third, fourth] {
            let (status, p) = task.await.unwrap();
            assert_eq!(status, 201, "{p}");
            bodies.push(p["body"].as_str().unwrap().to_owned());
        }
        // Broadcast in seq order, whichever order the waiting writes got the row in.
        let mut seqs = Vec::new();
        while seqs.len() < 3 {
            let protocol_tests::client::Frame::Text(t) = feed.recv().await.unwrap() else {
                continue;
            };
            let f: Value = serde_json::from_str(&t).unwrap();
            if f[3] == "new_post" {
                seqs.push(f[4]["seq"].as_i64().unwrap());
            }
        }
        assert_eq!(seqs, [2, 3, 4]);
        // Nothing is left pending: the bound is free again.
        assert_eq!(post("sixth").await.0, 201);
    });
}
