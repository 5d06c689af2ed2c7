//! A raw WebSocket client for the suite: sends exact frames and checks exact frames back.

use crate::matcher::{matches, Vars};
use futures_util::{SinkExt, StreamExt};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub type Result<T = ()> = std::result::Result<T, String>;

/// How long to wait for a frame that must come.
pub const WAIT: Duration = Duration::from_secs(5);

pub struct Client {
    name: &'static str,
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

/// One frame of a message sent in fragments: `Text` or `Binary` starts it, `Continue`
/// frames follow, `Last` ends it.
#[derive(Debug, Clone, Copy)]
pub enum Fragment<'a> {
    Text(&'a [u8]),
    Binary(&'a [u8]),
    Continue(&'a [u8]),
    Last(&'a [u8]),
}

/// What the server sent.
#[derive(Debug)]
pub enum Frame {
    Text(String),
    Binary(Vec<u8>),
    /// A close frame: its code (none for an empty frame) and reason.
    Close(Option<u16>, String),
    Pong(Vec<u8>),
    /// The connection ended without a close frame.
    Ended,
}

impl Client {
    /// Connects to `<socket_url>/websocket?<query>`.
    pub async fn connect(name: &'static str, socket_url: &str, query: &str) -> Result<Client> {
        let url = format!("{socket_url}/websocket?{query}");
        let (ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(&url))
            .await
            .map_err(|_| format!("{name}: connect to {url} timed out"))?
            .map_err(|e| format!("{name}: connect to {url} failed: {e}"))?;
        Ok(Client { name, ws })
    }

    pub async fn send(&mut self, text: &str) -> Result {
        self.ws
            .send(Message::Text(text.to_owned()))
            .await
            .map_err(|e| format!("{}: send failed: {e}", self.name))
    }

    pub async fn send_binary(&mut self, data: Vec<u8>) -> Result {
        self.ws
            .send(Message::Binary(data))
            .await
            .map_err(|e| format!("{}: send failed: {e}", self.name))
    }

    /// Sends frames as they are, a message's fragments among them, then flushes once.
    pub async fn send_fragments<'a>(
        &mut self,
        fragments: impl IntoIterator<Item = Fragment<'a>>,
    ) -> Result {
        use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
        use tokio_tungstenite::tungstenite::protocol::frame::Frame;
        for f in fragments {
            let (op, data, fin) = match f {
                Fragment::Text(d) => (Data::Text, d, false),
                Fragment::Binary(d) => (Data::Binary, d, false),
                Fragment::Continue(d) => (Data::Continue, d, false),
                Fragment::Last(d) => (Data::Continue, d, true),
            };
            let frame = Frame::message(data.to_vec(), OpCode::Data(op), fin);
            self.ws
                .feed(Message::Frame(frame))
                .await
                .map_err(|e| format!("{}: send failed: {e}", self.name))?;
        }
        self.ws
            .flush()
            .await
            .map_err(|e| format!("{}: send failed: {e}", self.name))
    }

    pub async fn ping(&mut self, data: &[u8]) -> Result {
        self.ws
            .send(Message::Ping(data.to_vec()))
            .await
            .map_err(|e| format!("{}: send failed: {e}", self.name))
    }

    /// Closes abruptly: the TCP connection goes away without a close frame.
    pub fn drop_connection(self) {
        drop(self.ws);
    }

    pub async fn recv_within(&mut self, wait: Duration) -> Result<Option<Frame>> {
        let next = match tokio::time::timeout(wait, self.ws.next()).await {
            Err(_) => return Ok(None),
            Ok(n) => n,
        };
        Ok(Some(match next {
            None => Frame::Ended,
            Some(Err(e)) => {
                use tokio_tungstenite::tungstenite::Error;
                match e {
                    Error::ConnectionClosed | Error::AlreadyClosed | Error::Io(_) => Frame::Ended,
                    Error::Protocol(_) => Frame::Ended,
                    e => return Err(format!("{}: receive failed: {e}", self.name)),
                }
            }
            Some(Ok(Message::Text(t))) => Frame::Text(t),
            Some(Ok(Message::Binary(b))) => Frame::Binary(b),
            Some(Ok(Message::Close(c))) => match c {
                Some(c) => Frame::Close(Some(u16::from(c.code)), c.reason.into_owned()),
                None => Frame::Close(None, String::new()),
            },
            Some(Ok(Message::Pong(p))) => Frame::Pong(p),
            Some(Ok(Message::Ping(_))) | Some(Ok(Message::Frame(_))) => {
                return Box::pin(self.recv_within(wait)).await
            }
        }))
    }

    pub async fn recv(&mut self) -> Result<Frame> {
        self.recv_within(WAIT)
            .await?
            .ok_or_else(|| format!("{}: nothing received within {WAIT:?}", self.name))
    }

    /// The next frame must be a text frame matching `expected` (see [`crate::matcher`]).
    pub async fn expect(&mut self, expected: &str, vars: &mut Vars) -> Result {
        match self.recv().await? {
            Frame::Text(t) => matches(expected, &t, vars)
                .map_err(|e| format!("{}: expected {expected}\n   got {t}\n   ({e})", self.name)),
            other => Err(format!("{}: expected {expected}, got {other:?}", self.name)),
        }
    }

    /// The next frame must be a binary frame with exactly these bytes.
    pub async fn expect_binary(&mut self, expected: &[u8]) -> Result {
        match self.recv().await? {
            Frame::Binary(b) if b == expected => Ok(()),
            other => Err(format!(
                "{}: expected binary {}, got {other:?}",
                self.name,
                hex(expected)
            )),
        }
    }

    /// The next frame must be a close frame with this code and an empty reason, as Phoenix
    /// sends them.
    pub async fn expect_close(&mut self, code: u16) -> Result {
        self.expect_close_within(code, WAIT).await
    }

    pub async fn expect_close_within(&mut self, code: u16, wait: Duration) -> Result {
        match self.recv_within(wait).await? {
            Some(Frame::Close(Some(c), reason)) if c == code && reason.is_empty() => Ok(()),
            other => Err(format!(
                "{}: expected close {code}, got {other:?}",
                self.name
            )),
        }
    }

    pub async fn expect_pong(&mut self, data: &[u8]) -> Result {
        match self.recv().await? {
            Frame::Pong(p) if p == data => Ok(()),
            other => Err(format!("{}: expected pong, got {other:?}", self.name)),
        }
    }

    /// Nothing may arrive for `ms` milliseconds.
    pub async fn expect_silence(&mut self, ms: u64) -> Result {
        match self.recv_within(Duration::from_millis(ms)).await? {
            None => Ok(()),
            Some(f) => Err(format!("{}: expected nothing, got {f:?}", self.name)),
        }
    }

    /// Closes with a normal close frame.
    pub async fn close(mut self) {
        let _ = self
            .ws
            .close(Some(tokio_tungstenite::tungstenite::protocol::CloseFrame {
                code: CloseCode::Normal,
                reason: "".into(),
            }))
            .await;
    }
}

pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

pub fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}

/// A raw HTTP/1.1 exchange: returns the status, lower-cased headers and body.
pub async fn http(addr: &str, request: &str) -> Result<(u16, Vec<(String, String)>, Vec<u8>)> {
    let mut s = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect {addr}: {e}"))?;
    s.write_all(request.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut buf = Vec::new();
    let read = async {
        let mut chunk = [0u8; 4096];
        loop {
            let n = s.read(&mut chunk).await.map_err(|e| e.to_string())?;
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
            if let Some(end) = find(&buf, b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
                let len = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse::<usize>().ok());
                // A 101 has no body; otherwise wait for content-length bytes.
                if head.starts_with("http/1.1 101") || buf.len() >= end + 4 + len.unwrap_or(0) {
                    break;
                }
            }
        }
        Ok::<_, String>(())
    };
    // Long enough for a LongPoll window (10 s).
    tokio::time::timeout(Duration::from_secs(15), read)
        .await
        .map_err(|_| "HTTP response timed out".to_string())??;
    let end = find(&buf, b"\r\n\r\n").ok_or("no HTTP header end")?;
    let head = String::from_utf8_lossy(&buf[..end]).to_string();
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("bad status line in {head:?}"))?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_lowercase(), v.trim().to_owned()))
        .collect();
    Ok((status, headers, buf[end + 4..].to_vec()))
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// One LongPoll request; the JSON body parsed (`Value::Null` when empty).
pub async fn longpoll(
    t: &crate::Target,
    method: &str,
    query: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Result<(u16, Vec<(String, String)>, serde_json::Value)> {
    let mut req = format!(
        "{method} {}/longpoll?{query} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nContent-Length: {}\r\n",
        t.path(),
        t.host(),
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    let (status, headers, body) = http(&t.host(), &req).await?;
    let json = if body.is_empty() {
        serde_json::Value::Null
    } else {
        serde_json::from_slice(&body).map_err(|e| {
            format!(
                "longpoll body is not JSON ({e}): {}",
                String::from_utf8_lossy(&body)
            )
        })?
    };
    Ok((status, headers, json))
}
