//! A WebSocket connection's reading, writing and event loop, on a socket it owns.
//!
//! After the upgrade the connection's task holds the socket itself, not actix-http's HTTP/1
//! dispatcher, whose 8 KiB read and write buffers would stay allocated for the connection's
//! whole life. Here an idle connection holds no buffer at all:
//! - reads land in a buffer on the stack; only the unparsed rest of a frame in progress is
//!   copied to the heap, grown for that frame and dropped once it is parsed;
//! - writes go straight from the queued frames' shared `Bytes`, many in one vectored write;
//!   what the socket does not take goes back to the connection's queue (a partly written frame
//!   keeps its rest here, so a close frame can never land in the middle of it).
//!
//! Frames are parsed by actix-http's WebSocket codec, and fragmented messages are put together
//! as actix-ws did, with the same errors, so that every close code stays what it was.

use crate::connection::{close_code, Connection};
use crate::endpoint::Endpoint;
use crate::metrics::{Transport, ENGINE};
use crate::protocol::FrameKind;
use crate::socket::{End, SocketState};
use crate::transport::frame;
use actix_codec::{AsyncRead, AsyncWrite, Decoder};
use actix_http::ws::{CloseReason, Codec, Frame, Item, ProtocolError};
use bytes::{Buf, Bytes, BytesMut};
use smallvec::SmallVec;
use std::future::{poll_fn, Future};
use std::io::{self, IoSlice};
use std::mem::MaybeUninit;
use std::pin::{pin, Pin};
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::ReadBuf;

/// Bytes read at once into the stack buffer, and the step a frame in progress grows by.
const READ_CHUNK: usize = 4096;
/// Most frames in one vectored write (Linux takes 1024).
const MAX_IOV: usize = 64;
/// How long the last frames and the close frame may take to go out after the socket's task
/// has ended: a client that reads nothing cannot hold the connection open.
const LINGER: Duration = Duration::from_secs(10);

/// One message from the client, put together from its fragments.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Incoming {
    Text(Bytes),
    Binary(Bytes),
    Ping(Bytes),
    Pong,
    Close(Option<CloseReason>),
}

/// Parses client frames out of the bytes read so far.
pub(crate) struct Reader {
    /// Read and not yet parsed: empty, with no allocation, between frames.
    buf: BytesMut,
    codec: Codec,
    /// The fragments of a message in progress, and their size.
    parts: Vec<Bytes>,
    parts_len: usize,
    parts_text: bool,
    max_message: usize,
    /// The peer has sent all it will.
    eof: bool,
}

impl Reader {
    /// Frames and whole messages of at most `max_size` bytes. `early`: bytes that came with
    /// the upgrade request.
    pub(crate) fn new(max_size: usize, early: &[u8]) -> Reader {
        Reader {
            buf: BytesMut::from(early),
            codec: Codec::new().max_size(max_size),
            parts: Vec::new(),
            parts_len: 0,
            parts_text: false,
            max_message: max_size,
            eof: false,
        }
    }

