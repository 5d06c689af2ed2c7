//! Supabase's user broadcasts (V2 binary kinds 3 and 4): whatever a client sends, decoding never
//! panics, and a kind 3 that decodes is relayed whole: as a kind 4 to V2 sockets (which reads
//! back as the same broadcast), as JSON text to V1 sockets when its payload is JSON, and not at
//! all to V1 sockets when it is raw bytes.
#![no_main]

use bytes::BytesMut;
use fawkes::protocol::binary::to_json_text;
use fawkes::protocol::{EncodeError, FrameKind, Outbound, Payload, Serializer};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let Ok(m) = Serializer::V2.decode(FrameKind::Binary, data) else {
        return;
    };
    let Payload::UserBroadcast(u) = &m.payload else {
        return;
    };
    assert_eq!((data[0], m.event.as_str()), (3, "broadcast"));
    assert!(data.ends_with(&u.data), "the payload is the frame's tail");
    let msg = Outbound::Broadcast {
        topic: &m.topic,
        event: "broadcast",
        payload: &m.payload,
    };
    let mut v2 = BytesMut::new();
    assert_eq!(Serializer::V2.encode(&msg, &mut v2), Ok(FrameKind::Binary));
    assert_eq!(v2[0], 4);
    assert!(v2.ends_with(&u.data));
    let text = to_json_text(&v2).expect("a kind 4 reads back");
    let topic = serde_json::to_string(&m.topic).unwrap();
    let mut v1 = BytesMut::new();
    match (u.json, Serializer::V1.encode(&msg, &mut v1)) {
        (true, Ok(FrameKind::Text)) => {
            // Both carry the payload's bytes as they came, inside the same object.
            let data = std::str::from_utf8(&u.data).expect("JSON payloads are UTF-8");
            let event = serde_json::to_string(&u.event).unwrap();
            let inner = format!(r#"{{"event":{event},"payload":{data},"type":"broadcast"}}"#);
            assert_eq!(text, format!(r#"[null,null,{topic},"broadcast",{inner}]"#));
            let v1 = std::str::from_utf8(&v1).unwrap();
            let want = format!(r#"{{"event":"broadcast","payload":{inner},"ref":null,"topic":{topic}}}"#);
            assert_eq!(v1, want);
        }
        (false, Err(EncodeError::BinaryUnsupported)) => {
            let back: Value = serde_json::from_str(&text).unwrap();
            assert_eq!(back[2].as_str(), Some(m.topic.as_str()));
            assert_eq!(back[4]["event"].as_str(), Some(u.event.as_str()));
        }
        (json, other) => panic!("json {json}: V1 encode gave {other:?}"),
    }
});
