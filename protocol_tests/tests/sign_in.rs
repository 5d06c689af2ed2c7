//! Signing in with tokens minted elsewhere, on SQLite and PostgreSQL: the real Phoenix.Tokens of
//! `reference/phoenix-token.md` (minted by Phoenix 1.7.24), tokens Fawkes mints, and
//! HS256 / RS256 JWTs, over WebSocket, LongPoll and REST. A refused token is refused as an
//! unknown API token is: 403 on connect, 401 on REST.

mod support;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use fawkes::apps::accounts::NewUser;
use fawkes::auth::{JwtConfig, JwtVerifier, PhoenixTokens, Subject, Verifiers};
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use protocol_tests::client::{longpoll, Client};
use protocol_tests::matcher::Vars;
use serde_json::{json, Value};
use support::App;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Runtime::new().unwrap()
}

const SKB: &str = "conformance-fixture-secret-key-base-0123456789abcdef0123456789abcdef0123456789";
/// `sign(endpoint, "user socket", 42, max_age: 315_360_000)` on 2026-11-30.
const LONG_INT: &str =
    "SFMyNTY.g2gDYSpuBgBUtGAqogFiEswDAA.TS4P5MssDWBclqvPQr0yU82hGumSUJDsJ6_p4rKk7IQ";
/// The same with data "user-42".
const LONG_STR: &str =
    "SFMyNTY.g2gDbQAAAAd1c2VyLTQybgYAVbRgKqIBYhLMAwA.4dUYTnu1FhgzlXh6qBbQrb00LSpjCCrHdvWBKXQrW4w";
/// Data `%{"user_id" => 42}`: valid, but names no user.
const MAP_DATA: &str = "SFMyNTY.g2gDdAAAAAFtAAAAB3VzZXJfaWRhKm4GAFa0YCqiAWISzAMA.SHKRrgdv3QpUv0aP3H9b-Zqg5e7xdSaqZ1PcKFa1O-I";
/// Salt "other salt".
const OTHER_SALT: &str =
    "SFMyNTY.g2gDYSpuBgBVtGAqogFiEswDAA.weoquzMd1bopBhiEK3hV3Sf8PCirCHCJdJP0yEscJLE";
/// Signed in 2023 with the default max age of a day.
const EXPIRED: &str =
    "SFMyNTY.g2gDYSpuBgAAaOXPiwFiAAFRgA.oZadrq1kuFls1GcnkmSDhW3Y_2PLNLdiIb9suL1Ssz8";

const JWT_SECRET: &[u8] = b"seed-002-hs256-secret";
const RS_PRIVATE: &[u8] = include_bytes!("../../tests/data/jwt_rs256_private.pem");
const RS_PUBLIC: &[u8] = include_bytes!("../../tests/data/jwt_rs256_public.pem");
const OTHER_PRIVATE: &[u8] = include_bytes!("../../tests/data/jwt_other_private.pem");

fn start(backend: &str) -> App {
    support::start_app_configured(backend, |state| {
        state.auth = Verifiers {
            phoenix: Some(PhoenixTokens::new(SKB, "user socket", None)),
            jwt: Some(
                JwtVerifier::new(JwtConfig {
                    hs256_secret: Some(JWT_SECRET.to_vec()),
                    rs256_public_key: Some(RS_PUBLIC.to_vec()),
                    leeway: 30,
                    issuer: None,
                    audience: None,
                })
                .unwrap(),
            ),
        }
    })
}

fn now_s() -> i64 {
    chrono::Utc::now().timestamp()
}

fn hs256(claims: Value, secret: &[u8]) -> String {
    encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret),
    )
    .unwrap()
}

fn rs256(claims: Value, private: &[u8]) -> String {
    let key = EncodingKey::from_rsa_pem(private).unwrap();
    encode(&Header::new(Algorithm::RS256), &claims, &key).unwrap()
}

