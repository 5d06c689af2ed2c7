//! V2 JSON: every message is `[join_ref, ref, topic, event, payload]` in a text frame.

use super::{write_json, DecodeError, Message, Outbound, Payload, Ref};
use bytes::{BufMut, BytesMut};
use serde::de::{self, Deserializer, IgnoredAny, SeqAccess, Visitor};
use serde_json::Value;
use std::fmt;

pub(super) fn decode(data: &[u8]) -> Result<Message, DecodeError> {
    let mut de = serde_json::Deserializer::from_slice(data);
    let msg = de
        .deserialize_seq(ArrayVisitor)
        .and_then(|m| de.end().map(|_| m))
        .map_err(|e| DecodeError(format!("invalid V2 frame: {e}")))?;
    Ok(msg)
}

/// Reads the array straight into a `Message`, without an intermediate `Vec<Value>`.
struct ArrayVisitor;

impl<'de> Visitor<'de> for ArrayVisitor {
    type Value = Message;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an array [join_ref, ref, topic, event, payload]")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Message, A::Error> {
        let missing = |i| de::Error::invalid_length(i, &"at least 5 elements");
        let join_ref: Ref = seq.next_element()?.ok_or_else(|| missing(0))?;
        let ref_: Ref = seq.next_element()?.ok_or_else(|| missing(1))?;
        let topic: String = seq.next_element()?.ok_or_else(|| missing(2))?;
        let event: String = seq.next_element()?.ok_or_else(|| missing(3))?;
        let payload: Value = seq.next_element()?.ok_or_else(|| missing(4))?;
        // Phoenix ignores elements after the fifth.
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Message {
            join_ref,
            ref_,
            topic,
            event,
            payload: Payload::Json(payload),
        })
    }
}

pub(super) fn encode(msg: &Outbound<'_>, out: &mut BytesMut) {
    const NULL: Ref = Value::Null;
    let (join_ref, ref_, topic, event) = match *msg {
        Outbound::Reply {
            join_ref,
            ref_,
            topic,
            ..
        } => (join_ref, ref_, topic, "phx_reply"),
        Outbound::Push {
            join_ref,
            topic,
            event,
            ..
        } => (join_ref, &NULL, topic, event),
        Outbound::Broadcast { topic, event, .. } => (&NULL, &NULL, topic, event),
        Outbound::Control {
            join_ref,
            topic,
            event,
            ..
        } => (join_ref, join_ref, topic, event),
    };
    out.put_u8(b'[');
    write_json(out, join_ref);
    out.put_u8(b',');
    write_json(out, ref_);
    out.put_u8(b',');
    write_json(out, topic);
    out.put_u8(b',');
    write_json(out, event);
    out.put_u8(b',');
    write_payload(msg, out);
    out.put_u8(b']');
}

/// The payload as Phoenix writes it: replies wrap theirs as `{"response":…,"status":…}` (Phoenix
/// emits small maps with sorted keys, so `response` comes first).
pub(super) fn write_payload(msg: &Outbound<'_>, out: &mut BytesMut) {
    match *msg {
        Outbound::Reply {
            status, response, ..
        } => {
            out.put_slice(b"{\"response\":");
            write_json_payload(response, out);
            out.put_slice(b",\"status\":");
            write_json(out, status);
            out.put_u8(b'}');
        }
        Outbound::Push { payload, .. }
        | Outbound::Broadcast { payload, .. }
        | Outbound::Control { payload, .. } => write_json_payload(payload, out),
    }
}

fn write_json_payload(payload: &Payload, out: &mut BytesMut) {
    match payload {
        Payload::Json(v) => write_json(out, v),
        // Callers route binary payloads to the binary encoder; never reached for JSON frames.
        Payload::Binary(_) => out.put_slice(b"null"),
        Payload::UserBroadcast(u) => write_user_broadcast(&u.event, &u.data, out),
    }
}

