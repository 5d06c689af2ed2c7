//! `/metrics` of a real `fawkes serve`: scraped before, during and after an exactly known load
//! (two WebSocket clients, joins, a refused join, three REST writes fanned out to both, a
//! heartbeat, one clean close and one vanished client); every counter must move by exactly what
//! that load does. Each scrape passes `promtool check metrics`. A second server serves
//! /metrics on its main listener behind `--metrics-token`.

mod support;

use futures_util::{SinkExt, StreamExt};
use std::collections::HashMap;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

/// A plain HTTP/1.1 request; (status, body).
fn http(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String) {
    let (status, _, body) = support::http_raw(addr, method, path, headers, body);
    (status, body)
}

/// `promtool check metrics` on an exposition; panics with its report if it objects.
fn promtool(text: &str) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool must be installed (Debian: apt-get install prometheus)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Samples by `name{labels}` as printed.
fn parse(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (k, v) = l.rsplit_once(' ').unwrap();
            (k.to_owned(), v.parse().unwrap())
        })
        .collect()
}

struct Scraper {
    addr: String,
}

impl Scraper {
    /// The `--metrics-addr` listener a server printed in its banner.
    fn of(server: &support::Serve) -> Scraper {
        let url = server.metrics_url();
        let addr = url
            .strip_prefix("http://")
            .and_then(|r| r.strip_suffix("/metrics"))
            .unwrap_or_else(|| panic!("metrics URL in {:?}", server.banner))
            .to_owned();
        Scraper { addr }
    }

    fn scrape(&self) -> HashMap<String, f64> {
        let (status, body) = http(&self.addr, "GET", "/metrics", &[], "");
        assert_eq!(status, 200, "{body}");
        promtool(&body);
        parse(&body)
    }
}

/// `fawkes serve` on a fresh SQLite file with `/metrics` on a listener of its own, and the
/// token of alice, a community member.
fn serve_with_alice(name: &str, args: &[&str]) -> (support::Serve, String) {
    let dir = support::temp_dir(name);
    let db = dir.join("fawkes.db");
    let db = db.to_str().unwrap();
    let alice = support::create_user(&dir, db, &["--name", "alice", "--community-member"]);
    let args = [
        &["--database-url", db, "--metrics-addr", "127.0.0.1:0"][..],
        args,
    ]
    .concat();
    (support::Serve::start(&dir, &args), alice)
}

fn get(m: &HashMap<String, f64>, key: &str) -> f64 {
    *m.get(key).unwrap_or(&0.0)
}

/// A WebSocket frame's size on the wire from the server (unmasked): header plus payload.
fn wire(len: usize) -> u64 {
    (len + if len < 126 { 2 } else { 4 }) as u64
}

async fn recv(
    ws: &mut (impl StreamExt<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin),
) -> String {
    match tokio::time::timeout(Duration::from_secs(5), ws.next()).await {
        Ok(Some(Ok(Message::Text(t)))) => t,
        other => panic!("expected a text frame, got {other:?}"),
    }
}

