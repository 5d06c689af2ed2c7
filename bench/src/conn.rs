//! Opening benchmark connections, joining the topic, and the frames every mode reads and writes.
//!
//! Each connection binds its own source address before connecting: connection `i` uses
//! 127.0.0.(2 + i / 20000), so one bench process can open more connections to one server than
//! a single address has ephemeral ports (about 28,000 by default).

use crate::report::{FailureKind, Failures};
use futures_util::{SinkExt, StreamExt};
use serde::de::IgnoredAny;
use serde::Deserialize;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::ops::Range;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::{TcpSocket, TcpStream};
use tokio::task::JoinSet;
use tokio::time::{interval_at, timeout, Interval, MissedTickBehavior};
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::WebSocketStream;

pub type Ws = WebSocketStream<TcpStream>;

/// Connections per source address: well inside the default ephemeral port range.
const CONNS_PER_SOURCE: usize = 20_000;
/// How long a connect (TCP + upgrade) may take, and then how long the join reply may take.
pub const STEP_TIMEOUT: Duration = Duration::from_secs(10);
/// Phoenix clients heartbeat every 30 s; servers close a socket that is silent for 60 s.
pub const HEARTBEAT_EVERY: Duration = Duration::from_secs(30);

/// How the bench's connections speak to the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dialect {
    /// phoenix.js's: `?token=bench<N>&vsn=2.0.0`, joins with `{}`, pushes as V2 text.
    Phoenix,
    /// Supabase's realtime-js: `?apikey=<key>&vsn=2.0.0`, `realtime:*` topics joined with a
    /// broadcast config (`self` false, `ack` true), broadcasts as binary kind 3 in and kind 4
    /// out (see [`user_push`] and [`user_broadcast`]).
    Supabase { apikey: String },
}

/// The server under test.
pub struct Target {
    /// Each server node: its address and `ws://host:port/<mount>/websocket`, without the query.
    /// Connection `i` goes to node `i % nodes.len()`.
    nodes: Vec<(SocketAddr, String)>,
    /// Bind 127.0.0.2+ as sources: only for a loopback server, which is all they can reach.
    rotate_sources: bool,
    pub topic: String,
    /// The topic as a JSON string literal, quotes included, to format frames with.
    pub topic_json: String,
    pub dialect: Dialect,
    /// Connect without `token=bench<i>`: an anonymous socket (`fawkes serve` checks tokens,
    /// and would refuse the fixture's).
    pub anonymous: bool,
}

impl Target {
    /// Resolves the socket URLs (`ws://host[:port]/mount`, as given to phoenix.js) of one or
    /// more nodes of a server.
    pub async fn resolve(urls: &[String], topic: &str) -> Result<Target, String> {
        let mut nodes = Vec::new();
        for url in urls {
            nodes.push(Target::resolve_one(url).await?);
        }
        if nodes.is_empty() {
            return Err("no server URL".into());
        }
        Ok(Target {
            rotate_sources: (nodes.iter())
                .all(|(a, _)| matches!(a.ip(), IpAddr::V4(ip) if ip.is_loopback())),
            nodes,
            topic: topic.to_string(),
            topic_json: serde_json::to_string(topic).expect("a string serializes"),
            dialect: Dialect::Phoenix,
            anonymous: false,
        })
    }

    /// Speaks `dialect` instead of phoenix.js's.
    pub fn with_dialect(mut self, dialect: Dialect) -> Target {
        self.dialect = dialect;
        self
    }

