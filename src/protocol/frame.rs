//! Server-to-client WebSocket frames (RFC 6455 §5.2), built whole so that one broadcast's bytes,
//! header included, can be shared by every subscriber and written as they are. Pure code.

use super::FrameKind;
use bytes::{Buf, BufMut, Bytes, BytesMut};

/// The longest header a server frame needs: 2 bytes plus an 8-byte length, no mask.
pub const MAX_HEADER: usize = 10;

const OP_TEXT: u8 = 0x1;
const OP_BINARY: u8 = 0x2;
const OP_CLOSE: u8 = 0x8;
const OP_PONG: u8 = 0xA;
const FIN: u8 = 0x80;

/// A buffer with room reserved for the header, so the body can be encoded in place.
pub fn start(capacity: usize) -> BytesMut {
    let mut buf = BytesMut::with_capacity(MAX_HEADER + capacity);
    buf.put_bytes(0, MAX_HEADER);
    buf
}

/// Writes the header in front of the body that follows the reserved room, and drops the room
/// it did not need.
pub fn finish(mut buf: BytesMut, kind: FrameKind) -> Bytes {
    let opcode = match kind {
        FrameKind::Text => OP_TEXT,
        FrameKind::Binary => OP_BINARY,
    };
    let mut header = [0u8; MAX_HEADER];
    let n = write_header(&mut header, opcode, buf.len() - MAX_HEADER);
    let at = MAX_HEADER - n;
    buf[at..MAX_HEADER].copy_from_slice(&header[..n]);
    buf.advance(at);
    buf.freeze()
}

/// A close frame with a status code and a (possibly empty) UTF-8 reason of at most 123 bytes.
pub fn close(code: u16, reason: &str) -> Bytes {
    let mut reason = reason;
    while reason.len() > 123 {
        // Cut on a char boundary: control frame payloads are limited to 125 bytes.
        let mut end = 123;
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        reason = &reason[..end];
    }
    let mut payload = Vec::with_capacity(2 + reason.len());
    payload.extend_from_slice(&code.to_be_bytes());
    payload.extend_from_slice(reason.as_bytes());
    control(OP_CLOSE, &payload)
}

/// A pong echoing the ping's payload (at most 125 bytes, as the ping's was).
pub fn pong(payload: &[u8]) -> Bytes {
    control(OP_PONG, &payload[..payload.len().min(125)])
}

fn control(opcode: u8, payload: &[u8]) -> Bytes {
    let mut header = [0u8; MAX_HEADER];
    let n = write_header(&mut header, opcode, payload.len());
    let mut buf = BytesMut::with_capacity(n + payload.len());
    buf.put_slice(&header[..n]);
    buf.put_slice(payload);
    buf.freeze()
}

fn write_header(out: &mut [u8; MAX_HEADER], opcode: u8, len: usize) -> usize {
    out[0] = FIN | opcode;
    if len < 126 {
        out[1] = len as u8;
        2
    } else if len <= u16::MAX as usize {
        out[1] = 126;
        out[2..4].copy_from_slice(&(len as u16).to_be_bytes());
        4
    } else {
        out[1] = 127;
        out[2..10].copy_from_slice(&(len as u64).to_be_bytes());
        10
    }
}

/// What a whole server frame carries: its opcode and the offset of its payload.
/// `None` for a slice that is not one complete unmasked frame.
pub fn parse(frame: &[u8]) -> Option<(Opcode, usize)> {
    let (&b0, rest) = frame.split_first()?;
    let &b1 = rest.first()?;
    let (len, at) = match b1 & 0x7f {
        126 => (
            u16::from_be_bytes(frame.get(2..4)?.try_into().ok()?) as usize,
            4,
        ),
        127 => (
            u64::from_be_bytes(frame.get(2..10)?.try_into().ok()?) as usize,
            10,
        ),
        n => (n as usize, 2),
    };
    if b1 & 0x80 != 0 || frame.len() != at + len {
        return None;
    }
    let op = match b0 & 0x0f {
        OP_TEXT => Opcode::Text,
        OP_BINARY => Opcode::Binary,
        OP_CLOSE => Opcode::Close,
        OP_PONG => Opcode::Pong,
        _ => return None,
    };
    Some((op, at))
}

/// The opcodes the server sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opcode {
    Text,
    Binary,
    Close,
    Pong,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framed(body: &[u8], kind: FrameKind) -> Bytes {
        let mut buf = start(body.len());
        buf.put_slice(body);
        finish(buf, kind)
    }

    #[test]
    fn short_text_frame() {
        assert_eq!(&framed(b"hi", FrameKind::Text)[..], b"\x81\x02hi");
        assert_eq!(&framed(b"", FrameKind::Binary)[..], b"\x82\x00");
    }

    #[test]
    fn length_boundaries() {
        let f = framed(&[7u8; 125], FrameKind::Text);
        assert_eq!(&f[..2], &[0x81, 125]);
        assert_eq!(f.len(), 127);
        let f = framed(&[7u8; 126], FrameKind::Binary);
        assert_eq!(&f[..4], &[0x82, 126, 0, 126]);
        assert_eq!(f.len(), 130);
        let f = framed(&[7u8; 65535], FrameKind::Text);
        assert_eq!(&f[..4], &[0x81, 126, 0xff, 0xff]);
        let f = framed(&[7u8; 65536], FrameKind::Text);
        assert_eq!(&f[..10], &[0x81, 127, 0, 0, 0, 0, 0, 1, 0, 0]);
        assert_eq!(f.len(), 65546);
        for (len, at) in [(0, 2), (125, 2), (126, 4), (65535, 4), (65536, 10)] {
            let f = framed(&vec![1u8; len], FrameKind::Text);
            assert_eq!(parse(&f), Some((Opcode::Text, at)), "{len}");
        }
    }

    #[test]
    fn close_and_pong() {
        assert_eq!(&close(1001, "")[..], &[0x88, 2, 0x03, 0xe9]);
        assert_eq!(&close(1011, "bad")[..], b"\x88\x05\x03\xf3bad");
        let long = "é".repeat(100);
        let c = close(1000, &long);
        assert!(c.len() <= 127);
        assert_eq!(parse(&c), Some((Opcode::Close, 2)));
        assert!(std::str::from_utf8(&c[4..]).is_ok());
        assert_eq!(&pong(b"hi")[..], b"\x8a\x02hi");
    }

    #[test]
    fn parse_rejects_partial_frames() {
        assert_eq!(parse(b""), None);
        assert_eq!(parse(b"\x81"), None);
        assert_eq!(parse(b"\x81\x03hi"), None);
        assert_eq!(parse(b"\x81\x82hi\x00\x00"), None);
    }
}
