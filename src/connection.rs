//! The state one client connection shares with the rest of the server: its bounded outbound
//! queue of encoded frames and its mailbox.
//!
//! Publishers on any thread push already-encoded frames here (a broadcast's bytes are shared, not
//! copied); the transport's writer drains them. Everything that needs the socket's own task
//! (intercepted broadcasts, channel messages, a forced disconnect) goes through the mailbox.
//! Both are bounded: a client that does not keep up is closed, and nobody else waits for it.

use crate::metrics::{Transport, ENGINE};
use crate::protocol::{frame, Payload, Ref, Serializer};
use crate::pubsub::{Broadcast, SubId};
use bytes::{Bytes, BytesMut};
use std::any::Any;
use std::collections::VecDeque;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

/// Close codes the server uses, and what makes phoenix.js come back (anything but 1000). Every
/// close frame the server sends has an empty reason, as Phoenix's do; the reason goes to the
/// log.
pub mod close_code {
    /// Forced disconnect (socket id) and server shutdown: clients reconnect.
    pub const GOING_AWAY: u16 = 1001;
    /// No frame from the client for the idle timeout (what Phoenix on Bandit sends).
    pub const IDLE: u16 = 1002;
    /// A frame that is not valid for the negotiated serializer.
    pub const BAD_FRAME: u16 = 1011;
    /// A message over the configured maximum size, or in more fragments than allowed.
    pub const TOO_BIG: u16 = 1009;
    /// The outbound queue or mailbox overflowed: the client did not keep up.
    pub const OVERLOADED: u16 = 1013;
    /// A protocol error in the WebSocket framing itself.
    pub const PROTOCOL: u16 = 1002;
}

/// One live connection, as the inspector lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionSummary {
    pub id: u64,
    pub transport: &'static str,
    pub serializer: &'static str,
    /// Broadcasting `disconnect` to it closes the socket (see `Endpoint::disconnect`).
    pub socket_id: Option<String>,
}

/// Identifies one join of one channel on one socket.
pub type ChannelId = SubId;

/// A message for a channel's `handle_info`, as the socket's mailbox carries it.
pub enum Info {
    /// A broadcast on a topic the channel subscribed to with
    /// [`ChannelContext::subscribe`](crate::ChannelContext::subscribe).
    Broadcast(Arc<Broadcast>),
    /// A message the channel sent itself
    /// ([`ChannelContext::send_self`](crate::ChannelContext::send_self),
    /// [`ChannelContext::send_after`](crate::ChannelContext::send_after)) or that the app
    /// delivered.
    Message(Box<dyn Any + Send>),
}

impl Info {
    /// The message as `T`, if it is one.
    pub fn downcast<T: 'static>(self) -> Option<T> {
        match self {
            Info::Message(m) => m.downcast::<T>().ok().map(|b| *b),
            Info::Broadcast(_) => None,
        }
    }
}

/// Work for the socket's own task.
pub(crate) enum Mail {
    /// A message for a channel's `handle_info`.
    Info { channel: ChannelId, info: Info },
    /// A broadcast the channel intercepts, for its `handle_out`.
    Out {
        channel: ChannelId,
        broadcast: Arc<Broadcast>,
    },
    /// A reply sent after its `handle_in` returned.
    Reply {
        channel: ChannelId,
        ref_: Ref,
        status: String,
        payload: Payload,
    },
    /// The app ended a channel from outside (see [`Connection::revoke`]).
    Stop { channel: ChannelId },
    /// `disconnect` was broadcast to the socket id.
    Disconnect,
    /// The server is stopping.
    Shutdown,
}

pub(crate) struct Connection {
    pub id: u64,
    pub serializer: Serializer,
    /// How it connected and its socket id, set once by its transport (for the inspector).
    described: std::sync::OnceLock<(Transport, Option<String>)>,
    max_queue: usize,
    max_bytes: usize,
    state: Mutex<State>,
}

/// What a mail counts for against the mailbox's byte bound, beyond what it carries.
pub(crate) const MAIL_OVERHEAD: usize = 64;