    async fn resolve_one(url: &str) -> Result<(SocketAddr, String), String> {
        let rest = url
            .strip_prefix("ws://")
            .ok_or_else(|| format!("{url}: only ws:// URLs are supported"))?;
        let (authority, mount) = rest.split_once('/').unwrap_or((rest, ""));
        // No port (or an IPv6 literal without one): the ws:// default.
        let host_port = if authority.ends_with(']') || !authority.contains(':') {
            format!("{authority}:80")
        } else {
            authority.to_string()
        };
        let addr = tokio::net::lookup_host(&host_port)
            .await
            .map_err(|e| format!("resolve {host_port}: {e}"))?
            .next()
            .ok_or_else(|| format!("{host_port} has no address"))?;
        let mount = mount.trim_end_matches('/');
        let endpoint = match mount {
            "" => format!("ws://{authority}/websocket"),
            m => format!("ws://{authority}/{m}/websocket"),
        };
        Ok((addr, endpoint))
    }

    /// Server nodes the connections are spread over.
    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }

    /// Where connections come from, for the report.
    pub fn sources(&self) -> String {
        if self.rotate_sources {
            format!("127.0.0.2 and up, {CONNS_PER_SOURCE} connections per address")
        } else {
            "chosen by the kernel (the server is not on IPv4 loopback)".into()
        }
    }

    fn source(&self, i: usize) -> Result<Option<IpAddr>, String> {
        if !self.rotate_sources {
            return Ok(None);
        }
        match u8::try_from(2 + i / CONNS_PER_SOURCE) {
            Ok(last) if last < 255 => Ok(Some(IpAddr::V4(Ipv4Addr::new(127, 0, 0, last)))),
            _ => Err("too many connections for sources 127.0.0.2-254".into()),
        }
    }

    /// Opens connection `i`: TCP from its source address, then the WebSocket upgrade with
    /// `token=bench<i>` (unless anonymous) and the V2 serializer.
    pub async fn connect(&self, i: usize) -> Result<Ws, String> {
        self.connect_query(i, &self.query(i, "2.0.0")).await
    }

    /// The query string connection `i` connects with, serializer `vsn` (`1.0.0` or `2.0.0`).
    pub fn query(&self, i: usize, vsn: &str) -> String {
        match &self.dialect {
            Dialect::Phoenix if self.anonymous => format!("vsn={vsn}"),
            Dialect::Phoenix => format!("token=bench{i}&vsn={vsn}"),
            Dialect::Supabase { apikey } => format!("apikey={apikey}&vsn={vsn}"),
        }
    }

    /// [`Target::connect`] with a query string of the caller's (`token=…&vsn=…`).
    pub async fn connect_query(&self, i: usize, query: &str) -> Result<Ws, String> {
        self.connect_to(i % self.nodes.len(), i, query).await
    }

    /// The LongPoll URL connection `i` opens its session at, with `query`.
    pub fn longpoll_url(&self, i: usize, query: &str) -> String {
        let endpoint = &self.nodes[i % self.nodes.len()].1;
        let mount = endpoint.strip_suffix("/websocket").unwrap_or(endpoint);
        let mount = mount.strip_prefix("ws://").unwrap_or(mount);
        format!("http://{mount}/longpoll?{query}")
    }

    /// Node `node`'s address (its REST API is on the same listener).
    pub fn node_addr(&self, node: usize) -> SocketAddr {
        self.nodes[node % self.nodes.len()].0
    }

    async fn connect_to(&self, node: usize, i: usize, query: &str) -> Result<Ws, String> {
        let (addr, endpoint) = &self.nodes[node];
        let socket = match addr {
            SocketAddr::V4(_) => TcpSocket::new_v4(),
            SocketAddr::V6(_) => TcpSocket::new_v6(),
        }
        .map_err(|e| format!("socket: {e}"))?;
        if let Some(ip) = self.source(i)? {
            defer_port_choice(&socket);
            socket
                .bind(SocketAddr::new(ip, 0))
                .map_err(|e| format!("bind {ip}: {e}"))?;
        }
        let stream = socket
            .connect(*addr)
            .await
            .map_err(|e| format!("connect {addr}: {e}"))?;
        // Frames are small and latency is measured: Nagle must not hold them back.
        stream
            .set_nodelay(true)
            .map_err(|e| format!("nodelay: {e}"))?;
        let url = format!("{endpoint}?{query}");
        let (ws, _) = tokio_tungstenite::client_async(url, stream)
            .await
            .map_err(|e| format!("upgrade: {e}"))?;
        Ok(ws)
    }

    /// Connects and joins, each step with its own timeout, saying which step failed.
    pub async fn open(&self, i: usize) -> Result<Ws, (FailureKind, String)> {
        self.open_on(i % self.nodes.len(), i).await
    }

    /// [`Target::open`] on a given node (a publisher on the first, say).
    pub async fn open_on(&self, node: usize, i: usize) -> Result<Ws, (FailureKind, String)> {
        let mut ws = match timeout(
            STEP_TIMEOUT,
            self.connect_to(node, i, &self.query(i, "2.0.0")),
        )
        .await
        {
            Ok(Ok(ws)) => ws,
            Ok(Err(e)) => return Err((FailureKind::Connect, e)),
            Err(_) => return Err((FailureKind::Connect, "connect timed out".into())),
        };
        let payload = match self.dialect {
            Dialect::Phoenix => "{}",
            Dialect::Supabase { .. } => r#"{"config":{"broadcast":{"self":false,"ack":true}}}"#,
        };
        match timeout(STEP_TIMEOUT, join(&mut ws, &self.topic_json, payload)).await {
            Ok(Ok(())) => Ok(ws),
            Ok(Err(e)) => Err((FailureKind::Join, e)),
            Err(_) => Err((FailureKind::Join, "no join reply in time".into())),
        }
    }
}

