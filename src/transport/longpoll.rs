//! The LongPoll transport: `<mount>/longpoll`, for clients whose network blocks WebSockets.
//!
//! A session is a socket living on the server between requests: `GET` without a valid session
//! token runs connect and answers `410` with a new token; `GET` with one returns the queued
//! messages (or `204` after the poll window); `POST` delivers client messages, in order, and
//! answers once they are handled. The HTTP status is always 200; the protocol status is in the
//! body, as Phoenix does it. Sessions live on the node that made them (a load balancer must keep
//! a client on one node), and end after 1.5 poll windows without a `GET`.

use super::{connect, Mount};
use crate::connection::{close_code, Connection};
use crate::endpoint::Endpoint;
use crate::metrics::{Transport, ENGINE};
use crate::protocol::{binary, frame, FrameKind};
use crate::socket::{End, SocketState};
use actix_web::http::header::{self, HeaderValue};
use actix_web::{web, HttpRequest, HttpResponse};
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use bytes::Bytes;
use dashmap::DashMap;
use hmac::{Hmac, Mac};
use rand::RngCore;
use serde_json::{json, Value};
use sha2::Sha256;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::{mpsc, oneshot};

/// Phoenix's limit on lines per POST; more are ignored, as Phoenix does.
const MAX_BATCH: usize = 100;
/// Session tokens older than this are refused (Phoenix: two weeks).
const TOKEN_MAX_AGE: u64 = 14 * 24 * 3600;
const TOKEN_VERSION: u8 = 1;

type SessionId = [u8; 16];

/// The LongPoll sessions of one mount, and the key that signs their tokens.
pub struct Sessions {
    map: DashMap<SessionId, Arc<Session>>,
    key: Vec<u8>,
    /// Sessions opened per client IP in the current second.
    opens: DashMap<IpAddr, (u64, u32)>,
    /// The second `opens` was last swept in: at most one sweep a second.
    swept: std::sync::atomic::AtomicU64,
}

/// Entries of `opens` kept before stale ones (from past seconds) are swept.
const OPENS_SWEEP_AT: usize = 4096;

struct Session {
    conn: Arc<Connection>,
    inbound: mpsc::Sender<Batch>,
    last_poll: Mutex<Instant>,
}

/// Frames from one POST, and where to say they were handled.
struct Batch {
    frames: Vec<(FrameKind, Bytes)>,
    done: oneshot::Sender<()>,
}

impl Sessions {
    /// `secret`: the configured signing key; a random one per process when `None`.
    pub fn new(secret: Option<&str>) -> Sessions {
        let key = match secret {
            Some(s) => s.as_bytes().to_vec(),
            None => {
                let mut k = vec![0u8; 32];
                rand::thread_rng().fill_bytes(&mut k);
                k
            }
        };
        Sessions {
            map: DashMap::new(),
            key,
            opens: DashMap::new(),
            swept: Default::default(),
        }
    }

    /// Takes one of `ip`'s session opens for this second; false when it has had `max`.
    fn take_open(&self, ip: IpAddr, max: u32) -> bool {
        let now = unix_now();
        let ordering = std::sync::atomic::Ordering::Relaxed;
        if self.opens.len() >= OPENS_SWEEP_AT && self.swept.swap(now, ordering) != now {
            self.opens.retain(|_, (second, _)| *second == now);
        }
        let mut e = self.opens.entry(ip).or_insert((now, 0));
        if e.0 != now {
            *e = (now, 0);
        }
        if e.1 >= max {
            return false;
        }
        e.1 += 1;
        true
    }

    fn mac(&self, data: &[u8]) -> Hmac<Sha256> {
        let mut m = Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC takes any key");
        m.update(data);
        m
    }

