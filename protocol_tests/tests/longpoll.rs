//! LongPoll behaviour beyond the transcripts: binary both ways, forged tokens, session expiry,
//! forced disconnect, and a thousand sessions at once.

mod support;

use fawkes::{Config, Limits};
use protocol_tests::client::{longpoll, Client};
use protocol_tests::matcher::Vars;
use protocol_tests::Target;
use serde_json::{json, Value};
use std::time::Duration;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Runtime::new().unwrap()
}

const JSON: (&str, &str) = ("content-type", "application/json");
const NDJSON: (&str, &str) = ("content-type", "application/x-ndjson");

async fn open(t: &Target, query: &str) -> String {
    let (_, _, body) = longpoll(t, "GET", query, &[], "").await.unwrap();
    assert_eq!(body["status"], 410, "{body}");
    body["token"].as_str().unwrap().to_owned()
}

async fn post(t: &Target, token: &str, ct: (&str, &str), body: &str) -> Value {
    longpoll(t, "POST", &format!("vsn=2.0.0&token={token}"), &[ct], body)
        .await
        .unwrap()
        .2
}

async fn get(t: &Target, token: &str) -> Value {
    longpoll(t, "GET", &format!("vsn=2.0.0&token={token}"), &[], "")
        .await
        .unwrap()
        .2
}

