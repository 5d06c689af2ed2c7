//! phoenix_pubsub_redis 3.x messages: what one node PUBLISHes for a broadcast, and what a node
//! makes of what arrives. Pure: bytes in, bytes out.
//!
//! A message is `{3, mode, node_name, topic, message, dispatcher}`. For channel broadcasts the
//! message is a `%Phoenix.Socket.Broadcast{}` (a map with atom keys) and the dispatcher
//! `Phoenix.Channel.Server`; anything else (Phoenix.Tracker traffic, other versions) is not a
//! channel broadcast and is left alone.

use super::term::{self, Bounds, Encoder, Term};
use crate::protocol::Payload;
use bytes::Bytes;

const BROADCAST_STRUCT: &str = "Elixir.Phoenix.Socket.Broadcast";
const CHANNEL_SERVER: &str = "Elixir.Phoenix.Channel.Server";
const TRACKER_DISPATCHER: &str = "Elixir.Phoenix.PubSub";

/// The Redis channel of a PubSub server: `phx:Elixir.<name>.Adapter`.
pub fn redis_channel(pubsub_name: &str) -> String {
    format!("phx:Elixir.{pubsub_name}.Adapter")
}

/// A broadcast made on this node, for every other node (mode `:except`, this node's name).
pub fn encode(node: &str, topic: &str, event: &str, payload: &Payload) -> Vec<u8> {
    let mut e = Encoder::new();
    e.tuple(6)
        .int(3)
        .atom("except")
        .atom(node)
        .binary(topic.as_bytes());
    // The struct's keys in term order: __struct__, event, payload, topic.
    e.map(4)
        .atom("__struct__")
        .atom(BROADCAST_STRUCT)
        .atom("event")
        .binary(event.as_bytes())
        .atom("payload");
    match payload {
        Payload::Json(v) => e.json(v),
        Payload::Binary(b) => e.tuple(2).atom("binary").binary(b),
        // Fawkes's own form, read back by `classify`: Elixir nodes have no such channel.
        Payload::UserBroadcast(u) => e
            .tuple(4)
            .atom("user_broadcast")
            .binary(u.event.as_bytes())
            .atom(if u.json { "json" } else { "binary" })
            .binary(&u.data),
    };
    e.atom("topic")
        .binary(topic.as_bytes())
        .atom(CHANNEL_SERVER);
    e.finish()
}

/// A channel broadcast from another node, to deliver here.
#[derive(Debug, Clone, PartialEq)]
pub struct Remote {
    pub topic: String,
    pub event: String,
    pub payload: Payload,
}

/// What a node does with a message from the channel.
#[derive(Debug, Clone, PartialEq)]
pub enum Inbound {
    Deliver(Remote),
    /// Sent by this node (`:except` with its name) or to another one (`:only`).
    NotForUs,
    /// A channel broadcast whose payload JSON cannot carry.
    NotJson {
        topic: String,
        what: &'static str,
    },
    /// Over a bound of [`Bounds`] (size, depth, memory): refused before it cost more.
    OverBounds(term::DecodeError),
    /// Phoenix.Tracker's traffic on a `phx_presence:` topic, for the presence replica.
    Tracker(Term),
    /// Not a channel broadcast of version 3: other versions, other dispatchers, garbage.
    Ignored(String),
}

/// Reads one message as node `me` would.
pub fn decode(bytes: &[u8], me: &str, bounds: Bounds) -> Inbound {
    match term::decode(bytes, bounds) {
        Ok(t) if is_tracker(&t) => Inbound::Tracker(t),
        Ok(t) => classify(&t, me),
        Err(e) if e.is_over_bounds() => Inbound::OverBounds(e),
        Err(e) => Inbound::Ignored(e.to_string()),
    }
}

/// Whether a message is Phoenix.Tracker's: dispatched by `Phoenix.PubSub` itself on a
/// `phx_presence:` topic (the replica reads the rest).
fn is_tracker(t: &Term) -> bool {
    matches!(t, Term::Tuple(f) if f.len() == 6
        && f[5].atom() == Some(TRACKER_DISPATCHER)
        && f[3].binary().is_some_and(|topic| topic.starts_with(b"phx_presence:")))
}