    /// `base64url(version | id | issued-at) . base64url(HMAC-SHA256)`.
    fn sign(&self, id: &SessionId) -> String {
        let mut data = Vec::with_capacity(25);
        data.push(TOKEN_VERSION);
        data.extend_from_slice(id);
        data.extend_from_slice(&unix_now().to_be_bytes());
        let tag = self.mac(&data).finalize().into_bytes();
        format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(&data),
            URL_SAFE_NO_PAD.encode(tag)
        )
    }

    /// The session id of a genuine, unexpired token.
    fn verify(&self, token: &str) -> Option<SessionId> {
        let (data, tag) = token.split_once('.')?;
        let data = URL_SAFE_NO_PAD.decode(data).ok()?;
        let tag = URL_SAFE_NO_PAD.decode(tag).ok()?;
        // verify_slice compares in constant time.
        self.mac(&data).verify_slice(&tag).ok()?;
        if data.len() != 25 || data[0] != TOKEN_VERSION {
            return None;
        }
        let issued = u64::from_be_bytes(data[17..25].try_into().ok()?);
        if unix_now().saturating_sub(issued) > TOKEN_MAX_AGE {
            return None;
        }
        data[1..17].try_into().ok()
    }

    /// The live session a request's token names, and the token.
    fn find(&self, req: &HttpRequest) -> Option<(String, Arc<Session>)> {
        let token = session_token(req)?;
        let id = self.verify(&token)?;
        let s = self.map.get(&id)?.clone();
        Some((token, s))
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The session token: the `X-Phoenix-Longpoll-Token` header (newer phoenix.js), else the last
/// `token` query parameter (phoenix.js 1.7/1.8 append it after the app's own `token`).
fn session_token(req: &HttpRequest) -> Option<String> {
    if let Some(h) = req.headers().get("x-phoenix-longpoll-token") {
        return h.to_str().ok().map(str::to_owned);
    }
    crate::endpoint::Params::parse(req.query_string())
        .get("token")
        .map(str::to_owned)
}

fn respond(body: Value) -> HttpResponse {
    HttpResponse::Ok()
        .insert_header((header::ACCESS_CONTROL_ALLOW_ORIGIN, "*"))
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .content_type("application/json; charset=utf-8")
        .body(body.to_string())
}

/// Every request is origin-checked, not only the one that opens a session.
fn origin_refused(req: &HttpRequest, mount: &Mount) -> Option<HttpResponse> {
    let e = super::check_origin(mount, req.head()).err()?;
    e.log("longpoll", req.peer_addr());
    Some(respond(json!({"status": 403})))
}

/// `GET <mount>/longpoll`.
pub async fn get(req: HttpRequest, mount: web::Data<Mount>) -> HttpResponse {
    if let Some(refused) = origin_refused(&req, &mount) {
        return refused;
    }
    let sessions = &mount.sessions;
    let Some((token, session)) = sessions.find(&req) else {
        return open(&req, &mount).await;
    };
    let window = mount.endpoint.config().longpoll_window;
    *session.last_poll.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
    let ready = tokio::time::timeout(window, session.conn.ready())
        .await
        .is_ok();
    *session.last_poll.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
    if !ready {
        return respond(json!({"messages": [], "status": 204, "token": token}));
    }
    let messages: Vec<String> = session.conn.drain().iter().filter_map(as_message).collect();
    if messages.is_empty() {
        // Nothing but the end of the session: a new one, as for any dead session.
        return open(&req, &mount).await;
    }
    respond(json!({"messages": messages, "status": 200, "token": token}))
}

/// A queued WebSocket frame as a LongPoll message: text as it is, binary rewritten as JSON.
fn as_message(f: &Bytes) -> Option<String> {
    match frame::parse(f)? {
        (frame::Opcode::Text, at) => String::from_utf8(f[at..].to_vec()).ok(),
        (frame::Opcode::Binary, at) => binary::to_json_text(&f[at..]),
        _ => None,
    }
}

/// Starts a session: `{"status":410,"token":…}`, or `{"status":403}` when connect refuses
/// (`{"status":500}` when it failed to decide).
async fn open(req: &HttpRequest, mount: &Mount) -> HttpResponse {
    let limits = &mount.endpoint.config().limits;
    let too_many = |status: actix_web::http::StatusCode, why: &str| {
        log::warn!("longpoll session from {:?} refused: {why}", req.peer_addr());
        let mut res = respond(json!({"status": 500, "reason": why}));
        *res.status_mut() = status;
        res
    };
    let max_sessions = limits.max_longpoll_sessions;
    if max_sessions > 0 && mount.sessions.map.len() >= max_sessions {
        return too_many(
            actix_web::http::StatusCode::SERVICE_UNAVAILABLE,
            &format!(
                "{} LongPoll sessions open, the limit",
                limits.max_longpoll_sessions
            ),
        );
    }
    let per_ip = limits.max_longpoll_opens_per_ip;
    if let Some(peer) = req.peer_addr().filter(|_| per_ip > 0) {
        if !mount.sessions.take_open(peer.ip(), per_ip) {
            return too_many(
                actix_web::http::StatusCode::TOO_MANY_REQUESTS,
                &format!(
                    "over {} new LongPoll sessions per second from this address",
                    limits.max_longpoll_opens_per_ip
                ),
            );
        }
    }
    let auth = req
        .headers()
        .get("x-phoenix-authtoken")
        .and_then(|h| h.to_str().ok())
        .map(str::to_owned);
    let (serializer, connected) = match connect(mount, req.head(), auth).await {
        Ok(ok) => ok,
        Err(e) => {
            e.log("longpoll", req.peer_addr());
            return respond(json!({"status": e.status()}));
        }
    };
    let endpoint = mount.endpoint.clone();
    let conn = endpoint.register(serializer);
    ENGINE.opened(
        Transport::LongPoll,
        serializer == crate::protocol::Serializer::V2,
    );
    ENGINE
        .longpoll_sessions
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut id = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut id);
    let (tx, rx) = mpsc::channel(8);
    let session = Arc::new(Session {
        conn: conn.clone(),
        inbound: tx,
        last_poll: Mutex::new(Instant::now()),
    });
    mount.sessions.map.insert(id, session.clone());
    conn.describe(Transport::LongPoll, connected.id.clone());
    let state = SocketState::new(endpoint.clone(), mount.socket.clone(), conn, connected);
    crate::task::spawn(run(
        state,
        rx,
        session,
        endpoint,
        mount.sessions.clone(),
        id,
    ));
    respond(json!({"messages": [], "status": 410, "token": mount.sessions.sign(&id)}))
}