    /// Adds bytes read from the peer.
    pub(crate) fn extend(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next whole message in what has been read, if any.
    pub(crate) fn next(&mut self) -> Option<Result<Incoming, ProtocolError>> {
        loop {
            let frame = match self.codec.decode(&mut self.buf) {
                Ok(Some(frame)) => frame,
                Ok(None) => {
                    if self.buf.is_empty() {
                        // Give the allocation back: an idle connection holds no buffer.
                        self.buf = BytesMut::new();
                    }
                    return None;
                }
                Err(e) => return Some(Err(e)),
            };
            return Some(match frame {
                Frame::Text(b) => text(b),
                Frame::Binary(b) => Ok(Incoming::Binary(b)),
                Frame::Ping(b) => Ok(Incoming::Ping(b)),
                Frame::Pong(_) => Ok(Incoming::Pong),
                Frame::Close(r) => Ok(Incoming::Close(r)),
                Frame::Continuation(item) => {
                    let (bytes, last) = match item {
                        Item::FirstText(b) => {
                            self.parts_text = true;
                            (b, false)
                        }
                        Item::FirstBinary(b) => {
                            self.parts_text = false;
                            (b, false)
                        }
                        Item::Continue(b) => (b, false),
                        Item::Last(b) => (b, true),
                    };
                    self.parts_len += bytes.len();
                    if self.parts_len > self.max_message {
                        self.parts = Vec::new();
                        self.parts_len = 0;
                        Err(ProtocolError::Io(io::Error::other(
                            "Exceeded maximum continuation size",
                        )))
                    } else {
                        self.parts.push(bytes);
                        if !last {
                            continue;
                        }
                        let mut whole = BytesMut::with_capacity(self.parts_len);
                        for p in std::mem::take(&mut self.parts) {
                            whole.extend_from_slice(&p);
                        }
                        self.parts_len = 0;
                        if self.parts_text {
                            text(whole.freeze())
                        } else {
                            Ok(Incoming::Binary(whole.freeze()))
                        }
                    }
                }
            });
        }
    }

    /// Reads what the socket has: into the stack when no frame is in progress (nothing is
    /// allocated if nothing came), else onto the frame's own buffer. `Ready(Ok(0))`: end of
    /// stream.
    fn poll_fill<T: AsyncRead + Unpin>(
        &mut self,
        io: &mut T,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<usize>> {
        if self.buf.is_empty() {
            let mut stack = [MaybeUninit::<u8>::uninit(); READ_CHUNK];
            let mut rb = ReadBuf::uninit(&mut stack);
            ready!(Pin::new(io).poll_read(cx, &mut rb))?;
            let got = rb.filled();
            if !got.is_empty() {
                self.buf = BytesMut::from(got);
            }
            return Poll::Ready(Ok(got.len()));
        }
        self.buf.reserve(READ_CHUNK);
        let spare = self.buf.spare_capacity_mut();
        let mut rb = ReadBuf::uninit(spare);
        ready!(Pin::new(io).poll_read(cx, &mut rb))?;
        let n = rb.filled().len();
        // SAFETY: `poll_read` initialised the first `n` bytes of the spare capacity (`ReadBuf`
        // only ever fills the memory it was given).
        unsafe { self.buf.set_len(self.buf.len() + n) };
        Poll::Ready(Ok(n))
    }
}

/// A text message must be UTF-8 (actix-ws answered an invalid one with an IO error).
fn text(b: Bytes) -> Result<Incoming, ProtocolError> {
    match std::str::from_utf8(&b) {
        Ok(_) => Ok(Incoming::Text(b)),
        Err(e) => Err(ProtocolError::Io(io::Error::new(
            io::ErrorKind::InvalidData,
            e,
        ))),
    }
}

/// Where a WebSocket connection's messages come from and its frames go to.
pub(crate) trait WsIo {
    /// Whether [`WsIo::poll_send`] writes the connection's frames (else its HTTP response
    /// body does).
    const WRITES: bool;
    /// The next message; `None` once the peer has gone.
    fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Incoming, ProtocolError>>>;
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

    fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Incoming, ProtocolError>>> {
        loop {
            if let Some(msg) = self.reader.next() {
                return Poll::Ready(Some(msg));
            }
            if self.reader.eof {
                return Poll::Ready(None);
            }
            match ready!(self.reader.poll_fill(&mut self.io, cx)) {
                Ok(0) => self.reader.eof = true,
                Ok(_) => {}
                Err(e) => return Poll::Ready(Some(Err(ProtocolError::Io(e)))),
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
    Mail(Option<crate::connection::Mail>),
    Recv(Option<Result<Incoming, ProtocolError>>),
    Idle,
    OutputOver,
}

/// Serves one WebSocket connection until it ends: client messages to the socket, mail to the
/// channels, queued frames to the client, all on this one task.
pub(crate) async fn run<W: WsIo>(mut state: SocketState, mut io: W, endpoint: Endpoint) {
    let conn = state.conn().clone();
    let v2 = conn.serializer == crate::protocol::Serializer::V2;
    ENGINE.opened(Transport::WebSocket, v2);
    let idle_timeout = endpoint.config().limits.idle_timeout;
    let max_rate = endpoint.config().limits.max_messages_per_second;
    let mut rate = super::RateLimit::new(max_rate);
    let mut last_seen = Instant::now();
    let mut idle = pin!(tokio::time::sleep(idle_timeout));

    let exit = loop {
        let event = poll_fn(|cx| {
            if io.poll_send(cx, &conn).is_ready() {
                return Poll::Ready(Event::OutputOver);
            }
            // Mail first: what a channel sent itself while handling a frame comes before the
            // next frame, as in Phoenix.
            if let Poll::Ready(m) = conn.poll_mail(cx) {
                return Poll::Ready(Event::Mail(m));
            }
            if let Poll::Ready(m) = io.poll_recv(cx) {
                return Poll::Ready(Event::Recv(m));
            }
            if idle.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Event::Idle);
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
                let (kind, data) = match msg {
                    None => break Exit::Gone(None),
                    Some(Err(e)) => break protocol_error(conn.id, e),
                    Some(Ok(Incoming::Text(t))) => (FrameKind::Text, t),
                    Some(Ok(Incoming::Binary(b))) => (FrameKind::Binary, b),
                    Some(Ok(Incoming::Ping(p))) => {
                        conn.push(frame::pong(&p));
                        continue;
                    }
                    Some(Ok(Incoming::Pong)) => continue,
                    Some(Ok(Incoming::Close(r))) => break Exit::Gone(Some(r)),
                };
                ENGINE.frame_in(data.len());
                match conn.serializer.decode(kind, &data) {
                    Ok(msg) => writing(&mut io, &conn, Box::pin(state.handle(msg))).await,
                    Err(e) => {
                        // The reason goes to the log only: Phoenix closes with an empty one.
                        log::warn!("connection {}: {e}; closing", conn.id);
                        break Exit::Close(close_code::BAD_FRAME, String::new());
                    }
                }
                if let Some(wait) = rate.take() {
                    log::debug!(
                        "connection {}: over {} msg/s, slowing reads",
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

fn protocol_error(id: u64, e: ProtocolError) -> Exit {
    match e {
        ProtocolError::Overflow => {
            log::warn!("connection {id}: frame over the size limit; closing");
            Exit::Close(close_code::TOO_BIG, String::new())
        }
        ProtocolError::Io(e) => {
            log::debug!("connection {id}: {e}");
            Exit::Gone(None)
        }
        e => {
            log::warn!("connection {id}: websocket protocol error: {e}; closing");
            Exit::Close(close_code::PROTOCOL, String::new())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A masked client frame.
    fn client_frame(first: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [1u8, 2, 3, 4];
        let mut f = vec![first];
        if payload.len() < 126 {
            f.push(0x80 | payload.len() as u8);
        } else {
            f.push(0x80 | 126);
            f.extend_from_slice(&(payload.len() as u16).to_be_bytes());
        }
        f.extend_from_slice(&mask);
        f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        f
    }

    #[test]
    fn parses_frames_split_anywhere_and_gives_the_buffer_back() {
        let mut wire = client_frame(0x81, b"hello");
        wire.extend(client_frame(0x89, b"p"));
        wire.extend(client_frame(0x82, &[7u8; 300]));
        for cut in 0..wire.len() {
            let mut r = Reader::new(1000, &wire[..cut]);
            let mut got = Vec::new();
            while let Some(m) = r.next() {
                got.push(m.unwrap());
            }
            r.extend(&wire[cut..]);
            while let Some(m) = r.next() {
                got.push(m.unwrap());
            }
            assert_eq!(
                got,
                vec![
                    Incoming::Text(Bytes::from_static(b"hello")),
                    Incoming::Ping(Bytes::from_static(b"p")),
                    Incoming::Binary(Bytes::from(vec![7u8; 300])),
                ],
                "cut at {cut}"
            );
            assert_eq!(r.buf.capacity(), 0, "no buffer held between frames");
        }
    }

    #[test]
    fn fragments_are_put_together_within_the_limit() {
        let mut wire = client_frame(0x01, b"he");
        wire.extend(client_frame(0x8a, b"")); // a pong between fragments
        wire.extend(client_frame(0x00, b"ll"));
        wire.extend(client_frame(0x80, b"o"));
        let mut r = Reader::new(10, &wire);
        assert_eq!(r.next().unwrap().unwrap(), Incoming::Pong);
        assert_eq!(
            r.next().unwrap().unwrap(),
            Incoming::Text(Bytes::from_static(b"hello"))
        );
        assert!(r.next().is_none());

        let mut wire = client_frame(0x02, &[1; 6]);
        wire.extend(client_frame(0x80, &[1; 6]));
        let mut r = Reader::new(10, &wire);
        assert!(matches!(r.next(), Some(Err(ProtocolError::Io(_)))));
    }

    #[test]
    fn broken_frames_give_the_errors_actix_ws_gave() {
        let mut r = Reader::new(4, &client_frame(0x81, b"12345"));
        assert!(matches!(r.next(), Some(Err(ProtocolError::Overflow))));
        let mut r = Reader::new(100, &[0x81, 0x02, b'h', b'i']);
        assert!(matches!(r.next(), Some(Err(ProtocolError::UnmaskedFrame))));
        let mut r = Reader::new(100, &client_frame(0x81, &[0xff, 0xfe]));
        assert!(matches!(r.next(), Some(Err(ProtocolError::Io(_)))));
        let mut r = Reader::new(100, &client_frame(0x80, b"x"));
        assert!(matches!(
            r.next(),
            Some(Err(ProtocolError::ContinuationNotStarted))
        ));
    }
}