fn classify(t: &Term, me: &str) -> Inbound {
    let ignored = |why: &str| Inbound::Ignored(why.to_owned());
    let Term::Tuple(fields) = t else {
        return ignored("not a tuple");
    };
    let [version, mode, node, topic, message, dispatcher] = fields.as_slice() else {
        return ignored("not a 6-tuple");
    };
    if *version != Term::Int(3) {
        return ignored("not message version 3");
    }
    let Some(node) = node.atom() else {
        return ignored("node name is not an atom");
    };
    match mode.atom() {
        Some("except") if node == me => return Inbound::NotForUs,
        Some("only") if node != me => return Inbound::NotForUs,
        Some("except" | "only") => {}
        _ => return ignored("unknown mode"),
    }
    if dispatcher.atom() != Some(CHANNEL_SERVER) {
        return ignored("not a channel broadcast (dispatcher)");
    }
    let Some(topic) = topic.binary().and_then(|b| std::str::from_utf8(b).ok()) else {
        return ignored("topic is not text");
    };
    if message.get("__struct__").and_then(Term::atom) != Some(BROADCAST_STRUCT) {
        return ignored("not a Phoenix.Socket.Broadcast");
    }
    let Some(event) = message
        .get("event")
        .and_then(Term::binary)
        .and_then(|b| std::str::from_utf8(b).ok())
    else {
        return ignored("event is not text");
    };
    let Some(payload) = message.get("payload") else {
        return ignored("no payload");
    };
    let payload = match payload {
        Term::Tuple(pair) => match pair.as_slice() {
            [Term::Atom(tag), Term::Binary(b)] if tag == "binary" => {
                Payload::Binary(Bytes::copy_from_slice(b))
            }
            [Term::Atom(tag), Term::Binary(event), Term::Atom(encoding), Term::Binary(data)]
                if tag == "user_broadcast" && (encoding == "json" || encoding == "binary") =>
            {
                let json = encoding == "json";
                // A peer is not trusted to have checked what a client sent.
                let valid = !json || crate::protocol::is_json(data);
                match std::str::from_utf8(event) {
                    Ok(event) if valid => Payload::UserBroadcast(crate::protocol::UserBroadcast {
                        event: event.to_owned(),
                        json,
                        data: Bytes::copy_from_slice(data),
                    }),
                    _ => {
                        return Inbound::NotJson {
                            topic: topic.to_owned(),
                            what: "a user broadcast that is not text or JSON",
                        }
                    }
                }
            }
            _ => {
                return Inbound::NotJson {
                    topic: topic.to_owned(),
                    what: "a tuple",
                }
            }
        },
        other => match term::to_json(other) {
            Ok(v) => Payload::Json(v),
            Err(e) => {
                return Inbound::NotJson {
                    topic: topic.to_owned(),
                    what: e.0,
                }
            }
        },
    };
    Inbound::Deliver(Remote {
        topic: topic.to_owned(),
        event: event.to_owned(),
        payload,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::tests::capture;
    use serde_json::json;

    fn deliver(prefix: &str, me: &str) -> Remote {
        match decode(&capture(prefix), me, Bounds::default()) {
            Inbound::Deliver(r) => r,
            other => panic!("{prefix}: {other:?}"),
        }
    }

    fn capture01_payload() -> serde_json::Value {
        json!({"big": 12345678901234567890u64, "f": 1.5, "fa": false, "i": 42,
            "l": [1, "two", 3.25, null, {"x": 1}], "m": {"empty": {}, "nested": {"k": "v"}},
            "n": null, "neg": -7, "s": "str", "t": true, "u": "héllo ✓"})
    }

    #[test]
    fn channel_broadcasts_from_phoenix() {
        let r = deliver("01_", "fawkes1");
        assert_eq!(r.topic, "community:feed");
        assert_eq!(r.event, "new_post");
        assert_eq!(r.payload, Payload::Json(capture01_payload()));
        // The same broadcast compressed at level 6 (OTP 25's ATOM_EXT atoms inside).
        assert_eq!(deliver("11_", "fawkes1"), r);
        assert_eq!(
            deliver("02_", "fawkes1").payload,
            Payload::Binary(Bytes::from_static(&[222, 173, 190, 239, 0, 1]))
        );
        let d = deliver("03_", "fawkes1");
        assert_eq!(
            (d.topic.as_str(), d.event.as_str(), d.payload),
            ("users_socket:t9", "disconnect", Payload::empty())
        );
        let t = deliver("04_", "fawkes1");
        assert_eq!(
            (t.topic.as_str(), t.event.as_str()),
            ("channel:lobby", "typing")
        );
        let m = deliver("05_", "fawkes1");
        assert_eq!(
            (m.topic.as_str(), m.event.as_str()),
            ("channel:lobby", "new_msg")
        );
        // Published from outside Erlang with OTP 26's UTF-8 atoms.
        assert_eq!(
            deliver("12_", "fawkes1").payload,
            Payload::Json(json!({"from": "python", "n": null, "f": 2.5, "l": [1, "a"]}))
        );
    }

    #[test]
    fn modes_pick_the_nodes() {
        // :except from phx2: every node but phx2 delivers.
        assert_eq!(
            decode(&capture("01_"), "phx2", Bounds::default()),
            Inbound::NotForUs
        );
        // :only phx1: phx1 alone delivers.
        assert!(matches!(
            decode(&capture("06_"), "phx1", Bounds::default()),
            Inbound::Deliver(_)
        ));
        assert_eq!(
            decode(&capture("06_"), "phx2", Bounds::default()),
            Inbound::NotForUs
        );
    }

    #[test]
    fn tracker_traffic_goes_to_the_presence_replica() {
        for c in ["07_", "08_", "09_", "10_"] {
            let got = decode(&capture(c), "fawkes1", Bounds::default());
            assert!(matches!(&got, Inbound::Tracker(_)), "{c}: {got:?}");
        }
        // The same dispatcher on another topic is no tracker message.
        let mut e = crate::cluster::term::Encoder::new();
        e.tuple(6)
            .int(3)
            .atom("except")
            .atom("phx1")
            .binary(b"room:1");
        e.atom("hello").atom(TRACKER_DISPATCHER);
        assert!(
            matches!(decode(&e.finish(), "f", Bounds::default()), Inbound::Ignored(why) if why.contains("dispatcher"))
        );
    }

    #[test]
    fn publishes_what_otp_26_writes() {
        // Capture 01 with OTP 26's atoms (SMALL_ATOM_UTF8_EXT) in place of OTP 25's
        // (ATOM_EXT): every other byte is the same, map key order included.
        let ours = encode(
            "phx2",
            "community:feed",
            "new_post",
            &Payload::Json(capture01_payload()),
        );
        let theirs = capture("01_");
        // The offsets of the capture's ATOM_EXT atoms (tag 100, u16 length), from its dump.
        let atoms = [5, 14, 45, 58, 92, 113, 169, 215, 295, 334, 362, 389];
        let mut expected = Vec::new();
        let mut i = 0;
        while i < theirs.len() {
            if atoms.contains(&i) {
                assert_eq!((theirs[i], theirs[i + 1]), (100, 0), "ATOM_EXT at {i}");
                let len = usize::from(theirs[i + 2]);
                expected.extend_from_slice(&[119, len as u8]);
                expected.extend_from_slice(&theirs[i + 3..i + 3 + len]);
                i += 3 + len;
            } else {
                expected.push(theirs[i]);
                i += 1;
            }
        }
        assert_eq!(ours, expected);
    }

    /// Every capture cut short, and with random bytes changed: never a panic, and what is
    /// still delivered encodes back to the same broadcast.
    #[test]
    fn mangled_captures_never_panic() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        let bounds = Bounds {
            max_bytes: 4096,
            max_depth: 16,
            ..Bounds::default()
        };
        for c in ["01_", "02_", "03_", "06_", "08_", "10_", "11_", "12_"] {
            let bytes = capture(c);
            for n in 0..bytes.len() {
                assert!(!matches!(
                    decode(&bytes[..n], "x", bounds),
                    Inbound::Deliver(_)
                ));
            }
            for _ in 0..3000 {
                let mut m = bytes.clone();
                for _ in 0..rng.gen_range(1..4) {
                    let i = rng.gen_range(0..m.len());
                    m[i] = rng.gen();
                }
                if let Inbound::Deliver(r) = decode(&m, "x", bounds) {
                    let again = encode("y", &r.topic, &r.event, &r.payload);
                    assert_eq!(decode(&again, "x", Bounds::default()), Inbound::Deliver(r));
                }
            }
        }
    }

    #[test]
    fn binary_payloads_and_garbage() {
        let bin = encode(
            "n1",
            "t",
            "e",
            &Payload::Binary(Bytes::from_static(&[222, 173, 190, 239, 0, 1])),
        );
        assert!(
            matches!(decode(&bin, "n2", Bounds::default()), Inbound::Deliver(r) if r.payload == Payload::Binary(Bytes::from_static(&[222, 173, 190, 239, 0, 1])))
        );
        for junk in [
            &b""[..],
            b"hello",
            &[131],
            &[131, 104, 0],
            &[131, 104, 6, 97, 2],
        ] {
            assert!(matches!(
                decode(junk, "n", Bounds::default()),
                Inbound::Ignored(_)
            ));
        }
    }

    /// A Supabase user broadcast crosses nodes whole; one whose JSON is not JSON does not.
    #[test]
    fn user_broadcasts_cross_nodes() {
        use crate::protocol::UserBroadcast;
        for (json, data) in [(true, &br#"{"x":1}"#[..]), (false, &[0u8, 255][..])] {
            let p = Payload::UserBroadcast(UserBroadcast {
                event: "cursor".into(),
                json,
                data: Bytes::copy_from_slice(data),
            });
            let bytes = encode("n1", "realtime:r", "broadcast", &p);
            assert_eq!(
                decode(&bytes, "n2", Bounds::default()),
                Inbound::Deliver(Remote {
                    topic: "realtime:r".into(),
                    event: "broadcast".into(),
                    payload: p
                })
            );
        }
        let forged = Payload::UserBroadcast(UserBroadcast {
            event: "cursor".into(),
            json: true,
            data: Bytes::from_static(b"{not json"),
        });
        let bytes = encode("n1", "realtime:r", "broadcast", &forged);
        assert!(matches!(
            decode(&bytes, "n2", Bounds::default()),
            Inbound::NotJson { .. }
        ));
    }
}