/// `POST <mount>/longpoll`: one message, or an NDJSON batch.
pub async fn post(req: HttpRequest, body: Bytes, mount: web::Data<Mount>) -> HttpResponse {
    if let Some(refused) = origin_refused(&req, &mount) {
        return refused;
    }
    let Some((_, session)) = mount.sessions.find(&req) else {
        return respond(json!({"status": 410}));
    };
    let ndjson = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/x-ndjson"));
    let frames = parse_body(ndjson, body);
    let (done, handled) = oneshot::channel();
    if session.inbound.send(Batch { frames, done }).await.is_err() {
        return respond(json!({"status": 410}));
    }
    let window = mount.endpoint.config().longpoll_window;
    match tokio::time::timeout(window, handled).await {
        Ok(Ok(())) => respond(json!({"status": 200})),
        Ok(Err(_)) => respond(json!({"status": 410})),
        Err(_) => respond(json!({"status": 408})),
    }
}

/// A POST body as the frames it carries: one text message, or (NDJSON) up to [`MAX_BATCH`]
/// lines, each a JSON text message or a base64 binary one. Pure, for the fuzzer too.
pub fn parse_body(ndjson: bool, body: Bytes) -> Vec<(FrameKind, Bytes)> {
    if !ndjson {
        return vec![(FrameKind::Text, body)];
    }
    let mut frames = Vec::new();
    for line in body
        .split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
        .filter(|l| !l.is_empty())
        .take(MAX_BATCH)
    {
        if line.first() == Some(&b'[') {
            frames.push((FrameKind::Text, body.slice_ref(line)));
        } else {
            match STANDARD.decode(line) {
                Ok(b) => frames.push((FrameKind::Binary, Bytes::from(b))),
                // Undecodable: let the socket see it and close, as for any bad frame.
                Err(_) => frames.push((FrameKind::Binary, Bytes::new())),
            }
        }
    }
    frames
}

