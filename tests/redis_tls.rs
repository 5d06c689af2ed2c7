//! Managed Redis as production runs it: TLS (`rediss://`) with a private CA given by
//! `--redis-ca-file`, and a password in the URL. Over a real redis-server speaking only TLS
//! (its certificate made here with the openssl command): two nodes share broadcasts through
//! it; a node that cannot trust its certificate, or whose password it refuses, does not start
//! and says why; a Redis merely unreachable at start does not stop a node. No output ever
//! shows the password.

mod support;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

/// The Redis password: found in no output.
const PASSWORD: &str = "pw-9c41e7-managed";
const SECRET: &str = "a-supabase-project-jwt-secret-of-32-bytes-or-more";

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// `path` as a flag's value.
fn arg(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// `fawkes serve` on a database of its own in `dir` with `args`, expected to refuse to start:
/// its exit code, stdout and stderr (within 30 s, else the test fails).
fn refused(dir: &Path, args: &[&str]) -> (Option<i32>, String, String) {
    std::fs::create_dir_all(dir).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_fawkes"))
        .args(["serve", "--host", "127.0.0.1", "--port", "0"])
        .args(["--database-url", arg(&dir.join("fawkes.db"))])
        .args(args)
        .current_dir(dir)
        .env_remove("DATABASE_URL")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "fawkes serve did not stop: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    let text = |b: Vec<u8>| String::from_utf8(b).unwrap();
    (out.status.code(), text(out.stdout), text(out.stderr))
}

/// The line of `fawkes serve`'s stderr that says why it stopped.
fn reason(stderr: &str) -> &str {
    stderr
        .lines()
        .find(|l| l.starts_with("fawkes: "))
        .unwrap_or_else(|| panic!("no `fawkes: ` line in {stderr}"))
}

/// A realtime-js-like socket on `addr` (the service_role key) joined to `realtime:room` for
/// broadcasts from others.
async fn join_room(addr: &str, key: &str) -> Ws {
    let url = format!("ws://{addr}/realtime/v1/websocket?apikey={key}&vsn=2.0.0");
    let mut ws = tokio_tungstenite::connect_async(url).await.unwrap().0;
    let join = json!(["1", "1", "realtime:room", "phx_join",
        {"config": {"broadcast": {"self": false, "ack": true}, "presence": {"key": ""}}}]);
    ws.send(Message::Text(join.to_string())).await.unwrap();
    let reply = frame(&mut ws).await;
    assert_eq!(
        (&reply[3], &reply[4]["status"]),
        (&json!("phx_reply"), &json!("ok")),
        "{reply}"
    );
    ws
}

async fn frame(ws: &mut Ws) -> Value {
    match tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
        Ok(Some(Ok(Message::Text(t)))) => serde_json::from_str(&t).unwrap(),
        other => panic!("expected a frame, got {other:?}"),
    }
}

/// Sends a broadcast from `ws` (acknowledged) and returns the frame a listener gets.
async fn shout(ws: &mut Ws, r: &str, text: &str) -> Value {
    let payload = json!({"type": "broadcast", "event": "shout", "payload": {"text": text}});
    let push = json!(["1", r, "realtime:room", "broadcast", payload]);
    ws.send(Message::Text(push.to_string())).await.unwrap();
    assert_eq!(
        frame(ws).await,
        json!(["1", r, "realtime:room", "phx_reply", {"status": "ok", "response": {}}])
    );
    json!([null, null, "realtime:room", "broadcast", payload])
}

