//! Client WebSocket frames into whole messages, with what is held bounded whatever a client
//! sends.
//!
//! Frames are parsed by actix-http's WebSocket codec (masks, opcodes, the order of fragments,
//! control frames). A reader holds two things, each bounded by the connection's limits:
//! - the frame in progress: its header and at most `max_size` bytes of payload. A frame that
//!   announces more is refused once more than that has arrived, not once all of it has;
//! - the message being put together from fragments: one buffer the fragments are appended to,
//!   grown by doubling but never past `max_size` bytes, and at most `max_fragments` frames. An
//!   empty continuation frame adds nothing to it, but each fragment is handed to the
//!   connection loop as [`Incoming::Fragment`], so it counts against the message rate.
//!
//! `fuzz/fuzz_targets/ws_fragments.rs` feeds it arbitrary bytes and checks both bounds.

use crate::metrics::ENGINE;
use actix_codec::{AsyncRead, Decoder};
use actix_http::ws::{CloseReason, Codec, Frame, Item, ProtocolError};
use bytes::{Bytes, BytesMut};
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use tokio::io::ReadBuf;

/// Bytes read at once into the stack buffer, and the step a frame in progress grows by.
pub const READ_CHUNK: usize = 4096;
/// The longest client frame header: 2 bytes, an 8-byte length and a 4-byte mask.
pub const MAX_CLIENT_HEADER: usize = 14;

/// One message from the client, or a step towards one.
#[derive(Debug, PartialEq, Eq)]
pub enum Incoming {
    Text(Bytes),
    Binary(Bytes),
    /// A fragment of a message not finished yet, taken in.
    Fragment,
    Ping(Bytes),
    Pong,
    Close(Option<CloseReason>),
}

/// Why a reader gave up; the connection then ends.
#[derive(Debug)]
pub enum ReadError {
    /// A frame, or the message its fragments add up to, over `max_size` bytes.
    TooBig,
    /// A message in more than `max_fragments` frames.
    TooManyFragments,
    /// Broken framing, a text message that is not UTF-8, or the socket failed.
    Protocol(ProtocolError),
}

impl From<ProtocolError> for ReadError {
    fn from(e: ProtocolError) -> ReadError {
        match e {
            ProtocolError::Overflow => ReadError::TooBig,
            e => ReadError::Protocol(e),
        }
    }
}

/// Parses client frames out of the bytes read so far.
pub struct Reader {
    /// Read and not yet parsed: empty, with no allocation, between frames.
    buf: BytesMut,
    codec: Codec,
    /// The message being put together: empty, with no allocation, between messages.
    message: Vec<u8>,
    /// Its frames so far.
    fragments: usize,
    text: bool,
    max_size: usize,
    max_fragments: usize,
    /// The peer has sent all it will.
    pub(crate) eof: bool,
}

impl Reader {
    /// Frames and whole messages of at most `max_size` bytes, messages in at most
    /// `max_fragments` frames. `early`: bytes that came with the upgrade request.
    pub fn new(max_size: usize, max_fragments: usize, early: &[u8]) -> Reader {
        Reader {
            buf: BytesMut::from(early),
            codec: Codec::new().max_size(max_size),
            message: Vec::new(),
            fragments: 0,
            text: false,
            max_size,
            max_fragments,
            eof: false,
        }
    }

