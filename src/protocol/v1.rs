//! V1 JSON: one object per text frame; what the server sends has no `join_ref` key.

use super::{v2, write_json, DecodeError, Message, Outbound, Payload, Ref};
use bytes::{BufMut, BytesMut};
use serde::Deserialize;
use serde_json::Value;

/// All four keys are required (`ref` may be null); `join_ref` is optional.
#[derive(Deserialize)]
struct V1Message {
    topic: String,
    event: String,
    payload: Value,
    #[serde(rename = "ref")]
    ref_: Option<Value>,
    #[serde(default)]
    join_ref: Value,
}

pub(super) fn decode(data: &[u8]) -> Result<Message, DecodeError> {
    // `Option<Value>` alone would accept a missing `ref`; check presence separately.
    let raw: serde_json::Map<String, Value> =
        serde_json::from_slice(data).map_err(|e| DecodeError(format!("invalid V1 frame: {e}")))?;
    if !raw.contains_key("ref") {
        return Err(DecodeError("invalid V1 frame: missing field `ref`".into()));
    }
    let m: V1Message = serde_json::from_value(Value::Object(raw))
        .map_err(|e| DecodeError(format!("invalid V1 frame: {e}")))?;
    Ok(Message {
        join_ref: m.join_ref,
        ref_: m.ref_.unwrap_or(Value::Null),
        topic: m.topic,
        event: m.event,
        payload: Payload::Json(m.payload),
    })
}

pub(super) fn encode(msg: &Outbound<'_>, out: &mut BytesMut) {
    const NULL: Ref = Value::Null;
    let (ref_, topic, event) = match *msg {
        Outbound::Reply { ref_, topic, .. } => (ref_, topic, "phx_reply"),
        Outbound::Push { topic, event, .. } | Outbound::Broadcast { topic, event, .. } => {
            (&NULL, topic, event)
        }
        Outbound::Control {
            join_ref,
            topic,
            event,
            ..
        } => (join_ref, topic, event),
    };
    // Keys in sorted order, as Phoenix emits them.
    out.put_slice(b"{\"event\":");
    write_json(out, event);
    out.put_slice(b",\"payload\":");
    v2::write_payload(msg, out);
    out.put_slice(b",\"ref\":");
    write_json(out, ref_);
    out.put_slice(b",\"topic\":");
    write_json(out, topic);
    out.put_u8(b'}');
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{EncodeError, FrameKind, Serializer};
    use bytes::Bytes;
    use serde_json::json;

    fn enc(msg: Outbound<'_>) -> String {
        let mut out = BytesMut::new();
        assert_eq!(
            Serializer::V1.encode(&msg, &mut out).unwrap(),
            FrameKind::Text
        );
        String::from_utf8(out.to_vec()).unwrap()
    }

    #[test]
    fn decodes_with_and_without_join_ref() {
        let m = decode(br#"{"topic":"community:feed","event":"phx_join","payload":{},"ref":"2","join_ref":"2"}"#).unwrap();
        assert_eq!((m.join_ref, m.ref_), (json!("2"), json!("2")));
        let m =
            decode(br#"{"topic":"phoenix","event":"heartbeat","payload":{},"ref":"1"}"#).unwrap();
        assert_eq!((m.join_ref, m.ref_), (Value::Null, json!("1")));
        assert_eq!(m.topic, "phoenix");
        let m = decode(br#"{"topic":"t","event":"e","payload":{},"ref":null}"#).unwrap();
        assert_eq!(m.ref_, Value::Null);
    }

    #[test]
    fn rejects_missing_keys_and_arrays() {
        for bad in [
            &br#"{"topic":"t","event":"e","payload":{}}"#[..],
            br#"{"topic":"t","event":"e","ref":"1"}"#,
            br#"{"event":"e","payload":{},"ref":"1"}"#,
            br#"[null,"1","phoenix","heartbeat",{}]"#,
            b"not json",
        ] {
            assert!(decode(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn encodes_as_the_transcripts_show() {
        let (j, r) = (json!("2"), json!("3"));
        let resp = Payload::Json(json!({"x": 1}));
        assert_eq!(
            enc(Outbound::Reply {
                join_ref: &j,
                ref_: &r,
                topic: "community:feed",
                status: "ok",
                response: &resp
            }),
            r#"{"event":"phx_reply","payload":{"response":{"x":1},"status":"ok"},"ref":"3","topic":"community:feed"}"#
        );
        let b = Payload::Json(json!({"body": "v1"}));
        assert_eq!(
            enc(Outbound::Broadcast {
                topic: "community:feed",
                event: "new_post",
                payload: &b
            }),
            r#"{"event":"new_post","payload":{"body":"v1"},"ref":null,"topic":"community:feed"}"#
        );
        assert_eq!(
            enc(Outbound::Push {
                join_ref: &j,
                topic: "channel:v1",
                event: "presence_state",
                payload: &Payload::empty()
            }),
            r#"{"event":"presence_state","payload":{},"ref":null,"topic":"channel:v1"}"#
        );
        assert_eq!(
            enc(Outbound::Control {
                join_ref: &j,
                topic: "community:feed",
                event: "phx_close",
                payload: &Payload::empty()
            }),
            r#"{"event":"phx_close","payload":{},"ref":"2","topic":"community:feed"}"#
        );
    }

    #[test]
    fn has_no_binary() {
        let p = Payload::Binary(Bytes::from_static(b"\x01"));
        let mut out = BytesMut::new();
        let msg = Outbound::Broadcast {
            topic: "t",
            event: "e",
            payload: &p,
        };
        assert_eq!(
            Serializer::V1.encode(&msg, &mut out),
            Err(EncodeError::BinaryUnsupported)
        );
        assert!(Serializer::V1.decode(FrameKind::Binary, b"\x00").is_err());
    }
}