/// Two nodes on a TLS-only Redis with a password and a private CA (A's given as flags, B's in
/// its fawkes.toml): each client gets the other node's broadcast as the exact frame. Both
/// nodes say where they linked with the password masked, and neither's output holds it.
#[test]
fn two_nodes_share_broadcasts_over_rediss_with_a_password_and_a_ca_file() {
    let dir = support::temp_dir("redis-tls-two");
    let redis = support::Redis::start_tls(&dir, PASSWORD);
    let url = format!("rediss://:{PASSWORD}@127.0.0.1:{}", redis.port);
    let ca = dir.join("ca.pem");
    let node = |name: &str, redis: &[&str]| {
        let d = dir.join(name);
        std::fs::create_dir_all(&d).unwrap();
        let db = d.join("fawkes.db");
        let mut args = vec![
            "--database-url",
            arg(&db),
            "--supabase-jwt-secret",
            SECRET,
            "--node-name",
            name,
            "--metrics-addr",
            "127.0.0.1:0",
        ];
        args.extend_from_slice(redis);
        let s = support::Serve::start(&d, &args);
        support::wait_linked(&s);
        s
    };
    let a = node("a", &["--redis-url", &url, "--redis-ca-file", arg(&ca)]);
    // B's come from its fawkes.toml.
    std::fs::create_dir_all(dir.join("b")).unwrap();
    let file = format!("redis-url = {url:?}\nredis-ca-file = {:?}\n", arg(&ca));
    std::fs::write(dir.join("b/fawkes.toml"), file).unwrap();
    let b = node("b", &[]);
    let (_, service) = support::supabase_keys(SECRET);
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let mut on_a = join_room(&a.addr, &service).await;
        let mut on_b = join_room(&b.addr, &service).await;
        let sent = shout(&mut on_a, "2", "from a").await;
        assert_eq!(frame(&mut on_b).await, sent);
        let sent = shout(&mut on_b, "2", "from b").await;
        assert_eq!(frame(&mut on_a).await, sent);
    });
    let shown = format!("rediss://:***@127.0.0.1:{}", redis.port);
    for (s, name) in [(&a, "a"), (&b, "b")] {
        let log = std::fs::read_to_string(dir.join(name).join("serve.log")).unwrap();
        assert!(
            log.contains(&format!("cluster: connected to Redis at {shown}\n")),
            "{log}"
        );
        assert!(!log.contains(PASSWORD), "{log}");
        assert!(!s.banner.concat().contains(PASSWORD));
    }
}

/// A certificate that does not verify stops `fawkes serve` before it listens, with the URL
/// (password masked) and the TLS reason: with another CA's file, and with the system's roots
/// for a private CA's certificate.
#[test]
fn a_node_refuses_to_start_when_the_redis_certificate_does_not_verify() {
    let dir = support::temp_dir("redis-tls-untrusted");
    let redis = support::Redis::start_tls(&dir, PASSWORD);
    support::make_ca(&dir, "other");
    let url = format!("rediss://:{PASSWORD}@127.0.0.1:{}", redis.port);
    let shown = format!("rediss://:***@127.0.0.1:{}", redis.port);
    let other = dir.join("other.pem");
    let tail = "the node does not start (this is no outage to wait out)";
    let (code, out, err) = refused(
        &dir.join("other"),
        &["--redis-url", &url, "--redis-ca-file", arg(&other)],
    );
    assert_eq!((code, out.as_str()), (Some(1), ""), "{err}");
    assert_eq!(
        reason(&err),
        format!(
            "fawkes: cluster: Redis at {shown}: TLS: invalid peer certificate: UnknownIssuer \
             (trusting only the CAs of {}); {tail}",
            other.display()
        )
    );
    assert!(!err.contains(PASSWORD), "{err}");

    let (code, out, err) = refused(&dir.join("system"), &["--redis-url", &url]);
    assert_eq!((code, out.as_str()), (Some(1), ""), "{err}");
    assert_eq!(
        reason(&err),
        format!(
            "fawkes: cluster: Redis at {shown}: TLS: invalid peer certificate: UnknownIssuer \
             (trusting the system's root certificates; a private CA's certificate needs \
             --redis-ca-file); {tail}"
        )
    );
    assert!(!err.contains(PASSWORD), "{err}");
}