#[test]
fn binary_goes_in_as_base64_lines_and_comes_back_as_json() {
    let server = support::shared();
    let t = server.target();
    rt().block_on(async {
        let token = open(&t, "token=t1&vsn=2.0.0").await;
        assert_eq!(post(&t, &token, JSON, r#"["12","12","community:feed","phx_join",{}]"#).await, json!({"status": 200}));
        get(&t, &token).await;
        // The transcript's frame: a binary ping as one base64 ndjson line.
        assert_eq!(post(&t, &token, NDJSON, "AAICDgQxMjEzY29tbXVuaXR5OmZlZWRwaW5nAQID/w==").await, json!({"status": 200}));
        assert_eq!(
            get(&t, &token).await,
            json!({"messages": [r#"["12","13","community:feed","phx_reply",{"response":{"binary":"AQID/w=="},"status":"ok"}]"#], "status": 200, "token": token})
        );
    });
}

#[test]
fn forged_and_tampered_tokens_get_410_and_nothing_else() {
    let server = support::shared();
    let t = server.target();
    rt().block_on(async {
        let token = open(&t, "token=t1&vsn=2.0.0").await;
        assert_eq!(
            post(
                &t,
                &token,
                JSON,
                r#"["1","1","community:feed","phx_join",{}]"#
            )
            .await,
            json!({"status": 200})
        );
        let mut tampered = token.clone().into_bytes();
        let i = tampered.len() / 3;
        tampered[i] = if tampered[i] == b'A' { b'B' } else { b'A' };
        let tampered = String::from_utf8(tampered).unwrap();
        let (data, _) = token.split_once('.').unwrap();
        let forged = format!("{data}.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA");
        for bad in [tampered.as_str(), forged.as_str(), "garbage", ""] {
            assert_eq!(
                post(&t, bad, JSON, r#"[null,"2","phoenix","heartbeat",{}]"#).await,
                json!({"status": 410}),
                "{bad}"
            );
            // A GET gets a fresh, empty session, never the other one's messages.
            let body = get(&t, bad).await;
            assert_eq!(body["status"], 410, "{body}");
            assert_eq!(body["messages"], json!([]));
            assert_ne!(body["token"], token.as_str());
        }
        // The genuine session still has exactly its own reply.
        assert_eq!(
            get(&t, &token).await["messages"],
            json!([r#"["1","1","community:feed","phx_reply",{"response":{},"status":"ok"}]"#])
        );
        // The session token may also come as a header (newer phoenix.js).
        let (_, _, body) = longpoll(
            &t,
            "GET",
            "vsn=2.0.0",
            &[("x-phoenix-longpoll-token", &token)],
            "",
        )
        .await
        .unwrap();
        assert_eq!(body["status"], 204);
    });
}

#[test]
fn an_unpolled_session_ends_and_its_presence_leaves() {
    let config = Config {
        longpoll_window: Duration::from_secs(1),
        ..Config::default()
    };
    let server = support::start(config);
    let t = server.target();
    rt().block_on(async {
        let mut v = Vars::new();
        let mut ws = Client::connect("ws", &t.url, "token=w&vsn=2.0.0").await.unwrap();
        ws.send(r#"["1","1","channel:expiry","phx_join",{"user_id":"ws"}]"#).await.unwrap();
        ws.expect(r#"["1","1","channel:expiry","phx_reply",{"response":{},"status":"ok"}]"#, &mut v).await.unwrap();
        ws.expect(r#"[null,null,"channel:expiry","presence_diff",{"joins":{"ws":{"metas":[{"online_at":"$t","phx_ref":"$w"}]}},"leaves":{}}]"#, &mut v).await.unwrap();
        ws.expect(r#"["1",null,"channel:expiry","presence_state",{"ws":{"metas":[{"online_at":"$t","phx_ref":"$w"}]}}]"#, &mut v).await.unwrap();
        let token = open(&t, "token=lp&vsn=2.0.0").await;
        post(&t, &token, JSON, r#"["2","2","channel:expiry","phx_join",{"user_id":"lp"}]"#).await;
        ws.expect(r#"[null,null,"channel:expiry","presence_diff",{"joins":{"lp":{"metas":[{"online_at":"$t2","phx_ref":"$l"}]}},"leaves":{}}]"#, &mut v).await.unwrap();
        // No GET for 1.5 windows: the session ends, and so does its presence.
        ws.expect(r#"[null,null,"channel:expiry","presence_diff",{"joins":{},"leaves":{"lp":{"metas":[{"online_at":"$t2","phx_ref":"$l"}]}}}]"#, &mut v).await.unwrap();
        assert_eq!(post(&t, &token, JSON, r#"[null,"3","phoenix","heartbeat",{}]"#).await, json!({"status": 410}));
    });
}

#[test]
fn disconnect_by_socket_id_ends_a_longpoll_session() {
    let server = support::shared();
    let t = server.target();
    rt().block_on(async {
        let token = open(&t, "token=lp-disc&vsn=2.0.0").await;
        post(
            &t,
            &token,
            JSON,
            r#"["1","1","community:feed","phx_join",{}]"#,
        )
        .await;
        server.endpoint.disconnect("users_socket:lp-disc");
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(
            post(&t, &token, JSON, r#"[null,"2","phoenix","heartbeat",{}]"#).await,
            json!({"status": 410})
        );
    });
}

#[test]
fn a_thousand_sessions_at_once() {
    let server = support::start(Config {
        limits: Limits::default(),
        ..Config::default()
    });
    let t = server.target();
    rt().block_on(async {
        let mut tasks = Vec::new();
        for i in 0..1000 {
            let t = t.clone();
            tasks.push(tokio::spawn(async move {
                let token = open(&t, &format!("token=s{i}&vsn=2.0.0")).await;
                let r = post(
                    &t,
                    &token,
                    JSON,
                    r#"["1","1","community:feed","phx_join",{}]"#,
                )
                .await;
                assert_eq!(r, json!({"status": 200}));
                get(&t, &token).await;
                token
            }));
        }
        let mut tokens = Vec::new();
        for task in tasks {
            tokens.push(task.await.unwrap());
        }
        assert_eq!(server.endpoint.connection_count(), 1000);
        server
            .endpoint
            .broadcast("community:feed", "hello", json!({"n": 1}));
        let mut tasks = Vec::new();
        for token in tokens {
            let t = t.clone();
            tasks.push(tokio::spawn(async move {
                let body = get(&t, &token).await;
                assert_eq!(
                    body["messages"],
                    json!([r#"[null,null,"community:feed","hello",{"n":1}]"#]),
                    "{body}"
                );
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
    });
}

#[test]
fn live_sessions_and_opens_per_address_are_capped() {
    let server = support::start(Config {
        limits: Limits {
            max_longpoll_sessions: 3,
            ..Limits::default()
        },
        ..Config::default()
    });
    let t = server.target();
    rt().block_on(async {
        for i in 0..3 {
            open(&t, &format!("token=c{i}&vsn=2.0.0")).await;
        }
        let (status, _, body) = longpoll(&t, "GET", "token=c4&vsn=2.0.0", &[], "")
            .await
            .unwrap();
        assert_eq!(status, 503);
        assert_eq!(
            body,
            json!({"status": 500, "reason": "3 LongPoll sessions open, the limit"})
        );
    });

    let server = support::start(Config {
        limits: Limits {
            max_longpoll_opens_per_ip: 5,
            ..Limits::default()
        },
        ..Config::default()
    });
    let t = server.target();
    rt().block_on(async {
        let mut opened = 0;
        let mut refused = 0;
        for i in 0..12 {
            let (status, _, body) = longpoll(&t, "GET", &format!("token=r{i}&vsn=2.0.0"), &[], "")
                .await
                .unwrap();
            match (status, body["status"].as_i64()) {
                (200, Some(410)) => opened += 1,
                (429, Some(500)) => {
                    refused += 1;
                    assert_eq!(
                        body["reason"],
                        "over 5 new LongPoll sessions per second from this address"
                    );
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        // Twelve opens in well under two seconds: at most two seconds' worth get in.
        assert!(
            opened <= 10 && refused >= 2,
            "opened {opened}, refused {refused}"
        );
    });
}

#[test]
fn posts_count_against_the_message_rate() {
    let server = support::start(Config {
        limits: Limits {
            max_messages_per_second: 20,
            ..Limits::default()
        },
        ..Config::default()
    });
    let t = server.target();
    rt().block_on(async {
        let token = open(&t, "token=rate&vsn=2.0.0").await;
        let batch: Vec<String> = (0..60)
            .map(|i| format!(r#"[null,"{i}","phoenix","heartbeat",{{}}]"#))
            .collect();
        let started = std::time::Instant::now();
        assert_eq!(
            post(&t, &token, NDJSON, &batch.join("\n")).await,
            json!({"status": 200})
        );
        // A burst of 20, then 40 more at 20 per second; every one is answered.
        assert!(
            started.elapsed() >= Duration::from_millis(1800),
            "{:?}",
            started.elapsed()
        );
        let mut replies = 0;
        while replies < 60 {
            let body = get(&t, &token).await;
            replies += body["messages"].as_array().map_or(0, Vec::len);
        }
        assert_eq!(replies, 60);
    });
}

#[test]
fn every_request_is_origin_checked() {
    let server = support::start(Config {
        check_origin: fawkes::CheckOrigin::Allow(vec!["https://good.example".into()]),
        ..Config::default()
    });
    let t = server.target();
    let good = ("origin", "https://good.example");
    let evil = ("origin", "https://evil.example");
    rt().block_on(async {
        let (_, _, body) = longpoll(&t, "GET", "token=o&vsn=2.0.0", &[evil], "")
            .await
            .unwrap();
        assert_eq!(body, json!({"status": 403}));
        let (_, _, body) = longpoll(&t, "GET", "token=o&vsn=2.0.0", &[good], "")
            .await
            .unwrap();
        assert_eq!(body["status"], 410);
        let token = body["token"].as_str().unwrap().to_owned();
        let q = format!("vsn=2.0.0&token={token}");
        let join = r#"["1","1","community:feed","phx_join",{}]"#;
        // A stolen session token used from another origin gets nothing in and nothing out.
        let (_, _, body) = longpoll(&t, "POST", &q, &[evil, JSON], join).await.unwrap();
        assert_eq!(body, json!({"status": 403}));
        let (_, _, body) = longpoll(&t, "GET", &q, &[evil], "").await.unwrap();
        assert_eq!(body, json!({"status": 403}));
        let (_, _, body) = longpoll(&t, "POST", &q, &[good, JSON], join).await.unwrap();
        assert_eq!(body, json!({"status": 200}));
        let (_, _, body) = longpoll(&t, "GET", &q, &[good], "").await.unwrap();
        assert_eq!(
            body["messages"].as_array().unwrap().len(),
            1,
            "only the good join was handled: {body}"
        );
    });
}