/// Lets the kernel pick the source port at connect time, per destination, instead of at bind
/// time from the ports free on the address: ports that an earlier run left in TIME_WAIT can then
/// be reused, as for an unbound connect. Best effort; without it, bind still works.
fn defer_port_choice(socket: &TcpSocket) {
    let on: libc::c_int = 1;
    // SAFETY: a valid descriptor, and an option value of the size we pass.
    unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

/// Joins the topic with join_ref and ref "1", and waits for the ok reply.
async fn join(ws: &mut Ws, topic_json: &str, payload: &str) -> Result<(), String> {
    let frame = format!(r#"["1","1",{topic_json},"phx_join",{payload}]"#);
    ws.send(Message::Text(frame))
        .await
        .map_err(|e| format!("send join: {e}"))?;
    loop {
        let text = next_text(ws).await?;
        let Some(f) = parse::<Status>(&text) else {
            continue;
        };
        if f.event == "phx_reply" && f.ref_ == Some("1") {
            return match f.payload.status {
                Some("ok") => Ok(()),
                _ => Err(format!("join refused: {}", clip(&text))),
            };
        }
    }
}

/// What the bench reads from a server frame, `[join_ref, ref, topic, event, payload]`; the
/// payload type picks out only the fields a mode needs, so reading stays cheap.
#[derive(Deserialize)]
pub struct Frame<'a, P> {
    _join_ref: IgnoredAny,
    #[serde(borrow)]
    pub ref_: Option<&'a str>,
    _topic: IgnoredAny,
    pub event: &'a str,
    pub payload: P,
}

/// The status of a `phx_reply` payload; `None` for any other payload.
#[derive(Deserialize)]
pub struct Status<'a> {
    #[serde(borrow, default)]
    pub status: Option<&'a str>,
}