struct State {
    frames: VecDeque<Bytes>,
    /// Bytes in `frames` and `held`.
    queued_bytes: usize,
    /// What the mails in `mail` weigh.
    mail_bytes: usize,
    writer: Option<Waker>,
    /// The close frame to write once `frames` is drained; the writer then ends.
    close: Option<Bytes>,
    /// No more frames are accepted.
    closing: bool,
    /// Why the connection is closing, for the socket task to act on.
    overflowed: bool,
    mail: VecDeque<(Mail, usize)>,
    task: Option<Waker>,
    /// A channel whose join reply is not written yet: its broadcasts wait in `held`, so that
    /// the join reply always comes first.
    holding: Option<ChannelId>,
    /// With each frame, its recorded seq, if any: what the join reply covered is dropped.
    held: Vec<(Bytes, Option<i64>)>,
    /// Channels the app has ended whose socket task has not caught up yet: their broadcasts
    /// are dropped from the moment of revocation.
    revoked: Vec<ChannelId>,
}

/// Most bytes the writer takes in one go when several frames are queued.
pub(crate) const WRITE_BATCH: usize = 64 * 1024;

impl Connection {
    /// A connection whose queue and mailbox each hold at most `max_queue` items and
    /// `max_bytes` bytes (one frame larger than that still goes out alone, into an empty queue).
    pub fn new(id: u64, serializer: Serializer, max_queue: usize, max_bytes: usize) -> Connection {
        Connection {
            id,
            serializer,
            described: std::sync::OnceLock::new(),
            max_queue,
            max_bytes,
            state: Mutex::new(State {
                frames: VecDeque::new(),
                queued_bytes: 0,
                mail_bytes: 0,
                writer: None,
                close: None,
                closing: false,
                overflowed: false,
                mail: VecDeque::new(),
                task: None,
                holding: None,
                held: Vec::new(),
                revoked: Vec::new(),
            }),
        }
    }

    /// Records the transport and socket id (once; later calls are ignored).
    pub fn describe(&self, transport: Transport, socket_id: Option<String>) {
        let _ = self.described.set((transport, socket_id));
    }

    /// What the inspector shows of this connection.
    /// Bytes waiting in its queue and mailbox.
    pub fn queued_bytes(&self) -> usize {
        let s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        s.queued_bytes + s.mail_bytes
    }

