//! Which recorded broadcasts a node believes: those signed by a node of its own cluster.
//!
//! A recorded broadcast's `"seq"` decides what every node delivers after it, so a `seq` must
//! come from a node that numbers the topic from the shared database, not from whoever can
//! PUBLISH on Redis (one forged `seq = 2^63-1` would otherwise silence a topic on every node).
//! Node names prove nothing here: they travel in the same messages, and the tracker's
//! heartbeats that name the live nodes can be forged as easily. What the nodes of one cluster
//! share, and a Redis client does not, is their database: the first node to start keeps a
//! random key there, every node reads it at start, and each recorded broadcast leaves with an
//! HMAC-SHA256 of its topic, event and payload under that key (`"seq_sig"` in the payload, taken
//! out again before any client sees it; so is `"seq_after"`, see `link::AFTER_FIELD`). Phoenix
//! nodes on the same channel deliver them as more keys of the payload.

use super::term::Encoder;
use hmac::{Hmac, Mac};
use serde_json::{Map, Value};
use sha2::Sha256;

/// The payload key that carries the signature.
pub const FIELD: &str = "seq_sig";

/// Bytes of the HMAC kept: 128 bits, hex in the payload.
const KEPT: usize = 16;

/// The cluster's key. Its `Debug` does not show it.
#[derive(Clone)]
pub struct SealKey(Vec<u8>);

impl SealKey {
    pub fn new(key: Vec<u8>) -> SealKey {
        SealKey(key)
    }

    /// The signature of a recorded broadcast: `payload` without [`FIELD`].
    fn sign(&self, topic: &str, event: &str, payload: &Map<String, Value>) -> Vec<u8> {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC takes any key");
        for part in [topic.as_bytes(), event.as_bytes()] {
            mac.update(&(part.len() as u64).to_be_bytes());
            mac.update(part);
        }
        // The payload as Erlang terms, keys sorted here and by the encoder below: both ends
        // sign the same bytes whatever order their maps keep.
        let mut keys: Vec<&String> = payload.keys().filter(|k| *k != FIELD).collect();
        keys.sort_unstable();
        let mut e = Encoder::new();
        for k in keys {
            e.binary(k.as_bytes()).json(&payload[k]);
        }
        mac.update(&e.finish());
        mac.finalize().into_bytes()[..KEPT].to_vec()
    }

    /// The payload to publish: `payload` with its signature added.
    pub fn seal(&self, topic: &str, event: &str, payload: &Map<String, Value>) -> Value {
        let sig = hex(&self.sign(topic, event, payload));
        let mut sealed = payload.clone();
        sealed.insert(FIELD.to_owned(), Value::String(sig));
        Value::Object(sealed)
    }

    /// Takes the signature out of `payload` and tells whether it was there and right.
    pub fn open(&self, topic: &str, event: &str, payload: &mut Map<String, Value>) -> bool {
        let Some(Value::String(sig)) = payload.remove(FIELD) else {
            return false;
        };
        let want = self.sign(topic, event, payload);
        // Constant time: nothing learnt from how fast a guess fails.
        sig.len() == 2 * KEPT
            && subtle::ConstantTimeEq::ct_eq(sig.as_bytes(), hex(&want).as_bytes()).into()
    }
}

impl std::fmt::Debug for SealKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SealKey(…)")
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => unreachable!(),
        }
    }

    #[test]
    fn a_sealed_payload_opens_once_and_only_as_sent() {
        let key = SealKey::new(b"k1".to_vec());
        let p = obj(json!({"seq": 7, "body": "hi", "n": [1, 2.5, null]}));
        let Value::Object(sealed) = key.seal("community:feed", "new_post", &p) else {
            unreachable!()
        };
        assert_eq!(sealed[FIELD].as_str().unwrap().len(), 32);
        let mut opened = sealed.clone();
        assert!(key.open("community:feed", "new_post", &mut opened));
        // Taken out: clients see the payload as it was.
        assert_eq!(opened, p);
        // Any change, or another key, and it does not open; the field still goes.
        let changed = |f: &dyn Fn(&mut Map<String, Value>)| {
            let mut m = sealed.clone();
            f(&mut m);
            m
        };
        for (topic, event, mut m) in [
            (
                "community:feed",
                "new_post",
                changed(&|m| {
                    m.insert("seq".into(), json!(i64::MAX));
                }),
            ),
            (
                "community:feed",
                "new_post",
                changed(&|m| {
                    m.insert("body".into(), json!("hj"));
                }),
            ),
            ("community:fee", "new_post", sealed.clone()),
            ("community:feed", "new_posts", sealed.clone()),
            (
                "community:feed",
                "new_post",
                changed(&|m| {
                    m.remove(FIELD);
                }),
            ),
            (
                "community:feed",
                "new_post",
                changed(&|m| {
                    m.insert(FIELD.into(), json!(7));
                }),
            ),
        ] {
            assert!(!key.open(topic, event, &mut m), "{topic} {event} {m:?}");
            assert!(!m.contains_key(FIELD));
        }
        let mut m = sealed.clone();
        assert!(!SealKey::new(b"k2".to_vec()).open("community:feed", "new_post", &mut m));
    }

    #[test]
    fn key_order_does_not_matter() {
        let key = SealKey::new(b"k".to_vec());
        let mut a = Map::new();
        a.insert("z".into(), json!(1));
        a.insert("a".into(), json!({"y": 2, "b": 3}));
        let Value::Object(mut sealed) = key.seal("t", "e", &a) else {
            unreachable!()
        };
        // The same entries, the other way round (as a map that keeps insertion order would).
        let mut b = Map::new();
        b.insert(FIELD.into(), sealed.remove(FIELD).unwrap());
        b.insert("a".into(), json!({"b": 3, "y": 2}));
        b.insert("z".into(), json!(1));
        assert!(key.open("t", "e", &mut b));
        assert_eq!(format!("{key:?}"), "SealKey(…)");
    }
}
