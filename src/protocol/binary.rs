//! V2 binary frames. Every length is one unsigned byte and the payload is the rest of the frame.
//!
//! ```text
//! client push  0x00 len(join_ref) len(ref) len(topic) len(event)  join_ref ref topic event payload
//! server push  0x00 len(join_ref) len(topic) len(event)            join_ref topic event payload
//! reply        0x01 len(join_ref) len(ref) len(topic) len(status)  join_ref ref topic status payload
//! broadcast    0x02 len(topic) len(event)                          topic event payload
//! ```
//!
//! Supabase's V2 adds two kinds for user broadcasts (`realtime-js` `lib/serializer.ts`), whose
//! encoding byte says whether the payload is JSON text (1) or raw bytes (0):
//!
//! ```text
//! user push       0x03 len(join_ref) len(ref) len(topic) len(event) len(meta) encoding
//!                      join_ref ref topic event meta payload
//! user broadcast  0x04 len(topic) len(event) len(meta) encoding  topic event meta payload
//! ```

use super::{DecodeError, EncodeError, Message, Outbound, Payload, Ref, UserBroadcast};
use bytes::{BufMut, Bytes, BytesMut};
use serde_json::Value;

const PUSH: u8 = 0;
const REPLY: u8 = 1;
const BROADCAST: u8 = 2;
const USER_PUSH: u8 = 3;
const USER_BROADCAST: u8 = 4;

/// The encoding byte of kinds 3 and 4.
const RAW: u8 = 0;
const JSON: u8 = 1;

pub(super) fn decode(data: &[u8]) -> Result<Message, DecodeError> {
    let err = |why: &str| DecodeError(format!("invalid binary frame: {why}"));
    let (&kind, rest) = data.split_first().ok_or_else(|| err("empty"))?;
    // The lengths' bytes, then (kind 3) the encoding byte.
    let header = match kind {
        PUSH => 4,
        USER_PUSH => 6,
        _ => return Err(err(&format!("kind {kind} is not a client push"))),
    };
    if rest.len() < header {
        return Err(err(&format!("header shorter than {} bytes", header + 1)));
    }
    let mut body = &rest[header..];
    let mut field = |len: u8, name: &str| -> Result<String, DecodeError> {
        let len = usize::from(len);
        if body.len() < len {
            return Err(err(&format!("{name} runs past the end")));
        }
        let (s, tail) = body.split_at(len);
        body = tail;
        String::from_utf8(s.to_vec()).map_err(|_| err(&format!("{name} is not UTF-8")))
    };
    let join_ref = field(rest[0], "join_ref")?;
    let ref_ = field(rest[1], "ref")?;
    let topic = field(rest[2], "topic")?;
    let event = field(rest[3], "event")?;
    let payload = if kind == USER_PUSH {
        // The metadata (`{"persist":true}` at most) asks for features Fawkes does not have.
        field(rest[4], "metadata")?;
        let json = match rest[5] {
            JSON => true,
            RAW => false,
            other => return Err(err(&format!("payload encoding {other} is neither 0 nor 1"))),
        };
        if json && !super::is_json(body) {
            return Err(err("payload marked JSON is not JSON"));
        }
        let user = UserBroadcast {
            event,
            json,
            data: Bytes::copy_from_slice(body),
        };
        return Ok(Message {
            join_ref: Value::String(join_ref),
            ref_: Value::String(ref_),
            topic,
            event: "broadcast".into(),
            payload: Payload::UserBroadcast(user),
        });
    } else {
        Payload::Binary(Bytes::copy_from_slice(body))
    };
    Ok(Message {
        join_ref: Value::String(join_ref),
        ref_: Value::String(ref_),
        topic,
        event,
        payload,
    })
}