    pub fn summary(&self) -> ConnectionSummary {
        let (transport, socket_id) = self
            .described
            .get()
            .cloned()
            .unwrap_or((Transport::WebSocket, None));
        ConnectionSummary {
            id: self.id,
            transport: transport.label(),
            serializer: match self.serializer {
                Serializer::V1 => "v1",
                Serializer::V2 => "v2",
            },
            socket_id,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic never happens while the lock is held, but stay usable if one did.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues a frame of the socket's own (a reply, a push, a pong).
    pub fn push(&self, frame: Bytes) {
        let mut s = self.lock();
        self.enqueue(&mut s, frame);
    }

    /// Queues a broadcast frame for a channel, held back while that channel's join is pending.
    /// `seq`: the broadcast's place in its topic's recorded stream, if any.
    pub fn push_broadcast(&self, channel: ChannelId, frame: Bytes, seq: Option<i64>) {
        let mut s = self.lock();
        if !s.revoked.is_empty() && s.revoked.contains(&channel) {
            return;
        }
        if s.holding == Some(channel) {
            if self.full(s.held.len(), s.queued_bytes, frame.len()) {
                self.overflow(&mut s, false);
            } else {
                s.queued_bytes += frame.len();
                s.held.push((frame, seq));
            }
        } else {
            self.enqueue(&mut s, frame);
        }
    }

    /// Whether `len` more bytes would go over a bound, with `count` items and `bytes` queued.
    fn full(&self, count: usize, bytes: usize, len: usize) -> bool {
        count >= self.max_queue || (bytes > 0 && bytes + len > self.max_bytes)
    }

    fn enqueue(&self, s: &mut State, frame: Bytes) {
        if s.closing {
            return;
        }
        if self.full(s.frames.len(), s.queued_bytes, frame.len()) {
            self.overflow(s, false);
            return;
        }
        s.queued_bytes += frame.len();
        s.frames.push_back(frame);
        if let Some(w) = s.writer.take() {
            w.wake();
        }
    }

    fn overflow(&self, s: &mut State, mailbox: bool) {
        if s.closing {
            return;
        }
        if mailbox {
            ENGINE.mailbox_overflows.fetch_add(1, Relaxed);
        } else {
            ENGINE.queue_overflows.fetch_add(1, Relaxed);
        }
        log::warn!(
            "connection {}: outbound queue or mailbox full ({} items or {} bytes), closing the slow client with 1013",
            self.id,
            self.max_queue,
            self.max_bytes
        );
        s.overflowed = true;
        s.frames.clear();
        s.held.clear();
        s.mail.clear();
        s.queued_bytes = 0;
        s.mail_bytes = 0;
        self.begin_close(s, close_code::OVERLOADED, "");
        if let Some(w) = s.task.take() {
            w.wake();
        }
    }

    /// Starts holding broadcasts for a channel being joined.
    pub fn hold(&self, channel: ChannelId) {
        let mut s = self.lock();
        s.holding = Some(channel);
        drop_held(&mut s);
    }

    /// Ends holding: writes `first` (the join reply), then, if `keep`, what was held meanwhile,
    /// but for recorded broadcasts at or below `covered` (the reply has them).
    pub fn release(&self, first: Option<Bytes>, keep: bool, covered: i64) {
        let mut s = self.lock();
        s.holding = None;
        let held = std::mem::take(&mut s.held);
        // Held frames move to the queue: count them again as they go in.
        s.queued_bytes -= held.iter().map(|(f, _)| f.len()).sum::<usize>();
        if let Some(f) = first {
            self.enqueue(&mut s, f);
        }
        if keep {
            for (f, seq) in held {
                if seq.is_none_or(|n| n > covered) {
                    self.enqueue(&mut s, f);
                }
            }
        }
    }

    /// Ends a channel from outside its socket's task: from now on nothing broadcast reaches the
    /// client on it, and the socket task stops it (`phx_close`) when it reads this mail.
    pub fn revoke(&self, channel: ChannelId) {
        let mut s = self.lock();
        if s.revoked.contains(&channel) {
            return;
        }
        s.revoked.push(channel);
        if s.holding == Some(channel) {
            drop_held(&mut s);
        }
        self.post(&mut s, Mail::Stop { channel }, MAIL_OVERHEAD);
    }

    /// The channel has ended: forget that it was revoked.
    pub fn forget(&self, channel: ChannelId) {
        let mut s = self.lock();
        s.revoked.retain(|&c| c != channel);
    }

    /// Posts work for the socket task, counted as `bytes` (what it carries, encoded) plus
    /// [`MAIL_OVERHEAD`]. Returns false if the connection is closing.
    pub fn mail(&self, mail: Mail, bytes: usize) -> bool {
        let mut s = self.lock();
        self.post(&mut s, mail, bytes + MAIL_OVERHEAD)
    }

    fn post(&self, s: &mut State, mail: Mail, weight: usize) -> bool {
        if s.closing {
            return false;
        }
        if self.full(s.mail.len(), s.mail_bytes, weight) {
            self.overflow(s, true);
            return false;
        }
        s.mail_bytes += weight;
        s.mail.push_back((mail, weight));
        if let Some(w) = s.task.take() {
            w.wake();
        }
        true
    }

    /// Polled by the socket task: the next mail, or `None` once the connection overflowed.
    pub fn poll_mail(&self, cx: &mut Context<'_>) -> Poll<Option<Mail>> {
        let mut s = self.lock();
        if s.overflowed {
            return Poll::Ready(None);
        }
        match s.mail.pop_front() {
            Some((m, weight)) => {
                s.mail_bytes -= weight;
                Poll::Ready(Some(m))
            }
            None => {
                shrink_idle(&mut s.mail);
                set_waker(&mut s.task, cx);
                Poll::Pending
            }
        }
    }

    pub async fn next_mail(&self) -> Option<Mail> {
        std::future::poll_fn(|cx| self.poll_mail(cx)).await
    }

    /// Sends what is queued, then a close frame, then ends the connection.
    pub fn close(&self, code: u16, reason: &str) {
        let mut s = self.lock();
        self.begin_close(&mut s, code, reason);
    }

    fn begin_close(&self, s: &mut State, code: u16, reason: &str) {
        if s.close.is_some() {
            return;
        }
        s.closing = true;
        ENGINE.close(code);
        s.close = Some(frame::close(code, reason));
        if let Some(w) = s.writer.take() {
            w.wake();
        }
    }

    /// Marks the connection closed without a close frame (the peer is gone).
    pub fn abandon(&self) {
        let mut s = self.lock();
        if s.close.is_none() && !s.closing {
            // Gone without a close frame: what browsers report as 1006.
            ENGINE.close(1006);
        }
        s.closing = true;
        s.frames.clear();
        s.mail.clear();
        s.held.clear();
        s.queued_bytes = 0;
        s.mail_bytes = 0;
        if let Some(w) = s.writer.take() {
            w.wake();
        }
    }

    /// Polled by the transport's writer: the next frame, `None` when the stream is over.
    pub fn poll_frame(&self, cx: &mut Context<'_>) -> Poll<Option<Bytes>> {
        let mut s = self.lock();
        if s.frames.len() > 1 {
            // Several frames queued: hand them over as one chunk, for one write.
            let mut out = BytesMut::new();
            let mut n = 0;
            while let Some(f) = s.frames.front() {
                if !out.is_empty() && out.len() + f.len() > WRITE_BATCH {
                    break;
                }
                out.extend_from_slice(f);
                s.frames.pop_front();
                n += 1;
            }
            s.queued_bytes -= out.len();
            ENGINE.frames_out(n, out.len());
            return Poll::Ready(Some(out.freeze()));
        }
        if let Some(f) = s.frames.pop_front() {
            s.queued_bytes -= f.len();
            ENGINE.frames_out(1, f.len());
            return Poll::Ready(Some(f));
        }
        shrink_idle(&mut s.frames);
        if let Some(c) = s.close.take() {
            // Leave a zero-length marker so the next poll ends the stream.
            s.close = Some(Bytes::new());
            if !c.is_empty() {
                ENGINE.frames_out(1, c.len());
                return Poll::Ready(Some(c));
            }
            return Poll::Ready(None);
        }
        if s.closing {
            return Poll::Ready(None);
        }
        set_waker(&mut s.writer, cx);
        Poll::Pending
    }

    /// Polled by the WebSocket writer that owns its socket: hands queued frames to `take` (at
    /// most `max`, and at most [`WRITE_BATCH`] bytes unless one frame alone is larger) and says
    /// how many, for one vectored write of the shared bytes as they are. With nothing queued:
    /// the close frame, if one was asked for, then `0` (the output is over).
    pub fn poll_batch(
        &self,
        cx: &mut Context<'_>,
        max: usize,
        mut take: impl FnMut(Bytes),
    ) -> Poll<usize> {
        let mut s = self.lock();
        let (mut n, mut bytes) = (0, 0);
        while n < max {
            match s.frames.front() {
                Some(f) if n == 0 || bytes + f.len() <= WRITE_BATCH => {
                    bytes += f.len();
                    take(s.frames.pop_front().unwrap_or_default());
                    n += 1;
                }
                _ => break,
            }
        }
        if n > 0 {
            s.queued_bytes -= bytes;
            return Poll::Ready(n);
        }
        shrink_idle(&mut s.frames);
        if let Some(c) = s.close.take() {
            // Leave a zero-length marker so the next poll says the output is over.
            s.close = Some(Bytes::new());
            if !c.is_empty() {
                take(c);
                return Poll::Ready(1);
            }
            return Poll::Ready(0);
        }
        if s.closing {
            return Poll::Ready(0);
        }
        set_waker(&mut s.writer, cx);
        Poll::Pending
    }

    /// Puts back, in front and in order, whole frames taken by [`Connection::poll_batch`] that
    /// the socket did not take. They were counted against the bounds already.
    pub fn unsend(&self, frames: impl DoubleEndedIterator<Item = Bytes>) {
        let mut s = self.lock();
        for f in frames.rev() {
            s.queued_bytes += f.len();
            s.frames.push_front(f);
        }
    }

    /// Takes every queued frame at once (the LongPoll transport's read).
    pub fn drain(&self) -> Vec<Bytes> {
        let mut s = self.lock();
        let out: Vec<Bytes> = s.frames.drain(..).collect();
        let bytes = out.iter().map(Bytes::len).sum::<usize>();
        s.queued_bytes -= bytes;
        ENGINE.frames_out(out.len(), bytes);
        shrink_idle(&mut s.frames);
        out
    }

    /// Waits until frames are queued or the connection is closing (the LongPoll transport's read).
    pub async fn ready(&self) {
        std::future::poll_fn(|cx| {
            let mut s = self.lock();
            if !s.frames.is_empty() || s.closing {
                return Poll::Ready(());
            }
            set_waker(&mut s.writer, cx);
            Poll::Pending
        })
        .await
    }
}

/// Drops the frames held for a joining channel, and their bytes.
fn drop_held(s: &mut State) {
    let dropped: usize = s.held.drain(..).map(|(f, _)| f.len()).sum();
    s.queued_bytes -= dropped;
}

/// An emptied queue gives back what a burst made it grow to: idle connections stay small.
fn shrink_idle<T>(q: &mut VecDeque<T>) {
    if q.capacity() > 64 {
        q.shrink_to_fit();
    }
}

fn set_waker(slot: &mut Option<Waker>, cx: &Context<'_>) {
    match slot {
        Some(w) if w.will_wake(cx.waker()) => {}
        _ => *slot = Some(cx.waker().clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::task::noop_waker;

    fn poll(c: &Connection) -> Poll<Option<Bytes>> {
        let w = noop_waker();
        c.poll_frame(&mut Context::from_waker(&w))
    }

    #[test]
    fn frames_then_close_then_end() {
        let c = Connection::new(1, Serializer::V2, 4, usize::MAX);
        c.push(Bytes::from_static(b"a"));
        c.close(1001, "");
        c.push(Bytes::from_static(b"late"));
        assert_eq!(poll(&c), Poll::Ready(Some(Bytes::from_static(b"a"))));
        assert_eq!(poll(&c), Poll::Ready(Some(frame::close(1001, ""))));
        assert_eq!(poll(&c), Poll::Ready(None));
    }

    #[test]
    fn queued_frames_go_out_as_one_chunk() {
        let c = Connection::new(1, Serializer::V2, 8, usize::MAX);
        c.push(Bytes::from_static(b"ab"));
        assert_eq!(poll(&c), Poll::Ready(Some(Bytes::from_static(b"ab"))));
        c.push(Bytes::from_static(b"ab"));
        c.push(Bytes::from_static(b"cd"));
        c.push(Bytes::from_static(b"e"));
        assert_eq!(poll(&c), Poll::Ready(Some(Bytes::from_static(b"abcde"))));
        assert!(poll(&c).is_pending());
    }

    #[test]
    fn batches_hand_over_shared_frames_and_take_back_what_was_not_written() {
        let c = Connection::new(1, Serializer::V2, 8, usize::MAX);
        let w = noop_waker();
        let mut cx = Context::from_waker(&w);
        let mut out = Vec::new();
        assert!(c.poll_batch(&mut cx, 2, |f| out.push(f)).is_pending());
        let shared = Bytes::from_static(b"broadcast");
        c.push(shared.clone());
        c.push(Bytes::from_static(b"b"));
        c.push(Bytes::from_static(b"c"));
        assert_eq!(c.poll_batch(&mut cx, 2, |f| out.push(f)), Poll::Ready(2));
        assert_eq!(
            out[0].as_ptr(),
            shared.as_ptr(),
            "the same bytes, not a copy"
        );
        // The socket took only the first: the second goes back in front of the third.
        c.unsend(out.drain(1..));
        out.clear();
        c.close(1000, "");
        assert_eq!(c.poll_batch(&mut cx, 2, |f| out.push(f)), Poll::Ready(2));
        assert_eq!(out, [Bytes::from_static(b"b"), Bytes::from_static(b"c")]);
        out.clear();
        assert_eq!(c.poll_batch(&mut cx, 2, |f| out.push(f)), Poll::Ready(1));
        assert_eq!(out, [frame::close(1000, "")]);
        assert_eq!(c.poll_batch(&mut cx, 2, |f| out.push(f)), Poll::Ready(0));
    }

    #[test]
    fn held_broadcasts_follow_the_join_reply() {
        let c = Connection::new(1, Serializer::V2, 4, usize::MAX);
        c.hold(7);
        c.push_broadcast(7, Bytes::from_static(b"b1"), None);
        c.push_broadcast(8, Bytes::from_static(b"other"), None);
        c.push_broadcast(7, Bytes::from_static(b"seq 3"), Some(3));
        c.push_broadcast(7, Bytes::from_static(b"seq 4"), Some(4));
        c.release(Some(Bytes::from_static(b"reply")), true, 3);
        let got: Vec<_> = c.drain();
        assert_eq!(
            got,
            vec![&b"other"[..], b"reply", b"b1", b"seq 4"],
            "the reply covered seq 3"
        );
    }

    #[test]
    fn a_revoked_channel_gets_no_more_broadcasts() {
        let c = Connection::new(1, Serializer::V2, 8, usize::MAX);
        c.push_broadcast(7, Bytes::from_static(b"before"), None);
        c.revoke(7);
        c.push_broadcast(7, Bytes::from_static(b"after"), None);
        c.push_broadcast(8, Bytes::from_static(b"other"), None);
        c.push(Bytes::from_static(b"own"));
        assert_eq!(c.drain(), vec![&b"before"[..], b"other", b"own"]);
        let w = noop_waker();
        assert!(matches!(
            c.poll_mail(&mut Context::from_waker(&w)),
            Poll::Ready(Some(Mail::Stop { channel: 7 }))
        ));
        c.forget(7);
        c.push_broadcast(7, Bytes::from_static(b"a later join"), None);
        assert_eq!(c.drain(), vec![&b"a later join"[..]]);
    }

    #[test]
    fn bytes_are_bounded_too_and_one_large_frame_still_goes_alone() {
        let c = Connection::new(1, Serializer::V2, 100, 10);
        c.push(Bytes::from(vec![b'a'; 25]));
        assert_eq!(
            c.drain(),
            vec![Bytes::from(vec![b'a'; 25])],
            "alone, over the bound"
        );
        c.push(Bytes::from_static(b"123456"));
        c.push(Bytes::from_static(b"7890"));
        assert_eq!(c.drain().concat(), b"1234567890");
        c.push(Bytes::from_static(b"123456"));
        c.push(Bytes::from_static(b"78901"));
        assert_eq!(poll(&c), Poll::Ready(Some(frame::close(1013, ""))));
        // The mailbox has its own byte bound.
        let c = Connection::new(1, Serializer::V2, 100, 2 * MAIL_OVERHEAD + 10);
        assert!(c.mail(Mail::Disconnect, 0));
        assert!(c.mail(Mail::Disconnect, 10));
        assert!(!c.mail(Mail::Disconnect, 1));
        assert_eq!(poll(&c), Poll::Ready(Some(frame::close(1013, ""))));
    }

    #[test]
    fn overflow_closes_with_1013_and_drops_the_queue() {
        let c = Connection::new(1, Serializer::V2, 2, usize::MAX);
        for _ in 0..3 {
            c.push(Bytes::from_static(b"x"));
        }
        assert_eq!(poll(&c), Poll::Ready(Some(frame::close(1013, ""))));
        assert_eq!(poll(&c), Poll::Ready(None));
        let w = noop_waker();
        assert!(matches!(
            c.poll_mail(&mut Context::from_waker(&w)),
            Poll::Ready(None)
        ));
    }
}
