//! Phoenix Channels messages and their serializers, and the WebSocket frames the server sends
//! them in: pure code, no IO.
//!
//! A client frame decodes into a [`Message`]; everything the server sends is an [`Outbound`],
//! encoded by the [`Serializer`] the client negotiated with `vsn` into a whole frame
//! ([`frame`]).

pub mod binary;
pub mod frame;
mod v1;
mod v2;

use bytes::{Bytes, BytesMut};
use serde_json::Value;
use std::fmt;

/// A `ref` or `join_ref`: an opaque JSON value the server echoes back unchanged (a ref sent as
/// a number comes back as a number). `Value::Null` is the protocol's null.
pub type Ref = Value;

/// What a message carries: JSON, raw bytes from a V2 binary frame, or a Supabase user
/// broadcast (V2 binary kinds 3 and 4).
#[derive(Debug, Clone, PartialEq)]
pub enum Payload {
    Json(Value),
    Binary(Bytes),
    UserBroadcast(UserBroadcast),
}

/// A Supabase user broadcast: `channel.send({type: "broadcast", event, payload})` as
/// `@supabase/realtime-js` (2.91 and later) sends it in a binary frame of kind 3, relayed to V2
/// sockets as kind 4 with its payload byte for byte, and to V1 sockets as the JSON
/// `{"event", "payload", "type": "broadcast"}` (a binary payload cannot reach them).
#[derive(Debug, Clone, PartialEq)]
pub struct UserBroadcast {
    pub event: String,
    /// `data` is JSON text (checked when decoded), or else raw bytes.
    pub json: bool,
    pub data: Bytes,
}

impl Payload {
    /// The empty JSON object, `{}`.
    pub fn empty() -> Payload {
        Payload::Json(Value::Object(Default::default()))
    }

    /// The JSON value, or `None` for a binary payload.
    pub fn json(&self) -> Option<&Value> {
        match self {
            Payload::Json(v) => Some(v),
            _ => None,
        }
    }

    /// Bytes of the payload encoded (JSON text, or the binary itself), counted without
    /// allocating: what a size limit compares.
    pub fn encoded_len(&self) -> usize {
        match self {
            Payload::Json(v) => json_len(v),
            Payload::Binary(b) => b.len(),
            Payload::UserBroadcast(u) => u.data.len(),
        }
    }
}

/// Whether `bytes` are one JSON text, in UTF-8 throughout (serde_json skips over strings it
/// is only asked to validate without checking their UTF-8).
pub fn is_json(bytes: &[u8]) -> bool {
    std::str::from_utf8(bytes).is_ok()
        && serde_json::from_slice::<serde::de::IgnoredAny>(bytes).is_ok()
}

/// Bytes of a JSON value's compact text.
pub fn json_len(v: &Value) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut c = Count(0);
    // Writing a Value to an infallible sink cannot fail.
    let _ = serde_json::to_writer(&mut c, v);
    c.0
}

impl From<Value> for Payload {
    fn from(v: Value) -> Self {
        Payload::Json(v)
    }
}

impl From<Bytes> for Payload {
    fn from(b: Bytes) -> Self {
        Payload::Binary(b)
    }
}

/// A message from a client.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    pub join_ref: Ref,
    pub ref_: Ref,
    pub topic: String,
    pub event: String,
    pub payload: Payload,
}

/// Something the server sends. Each variant fixes which of `join_ref` and `ref` the wire carries.
#[derive(Debug, Clone, Copy)]
pub enum Outbound<'a> {
    /// `phx_reply` to a client message: echoes its ref, carries the channel's join_ref.
    Reply {
        join_ref: &'a Ref,
        ref_: &'a Ref,
        topic: &'a str,
        status: &'a str,
        response: &'a Payload,
    },
    /// A channel's own push: join_ref set, ref null.
    Push {
        join_ref: &'a Ref,
        topic: &'a str,
        event: &'a str,
        payload: &'a Payload,
    },
    /// A broadcast delivered as is: join_ref and ref both null.
    Broadcast {
        topic: &'a str,
        event: &'a str,
        payload: &'a Payload,
    },
    /// `phx_close` / `phx_error`: the join_ref in both the join_ref and the ref slot.
    Control {
        join_ref: &'a Ref,
        topic: &'a str,
        event: &'a str,
        payload: &'a Payload,
    },
}

/// WebSocket opcode an encoded message needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameKind {
    Text,
    Binary,
}