fn unsigned(claims: &Value) -> String {
    let b64 = |v: &Value| URL_SAFE_NO_PAD.encode(v.to_string());
    format!(
        "{}.{}.",
        b64(&json!({"alg": "none", "typ": "JWT"})),
        b64(claims)
    )
}

/// Whom each transport signs in with `token`: the user id from `/api/me` (REST), a join of
/// that user's own `user:<id>` topic (WebSocket), a LongPoll session; `None` where refused
/// with exactly 401 / 403.
async fn signed_in_as(app: &App, token: &str, expect: Option<i64>) {
    let (status, me) = app.api("GET", "/api/me", Some(token), None).await;
    match expect {
        Some(id) => assert_eq!(
            (status, me["id"].as_i64()),
            (200, Some(id)),
            "REST with {token}: {me}"
        ),
        None => assert_eq!(
            (status, me),
            (401, json!({"errors": {"detail": "Unauthorized"}})),
            "REST with {token}"
        ),
    }

    let url = format!("ws://{}/socket", app.server.addr);
    let ws = Client::connect("ws", &url, &format!("token={token}&vsn=2.0.0")).await;
    match expect {
        Some(id) => {
            let mut c = ws.unwrap_or_else(|e| panic!("WebSocket refused {token}: {e}"));
            c.send(&format!(r#"["1","1","user:{id}","phx_join",{{}}]"#))
                .await
                .unwrap();
            let reply = c.recv().await.unwrap();
            let text = format!("{reply:?}");
            assert!(
                text.contains(r#"\"status\":\"ok\""#) && text.contains(&format!("user:{id}")),
                "{text}"
            );
        }
        None => {
            let err = ws
                .err()
                .unwrap_or_else(|| panic!("WebSocket accepted {token}"));
            assert!(err.to_string().contains("403"), "{err}");
        }
    }

    let t = protocol_tests::Target::new(&url);
    let (_, _, body) = longpoll(&t, "GET", &format!("token={token}&vsn=2.0.0"), &[], "")
        .await
        .unwrap();
    let want = if expect.is_some() { 410 } else { 403 };
    assert_eq!(body["status"], want, "LongPoll with {token}: {body}");
}

fn phoenix_tokens_sign_users_in(backend: &str) {
    let app = start(backend);
    let (bob, _) = app.new_user(NewUser {
        name: "bob".into(),
        external_id: Some("42".into()),
        ..Default::default()
    });
    let (alice, _) = app.new_user(NewUser {
        name: "alice".into(),
        external_id: Some("user-42".into()),
        ..Default::default()
    });
    let (carol, _) = app.user("carol", false);
    rt().block_on(async {
        // Real tokens from Phoenix: integer and string data name users by external id.
        signed_in_as(&app, LONG_INT, Some(bob)).await;
        signed_in_as(&app, LONG_STR, Some(alice)).await;
        for bad in [
            MAP_DATA,
            OTHER_SALT,
            EXPIRED,
            &LONG_INT.replace(".TS4", ".TS5"),
            "SFMyNTY.garbage.x",
        ] {
            signed_in_as(&app, bad, None).await;
        }
        // A token names users by external id only, never by Fawkes's own id: carol (no
        // external id) is not signed in by her id, and a number that is someone's id but no
        // one's external id names nobody.
        for data in [carol, bob, alice] {
            let by_id = PhoenixTokens::new(SKB, "user socket", None).sign(
                &Subject::Int(data),
                chrono::Utc::now().timestamp_millis(),
                60,
            );
            signed_in_as(&app, &by_id, None).await;
        }
        let stranger = PhoenixTokens::new(SKB, "user socket", None).sign(
            &Subject::Str("nobody".into()),
            chrono::Utc::now().timestamp_millis(),
            60,
        );
        signed_in_as(&app, &stranger, None).await;

        // The socket id is the one a Phoenix app gives user sockets: its disconnect applies.
        let url = format!("ws://{}/socket", app.server.addr);
        let mut c = Client::connect("bob", &url, &format!("token={LONG_INT}&vsn=2.0.0"))
            .await
            .unwrap();
        c.send(r#"["1","1","phoenix","heartbeat",{}]"#)
            .await
            .unwrap();
        c.expect(
            r#"[null,"1","phoenix","phx_reply",{"response":{},"status":"ok"}]"#,
            &mut Vars::new(),
        )
        .await
        .unwrap();
        app.server.endpoint.disconnect("users_socket:42");
        c.expect_close(1001).await.unwrap();
    });
}

/// The review's reproduction: alice's external id is bob's Fawkes id. Tokens naming that
/// number are alice's, always; bob is never signed in by one.
fn a_token_never_names_a_user_by_fawkes_id(backend: &str) {
    let app = start(backend);
    let (bob, _) = app.user("bob", false);
    let (alice, _) = app.new_user(NewUser {
        name: "alice".into(),
        external_id: Some(bob.to_string()),
        ..Default::default()
    });
    let (mallory, _) = app.user("mallory", false);
    rt().block_on(async {
        let exp = now_s() + 600;
        let phoenix = |data: Subject| {
            PhoenixTokens::new(SKB, "user socket", None).sign(
                &data,
                chrono::Utc::now().timestamp_millis(),
                60,
            )
        };
        for token in [
            phoenix(Subject::Int(bob)),
            phoenix(Subject::Str(bob.to_string())),
            hs256(json!({"sub": bob, "exp": exp}), JWT_SECRET),
            hs256(json!({"sub": bob.to_string(), "exp": exp}), JWT_SECRET),
        ] {
            signed_in_as(&app, &token, Some(alice)).await;
        }
        // alice's and mallory's Fawkes ids are no one's external id.
        for id in [alice, mallory] {
            signed_in_as(&app, &phoenix(Subject::Int(id)), None).await;
            signed_in_as(
                &app,
                &hs256(json!({"sub": id, "exp": exp}), JWT_SECRET),
                None,
            )
            .await;
        }
    });
}

fn jwts_sign_users_in(backend: &str) {
    let app = start(backend);
    let (dave, _) = app.new_user(NewUser {
        name: "dave".into(),
        external_id: Some("auth0|dave".into()),
        ..Default::default()
    });
    let (erin, _) = app.user("erin", false);
    rt().block_on(async {
        let exp = now_s() + 600;
        signed_in_as(
            &app,
            &hs256(json!({"sub": "auth0|dave", "exp": exp}), JWT_SECRET),
            Some(dave),
        )
        .await;
        signed_in_as(
            &app,
            &rs256(json!({"sub": "auth0|dave", "exp": exp}), RS_PRIVATE),
            Some(dave),
        )
        .await;
        // A sub of digits (string or number) is matched to external ids only, never to
        // Fawkes's own ids: erin has none, so neither names her.
        signed_in_as(
            &app,
            &rs256(json!({"sub": erin.to_string(), "exp": exp}), RS_PRIVATE),
            None,
        )
        .await;
        signed_in_as(
            &app,
            &hs256(json!({"sub": erin, "exp": exp}), JWT_SECRET),
            None,
        )
        .await;

        let claims = json!({"sub": "auth0|dave", "exp": exp});
        for (why, bad) in [
            (
                "expired past the leeway",
                hs256(
                    json!({"sub": "auth0|dave", "exp": now_s() - 120}),
                    JWT_SECRET,
                ),
            ),
            ("no exp", hs256(json!({"sub": "auth0|dave"}), JWT_SECRET)),
            (
                "wrong HS256 secret",
                hs256(claims.clone(), b"not-the-secret"),
            ),
            ("wrong RSA key", rs256(claims.clone(), OTHER_PRIVATE)),
            ("alg none", unsigned(&claims)),
            (
                "HS256 keyed with the RS256 public key",
                hs256(claims.clone(), RS_PUBLIC),
            ),
            (
                "unknown subject",
                hs256(json!({"sub": "auth0|nobody", "exp": exp}), JWT_SECRET),
            ),
        ] {
            println!("refusing a JWT: {why}");
            signed_in_as(&app, &bad, None).await;
        }
    });
}

macro_rules! on_both_backends {
    ($($name:ident),*) => {
        mod sqlite { $(#[test] fn $name() { super::$name("sqlite") })* }
        mod postgres { $(#[test] fn $name() { super::$name("postgres") })* }
    };
}

on_both_backends!(
    phoenix_tokens_sign_users_in,
    a_token_never_names_a_user_by_fawkes_id,
    jwts_sign_users_in
);

/// A database failure while checking a token is the server's fault: 500 on every transport,
/// logged as an error, not a 403 that reads as a bad token.
fn a_database_error_at_connect_is_a_500(backend: &str) {
    use diesel::RunQueryDsl;
    let app = start(backend);
    let (_, token) = app.user("alice", false);
    let mut c = app.state.store.conn().unwrap();
    diesel::sql_query("ALTER TABLE api_tokens RENAME TO api_tokens_elsewhere")
        .execute(&mut *c)
        .unwrap();
    rt().block_on(async {
        let url = format!("ws://{}/socket", app.server.addr);
        let err = Client::connect("ws", &url, &format!("token={token}&vsn=2.0.0"))
            .await
            .err()
            .expect("refused");
        assert!(err.contains("500"), "{err}");
        let t = protocol_tests::Target::new(&url);
        let (_, _, body) = longpoll(&t, "GET", &format!("token={token}&vsn=2.0.0"), &[], "")
            .await
            .unwrap();
        assert_eq!(body, json!({"status": 500}));
        let (status, body) = app.api("GET", "/api/me", Some(&token), None).await;
        assert_eq!(
            (status, body),
            (500, json!({"errors": {"detail": "Internal Server Error"}}))
        );
    });
}

/// Revocations are numbered in the order they commit, whatever the clocks of the processes
/// that made them: a watcher that has seen number N has seen every one before it.
fn revocations_are_numbered_in_commit_order(backend: &str) {
    use fawkes::apps::accounts::{create_token, revoke_token, revoked_since};
    let app = start(backend);
    let (_, first) = app.user("alice", false);
    let tokens: Vec<String> = {
        let mut c = app.state.store.conn().unwrap();
        (0..6)
            .map(|_| create_token(&mut c, "alice").unwrap())
            .collect()
    };
    let threads: Vec<_> = tokens
        .into_iter()
        .map(|t| {
            let store = app.state.store.clone();
            std::thread::spawn(move || revoke_token(&mut store.conn().unwrap(), &t).unwrap())
        })
        .collect();
    for t in threads {
        assert!(t.join().unwrap());
    }
    let mut c = app.state.store.conn().unwrap();
    let seqs: Vec<i64> = revoked_since(&mut c, 0)
        .unwrap()
        .into_iter()
        .map(|(_, s)| s)
        .collect();
    assert_eq!(
        seqs,
        [1, 2, 3, 4, 5, 6],
        "concurrent revocations get distinct, consecutive numbers"
    );
    assert_eq!(revoked_since(&mut c, 4).unwrap().len(), 2);
    assert!(revoke_token(&mut c, &first).unwrap());
    assert_eq!(
        revoked_since(&mut c, 6)
            .unwrap()
            .into_iter()
            .map(|(_, s)| s)
            .collect::<Vec<_>>(),
        [7]
    );
}

mod failures {
    mod sqlite {
        #[test]
        fn a_database_error_at_connect_is_a_500() {
            super::super::a_database_error_at_connect_is_a_500("sqlite")
        }
        #[test]
        fn revocations_are_numbered_in_commit_order() {
            super::super::revocations_are_numbered_in_commit_order("sqlite")
        }
    }
    mod postgres {
        #[test]
        fn a_database_error_at_connect_is_a_500() {
            super::super::a_database_error_at_connect_is_a_500("postgres")
        }
        #[test]
        fn revocations_are_numbered_in_commit_order() {
            super::super::revocations_are_numbered_in_commit_order("postgres")
        }
    }
}