/// `OPTIONS <mount>/longpoll`: the CORS preflight.
pub async fn options(req: HttpRequest) -> HttpResponse {
    let allow = req
        .headers()
        .get(header::ACCESS_CONTROL_REQUEST_HEADERS)
        .cloned()
        .unwrap_or(HeaderValue::from_static(""));
    HttpResponse::Ok()
        .insert_header((header::ACCESS_CONTROL_ALLOW_ORIGIN, "*"))
        .insert_header((header::ACCESS_CONTROL_ALLOW_HEADERS, allow))
        .insert_header((header::ACCESS_CONTROL_ALLOW_METHODS, "get, post, options"))
        .insert_header((header::ACCESS_CONTROL_MAX_AGE, "3600"))
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .finish()
}

/// Any other method.
pub async fn other() -> HttpResponse {
    HttpResponse::BadRequest()
        .insert_header((header::ACCESS_CONTROL_ALLOW_ORIGIN, "*"))
        .finish()
}

/// The session's socket: POSTed frames and mail, until it is idle, disconnected or broken.
async fn run(
    mut state: SocketState,
    mut inbound: mpsc::Receiver<Batch>,
    session: Arc<Session>,
    endpoint: Endpoint,
    sessions: Arc<Sessions>,
    id: SessionId,
) {
    let conn = session.conn.clone();
    let window = endpoint.config().longpoll_window;
    let idle = window.mul_f32(1.5);
    // POSTed messages count against the same rate as WebSocket frames.
    let max_rate = endpoint.config().limits.max_messages_per_second;
    let mut rate = super::RateLimit::new(max_rate);
    let mut check = tokio::time::interval(window / 4);
    let end = 'session: loop {
        tokio::select! {
            biased;
            mail = conn.next_mail() => match mail {
                Some(m) => if let Some(End::Close(code, why)) = state.handle_mail(m).await {
                    break (code, why);
                },
                None => break (close_code::OVERLOADED, String::new()),
            },
            batch = inbound.recv() => {
                let Some(batch) = batch else { break (1000, String::new()) };
                for (kind, data) in batch.frames {
                    ENGINE.frame_in(data.len());
                    match conn.serializer.decode(kind, &data) {
                        Ok(msg) => state.handle(msg).await,
                        Err(e) => {
                            log::warn!("longpoll session {}: {e}; ending it", conn.id);
                            break 'session (close_code::BAD_FRAME, String::new());
                        }
                    }
                    if let Some(wait) = rate.take() {
                        log::debug!("longpoll session {}: over {max_rate} msg/s, slowing down", conn.id);
                        tokio::time::sleep(wait).await;
                    }
                }
                let _ = batch.done.send(());
            }
            _ = check.tick() => {
                let last = *session.last_poll.lock().unwrap_or_else(|e| e.into_inner());
                if last.elapsed() > idle {
                    log::info!("longpoll session {}: no poll for {idle:?}; ending it", conn.id);
                    break (close_code::IDLE, String::new());
                }
            }
        }
    };
    sessions.map.remove(&id);
    ENGINE
        .longpoll_sessions
        .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    state.terminate().await;
    conn.close(end.0, &end.1);
    endpoint.unregister(conn.id);
    ENGINE.closed(
        Transport::LongPoll,
        conn.serializer == crate::protocol::Serializer::V2,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_signed_and_checked() {
        let s = Sessions::new(Some("k"));
        let id = [7u8; 16];
        let t = s.sign(&id);
        assert_eq!(s.verify(&t), Some(id));
        // Another key, a flipped character, garbage.
        assert_eq!(Sessions::new(Some("other")).verify(&t), None);
        let mut bad = t.clone().into_bytes();
        bad[3] = if bad[3] == b'A' { b'B' } else { b'A' };
        assert_eq!(s.verify(std::str::from_utf8(&bad).unwrap()), None);
        assert_eq!(s.verify("garbage"), None);
        assert_eq!(s.verify(""), None);
        // Expired.
        let mut data = vec![TOKEN_VERSION];
        data.extend_from_slice(&id);
        data.extend_from_slice(&(unix_now() - TOKEN_MAX_AGE - 10).to_be_bytes());
        let tag = s.mac(&data).finalize().into_bytes();
        let old = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(&data),
            URL_SAFE_NO_PAD.encode(tag)
        );
        assert_eq!(s.verify(&old), None);
    }
}