/// Parses a server frame; `None` if it is not a V2 message with this payload shape.
pub fn parse<'a, P: Deserialize<'a>>(text: &'a str) -> Option<Frame<'a, P>> {
    serde_json::from_str(text).ok()
}

/// Supabase's user broadcast push (V2 binary kind 3, JSON encoding), as realtime-js sends
/// `channel.send({type: "broadcast", event, payload})`: join_ref "1".
pub fn user_push(topic: &str, ref_: &str, event: &str, json: &str) -> Message {
    let mut frame = Vec::with_capacity(7 + 1 + ref_.len() + topic.len() + event.len() + json.len());
    frame.extend_from_slice(&[
        3,
        1,
        ref_.len() as u8,
        topic.len() as u8,
        event.len() as u8,
        0,
        1,
    ]);
    for field in ["1", ref_, topic, event, json] {
        frame.extend_from_slice(field.as_bytes());
    }
    Message::Binary(frame)
}

/// The event and payload of a Supabase user broadcast (V2 binary kind 4); `None` for any
/// other frame.
pub fn user_broadcast(frame: &[u8]) -> Option<(&str, &[u8])> {
    let (&[4, topic, event, meta, _encoding], rest) = frame.split_first_chunk::<5>()? else {
        return None;
    };
    let (topic, event, meta) = (topic as usize, event as usize, meta as usize);
    let name = rest.get(topic..topic + event)?;
    let payload = rest.get(topic + event + meta..)?;
    Some((std::str::from_utf8(name).ok()?, payload))
}

/// A frame read from a connection, as the modes see it.
pub enum Incoming {
    Text(String),
    Binary(Vec<u8>),
    /// Ping, pong: nothing to do (tungstenite answers pings itself).
    Other,
    /// The connection is over; why.
    Closed(String),
}

impl Incoming {
    pub fn from(next: Option<Result<Message, tungstenite::Error>>) -> Incoming {
        match next {
            Some(Ok(Message::Text(t))) => Incoming::Text(t),
            Some(Ok(Message::Binary(b))) => Incoming::Binary(b),
            Some(Ok(Message::Close(Some(c)))) => {
                Incoming::Closed(format!("closed by server: {} {}", c.code, c.reason))
            }
            Some(Ok(Message::Close(None))) => Incoming::Closed("closed by server".into()),
            Some(Ok(_)) => Incoming::Other,
            Some(Err(e)) => Incoming::Closed(format!("read: {e}")),
            None => Incoming::Closed("connection ended".into()),
        }
    }
}

/// The next text frame, or why there is none.
pub async fn next_text(ws: &mut Ws) -> Result<String, String> {
    loop {
        match Incoming::from(ws.next().await) {
            Incoming::Text(t) => return Ok(t),
            Incoming::Binary(_) | Incoming::Other => continue,
            Incoming::Closed(why) => return Err(why),
        }
    }
}

/// A heartbeat. Its ref starts with "hb" so it never matches the numeric ref of a push.
pub fn heartbeat(n: u64) -> Message {
    Message::Text(format!(r#"[null,"hb{n}","phoenix","heartbeat",{{}}]"#))
}

/// Heartbeat ticks for connection `i`: every 30 s, the first ones spread over those 30 s so
/// that thousands of connections do not all send in the same instant.
pub fn heartbeat_timer(i: usize) -> Interval {
    let spread = HEARTBEAT_EVERY.mul_f64((i % 1000) as f64 / 1000.0);
    let first = tokio::time::Instant::now() + HEARTBEAT_EVERY - spread;
    let mut timer = interval_at(first, HEARTBEAT_EVERY);
    timer.set_missed_tick_behavior(MissedTickBehavior::Delay);
    timer
}

/// How opening a set of connections went.
pub struct Opened {
    pub joined: usize,
    pub elapsed: Duration,
    /// Why opening stopped early, if it did.
    pub stalled: Option<String>,
}

impl Opened {
    pub fn joins_per_sec(&self) -> f64 {
        self.joined as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Opens and joins connections `range`, `batch` at a time (a batch concurrently), and hands
/// each joined connection to `on_joined` at once, so it starts its work (and heartbeats) while
/// the others are still opening. Stops early when joins stall: a whole batch fails, or
/// `budget` runs out.
pub async fn open_all(
    target: &Arc<Target>,
    range: Range<usize>,
    batch: usize,
    budget: Duration,
    failures: &Failures,
    mut on_joined: impl FnMut(usize, Ws),
) -> Opened {
    let start = Instant::now();
    let total = range.len();
    let mut joined = 0;
    let mut last_progress = start;
    let mut next = range.start;
    while next < range.end {
        if start.elapsed() > budget {
            let stalled = format!(
                "joins stalled: {joined} of {total} joined in the {} s allowed (--join-secs)",
                budget.as_secs()
            );
            return Opened {
                joined,
                elapsed: start.elapsed(),
                stalled: Some(stalled),
            };
        }
        let batch_range = next..(next + batch.max(1)).min(range.end);
        next = batch_range.end;
        let mut set = JoinSet::new();
        for i in batch_range.clone() {
            let target = target.clone();
            set.spawn(async move { (i, target.open(i).await) });
        }
        let mut batch_joined = 0;
        while let Some(done) = set.join_next().await {
            match done.expect("an open task panicked") {
                (i, Ok(ws)) => {
                    batch_joined += 1;
                    on_joined(i, ws);
                }
                (i, Err((kind, why))) => failures.record(kind, i, why),
            }
        }
        joined += batch_joined;
        if batch_joined == 0 {
            let stalled = format!(
                "joins stalled: no connection of {}..{} joined",
                batch_range.start, batch_range.end
            );
            return Opened {
                joined,
                elapsed: start.elapsed(),
                stalled: Some(stalled),
            };
        }
        if last_progress.elapsed() >= Duration::from_secs(2) {
            last_progress = Instant::now();
            let rate = joined as f64 / start.elapsed().as_secs_f64();
            eprintln!("  joined {joined}/{total} ({rate:.0}/s)");
        }
    }
    Opened {
        joined,
        elapsed: start.elapsed(),
        stalled: None,
    }
}

/// The first 200 characters of a frame, for error messages.
fn clip(text: &str) -> &str {
    match text.char_indices().nth(200) {
        Some((at, _)) => &text[..at],
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn urls(u: &[&str]) -> Vec<String> {
        u.iter().map(|s| s.to_string()).collect()
    }

    #[tokio::test]
    async fn socket_urls_become_websocket_endpoints() {
        let t = Target::resolve(
            &urls(&["ws://127.0.0.1:4000/socket/", "ws://127.0.0.1:4001/socket"]),
            "community:feed",
        )
        .await
        .unwrap();
        assert_eq!(t.nodes[0].1, "ws://127.0.0.1:4000/socket/websocket");
        assert_eq!(t.nodes[1].1, "ws://127.0.0.1:4001/socket/websocket");
        assert_eq!(t.node_count(), 2);
        assert_eq!(t.topic_json, r#""community:feed""#);
        for bad in [&["http://127.0.0.1:4000/socket"][..], &[]] {
            assert!(Target::resolve(&urls(bad), "t").await.is_err());
        }
    }

    #[tokio::test]
    async fn sources_rotate_every_20000_connections() {
        let t = Target::resolve(&urls(&["ws://127.0.0.1:4000/socket"]), "t")
            .await
            .unwrap();
        let ip = |i| t.source(i).unwrap().unwrap().to_string();
        assert_eq!(ip(0), "127.0.0.2");
        assert_eq!(ip(19_999), "127.0.0.2");
        assert_eq!(ip(20_000), "127.0.0.3");
        assert!(t.source(253 * 20_000).is_err());
    }

    #[test]
    fn reads_only_what_it_needs_from_frames() {
        let reply =
            r#"["1","7","community:feed","phx_reply",{"response":{"x":[1]},"status":"ok"}]"#;
        let f = parse::<Status>(reply).unwrap();
        assert_eq!(
            (f.ref_, f.event, f.payload.status),
            (Some("7"), "phx_reply", Some("ok"))
        );
        let broadcast = r#"[null,null,"community:feed","new_post",{"seq":3,"sent_us":9}]"#;
        let f = parse::<Status>(broadcast).unwrap();
        assert_eq!(
            (f.ref_, f.event, f.payload.status),
            (None, "new_post", None)
        );
        assert!(parse::<Status>(r#"{"not":"v2"}"#).is_none());
    }
}