    /// Adds bytes read from the peer.
    pub fn extend(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes held for the message being put together (its buffer's capacity): at most
    /// `max_size`.
    pub fn assembling(&self) -> usize {
        self.message.capacity()
    }

    /// Bytes read and not parsed yet: at most a frame's header and `max_size` bytes, plus
    /// what the last read added.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// The next message, or fragment, in what has been read, if any. After an error the
    /// reader is done with.
    pub fn parse(&mut self) -> Option<Result<Incoming, ReadError>> {
        let frame = match self.codec.decode(&mut self.buf) {
            Ok(Some(frame)) => frame,
            Ok(None) => {
                if self.buf.is_empty() {
                    // Give the allocation back: an idle connection holds no buffer.
                    self.buf = BytesMut::new();
                } else if self.buf.len() > MAX_CLIENT_HEADER + self.max_size {
                    // Not one whole frame in more than the longest allowed: the frame in
                    // progress is over the limit. The codec would wait for all of it.
                    return Some(Err(self.fail(ReadError::TooBig)));
                }
                return None;
            }
            Err(e) => return Some(Err(self.fail(e.into()))),
        };
        Some(match frame {
            Frame::Text(b) => text(b),
            Frame::Binary(b) => Ok(Incoming::Binary(b)),
            Frame::Ping(b) => Ok(Incoming::Ping(b)),
            Frame::Pong(_) => Ok(Incoming::Pong),
            Frame::Close(r) => Ok(Incoming::Close(r)),
            Frame::Continuation(item) => self.fragment(item),
        })
    }

    /// Appends a fragment (the codec has checked their order: first, continuations, last).
    fn fragment(&mut self, item: Item) -> Result<Incoming, ReadError> {
        let (bytes, last) = match item {
            Item::FirstText(b) => {
                self.text = true;
                (b, false)
            }
            Item::FirstBinary(b) => {
                self.text = false;
                (b, false)
            }
            Item::Continue(b) => (b, false),
            Item::Last(b) => (b, true),
        };
        self.fragments += 1;
        if self.fragments > self.max_fragments {
            return Err(self.fail(ReadError::TooManyFragments));
        }
        let len = self.message.len() + bytes.len();
        if len > self.max_size {
            return Err(self.fail(ReadError::TooBig));
        }
        self.reserve(len);
        self.message.extend_from_slice(&bytes);
        if !last {
            return Ok(Incoming::Fragment);
        }
        let whole = Bytes::from(self.release());
        if self.text {
            text(whole)
        } else {
            Ok(Incoming::Binary(whole))
        }
    }

    /// Room for `len` bytes in the message: doubling, so that many small fragments cost few
    /// copies, but never past `max_size` (`len` is within it).
    fn reserve(&mut self, len: usize) {
        let cap = self.message.capacity();
        if len <= cap {
            return;
        }
        let want = len.max(cap.saturating_mul(2).min(self.max_size));
        self.message.reserve_exact(want - self.message.len());
        ENGINE.assembling((self.message.capacity() - cap) as i64);
    }

    /// Takes the message buffer, ending the message.
    fn release(&mut self) -> Vec<u8> {
        ENGINE.assembling(-(self.message.capacity() as i64));
        self.fragments = 0;
        std::mem::take(&mut self.message)
    }

    fn fail(&mut self, e: ReadError) -> ReadError {
        self.release();
        e
    }

    /// Reads what the socket has: into the stack when no frame is in progress (nothing is
    /// allocated if nothing came), else onto the frame's own buffer. `Ready(Ok(0))`: end of
    /// stream.
    pub(crate) fn poll_fill<T: AsyncRead + Unpin>(
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

impl Drop for Reader {
    fn drop(&mut self) {
        ENGINE.assembling(-(self.message.capacity() as i64));
    }
}

/// A text message must be UTF-8 (actix-ws answered an invalid one with an IO error).
fn text(b: Bytes) -> Result<Incoming, ReadError> {
    match std::str::from_utf8(&b) {
        Ok(_) => Ok(Incoming::Text(b)),
        Err(e) => Err(ReadError::Protocol(ProtocolError::Io(io::Error::new(
            io::ErrorKind::InvalidData,
            e,
        )))),
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

    fn all(r: &mut Reader) -> Vec<Incoming> {
        std::iter::from_fn(|| r.parse())
            .map(Result::unwrap)
            .collect()
    }

    #[test]
    fn parses_frames_split_anywhere_and_gives_the_buffer_back() {
        let mut wire = client_frame(0x81, b"hello");
        wire.extend(client_frame(0x89, b"p"));
        wire.extend(client_frame(0x82, &[7u8; 300]));
        for cut in 0..wire.len() {
            let mut r = Reader::new(1000, 10, &wire[..cut]);
            let mut got = all(&mut r);
            r.extend(&wire[cut..]);
            got.extend(all(&mut r));
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
    fn fragments_are_appended_into_one_buffer_within_the_limits() {
        let mut wire = client_frame(0x01, b"he");
        wire.extend(client_frame(0x8a, b"")); // a pong between fragments
        wire.extend(client_frame(0x00, b"ll"));
        wire.extend(client_frame(0x80, b"o"));
        let mut r = Reader::new(10, 3, &wire);
        assert_eq!(
            all(&mut r),
            vec![
                Incoming::Fragment,
                Incoming::Pong,
                Incoming::Fragment,
                Incoming::Text(Bytes::from_static(b"hello")),
            ]
        );
        assert_eq!(r.assembling(), 0, "the buffer went with the message");

        // Over the byte limit in fragments: 1009, as for one frame.
        let mut wire = client_frame(0x02, &[1; 6]);
        wire.extend(client_frame(0x80, &[1; 6]));
        let mut r = Reader::new(10, 3, &wire);
        assert_eq!(r.parse().unwrap().unwrap(), Incoming::Fragment);
        assert_eq!(r.assembling(), 6);
        assert!(matches!(r.parse(), Some(Err(ReadError::TooBig))));
        assert_eq!(r.assembling(), 0);
    }

    #[test]
    fn empty_fragments_hold_nothing_and_stop_at_the_fragment_limit() {
        let mut wire = client_frame(0x01, b"");
        for _ in 0..99 {
            wire.extend(client_frame(0x00, b""));
        }
        let mut r = Reader::new(1000, 100, &wire);
        for _ in 0..100 {
            assert_eq!(r.parse().unwrap().unwrap(), Incoming::Fragment);
            assert_eq!(r.assembling(), 0);
        }
        assert!(r.parse().is_none());
        r.extend(&client_frame(0x80, b""));
        assert!(matches!(r.parse(), Some(Err(ReadError::TooManyFragments))));
    }

    #[test]
    fn the_message_buffer_doubles_up_to_the_limit_and_no_further() {
        let mut r = Reader::new(1000, 100, &client_frame(0x02, &[0; 100]));
        let mut caps = vec![];
        assert_eq!(r.parse().unwrap().unwrap(), Incoming::Fragment);
        caps.push(r.assembling());
        for _ in 0..8 {
            r.extend(&client_frame(0x00, &[0; 100]));
            assert_eq!(r.parse().unwrap().unwrap(), Incoming::Fragment);
            caps.push(r.assembling());
        }
        assert_eq!(caps, [100, 200, 400, 400, 800, 800, 800, 800, 1000]);
        r.extend(&client_frame(0x80, &[0; 100]));
        assert_eq!(
            r.parse().unwrap().unwrap(),
            Incoming::Binary(Bytes::from(vec![0; 1000]))
        );
    }

    #[test]
    fn a_frame_announcing_more_than_the_limit_is_refused_before_it_arrives() {
        // A header announcing 2^40 bytes, then the first of them.
        let mut wire = vec![0x82, 0x80 | 127];
        wire.extend_from_slice(&(1u64 << 40).to_be_bytes());
        wire.extend_from_slice(&[0; 4]);
        let mut r = Reader::new(100, 10, &wire);
        assert!(r.parse().is_none());
        r.extend(&[0; 100]);
        assert!(
            r.parse().is_none(),
            "all of it might still be within the limit"
        );
        r.extend(&[0]);
        assert!(matches!(r.parse(), Some(Err(ReadError::TooBig))));
    }

    #[test]
    fn broken_frames_give_the_errors_actix_ws_gave() {
        let mut r = Reader::new(4, 10, &client_frame(0x81, b"12345"));
        assert!(matches!(r.parse(), Some(Err(ReadError::TooBig))));
        let mut r = Reader::new(100, 10, &[0x81, 0x02, b'h', b'i']);
        assert!(matches!(
            r.parse(),
            Some(Err(ReadError::Protocol(ProtocolError::UnmaskedFrame)))
        ));
        let mut r = Reader::new(100, 10, &client_frame(0x81, &[0xff, 0xfe]));
        assert!(matches!(
            r.parse(),
            Some(Err(ReadError::Protocol(ProtocolError::Io(_))))
        ));
        let mut r = Reader::new(100, 10, &client_frame(0x80, b"x"));
        assert!(matches!(
            r.parse(),
            Some(Err(ReadError::Protocol(
                ProtocolError::ContinuationNotStarted
            )))
        ));
    }
}