/// A password Redis refuses stops `fawkes serve` before it listens, as does none where Redis
/// wants one (over TLS with the right CA, and over plain `redis://`), and an ACL user that may
/// not subscribe.
#[test]
fn a_node_refuses_to_start_when_redis_refuses_its_password() {
    let dir = support::temp_dir("redis-tls-password");
    let tls = support::Redis::start_tls(&dir, PASSWORD);
    // `app` may not subscribe to any channel.
    let plain = support::Redis::start_with(&[
        "--requirepass",
        PASSWORD,
        "--user",
        "app",
        "on",
        ">app-pw",
        "~*",
        "resetchannels",
        "+@all",
    ]);
    let ca = dir.join("ca.pem");
    let tail = "the node does not start (this is no outage to wait out)";
    let wrong = "not-the-password";
    let refused_pw = "the user or password of --redis-url was refused";
    let cases = [
        (
            format!("rediss://:{wrong}@127.0.0.1:{}", tls.port),
            format!("rediss://:***@127.0.0.1:{}", tls.port),
            format!("{refused_pw}: Password authentication failed - AuthenticationFailed"),
        ),
        (
            format!("rediss://127.0.0.1:{}", tls.port),
            format!("rediss://127.0.0.1:{}", tls.port),
            format!("{refused_pw}: \"NOAUTH\": Authentication required."),
        ),
        (
            format!("redis://:{wrong}@127.0.0.1:{}", plain.port),
            format!("redis://:***@127.0.0.1:{}", plain.port),
            format!("{refused_pw}: Password authentication failed - AuthenticationFailed"),
        ),
        (
            format!("redis://app:app-pw@127.0.0.1:{}", plain.port),
            format!("redis://app:***@127.0.0.1:{}", plain.port),
            "the user of --redis-url may not do what the link does (SUBSCRIBE and PUBLISH on \
             the cluster's channels): NoPerm: this user has no permissions to access one of the \
             channels used as arguments"
                .to_owned(),
        ),
    ];
    for (i, (url, shown, why)) in cases.iter().enumerate() {
        let mut args = vec!["--redis-url", url.as_str()];
        if url.starts_with("rediss:") {
            args.extend(["--redis-ca-file", arg(&ca)]);
        }
        let (code, out, err) = refused(&dir.join(format!("case{i}")), &args);
        assert_eq!((code, out.as_str()), (Some(1), ""), "{err}");
        assert_eq!(
            reason(&err),
            format!("fawkes: cluster: Redis at {shown}: {why}; {tail}")
        );
        for secret in [wrong, PASSWORD, "app-pw"] {
            assert!(!err.contains(secret), "{err}");
        }
    }
}

/// A `rediss://` Redis that is not there at start is waited for, as a plain one is: the node
/// starts alone, says so (password masked), and links once Redis is up.
#[test]
fn a_node_starts_alone_while_its_rediss_server_is_unreachable() {
    let dir = support::temp_dir("redis-tls-later");
    support::make_ca(&dir, "ca");
    let port = support::free_port();
    let url = format!("rediss://:{PASSWORD}@127.0.0.1:{port}");
    let ca = dir.join("ca.pem");
    let d = dir.join("node");
    std::fs::create_dir_all(&d).unwrap();
    let db = d.join("fawkes.db");
    let node = support::Serve::start(
        &d,
        &[
            "--database-url",
            arg(&db),
            "--redis-url",
            &url,
            "--redis-ca-file",
            arg(&ca),
            "--metrics-addr",
            "127.0.0.1:0",
        ],
    );
    let log = std::fs::read_to_string(d.join("serve.log")).unwrap();
    let shown = format!("rediss://:***@127.0.0.1:{port}");
    assert!(
        log.contains(&format!(
            "cluster: cannot reach Redis at {shown} (Connection refused (os error 111)); \
             this node goes on alone and retries\n"
        )),
        "{log}"
    );
    // Redis comes up on that port, with a certificate of that CA: the node links.
    let redis = support::Redis::start_tls_on(&dir, PASSWORD, port);
    support::wait_linked(&node);
    let log = std::fs::read_to_string(d.join("serve.log")).unwrap();
    assert!(log.contains("cluster: Redis link back after "), "{log}");
    assert!(!log.contains(PASSWORD), "{log}");
    drop(redis);
}