#[test]
fn counters_move_by_exactly_the_load() {
    let dir = support::temp_dir("metrics");
    let db = dir.join("fawkes.db");
    let db = db.to_str().unwrap();
    let alice = support::create_user(&dir, db, &["--name", "alice", "--community-member"]);
    let bob = support::create_user(&dir, db, &["--name", "bob", "--community-member"]);
    let server = support::Serve::start(
        &dir,
        &["--database-url", db, "--metrics-addr", "127.0.0.1:0"],
    );
    // Not on the main listener: it has a listener of its own.
    assert_eq!(http(&server.addr, "GET", "/metrics", &[], "").0, 404);
    let m = Scraper::of(&server);
    let before = m.scrape();

    let rt = tokio::runtime::Runtime::new().unwrap();
    let (bytes_in, bytes_out, during) = rt.block_on(async {
        let url = |t: &str| format!("ws://{}/socket/websocket?token={t}&vsn=2.0.0", server.addr);
        let (mut a, _) = tokio_tungstenite::connect_async(url(&alice)).await.unwrap();
        let (mut b, _) = tokio_tungstenite::connect_async(url(&bob)).await.unwrap();
        let mut bytes_in = 0u64;
        let mut bytes_out = 0u64;
        let join = r#"["1","1","collection:metrics_test","phx_join",{}]"#;
        for ws in [&mut a, &mut b] {
            ws.send(Message::Text(join.into())).await.unwrap();
            bytes_in += join.len() as u64;
            let reply = recv(ws).await;
            assert!(reply.contains(r#""status":"ok""#), "{reply}");
            bytes_out += wire(reply.len());
        }
        let unmatched = r#"["2","2","nowhere:x","phx_join",{}]"#;
        a.send(Message::Text(unmatched.into())).await.unwrap();
        bytes_in += unmatched.len() as u64;
        let reply = recv(&mut a).await;
        assert!(reply.contains("unmatched topic"), "{reply}");
        bytes_out += wire(reply.len());

        let host = server.addr.clone();
        let auth = format!("Bearer {alice}");
        for n in 0..3 {
            let (status, body) = http(
                &host,
                "POST",
                "/api/collections/metrics_test/records",
                &[
                    ("Authorization", &auth),
                    ("Content-Type", "application/json"),
                ],
                &format!(r#"{{"n":{n}}}"#),
            );
            assert_eq!(status, 201, "{body}");
        }
        for ws in [&mut a, &mut b] {
            for _ in 0..3 {
                let change = recv(ws).await;
                assert!(change.contains(r#""change""#), "{change}");
                bytes_out += wire(change.len());
            }
        }
        let heartbeat = r#"[null,"3","phoenix","heartbeat",{}]"#;
        b.send(Message::Text(heartbeat.into())).await.unwrap();
        bytes_in += heartbeat.len() as u64;
        bytes_out += wire(recv(&mut b).await.len());
        let during = m.scrape();

        // A closes cleanly (1000; the server answers with a 4-byte close frame); B vanishes.
        a.close(None).await.unwrap();
        while let Some(Ok(msg)) = a.next().await {
            assert!(matches!(msg, Message::Close(_)), "{msg:?}");
        }
        bytes_out += 4;
        drop(b);
        (bytes_in, bytes_out, during)
    });

    // Both sockets gone: wait for the gauge, then everything else is settled too.
    let deadline = Instant::now() + Duration::from_secs(10);
    let after = loop {
        let now = m.scrape();
        if get(
            &now,
            r#"fawkes_connections{serializer="v2",transport="websocket"}"#,
        ) == 0.0
            || Instant::now() > deadline
        {
            break now;
        }
        std::thread::sleep(Duration::from_millis(50));
    };

    let delta = |k: &str| get(&after, k) - get(&before, k);
    assert_eq!(
        get(
            &during,
            r#"fawkes_connections{serializer="v2",transport="websocket"}"#
        ),
        2.0
    );
    assert_eq!(
        get(
            &after,
            r#"fawkes_connections{serializer="v2",transport="websocket"}"#
        ),
        0.0
    );
    assert_eq!(
        delta(r#"fawkes_connections_opened_total{serializer="v2",transport="websocket"}"#),
        2.0
    );
    assert_eq!(
        delta(r#"fawkes_connections_opened_total{serializer="v1",transport="websocket"}"#),
        0.0
    );
    // The collection and each socket's own id topic.
    assert_eq!(get(&during, "fawkes_topics"), 3.0);
    assert_eq!(get(&after, "fawkes_topics"), 0.0);
    assert_eq!(delta(r#"fawkes_joins_total{prefix="collection"}"#), 2.0);
    assert_eq!(
        delta(r#"fawkes_joins_refused_total{prefix="unmatched"}"#),
        1.0
    );
    assert_eq!(
        delta(r#"fawkes_joins_refused_total{prefix="collection"}"#),
        0.0
    );
    assert_eq!(delta("fawkes_frames_in_total"), 4.0);
    assert_eq!(delta("fawkes_bytes_in_total"), bytes_in as f64);
    // 2 join replies, 1 refusal, 6 changes, 1 heartbeat reply, 1 close frame.
    assert_eq!(delta("fawkes_frames_out_total"), 11.0);
    assert_eq!(delta("fawkes_bytes_out_total"), bytes_out as f64);
    assert_eq!(delta("fawkes_broadcasts_total"), 3.0);
    assert_eq!(delta("fawkes_deliveries_total"), 6.0);
    // Once per broadcast: both subscribers speak V2.
    assert_eq!(delta("fawkes_encodes_total"), 3.0);
    assert_eq!(delta(r#"fawkes_closes_total{code="1000"}"#), 1.0);
    assert_eq!(delta(r#"fawkes_closes_total{code="1006"}"#), 1.0);
    assert_eq!(delta(r#"fawkes_closes_total{code="1013"}"#), 0.0);
    assert_eq!(delta("fawkes_queue_overflows_total"), 0.0);
    assert_eq!(delta("fawkes_mailbox_overflows_total"), 0.0);
    assert_eq!(get(&after, "fawkes_presence_entries"), 0.0);
    assert_eq!(get(&after, "fawkes_longpoll_sessions"), 0.0);
    let posts = r#"fawkes_http_request_duration_seconds_count{method="POST",route="/api/collections/{name}/records",status="201"}"#;
    assert_eq!(delta(posts), 3.0);
    assert!(delta("fawkes_db_query_duration_seconds_count") >= 3.0);
    assert!(delta("fawkes_db_pool_wait_seconds_count") >= 3.0);
}

#[test]
fn metrics_token_guards_metrics_on_the_main_listener() {
    let dir = support::temp_dir("metrics-token");
    let db = dir.join("fawkes.db");
    let server = support::Serve::start(
        &dir,
        &[
            "--database-url",
            db.to_str().unwrap(),
            "--metrics-token",
            "s3cret-token",
        ],
    );
    assert_eq!(
        server.metrics_url(),
        format!("http://{}/metrics", server.addr)
    );
    let addr = server.addr.clone();
    assert_eq!(http(&addr, "GET", "/metrics", &[], "").0, 401);
    assert_eq!(
        http(
            &addr,
            "GET",
            "/metrics",
            &[("Authorization", "Bearer wrong")],
            ""
        )
        .0,
        401
    );
    assert_eq!(
        http(
            &addr,
            "GET",
            "/metrics",
            &[("Authorization", "Bearer s3cret-token-and-more")],
            ""
        )
        .0,
        401
    );
    let (status, body) = http(
        &addr,
        "GET",
        "/metrics",
        &[("Authorization", "Bearer s3cret-token")],
        "",
    );
    assert_eq!(status, 200);
    promtool(&body);
    assert!(
        body.contains("# TYPE fawkes_frames_in_total counter"),
        "{body}"
    );
}

#[test]
fn metrics_are_off_by_default() {
    let dir = support::temp_dir("metrics-off");
    let db = dir.join("fawkes.db");
    let server = support::Serve::start(&dir, &["--database-url", db.to_str().unwrap()]);
    assert!(
        server.metrics_url().starts_with("off"),
        "{:?}",
        server.banner
    );
    assert_eq!(http(&server.addr, "GET", "/metrics", &[], "").0, 404);
}

/// The gauges a soak watches: open descriptors, tasks, resident and heap memory follow the
/// connections up and back down; bytes queued for a client that stopped reading show in
/// `fawkes_queued_bytes` and are gone once it is.
#[test]
fn process_gauges_follow_connections_and_queued_bytes() {
    let (server, alice) = serve_with_alice("metrics-gauges", &["--max-queue-bytes", "33554432"]);
    let m = Scraper::of(&server);
    let before = m.scrape();
    for g in [
        "process_open_fds",
        "process_resident_memory_bytes",
        "process_threads",
        "fawkes_heap_bytes",
        // Each allocator's share, to tell a resident size growing over a flat heap apart.
        r#"fawkes_allocator_bytes{allocator="jemalloc",kind="allocated"}"#,
        r#"fawkes_allocator_bytes{allocator="jemalloc",kind="resident"}"#,
    ] {
        assert!(get(&before, g) > 0.0, "{g} in {before:?}");
    }
    // jemalloc is the C libraries' malloc too: SQLite's page caches, which glibc's arenas held
    // and grew in the 2-hour soak, leave nothing there.
    for kind in ["allocated", "free"] {
        let g = format!(r#"fawkes_allocator_bytes{{allocator="glibc",kind="{kind}"}}"#);
        assert!(get(&before, &g) < 1024.0 * 1024.0, "{g} in {before:?}");
    }
    let jemalloc = |kind: &str| {
        get(
            &before,
            &format!(r#"fawkes_allocator_bytes{{allocator="jemalloc",kind="{kind}"}}"#),
        )
    };
    assert!(
        jemalloc("allocated") <= jemalloc("active") && jemalloc("active") <= jemalloc("resident")
    );
    assert_eq!(get(&before, "fawkes_queued_bytes"), 0.0);

    const N: usize = 40;
    // More than the kernel's buffers hold for the stalled client (up to 4 MiB of send buffer
    // here), less than its queue bound.
    const POSTS: usize = 300;
    const TEXT: usize = 30_000;
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let url = format!(
            "ws://{}/socket/websocket?token={alice}&vsn=2.0.0",
            server.addr
        );
        let join = r#"["1","1","collection:gauges","phx_join",{}]"#;
        let mut open = Vec::new();
        for _ in 0..N {
            let (mut ws, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
            ws.send(Message::Text(join.into())).await.unwrap();
            assert!(recv(&mut ws).await.contains(r#""status":"ok""#));
            open.push(ws);
        }
        // One more that reads nothing, on a socket with a small receive buffer: what the
        // kernel cannot take waits in the server's queue for it.
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        let tcp = socket.connect(server.addr.parse().unwrap()).await.unwrap();
        let (mut stalled, _) = tokio_tungstenite::client_async(url.as_str(), tcp)
            .await
            .unwrap();
        stalled.send(Message::Text(join.into())).await.unwrap();
        assert!(recv(&mut stalled).await.contains(r#""status":"ok""#));
        let during = m.scrape();
        assert!(
            get(&during, "process_open_fds") >= get(&before, "process_open_fds") + N as f64,
            "fds {} -> {}",
            get(&before, "process_open_fds"),
            get(&during, "process_open_fds")
        );
        assert!(
            get(&during, "fawkes_tasks") >= get(&before, "fawkes_tasks") + N as f64,
            "tasks {} -> {}",
            get(&before, "fawkes_tasks"),
            get(&during, "fawkes_tasks")
        );

        for ws in &mut open {
            ws.close(None).await.unwrap();
        }
        drop(open);
        // Writes to the stalled client alone.
        let auth = format!("Bearer {alice}");
        let text = "x".repeat(TEXT);
        let host = server.addr.clone();
        let posts = tokio::task::spawn_blocking(move || {
            for _ in 0..POSTS {
                let (status, body) = http(
                    &host,
                    "POST",
                    "/api/collections/gauges/records",
                    &[
                        ("Authorization", &auth),
                        ("Content-Type", "application/json"),
                    ],
                    &format!(r#"{{"text":"{text}"}}"#),
                );
                assert_eq!(status, 201, "{body}");
            }
        });
        posts.await.unwrap();
        let queued = get(&m.scrape(), "fawkes_queued_bytes");
        assert!(queued > 0.0, "nothing queued for the stalled client");
        assert!(
            queued <= (POSTS * (TEXT + 300)) as f64,
            "{queued} bytes queued"
        );
        drop(stalled);
    });
    // Back down once the server has seen every socket go.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let after = m.scrape();
        let settled = get(&after, "fawkes_queued_bytes") == 0.0
            && get(&after, "process_open_fds") <= get(&before, "process_open_fds") + 2.0
            && get(&after, "fawkes_tasks") <= get(&before, "fawkes_tasks") + 2.0;
        if settled {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "gauges did not come back: before {before:?}, after {after:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A burst of sign-ins and REST writes at once runs on at most `--blocking-threads` threads per
/// worker; none of it is refused or lost. Before the bound, each database call in line (and
/// each writer waiting for SQLite's write lock) held a thread of its own: hundreds of threads
/// after a burst, each with its stack and allocator cache, which kept a soak's RSS growing.
#[test]
fn a_burst_of_database_calls_stays_within_the_blocking_threads() {
    const WORKERS: usize = 2;
    const BLOCKING: usize = 3;
    const CONNECTS: usize = 200;
    const POSTS: usize = 150;
    let (server, alice) = serve_with_alice(
        "metrics-blocking",
        &[
            "--workers",
            &WORKERS.to_string(),
            "--blocking-threads",
            &BLOCKING.to_string(),
        ],
    );
    let m = Scraper::of(&server);
    let idle = get(&m.scrape(), "process_threads");
    assert!(idle > 0.0);

    // Threads sampled every 10 ms until the burst is over.
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let (addr, done) = (m.addr.clone(), done.clone());
        std::thread::spawn(move || {
            let mut most = 0.0f64;
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                let (_, body) = http(&addr, "GET", "/metrics", &[], "");
                most = most.max(get(&parse(&body), "process_threads"));
                std::thread::sleep(Duration::from_millis(10));
            }
            most
        })
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (joined, created) = rt.block_on(async {
        let url = format!(
            "ws://{}/socket/websocket?token={alice}&vsn=2.0.0",
            server.addr
        );
        // Each connect signs alice in (a read); each post is a write.
        let connects = (0..CONNECTS).map(|_| {
            let url = url.clone();
            tokio::spawn(async move {
                let (mut ws, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
                ws.send(Message::Text(
                    r#"["1","1","community:feed","phx_join",{}]"#.into(),
                ))
                .await
                .unwrap();
                recv(&mut ws).await.contains(r#""status":"ok""#)
            })
        });
        let posts = (0..POSTS).map(|i| {
            let (addr, auth) = (server.addr.clone(), format!("Bearer {alice}"));
            tokio::task::spawn_blocking(move || {
                let body = format!(r#"{{"body":"burst {i}"}}"#);
                let (status, _, _) = support::http_raw(
                    &addr,
                    "POST",
                    "/api/community/posts",
                    &[
                        ("Authorization", &auth),
                        ("Content-Type", "application/json"),
                    ],
                    &body,
                );
                status
            })
        });
        let (connects, posts): (Vec<_>, Vec<_>) = (connects.collect(), posts.collect());
        let mut joined = 0;
        for c in connects {
            joined += c.await.unwrap() as usize;
        }
        let mut created = 0;
        for p in posts {
            created += (p.await.unwrap() == 201) as usize;
        }
        (joined, created)
    });
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let most = sampler.join().unwrap();
    assert_eq!((joined, created), (CONNECTS, POSTS));
    assert!(
        most <= idle + (WORKERS * BLOCKING) as f64,
        "threads went from {idle} to {most}, past {WORKERS} workers x {BLOCKING}"
    );
}