pub(super) fn encode(msg: &Outbound<'_>, out: &mut BytesMut) -> Result<(), EncodeError> {
    let (Outbound::Reply {
        topic,
        response: payload,
        ..
    }
    | Outbound::Push { topic, payload, .. }
    | Outbound::Broadcast { topic, payload, .. }
    | Outbound::Control { topic, payload, .. }) = *msg;
    if let Payload::UserBroadcast(u) = payload {
        let fields = [
            ("topic", topic.as_bytes()),
            ("event", u.event.as_bytes()),
            ("metadata", &[][..]),
        ];
        let encoding = if u.json { JSON } else { RAW };
        return write(out, USER_BROADCAST, &fields, Some(encoding), &u.data);
    }
    let Payload::Binary(data) = payload else {
        unreachable!("only binary payloads are encoded as binary frames")
    };
    match *msg {
        Outbound::Reply {
            join_ref,
            ref_,
            topic,
            status,
            ..
        } => {
            let (j, r) = (ref_text(join_ref), ref_text(ref_));
            let fields = [
                ("join_ref", j.as_bytes()),
                ("ref", r.as_bytes()),
                ("topic", topic.as_bytes()),
                ("status", status.as_bytes()),
            ];
            write(out, REPLY, &fields, None, data)
        }
        Outbound::Push {
            join_ref,
            topic,
            event,
            ..
        }
        | Outbound::Control {
            join_ref,
            topic,
            event,
            ..
        } => {
            let j = ref_text(join_ref);
            let fields = [
                ("join_ref", j.as_bytes()),
                ("topic", topic.as_bytes()),
                ("event", event.as_bytes()),
            ];
            write(out, PUSH, &fields, None, data)
        }
        Outbound::Broadcast { topic, event, .. } => {
            let fields = [("topic", topic.as_bytes()), ("event", event.as_bytes())];
            write(out, BROADCAST, &fields, None, data)
        }
    }
}

/// Rewrites a server binary frame as the V2 JSON message phoenix.js can read where it cannot
/// receive binary (its LongPoll transport JSON-parses every message): the same message with the
/// payload as `{"binary": "<standard base64>"}`. An empty join_ref or ref becomes null.
pub fn to_json_text(frame: &[u8]) -> Option<String> {
    use base64::Engine;
    let (&kind, rest) = frame.split_first()?;
    let n = match kind {
        PUSH => 3,
        REPLY => 4,
        BROADCAST => 2,
        USER_BROADCAST => 3,
        _ => return None,
    };
    let lens: Vec<usize> = rest.get(..n)?.iter().map(|&l| l as usize).collect();
    let mut body = &rest[n..];
    let encoding = if kind == USER_BROADCAST {
        let (&e, tail) = body.split_first()?;
        body = tail;
        Some(e)
    } else {
        None
    };
    let mut fields = Vec::with_capacity(n);
    for len in lens {
        let (f, tail) = (body.get(..len)?, &body[len..]);
        fields.push(std::str::from_utf8(f).ok()?);
        body = tail;
    }
    let b64 =
        || serde_json::json!({ "binary": base64::engine::general_purpose::STANDARD.encode(body) });
    let r = |s: &str| {
        if s.is_empty() {
            Value::Null
        } else {
            Value::String(s.into())
        }
    };
    let msg = match kind {
        PUSH => serde_json::json!([r(fields[0]), null, fields[1], fields[2], b64()]),
        REPLY => serde_json::json!([
            r(fields[0]),
            r(fields[1]),
            fields[2],
            "phx_reply",
            { "response": b64(), "status": fields[3] }
        ]),
        // A JSON payload is written as it came, as V1 sockets get it.
        USER_BROADCAST if encoding == Some(JSON) => {
            let mut out = BytesMut::new();
            out.put_slice(b"[null,null,");
            super::write_json(&mut out, fields[0]);
            out.put_slice(b",\"broadcast\",");
            super::v2::write_user_broadcast(fields[1], body, &mut out);
            out.put_u8(b']');
            return String::from_utf8(out.to_vec()).ok();
        }
        USER_BROADCAST => {
            let user =
                serde_json::json!({"event": fields[1], "payload": b64(), "type": "broadcast"});
            serde_json::json!([null, null, fields[0], "broadcast", user])
        }
        _ => serde_json::json!([null, null, fields[0], fields[1], b64()]),
    };
    Some(msg.to_string())
}