/// A JSON user broadcast as V1 sockets get it: keys sorted, the payload's text as it came (it
/// was checked to be JSON when decoded).
pub(super) fn write_user_broadcast(event: &str, json: &[u8], out: &mut BytesMut) {
    out.put_slice(b"{\"event\":");
    write_json(out, event);
    out.put_slice(b",\"payload\":");
    out.put_slice(json);
    out.put_slice(b",\"type\":\"broadcast\"}");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{FrameKind, Serializer};
    use serde_json::json;

    fn enc(msg: Outbound<'_>) -> String {
        let mut out = BytesMut::new();
        assert_eq!(
            Serializer::V2.encode(&msg, &mut out).unwrap(),
            FrameKind::Text
        );
        String::from_utf8(out.to_vec()).unwrap()
    }

    #[test]
    fn decodes_a_join() {
        let m = decode(br#"["1","1","community:feed","phx_join",{}]"#).unwrap();
        assert_eq!(m.join_ref, json!("1"));
        assert_eq!(m.ref_, json!("1"));
        assert_eq!(m.topic, "community:feed");
        assert_eq!(m.event, "phx_join");
        assert_eq!(m.payload, Payload::Json(json!({})));
    }

    #[test]
    fn decodes_null_join_ref_numeric_ref_and_extra_elements() {
        let m = decode(br#"[null,1,"phoenix","heartbeat",{},"extra",[1]]"#).unwrap();
        assert_eq!(m.join_ref, Value::Null);
        assert_eq!(m.ref_, json!(1));
        let m = decode(br#"["1","1","channel:x","phx_join","notamap"]"#).unwrap();
        assert_eq!(m.payload, Payload::Json(json!("notamap")));
    }

    #[test]
    fn rejects_malformed_frames() {
        for bad in [
            &b"not json"[..],
            br#"[null,"1","phoenix","heartbeat"]"#,
            br#"{"topic":"phoenix","event":"heartbeat","payload":{},"ref":"1"}"#,
            br#"[null,"1",5,"heartbeat",{}]"#,
            br#"[null,"1","phoenix",null,{}]"#,
            br#"[null,"1","phoenix","heartbeat",{}] trailing"#,
            b"",
        ] {
            assert!(decode(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn encodes_replies_byte_for_byte() {
        let (j, r) = (json!("1"), json!("2"));
        let resp = Payload::Json(json!({"x": 1, "s": "abc"}));
        assert_eq!(
            enc(Outbound::Reply {
                join_ref: &j,
                ref_: &r,
                topic: "community:feed",
                status: "ok",
                response: &resp
            }),
            r#"["1","2","community:feed","phx_reply",{"response":{"s":"abc","x":1},"status":"ok"}]"#
        );
        let (null, one) = (Value::Null, json!(1));
        let empty = Payload::empty();
        assert_eq!(
            enc(Outbound::Reply {
                join_ref: &null,
                ref_: &one,
                topic: "phoenix",
                status: "ok",
                response: &empty
            }),
            r#"[null,1,"phoenix","phx_reply",{"response":{},"status":"ok"}]"#
        );
    }

    #[test]
    fn encodes_push_broadcast_and_control() {
        let j = json!("1");
        let p = Payload::Json(json!({"u1": {"metas": []}}));
        assert_eq!(
            enc(Outbound::Push {
                join_ref: &j,
                topic: "channel:lobby",
                event: "presence_state",
                payload: &p
            }),
            r#"["1",null,"channel:lobby","presence_state",{"u1":{"metas":[]}}]"#
        );
        let b = Payload::Json(json!({"body": "hello", "n": 1}));
        assert_eq!(
            enc(Outbound::Broadcast {
                topic: "community:feed",
                event: "new_post",
                payload: &b
            }),
            r#"[null,null,"community:feed","new_post",{"body":"hello","n":1}]"#
        );
        assert_eq!(
            enc(Outbound::Control {
                join_ref: &j,
                topic: "community:feed",
                event: "phx_close",
                payload: &Payload::empty()
            }),
            r#"["1","1","community:feed","phx_close",{}]"#
        );
    }

    #[test]
    fn escapes_strings() {
        let b = Payload::empty();
        assert_eq!(
            enc(Outbound::Broadcast {
                topic: "a\"b\\c\u{1}é",
                event: "e",
                payload: &b
            }),
            "[null,null,\"a\\\"b\\\\c\\u0001é\",\"e\",{}]"
        );
    }
}
