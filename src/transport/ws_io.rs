//! A WebSocket connection's reading, writing and event loop, on a socket it owns.
//!
//! After the upgrade the connection's task holds the socket itself, not actix-http's HTTP/1
//! dispatcher, whose 8 KiB read and write buffers would stay allocated for the connection's
//! whole life. Here an idle connection holds no buffer at all:
//! - reads land in a buffer on the stack; only the unparsed rest of a frame in progress is
//!   copied to the heap, grown for that frame and dropped once it is parsed (see
//!   [`super::ws_read`], which also puts fragmented messages together);
//! - writes go straight from the queued frames' shared `Bytes`, many in one vectored write;
//!   what the socket does not take goes back to the connection's queue (a partly written frame
//!   keeps its rest here, so a close frame can never land in the middle of it).

use crate::connection::{close_code, Connection, Mail};
use crate::endpoint::Endpoint;
use crate::metrics::{Transport, ENGINE};
use crate::protocol::{frame, FrameKind};
use crate::socket::{End, SocketState};
use crate::transport::ws_read::{Incoming, ReadError, Reader};
use actix_codec::{AsyncRead, AsyncWrite};
use actix_http::ws::{CloseReason, ProtocolError};
use bytes::{Buf, Bytes};
use smallvec::SmallVec;
use std::future::{poll_fn, Future};
use std::io::{self, IoSlice};
use std::pin::{pin, Pin};
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

/// Most frames in one vectored write (Linux takes 1024).
const MAX_IOV: usize = 64;
/// How long the last frames and the close frame may take to go out after the socket's task
/// has ended: a client that reads nothing cannot hold the connection open.
const LINGER: Duration = Duration::from_secs(10);
/// Mails handled in a row before the client's frames (and the idle timer) get a turn first.
/// Mail a channel sent itself while handling a frame still comes before the next frame (as in
/// Phoenix) up to this many; beyond, a steady stream of mail cannot starve reads.
const MAIL_BURST: u32 = 64;

/// Where a WebSocket connection's messages come from and its frames go to.
pub(crate) trait WsIo {
    /// Whether [`WsIo::poll_send`] writes the connection's frames (else its HTTP response
    /// body does).
    const WRITES: bool;
    /// The next message; `None` once the peer has gone.
    fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Incoming, ReadError>>>;
    /// Writes what is queued; `Ready` once the output is over (closed, or the peer gone).
    fn poll_send(&mut self, cx: &mut Context<'_>, conn: &Connection) -> Poll<()>;
}

/// A WebSocket on a socket of its own (plain TCP or TLS).
pub(crate) struct Owned<T> {
    io: T,
    reader: Reader,
    /// The rest of a frame the socket took only part of.
    partial: Bytes,
    out: Output,
}

#[derive(PartialEq)]
enum Output {
    Open,
    ShuttingDown,
    Over,
}

impl<T: AsyncRead + AsyncWrite + Unpin> Owned<T> {
    pub(crate) fn new(io: T, reader: Reader) -> Owned<T> {
        Owned {
            io,
            reader,
            partial: Bytes::new(),
            out: Output::Open,
        }
    }

