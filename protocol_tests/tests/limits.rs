//! Fawkes's own guarantees beyond the transcripts: limits, bad input, auth tokens, origins,
//! shutdown, and the channel API (intercepts, timers, async replies), over real sockets.

mod support;

use fawkes::{
    async_trait, Channel, ChannelContext, CheckOrigin, Config, Connected, Flow, Info, Limits,
    Payload, Refused, Reply, Router, Socket,
};
use protocol_tests::client::{http, Client, Frame};
use protocol_tests::matcher::Vars;
use serde_json::json;
use std::time::{Duration, Instant};

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Runtime::new().unwrap()
}

fn limits(f: impl FnOnce(&mut Limits)) -> Config {
    let mut c = Config::default();
    f(&mut c.limits);
    c
}

const V2: &str = "token=t1&vsn=2.0.0";

async fn join(c: &mut Client, jr: &str, topic: &str, reply: &str) {
    c.send(&format!(r#"["{jr}","{jr}","{topic}","phx_join",{{}}]"#))
        .await
        .unwrap();
    c.expect(
        &format!(r#"["{jr}","{jr}","{topic}","phx_reply",{{"response":{reply},"status":"ok"}}]"#),
        &mut Vars::new(),
    )
    .await
    .unwrap();
}

async fn heartbeat_works(c: &mut Client) {
    c.send(r#"[null,"hb","phoenix","heartbeat",{}]"#)
        .await
        .unwrap();
    c.expect(
        r#"[null,"hb","phoenix","phx_reply",{"response":{},"status":"ok"}]"#,
        &mut Vars::new(),
    )
    .await
    .unwrap();
}

#[test]
fn a_thousand_joins_stop_at_the_channel_limit() {
    let server = support::shared();
    rt().block_on(async {
        let mut c = Client::connect("A", &server.url(), V2).await.unwrap();
        for i in 0..1000 {
            c.send(&format!(r#"["{i}","{i}","collection:{i}","phx_join",{{}}]"#))
                .await
                .unwrap();
        }
        let mut v = Vars::new();
        for i in 0..100 {
            c.expect(&format!(r#"["{i}","{i}","collection:{i}","phx_reply",{{"response":{{"items":[]}},"status":"ok"}}]"#), &mut v).await.unwrap();
        }
        for i in 100..1000 {
            c.expect(&format!(r#"["{i}","{i}","collection:{i}","phx_reply",{{"response":{{"reason":"too many channels joined"}},"status":"error"}}]"#), &mut v).await.unwrap();
        }
        // Leaving one makes room for one.
        c.send(r#"["5","x","collection:5","phx_leave",{}]"#).await.unwrap();
        c.expect(r#"["5","x","collection:5","phx_reply",{"response":{},"status":"ok"}]"#, &mut v).await.unwrap();
        c.expect(r#"["5","5","collection:5","phx_close",{}]"#, &mut v).await.unwrap();
        join(&mut c, "new", "collection:new", r#"{"items":[]}"#).await;
        heartbeat_works(&mut c).await;
    });
}

#[test]
fn a_frame_over_the_limit_closes_that_socket_only() {
    let server = support::shared();
    rt().block_on(async {
        let mut big = Client::connect("big", &server.url(), V2).await.unwrap();
        let mut other = Client::connect("other", &server.url(), V2).await.unwrap();
        // 10 MB, just over the 10,000,000-byte default.
        let payload = "x".repeat(10 * 1024 * 1024);
        big.send(&format!(
            r#"[null,"1","phoenix","heartbeat",{{"p":"{payload}"}}]"#
        ))
        .await
        .unwrap();
        match big.recv().await.unwrap() {
            Frame::Close(Some(1009), reason) if reason.is_empty() => {}
            other => panic!("expected close 1009, got {other:?}"),
        }
        heartbeat_works(&mut other).await;
    });
}

#[test]
fn garbage_never_takes_the_server_down() {
    let server = support::shared();
    rt().block_on(async {
        let mut seed = 0x9e3779b97f4a7c15u64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for round in 0..100 {
            let mut c = Client::connect("fuzz", &server.url(), V2).await.unwrap();
            let len = (next() % 64) as usize;
            let bytes: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            if round % 2 == 0 {
                c.send_binary(bytes).await.unwrap();
            } else {
                c.send(&String::from_utf8_lossy(&bytes)).await.unwrap();
            }
            match c.recv().await.unwrap() {
                Frame::Close(Some(1011), reason) if reason.is_empty() => {}
                other => panic!("round {round}: expected close 1011, got {other:?}"),
            }
        }
        // Structurally valid frames with wrong types, and deep nesting.
        for bad in [
            r#"[1,2,3,4,5]"#.to_string(),
            r#"[null,null,"t",{},{}]"#.to_string(),
            format!("{}{}", "[".repeat(10_000), "]".repeat(10_000)),
            r#"["1","1","community:feed","phx_join",{}"#.to_string(),
        ] {
            let mut c = Client::connect("bad", &server.url(), V2).await.unwrap();
            c.send(&bad).await.unwrap();
            c.expect_close(1011).await.unwrap();
        }
        let mut c = Client::connect("after", &server.url(), V2).await.unwrap();
        heartbeat_works(&mut c).await;
    });
}

#[test]
fn a_slow_client_is_closed_and_nobody_else_waits() {
    slow_client_closed(limits(|l| l.max_queue = 8));
}

/// The queue's byte bound alone (its frame count never near) closes a slow client too: 200
/// broadcasts of 200 kB are 40 MB, over a 1 MiB bound.
#[test]
fn a_slow_client_is_closed_at_the_byte_bound() {
    slow_client_closed(limits(|l| {
        l.max_queue = 1_000_000;
        l.max_queue_bytes = 1024 * 1024;
    }));
}

fn slow_client_closed(config: Config) {
    let server = support::start(config);
    rt().block_on(async {
        let mut slow = Client::connect("slow", &server.url(), V2).await.unwrap();
        join(&mut slow, "1", "community:feed", "{}").await;
        let mut fast = Client::connect("fast", &server.url(), V2).await.unwrap();
        let body = "y".repeat(200_000);
        // The slow client reads nothing while 40 MB of broadcasts go out.
        for i in 0..200 {
            fast.send(&format!(r#"[null,"{i}","phoenix","heartbeat",{{}}]"#))
                .await
                .unwrap();
            fast.expect(
                &format!(r#"[null,"{i}","phoenix","phx_reply",{{"response":{{}},"status":"ok"}}]"#),
                &mut Vars::new(),
            )
            .await
            .unwrap();
            server
                .endpoint
                .broadcast("community:feed", "big", json!({ "body": body }));
        }
        // What it gets, read late, ends with 1013 and not with all 200 broadcasts.
        let mut received = 0;
        loop {
            match slow.recv().await.unwrap() {
                Frame::Text(_) => received += 1,
                Frame::Close(Some(1013), reason) if reason.is_empty() => break,
                other => panic!("expected broadcasts then close 1013, got {other:?}"),
            }
        }
        assert!(received < 200, "received all {received} broadcasts");
    });
}

#[test]
fn reads_slow_down_over_the_message_rate_and_nothing_is_lost() {
    let server = support::start(limits(|l| l.max_messages_per_second = 20));
    rt().block_on(async {
        let mut c = Client::connect("A", &server.url(), V2).await.unwrap();
        let started = Instant::now();
        for i in 0..60 {
            c.send(&format!(r#"[null,"{i}","phoenix","heartbeat",{{}}]"#))
                .await
                .unwrap();
        }
        for i in 0..60 {
            c.expect(
                &format!(r#"[null,"{i}","phoenix","phx_reply",{{"response":{{}},"status":"ok"}}]"#),
                &mut Vars::new(),
            )
            .await
            .unwrap();
        }
        // A burst of 20, then 40 more at 20 per second.
        assert!(
            started.elapsed() >= Duration::from_millis(1800),
            "{:?}",
            started.elapsed()
        );
    });
}

fn upgrade(path: &str, host: &str, extra: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n")
}

#[test]
fn auth_token_subprotocol_reaches_connect_and_phoenix_is_echoed() {
    let socket = Socket::new(Router::new()).on_connect(|info| async move {
        match info.auth_token.as_deref() {
            Some("secret") => Ok(Connected::default()),
            other => Err(Refused::new(format!("token {other:?}"))),
        }
    });
    let server = support::start_with(Config::default(), socket);
    rt().block_on(async {
        let host = server.addr.to_string();
        let path = "/socket/websocket?vsn=2.0.0";
        // phoenix.js: protocols ["phoenix", "base64url.bearer.phx." + btoa(token) without "="].
        let (status, headers, _) = http(
            &host,
            &upgrade(
                path,
                &host,
                "Sec-WebSocket-Protocol: phoenix, base64url.bearer.phx.c2VjcmV0\r\n",
            ),
        )
        .await
        .unwrap();
        assert_eq!(status, 101);
        assert!(
            headers.contains(&("sec-websocket-protocol".into(), "phoenix".into())),
            "{headers:?}"
        );
        let (status, _, _) = http(
            &host,
            &upgrade(
                path,
                &host,
                "Sec-WebSocket-Protocol: phoenix, base64url.bearer.phx.d3Jvbmc\r\n",
            ),
        )
        .await
        .unwrap();
        assert_eq!(status, 403);
        let (status, _, _) = http(&host, &upgrade(path, &host, "")).await.unwrap();
        assert_eq!(status, 403);
    });
}

#[test]
fn origins_are_checked_when_configured() {
    let config = Config {
        check_origin: CheckOrigin::Allow(vec![
            "https://good.example".into(),
            "//*.fawkes.test".into(),
        ]),
        ..Config::default()
    };
    let server = support::start(config);
    rt().block_on(async {
        let host = server.addr.to_string();
        let path = "/socket/websocket?vsn=2.0.0";
        for (origin, want) in [
            ("Origin: https://good.example\r\n", 101),
            ("Origin: http://good.example\r\n", 403),
            ("Origin: https://evil.example\r\n", 403),
            ("Origin: http://a.fawkes.test\r\n", 101),
            ("", 101),
        ] {
            let (status, _, _) = http(&host, &upgrade(path, &host, origin)).await.unwrap();
            assert_eq!(status, want, "{origin}");
        }
    });
}

#[test]
fn shutdown_closes_sockets_with_1001_then_stops() {
    let server = support::start(Config::default());
    rt().block_on(async {
        let mut a = Client::connect("A", &server.url(), V2).await.unwrap();
        join(&mut a, "1", "community:feed", "{}").await;
        let stop = server.stop.clone();
        let started = Instant::now();
        std::thread::spawn(move || actix_rt::System::new().block_on(stop.stop()));
        a.expect_close(1001).await.unwrap();
        for _ in 0..100 {
            if tokio::net::TcpStream::connect(server.addr).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(
            tokio::net::TcpStream::connect(server.addr).await.is_err(),
            "still accepting"
        );
        assert!(started.elapsed() < Duration::from_secs(5));
    });
}

/// `slow:*`: a push takes two seconds, holding its socket open through a shutdown's grace.
struct Slow;

#[async_trait(?Send)]
impl Channel for Slow {
    async fn join(
        &mut self,
        _: &str,
        _: Payload,
        _: &mut ChannelContext,
    ) -> Result<Payload, Payload> {
        Ok(Payload::empty())
    }

    async fn handle_in(&mut self, _: &str, _: Payload, _: &mut ChannelContext) -> Reply {
        tokio::time::sleep(Duration::from_secs(2)).await;
        Reply::ok(Payload::empty())
    }
}

#[test]
fn shutdown_stops_accepting_before_it_closes_sockets() {
    let socket = Socket::new(Router::new().channel("slow:*", || Slow));
    let server = support::start_with(Config::default(), socket);
    rt().block_on(async {
        let mut busy = Client::connect("busy", &server.url(), V2).await.unwrap();
        join(&mut busy, "1", "slow:1", "{}").await;
        let mut idle = Client::connect("idle", &server.url(), V2).await.unwrap();
        busy.send(r#"["1","2","slow:1","work",{}]"#).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        let stop = server.stop.clone();
        std::thread::spawn(move || actix_rt::System::new().block_on(stop.stop()));
        // The idle socket is told to go at once; the busy one keeps the grace period open.
        idle.expect_close(1001).await.unwrap();
        // A client reconnecting now must not get in: this node no longer listens, and says so
        // at once (a connect refused), not by leaving it in the listen backlog.
        let refused = tokio::time::timeout(
            Duration::from_millis(500),
            tokio::net::TcpStream::connect(server.addr),
        )
        .await;
        assert!(
            matches!(&refused, Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused),
            "a stopping node took a connection: {refused:?}"
        );
        let again = tokio::time::timeout(
            Duration::from_secs(1),
            Client::connect("again", &server.url(), V2),
        )
        .await;
        assert!(
            !matches!(again, Ok(Ok(_))),
            "a dying node accepted a new socket"
        );
        // The busy socket's push still gets its reply, then its 1001.
        busy.expect(
            r#"["1","2","slow:1","phx_reply",{"response":{},"status":"ok"}]"#,
            &mut Vars::new(),
        )
        .await
        .unwrap();
        busy.expect_close(1001).await.unwrap();
    });
}

/// Its `intercepts` panics.
struct BadIntercepts;

#[async_trait(?Send)]
impl Channel for BadIntercepts {
    async fn join(
        &mut self,
        _: &str,
        _: Payload,
        _: &mut ChannelContext,
    ) -> Result<Payload, Payload> {
        Ok(Payload::empty())
    }

    fn intercepts(&self) -> &'static [&'static str] {
        panic!("intercepts panic")
    }
}

#[test]
fn a_panicking_factory_or_intercepts_fails_only_that_join() {
    let router = Router::new()
        .channel("factory:*", || -> Slow { panic!("factory panic") })
        .channel("intercepts:*", || BadIntercepts)
        .channel("slow:*", || Slow);
    let server = support::start_with(Config::default(), Socket::new(router));
    rt().block_on(async {
        let mut c = Client::connect("c", &server.url(), V2).await.unwrap();
        for (r, topic) in [("1", "factory:x"), ("2", "intercepts:x")] {
            c.send(&format!(r#"["{r}","{r}","{topic}","phx_join",{{}}]"#)).await.unwrap();
            c.expect(
                &format!(r#"["{r}","{r}","{topic}","phx_reply",{{"response":{{"reason":"join crashed"}},"status":"error"}}]"#),
                &mut Vars::new(),
            )
            .await
            .unwrap();
        }
        // The socket lives on and joins what works.
        heartbeat_works(&mut c).await;
        join(&mut c, "3", "slow:y", "{}").await;
    });
}

/// A channel exercising the API: intercepts and `handle_out`, timers, async replies,
/// self-messages, and panics in each callback.
struct Api {
    me: String,
}

struct Tick(u32);

#[async_trait(?Send)]
impl Channel for Api {
    async fn join(
        &mut self,
        _: &str,
        params: Payload,
        ctx: &mut ChannelContext,
    ) -> Result<Payload, Payload> {
        self.me = params
            .json()
            .and_then(|p| p["me"].as_str())
            .unwrap_or("")
            .to_owned();
        ctx.subscribe(&format!("user:{}", self.me));
        Ok(Payload::Json(json!({"me": self.me})))
    }

    fn intercepts(&self) -> &'static [&'static str] {
        &["direct"]
    }

    fn handle_out(&mut self, event: &str, payload: &Payload, ctx: &mut ChannelContext) -> Flow {
        // Deliver `direct` only to its addressee, with a field added.
        let p = payload.json().unwrap();
        if event == "direct" && p["to"] == self.me.as_str() {
            ctx.push(
                "direct",
                json!({"to": p["to"], "body": p["body"], "seen_by": self.me}),
            );
            if p["body"] == "panic" {
                panic!("handle_out panic");
            }
        }
        Flow::Continue
    }

    async fn handle_in(
        &mut self,
        event: &str,
        payload: Payload,
        ctx: &mut ChannelContext,
    ) -> Reply {
        match event {
            "direct" => {
                ctx.broadcast("direct", payload);
                Reply::ok(Payload::empty())
            }
            "later" => {
                let r = ctx.socket_ref();
                actix_rt::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    ChannelContext::reply(&r, "ok", json!({"later": true}));
                });
                Reply::None
            }
            "tick" => {
                ctx.send_after(Duration::from_millis(100), Tick(7));
                Reply::ok(Payload::empty())
            }
            "stop" => Reply::Stop(
                fawkes::StopReason::Normal,
                Some(("ok".into(), json!({"bye": 1}).into())),
            ),
            "info_panic" => {
                ctx.send_self(Tick(0));
                Reply::None
            }
            _ => Reply::error(json!({"reason": "unknown event"})),
        }
    }

    async fn handle_info(&mut self, info: Info, ctx: &mut ChannelContext) -> Flow {
        match info {
            Info::Broadcast(b) => ctx.push("mail", json!({"event": b.event})),
            other => match other.downcast::<Tick>() {
                Some(Tick(0)) => panic!("handle_info panic"),
                Some(Tick(n)) => ctx.push("tick", json!({"n": n})),
                None => {}
            },
        }
        Flow::Continue
    }
}

#[test]
fn channel_api_intercepts_timers_async_replies_and_panics() {
    let socket = Socket::new(Router::new().channel("api:*", || Api { me: String::new() }));
    let server = support::start_with(Config::default(), socket);
    rt().block_on(async {
        let mut v = Vars::new();
        let mut a = Client::connect("A", &server.url(), "vsn=2.0.0")
            .await
            .unwrap();
        let mut b = Client::connect("B", &server.url(), "vsn=2.0.0")
            .await
            .unwrap();
        a.send(r#"["1","1","api:r","phx_join",{"me":"a"}]"#)
            .await
            .unwrap();
        a.expect(
            r#"["1","1","api:r","phx_reply",{"response":{"me":"a"},"status":"ok"}]"#,
            &mut v,
        )
        .await
        .unwrap();
        b.send(r#"["2","2","api:r","phx_join",{"me":"b"}]"#)
            .await
            .unwrap();
        b.expect(
            r#"["2","2","api:r","phx_reply",{"response":{"me":"b"},"status":"ok"}]"#,
            &mut v,
        )
        .await
        .unwrap();

        // Targeted delivery through handle_out: only B gets it, rewritten, with its join_ref.
        a.send(r#"["1","3","api:r","direct",{"to":"b","body":"hi"}]"#)
            .await
            .unwrap();
        a.expect(
            r#"["1","3","api:r","phx_reply",{"response":{},"status":"ok"}]"#,
            &mut v,
        )
        .await
        .unwrap();
        b.expect(
            r#"["2",null,"api:r","direct",{"body":"hi","seen_by":"b","to":"b"}]"#,
            &mut v,
        )
        .await
        .unwrap();
        a.expect_silence(150).await.unwrap();

        // An extra subscription arrives in handle_info.
        server.endpoint.broadcast("user:a", "note", json!({}));
        a.expect(r#"["1",null,"api:r","mail",{"event":"note"}]"#, &mut v)
            .await
            .unwrap();

        // A reply sent later carries the original ref.
        a.send(r#"["1","4","api:r","later",{}]"#).await.unwrap();
        a.expect(
            r#"["1","4","api:r","phx_reply",{"response":{"later":true},"status":"ok"}]"#,
            &mut v,
        )
        .await
        .unwrap();

        // A timer.
        a.send(r#"["1","5","api:r","tick",{}]"#).await.unwrap();
        a.expect(
            r#"["1","5","api:r","phx_reply",{"response":{},"status":"ok"}]"#,
            &mut v,
        )
        .await
        .unwrap();
        a.expect(r#"["1",null,"api:r","tick",{"n":7}]"#, &mut v)
            .await
            .unwrap();

        // A panic in handle_info fails that channel only.
        a.send(r#"["1","6","api:r","info_panic",{}]"#)
            .await
            .unwrap();
        a.expect(
            r#"["1","1","api:r","phx_error",{"reason":"channel_crash"}]"#,
            &mut v,
        )
        .await
        .unwrap();
        heartbeat_works(&mut a).await;

        // A panic in handle_out fails B's channel (its delivery first), and B's socket lives.
        a.send(r#"["7","7","api:r","phx_join",{"me":"a"}]"#)
            .await
            .unwrap();
        a.expect(
            r#"["7","7","api:r","phx_reply",{"response":{"me":"a"},"status":"ok"}]"#,
            &mut v,
        )
        .await
        .unwrap();
        a.send(r#"["7","8","api:r","direct",{"to":"b","body":"panic"}]"#)
            .await
            .unwrap();
        a.expect(
            r#"["7","8","api:r","phx_reply",{"response":{},"status":"ok"}]"#,
            &mut v,
        )
        .await
        .unwrap();
        b.expect(
            r#"["2",null,"api:r","direct",{"body":"panic","seen_by":"b","to":"b"}]"#,
            &mut v,
        )
        .await
        .unwrap();
        b.expect(
            r#"["2","2","api:r","phx_error",{"reason":"channel_crash"}]"#,
            &mut v,
        )
        .await
        .unwrap();
        heartbeat_works(&mut b).await;

        // A normal stop: the reply, then phx_close.
        a.send(r#"["7","9","api:r","stop",{}]"#).await.unwrap();
        a.expect(
            r#"["7","9","api:r","phx_reply",{"response":{"bye":1},"status":"ok"}]"#,
            &mut v,
        )
        .await
        .unwrap();
        a.expect(r#"["7","7","api:r","phx_close",{}]"#, &mut v)
            .await
            .unwrap();
    });
}

/// Every close the server starts carries an empty reason, as Phoenix's do: 1002 for a broken
/// WebSocket frame here (1001, 1009, 1011 and 1013 are checked by the tests above).
#[test]
fn a_websocket_protocol_error_closes_with_1002_and_an_empty_reason() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let server = support::shared();
    rt().block_on(async {
        let host = server.addr.to_string();
        let mut tcp = tokio::net::TcpStream::connect(&host).await.unwrap();
        tcp.write_all(upgrade("/socket/websocket?vsn=2.0.0", &host, "").as_bytes())
            .await
            .unwrap();
        let mut buf = vec![0u8; 4096];
        let n = tcp.read(&mut buf).await.unwrap();
        let head = String::from_utf8_lossy(&buf[..n]).to_string();
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        // A client frame without a mask breaks RFC 6455.
        tcp.write_all(&[0x81, 0x02, b'h', b'i']).await.unwrap();
        let mut frame = Vec::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while frame.len() < 4 {
            let n = tokio::time::timeout_at(deadline, tcp.read(&mut buf))
                .await
                .unwrap()
                .unwrap();
            assert!(n > 0, "closed without a close frame: {frame:?}");
            frame.extend_from_slice(&buf[..n]);
        }
        assert_eq!(
            &frame[..4],
            &[0x88, 0x02, 0x03, 0xea],
            "close 1002, no reason"
        );
    });
}

#[test]
fn topics_are_bounded_in_bytes() {
    let server = support::start(limits(|l| l.max_topic_bytes = 64));
    rt().block_on(async {
        let mut c = Client::connect("c", &server.url(), V2).await.unwrap();
        let long = format!("collection:{}", "x".repeat(54));
        c.send(&format!(r#"["1","1","{long}","phx_join",{{}}]"#)).await.unwrap();
        c.expect(
            &format!(r#"["1","1","{long}","phx_reply",{{"response":{{"reason":"topic over 64 bytes"}},"status":"error"}}]"#),
            &mut Vars::new(),
        )
        .await
        .unwrap();
        // 64 bytes exactly is fine.
        let fits = format!("collection:{}", "x".repeat(53));
        join(&mut c, "2", &fits, r#"{"items":[]}"#).await;
        heartbeat_works(&mut c).await;
    });
}

/// An actix-web `App` of one's own with `configure_sockets` (no [`fawkes::Server`], so no
/// upgrade handler): WebSockets go through actix-web's payload and response body, and still
/// work, close codes included.
#[test]
fn sockets_in_an_actix_web_app_of_ones_own_still_serve_websockets() {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        actix_rt::System::new().block_on(async move {
            let endpoint = fawkes::Endpoint::new(Config::default());
            let mounts = fawkes::server::mounts(
                &endpoint,
                &[("/socket".into(), support::fixture::socket())],
            );
            let server = actix_web::HttpServer::new(move || {
                endpoint.pubsub().register_worker();
                let mounts = mounts.clone();
                actix_web::App::new()
                    .configure(move |cfg| fawkes::server::configure_sockets(cfg, &mounts))
            })
            .workers(1)
            .bind("127.0.0.1:0")
            .expect("bind");
            tx.send(server.addrs()[0]).unwrap();
            server.run().await.expect("server");
        })
    });
    let addr = rx.recv().expect("server started");
    let url = format!("ws://{addr}/socket");
    rt().block_on(async {
        let mut c = Client::connect("own", &url, V2).await.unwrap();
        heartbeat_works(&mut c).await;
        join(&mut c, "1", "community:feed", "{}").await;
        c.send("not json").await.unwrap();
        c.expect_close(1011).await.unwrap();
    });
}

/// `stream:*`: a channel whose mail never runs out. Each message it handles mails it the next
/// one, and every 1000th broadcasts a `tick` to its topic: a steady stream for the socket's
/// task to handle, and for the client to read.
struct Stream;

struct Next(u64);

#[async_trait(?Send)]
impl Channel for Stream {
    async fn join(
        &mut self,
        _: &str,
        _: Payload,
        ctx: &mut ChannelContext,
    ) -> Result<Payload, Payload> {
        ctx.send_self(Next(0));
        Ok(Payload::empty())
    }

    async fn handle_info(&mut self, info: Info, ctx: &mut ChannelContext) -> Flow {
        if let Some(Next(n)) = info.downcast::<Next>() {
            if n % 1000 == 0 {
                ctx.broadcast("tick", json!({ "n": n }));
            }
            ctx.send_self(Next(n + 1));
        }
        Flow::Continue
    }
}

/// Mail does not starve the client's frames: a socket whose channel always has mail still
/// answers each heartbeat while the stream goes on, and is not closed for being idle (1 s
/// here) while its client keeps sending them.
#[test]
fn a_socket_whose_mail_never_runs_out_still_reads_its_client() {
    let socket = Socket::new(Router::new().channel("stream:*", || Stream));
    let server = support::start_with(limits(|l| l.idle_timeout = Duration::from_secs(1)), socket);
    rt().block_on(async {
        let mut c = Client::connect("c", &server.url(), V2).await.unwrap();
        join(&mut c, "1", "stream:1", "{}").await;
        let mut ticks = 0;
        // Three idle timeouts' worth of heartbeats.
        for i in 0..12 {
            c.send(&format!(r#"[null,"{i}","phoenix","heartbeat",{{}}]"#))
                .await
                .unwrap();
            let reply =
                format!(r#"[null,"{i}","phoenix","phx_reply",{{"response":{{}},"status":"ok"}}]"#);
            let deadline = Instant::now() + Duration::from_secs(5);
            loop {
                let wait = deadline.saturating_duration_since(Instant::now());
                match c.recv_within(wait).await.unwrap() {
                    Some(Frame::Text(t)) if t.contains(r#""tick""#) => ticks += 1,
                    Some(Frame::Text(t)) if t == reply => break,
                    None => {
                        panic!("heartbeat {i} not answered within 5 s ({ticks} ticks meanwhile)")
                    }
                    Some(other) => panic!("heartbeat {i}: expected its reply, got {other:?}"),
                }
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        assert!(ticks > 0, "the stream went on meanwhile");
    });
}