/// A ref as binary frames carry it: strings as they are, null as the empty string.
fn ref_text(r: &Ref) -> std::borrow::Cow<'_, str> {
    match r {
        Value::String(s) => s.as_str().into(),
        Value::Null => "".into(),
        other => other.to_string().into(),
    }
}

/// Writes a frame: kind, the fields' lengths, the encoding byte if the kind has one, the
/// fields, the payload.
fn write(
    out: &mut BytesMut,
    kind: u8,
    fields: &[(&'static str, &[u8])],
    encoding: Option<u8>,
    data: &[u8],
) -> Result<(), EncodeError> {
    // Refuse rather than truncate: a cut topic would reach the wrong channel.
    if let Some((name, _)) = fields.iter().find(|(_, f)| f.len() > 255) {
        return Err(EncodeError::FieldTooLong(name));
    }
    out.reserve(2 + fields.len() + fields.iter().map(|(_, f)| f.len()).sum::<usize>() + data.len());
    out.put_u8(kind);
    for (_, f) in fields {
        out.put_u8(f.len() as u8);
    }
    if let Some(e) = encoding {
        out.put_u8(e);
    }
    for (_, f) in fields {
        out.put_slice(f);
    }
    out.put_slice(data);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{FrameKind, Serializer};
    use serde_json::json;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    fn enc(msg: Outbound<'_>) -> Vec<u8> {
        let mut out = BytesMut::new();
        assert_eq!(
            Serializer::V2.encode(&msg, &mut out).unwrap(),
            FrameKind::Binary
        );
        out.to_vec()
    }

    #[test]
    fn decodes_the_phoenix_js_vector() {
        let m = decode(&hex("00010101013031746501")).unwrap();
        assert_eq!((m.join_ref, m.ref_), (json!("0"), json!("1")));
        assert_eq!((m.topic.as_str(), m.event.as_str()), ("t", "e"));
        assert_eq!(m.payload, Payload::Binary(Bytes::from_static(&[1])));
    }

    #[test]
    fn decodes_the_transcript_push() {
        let m = decode(&hex(
            "0001010e043132636f6d6d756e6974793a6665656470696e67010203ff",
        ))
        .unwrap();
        assert_eq!((m.join_ref, m.ref_), (json!("1"), json!("2")));
        assert_eq!(m.topic, "community:feed");
        assert_eq!(m.event, "ping");
        assert_eq!(
            m.payload,
            Payload::Binary(Bytes::from_static(&[1, 2, 3, 255]))
        );
    }

    #[test]
    fn rejects_short_or_foreign_frames() {
        for bad in [
            "",
            "00",
            "00010101",
            "0001010105303174",
            "01010101013031746501",
            "02010101013031746501",
            "0001010101303174",
            "00000001ff",
        ] {
            assert!(decode(&hex(bad)).is_err(), "{bad}");
        }
        // An empty payload is fine.
        assert_eq!(
            decode(&hex("000101010130317465")).unwrap().payload,
            Payload::Binary(Bytes::new())
        );
        assert_eq!(
            decode(&hex("000000000174")).unwrap().payload,
            Payload::Binary(Bytes::new())
        );
    }

    #[test]
    fn encodes_the_transcript_reply_and_broadcast() {
        let (j, r) = (json!("1"), json!("2"));
        let p = Payload::Binary(Bytes::from_static(&[1, 2, 3, 255]));
        assert_eq!(
            enc(Outbound::Reply {
                join_ref: &j,
                ref_: &r,
                topic: "community:feed",
                status: "ok",
                response: &p
            }),
            hex("0101010e023132636f6d6d756e6974793a666565646f6b010203ff")
        );
        let p = Payload::Binary(Bytes::from_static(b"bin!"));
        assert_eq!(
            enc(Outbound::Broadcast {
                topic: "community:feed",
                event: "new_post",
                payload: &p
            }),
            hex("020e08636f6d6d756e6974793a666565646e65775f706f737462696e21")
        );
    }

    #[test]
    fn encodes_the_phoenix_js_vectors() {
        let p = Payload::Binary(Bytes::from_static(&[1, 1]));
        let (j, r, null) = (json!("123"), json!("12"), Value::Null);
        let mut expected = vec![0x00, 3, 3, 10];
        expected.extend_from_slice(b"123topsome-event\x01\x01");
        assert_eq!(
            enc(Outbound::Push {
                join_ref: &j,
                topic: "top",
                event: "some-event",
                payload: &p
            }),
            expected
        );
        let j100 = json!("100");
        let mut expected = vec![0x01, 3, 2, 3, 2];
        expected.extend_from_slice(b"10012topok\x01\x01");
        assert_eq!(
            enc(Outbound::Reply {
                join_ref: &j100,
                ref_: &r,
                topic: "top",
                status: "ok",
                response: &p
            }),
            expected
        );
        // A null join_ref travels as an empty string.
        let mut expected = vec![0x01, 0, 2, 3, 2];
        expected.extend_from_slice(b"12topok\x01\x01");
        assert_eq!(
            enc(Outbound::Reply {
                join_ref: &null,
                ref_: &r,
                topic: "top",
                status: "ok",
                response: &p
            }),
            expected
        );
    }

    #[test]
    fn rewrites_binary_frames_as_json_for_longpoll() {
        let reply = hex("0101010e023132636f6d6d756e6974793a666565646f6b010203ff");
        assert_eq!(
            to_json_text(&reply).unwrap(),
            r#"["1","2","community:feed","phx_reply",{"response":{"binary":"AQID/w=="},"status":"ok"}]"#
        );
        let bcast = hex("020e08636f6d6d756e6974793a666565646e65775f706f737462696e21");
        assert_eq!(
            to_json_text(&bcast).unwrap(),
            r#"[null,null,"community:feed","new_post",{"binary":"YmluIQ=="}]"#
        );
        let mut push = vec![0x00, 3, 3, 10];
        push.extend_from_slice(b"123topsome-event\x01\x01");
        assert_eq!(
            to_json_text(&push).unwrap(),
            r#"["123",null,"top","some-event",{"binary":"AQE="}]"#
        );
        assert_eq!(to_json_text(&[0x01, 5]), None);
        assert_eq!(to_json_text(&[0x07]), None);
    }

    /// The contract's capture of `realtime-js` 2.119.1: `send({type: "broadcast", event:
    /// "cursor", payload: {x: 1, y: 2}})` on `realtime:room1`, and the kind 4 relayed for it.
    #[test]
    fn decodes_supabase_user_pushes_and_encodes_user_broadcasts() {
        let push = hex("0301020e0600013631317265616c74696d653a726f6f6d31637572736f727b2278223a312c2279223a327d");
        let m = decode(&push).unwrap();
        assert_eq!((m.join_ref, m.ref_), (json!("6"), json!("11")));
        assert_eq!(
            (m.topic.as_str(), m.event.as_str()),
            ("realtime:room1", "broadcast")
        );
        let user = UserBroadcast {
            event: "cursor".into(),
            json: true,
            data: Bytes::from_static(br#"{"x":1,"y":2}"#),
        };
        assert_eq!(m.payload, Payload::UserBroadcast(user.clone()));
        let p = Payload::UserBroadcast(user);
        let out = enc(Outbound::Broadcast {
            topic: "realtime:room1",
            event: "broadcast",
            payload: &p,
        });
        assert_eq!(
            out,
            hex("040e0600017265616c74696d653a726f6f6d31637572736f727b2278223a312c2279223a327d")
        );
        assert_eq!(
            to_json_text(&out).unwrap(),
            r#"[null,null,"realtime:room1","broadcast",{"event":"cursor","payload":{"x":1,"y":2},"type":"broadcast"}]"#
        );
        // V1 sockets get the JSON one as text, keys sorted, the payload's bytes as they came.
        let mut v1 = BytesMut::new();
        let msg = Outbound::Broadcast {
            topic: "realtime:room1",
            event: "broadcast",
            payload: &p,
        };
        assert_eq!(Serializer::V1.encode(&msg, &mut v1), Ok(FrameKind::Text));
        assert_eq!(
            std::str::from_utf8(&v1).unwrap(),
            r#"{"event":"broadcast","payload":{"event":"cursor","payload":{"x":1,"y":2},"type":"broadcast"},"ref":null,"topic":"realtime:room1"}"#
        );
        // A raw payload (an ArrayBuffer) with metadata: kind 4 keeps the bytes; V1 cannot get it.
        let mut raw = vec![3, 1, 2, 14, 6, 16, 0];
        raw.extend_from_slice(b"612realtime:room1cursor{\"persist\":true}\x01\x02\x03");
        let m = decode(&raw).unwrap();
        let Payload::UserBroadcast(u) = &m.payload else {
            panic!("{m:?}")
        };
        assert_eq!(
            (u.event.as_str(), u.json, &u.data[..]),
            ("cursor", false, &[1u8, 2, 3][..])
        );
        let mut expected = vec![4, 14, 6, 0, 0];
        expected.extend_from_slice(b"realtime:room1cursor\x01\x02\x03");
        let msg = Outbound::Broadcast {
            topic: "realtime:room1",
            event: "broadcast",
            payload: &m.payload,
        };
        assert_eq!(enc(msg), expected);
        assert_eq!(
            Serializer::V1.encode(&msg, &mut BytesMut::new()),
            Err(EncodeError::BinaryUnsupported)
        );
    }

    #[test]
    fn rejects_malformed_user_pushes() {
        let ok = hex("0301020e0600013631317265616c74696d653a726f6f6d31637572736f727b7d");
        assert!(decode(&ok).is_ok());
        let mut bad: Vec<Vec<u8>> = vec![
            hex("03"),
            hex("030102"),
            hex("0301020e0600"),
            // Encoding byte neither 0 nor 1.
            hex("0301020e060002363131"),
        ];
        // Every length one too long runs past the end (the payload is only 2 bytes).
        for i in 1..=5 {
            let mut b = ok.clone();
            b[i] += 3;
            bad.push(b);
        }
        // Truncated anywhere inside the fields.
        for cut in 7..ok.len() - 2 {
            bad.push(ok[..cut].to_vec());
        }
        // Bad UTF-8 in the topic, or inside a JSON string (found by the fuzz target); a JSON
        // payload that is not JSON.
        let mut b = ok.clone();
        b[10] = 0xff;
        bad.push(b);
        let mut b = hex("0301020e0600013631317265616c74696d653a726f6f6d31637572736f72");
        b.extend_from_slice(b"{\"x\xff\":1}");
        bad.push(b);
        bad.push(hex(
            "0301020e0600013631317265616c74696d653a726f6f6d31637572736f727b",
        ));
        for b in bad {
            assert!(decode(&b).is_err(), "{b:02x?}");
        }
    }

    #[test]
    fn refuses_fields_over_255_bytes() {
        let topic = "t".repeat(256);
        let p = Payload::Binary(Bytes::from_static(&[1]));
        let mut out = BytesMut::new();
        let msg = Outbound::Broadcast {
            topic: &topic,
            event: "e",
            payload: &p,
        };
        assert_eq!(
            Serializer::V2.encode(&msg, &mut out),
            Err(EncodeError::FieldTooLong("topic"))
        );
    }
}