/// The serializer a socket negotiated with its `vsn` parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Serializer {
    /// `vsn=1.0.x` or no vsn: JSON objects, no `join_ref` in what the server sends.
    V1,
    /// `vsn=2.0.x`: JSON arrays, and binary frames for binary payloads.
    V2,
}

/// Why a client frame could not be decoded. The socket that sent it is closed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError(pub String);

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Why a message could not be encoded for a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EncodeError {
    /// V1 has no binary frames.
    BinaryUnsupported,
    /// A binary frame's join_ref, ref, topic, event or status is over 255 bytes.
    FieldTooLong(&'static str),
}

impl fmt::Display for EncodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EncodeError::BinaryUnsupported => f.write_str("binary payload on a V1 socket"),
            EncodeError::FieldTooLong(field) => {
                write!(f, "binary frame {field} longer than 255 bytes")
            }
        }
    }
}

impl Serializer {
    /// Picks the serializer for a `vsn` query value: `None` means no vsn (V1). An unsupported
    /// or malformed version gives `None`, and the connect is refused.
    pub fn from_vsn(vsn: Option<&str>) -> Option<Serializer> {
        let Some(vsn) = vsn else {
            return Some(Serializer::V1);
        };
        // A full x.y.z semver, matched as Phoenix matches "~> 1.0.0" and "~> 2.0.0".
        let parts: Vec<&str> = vsn.split('.').collect();
        let numeric = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        if parts.len() != 3 || !parts.iter().all(|p| numeric(p)) {
            return None;
        }
        let num = |s: &str| s.parse::<u64>().ok();
        match (num(parts[0]), num(parts[1])) {
            (Some(1), Some(0)) => Some(Serializer::V1),
            (Some(2), Some(0)) => Some(Serializer::V2),
            _ => None,
        }
    }

    /// Decodes one client frame.
    pub fn decode(self, kind: FrameKind, data: &[u8]) -> Result<Message, DecodeError> {
        match (self, kind) {
            (Serializer::V1, FrameKind::Text) => v1::decode(data),
            (Serializer::V2, FrameKind::Text) => v2::decode(data),
            (Serializer::V2, FrameKind::Binary) => binary::decode(data),
            (Serializer::V1, FrameKind::Binary) => {
                Err(DecodeError("binary frame on a V1 socket".into()))
            }
        }
    }

    /// Appends the encoded message to `out` and says which opcode it needs.
    pub fn encode(self, msg: &Outbound<'_>, out: &mut BytesMut) -> Result<FrameKind, EncodeError> {
        let binary = match msg {
            Outbound::Reply { response: p, .. }
            | Outbound::Push { payload: p, .. }
            | Outbound::Broadcast { payload: p, .. }
            | Outbound::Control { payload: p, .. } => match p {
                Payload::Json(_) => false,
                Payload::Binary(_) => true,
                // V1 gets a JSON user broadcast as text; a binary one it cannot receive.
                Payload::UserBroadcast(u) => self == Serializer::V2 || !u.json,
            },
        };
        match (self, binary) {
            (Serializer::V1, false) => {
                v1::encode(msg, out);
                Ok(FrameKind::Text)
            }
            (Serializer::V2, false) => {
                v2::encode(msg, out);
                Ok(FrameKind::Text)
            }
            (Serializer::V2, true) => binary::encode(msg, out).map(|_| FrameKind::Binary),
            (Serializer::V1, true) => Err(EncodeError::BinaryUnsupported),
        }
    }
}

/// Writes a JSON value. Serializing a `Value` or `&str` into memory cannot fail.
fn write_json<T: serde::Serialize + ?Sized>(out: &mut BytesMut, value: &T) {
    use bytes::BufMut;
    serde_json::to_writer(out.writer(), value).expect("JSON into memory");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vsn_negotiation() {
        assert_eq!(Serializer::from_vsn(None), Some(Serializer::V1));
        assert_eq!(Serializer::from_vsn(Some("1.0.0")), Some(Serializer::V1));
        assert_eq!(Serializer::from_vsn(Some("1.0.7")), Some(Serializer::V1));
        assert_eq!(Serializer::from_vsn(Some("2.0.0")), Some(Serializer::V2));
        assert_eq!(Serializer::from_vsn(Some("2.0.3")), Some(Serializer::V2));
        for bad in [
            "2.1.0", "3.0.0", "2.0", "2", "", "x.y.z", "2.0.0-rc", "1.1.0", "2.0.-1",
        ] {
            assert_eq!(Serializer::from_vsn(Some(bad)), None, "{bad}");
        }
    }
}