    fn fail(&mut self, conn: &Connection, e: Option<io::Error>) -> Poll<()> {
        if let Some(e) = e {
            log::debug!("connection {}: write: {e}", conn.id);
        }
        conn.abandon();
        self.out = Output::Over;
        Poll::Ready(())
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> WsIo for Owned<T> {
    const WRITES: bool = true;

    fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Incoming, ReadError>>> {
        loop {
            if let Some(msg) = self.reader.parse() {
                return Poll::Ready(Some(msg));
            }
            if self.reader.eof {
                return Poll::Ready(None);
            }
            match ready!(self.reader.poll_fill(&mut self.io, cx)) {
                Ok(0) => self.reader.eof = true,
                Ok(_) => {}
                Err(e) => return Poll::Ready(Some(Err(ReadError::Protocol(ProtocolError::Io(e))))),
            }
        }
    }

    fn poll_send(&mut self, cx: &mut Context<'_>, conn: &Connection) -> Poll<()> {
        loop {
            match self.out {
                Output::Over => return Poll::Ready(()),
                Output::ShuttingDown => {
                    // Flushes what TLS holds, then closes our side (close_notify, FIN).
                    let _ = ready!(Pin::new(&mut self.io).poll_shutdown(cx));
                    self.out = Output::Over;
                    return Poll::Ready(());
                }
                Output::Open => {}
            }
            if !self.partial.is_empty() {
                match ready!(Pin::new(&mut self.io).poll_write(cx, &self.partial)) {
                    Ok(0) => return self.fail(conn, None),
                    Ok(n) => self.partial.advance(n),
                    Err(e) => return self.fail(conn, Some(e)),
                }
                continue;
            }
            // On the stack, and nothing is initialised or dropped beyond the frames taken:
            // this runs on every wake of the connection.
            let mut frames: SmallVec<[Bytes; MAX_IOV]> = SmallVec::new();
            let n = match conn.poll_batch(cx, MAX_IOV, |f| frames.push(f)) {
                Poll::Ready(0) => {
                    self.out = Output::ShuttingDown;
                    continue;
                }
                Poll::Ready(n) => n,
                Poll::Pending => {
                    // Nothing more to write: push out what a TLS layer still holds.
                    if let Err(e) = ready!(Pin::new(&mut self.io).poll_flush(cx)) {
                        return self.fail(conn, Some(e));
                    }
                    return Poll::Pending;
                }
            };
            let written = if n == 1 {
                Pin::new(&mut self.io).poll_write(cx, &frames[0])
            } else {
                let slices: SmallVec<[IoSlice<'_>; MAX_IOV]> =
                    frames.iter().map(|f| IoSlice::new(f)).collect();
                Pin::new(&mut self.io).poll_write_vectored(cx, &slices)
            };
            let mut w = match written {
                Poll::Pending => {
                    conn.unsend(frames.drain(..));
                    return Poll::Pending;
                }
                Poll::Ready(Ok(0)) => return self.fail(conn, None),
                Poll::Ready(Ok(w)) => w,
                Poll::Ready(Err(e)) => return self.fail(conn, Some(e)),
            };
            // `drain`, not `into_iter`: the latter would move the whole inline array.
            let mut rest = frames.drain(..);
            // Counted once handed to the socket (a partly written frame too: its rest is not
            // taken from the queue again).
            let (mut sent, mut sent_bytes) = (0, 0);
            while let Some(f) = rest.next() {
                if w >= f.len() {
                    w -= f.len();
                } else if w > 0 {
                    // Partly written: its rest goes first next time, whatever is queued then.
                    self.partial = f.slice(w..);
                    conn.unsend(rest);
                    (sent, sent_bytes) = (sent + 1, sent_bytes + f.len());
                    break;
                } else {
                    conn.unsend(std::iter::once(f).chain(rest));
                    break;
                }
                (sent, sent_bytes) = (sent + 1, sent_bytes + f.len());
            }
            ENGINE.frames_out(sent, sent_bytes);
        }
    }
}

/// Why the loop ended.
enum Exit {
    /// Close with a code and reason.
    Close(u16, String),
    /// The client closed (`Some`: it sent a close frame, answered with its code) or vanished.
    Gone(Option<Option<CloseReason>>),
}

enum Event {
    Mail(Option<Mail>),
    Recv(Option<Result<Incoming, ReadError>>),
    Idle,
    OutputOver,
}

/// Serves one WebSocket connection until it ends: client messages to the socket, mail to the
/// channels, queued frames to the client, all on this one task.
pub(crate) async fn run<W: WsIo>(mut state: SocketState, mut io: W, endpoint: Endpoint) {
    let conn = state.conn().clone();
    let v2 = conn.serializer == crate::protocol::Serializer::V2;
    ENGINE.opened(Transport::WebSocket, v2);
    let limits = &endpoint.config().limits;
    let idle_timeout = limits.idle_timeout;
    let max_rate = limits.max_messages_per_second;
    let mut rate = super::RateLimit::new(max_rate);
    let mut last_seen = Instant::now();
    let mut idle = pin!(tokio::time::sleep(idle_timeout));
    // Mails handled in a row since the client's frames were last looked at.
    let mut mail_streak = 0;

    let exit = loop {
        let event = poll_fn(|cx| {
            if io.poll_send(cx, &conn).is_ready() {
                return Poll::Ready(Event::OutputOver);
            }
            // Mail first (see MAIL_BURST), then the client's frames and the idle timer.
            let mail_first = mail_streak < MAIL_BURST;
            if mail_first {
                if let Poll::Ready(m) = poll_mail(&conn, cx) {
                    mail_streak += 1;
                    return Poll::Ready(Event::Mail(m));
                }
            }
            mail_streak = 0;
            if let Poll::Ready(m) = io.poll_recv(cx) {
                return Poll::Ready(Event::Recv(m));
            }
            if idle.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Event::Idle);
            }
            if !mail_first {
                if let Poll::Ready(m) = poll_mail(&conn, cx) {
                    mail_streak = 1;
                    return Poll::Ready(Event::Mail(m));
                }
            }
            Poll::Pending
        })
        .await;
        match event {
            Event::Mail(Some(m)) => {
                let mail = Box::pin(state.handle_mail(m));
                if let Some(End::Close(code, why)) = writing(&mut io, &conn, mail).await {
                    break Exit::Close(code, why);
                }
            }
            // Overflowed: the connection is already closing.
            Event::Mail(None) | Event::OutputOver => break Exit::Gone(None),
            Event::Recv(msg) => {
                last_seen = Instant::now();
                let message = match msg {
                    None => break Exit::Gone(None),
                    Some(Err(e)) => break read_error(conn.id, e, limits),
                    Some(Ok(Incoming::Close(r))) => break Exit::Gone(Some(r)),
                    Some(Ok(Incoming::Text(t))) => Some((FrameKind::Text, t)),
                    Some(Ok(Incoming::Binary(b))) => Some((FrameKind::Binary, b)),
                    Some(Ok(Incoming::Ping(p))) => {
                        conn.push(frame::pong(&p));
                        None
                    }
                    Some(Ok(Incoming::Pong | Incoming::Fragment)) => None,
                };
                if let Some((kind, data)) = message {
                    ENGINE.frame_in(data.len());
                    match conn.serializer.decode(kind, &data) {
                        Ok(msg) => writing(&mut io, &conn, Box::pin(state.handle(msg))).await,
                        Err(e) => {
                            // The reason goes to the log only: Phoenix closes with an empty one.
                            log::warn!("connection {}: {e}; closing", conn.id);
                            break Exit::Close(close_code::BAD_FRAME, String::new());
                        }
                    }
                }
                // Every frame counts, a fragment or a ping as much as a whole message: each
                // costs a turn of this loop.
                if let Some(wait) = rate.take() {
                    log::debug!(
                        "connection {}: over {} frames/s, slowing reads",
                        conn.id,
                        max_rate
                    );
                    writing(&mut io, &conn, tokio::time::sleep(wait)).await;
                }
            }
            Event::Idle => {
                let deadline = last_seen + idle_timeout;
                if Instant::now() >= deadline {
                    log::info!(
                        "connection {}: nothing received for {:?}; closing",
                        conn.id,
                        idle_timeout
                    );
                    break Exit::Close(close_code::IDLE, String::new());
                }
                idle.as_mut().reset(deadline.into());
            }
        }
    };

    writing(&mut io, &conn, Box::pin(state.terminate())).await;
    match exit {
        Exit::Close(code, why) => conn.close(code, &why),
        Exit::Gone(Some(r)) => conn.close(r.map_or(1000, |r| r.code.into()), ""),
        Exit::Gone(None) => conn.abandon(),
    }
    drop(state);
    if W::WRITES {
        // What is queued, then the close frame, then our side of the socket is closed. The
        // connection counts as open until then, so that a graceful stop waits for it.
        let _ = tokio::time::timeout(LINGER, poll_fn(|cx| io.poll_send(cx, &conn))).await;
    }
    endpoint.unregister(conn.id);
    ENGINE.closed(Transport::WebSocket, v2);
}

/// Runs `fut` while the connection's queued frames keep going out.
async fn writing<W: WsIo, F: Future>(io: &mut W, conn: &Connection, fut: F) -> F::Output {
    let mut fut = pin!(fut);
    let mut open = true;
    poll_fn(|cx| {
        if open && io.poll_send(cx, conn).is_ready() {
            open = false;
        }
        fut.as_mut().poll(cx)
    })
    .await
}

/// The next mail, within the task's cooperative budget: a task whose mail never runs out still
/// lets the other tasks of its worker run, and its own socket and timer with them.
fn poll_mail(conn: &Connection, cx: &mut Context<'_>) -> Poll<Option<Mail>> {
    let coop = ready!(tokio::task::coop::poll_proceed(cx));
    let mail = ready!(conn.poll_mail(cx));
    coop.made_progress();
    Poll::Ready(mail)
}

fn read_error(id: u64, e: ReadError, limits: &crate::config::Limits) -> Exit {
    match e {
        ReadError::TooBig => {
            log::warn!(
                "connection {id}: message over {} bytes; closing",
                limits.max_frame_size
            );
            Exit::Close(close_code::TOO_BIG, String::new())
        }
        ReadError::TooManyFragments => {
            log::warn!(
                "connection {id}: message in over {} fragments; closing",
                limits.max_fragments
            );
            Exit::Close(close_code::TOO_BIG, String::new())
        }
        ReadError::Protocol(ProtocolError::Io(e)) => {
            log::debug!("connection {id}: {e}");
            Exit::Gone(None)
        }
        ReadError::Protocol(e) => {
            log::warn!("connection {id}: websocket protocol error: {e}; closing");
            Exit::Close(close_code::PROTOCOL, String::new())
        }
    }
}
