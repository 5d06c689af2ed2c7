//! Presence: who is on a topic, in Phoenix's own wire format.
//!
//! Each tracked entry is a key (a user id, say) with a list of metas, one per tracking channel
//! (two browser tabs: one key, two metas). Every meta carries a unique `phx_ref`; an update
//! carries the previous one as `phx_ref_prev`. Changes go to the topic as a `presence_diff`
//! broadcast with `joins` and `leaves`; a joiner gets the whole state from [`Presence::list`],
//! conventionally pushed as `presence_state`. The official clients' `Presence` classes build
//! their lists from exactly these two events.

use crate::protocol::Payload;
use crate::pubsub::{PubSub, SubId};
use base64::Engine;
use dashmap::DashMap;
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

/// Who tracked an entry: a channel join's id. Its entries leave when it ends.
pub type Owner = SubId;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PresenceError {
    /// The owner already tracks this key on this topic.
    AlreadyTracked,
    /// The owner does not track this key on this topic.
    NotTracked,
    /// Metas must be JSON objects.
    MetaNotObject,
}

impl fmt::Display for PresenceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PresenceError::AlreadyTracked => "already tracked",
            PresenceError::NotTracked => "not tracked",
            PresenceError::MetaNotObject => "presence meta must be a JSON object",
        })
    }
}

struct Meta {
    owner: Owner,
    /// The meta as sent, with `phx_ref` (and `phx_ref_prev`) in it.
    rendered: Value,
}

#[derive(Default)]
struct TopicState {
    keys: BTreeMap<String, Vec<Meta>>,
}

struct Inner {
    topics: DashMap<String, TopicState>,
    pubsub: PubSub,
    counter: AtomicU32,
}

/// The presence tracker of one endpoint; cheap to clone.
#[derive(Clone)]
pub struct Presence {
    inner: Arc<Inner>,
}

/// A `presence_diff` under construction: key -> metas.
type Diff = Map<String, Value>;

impl Presence {
    pub fn new(pubsub: PubSub) -> Presence {
        Presence {
            inner: Arc::new(Inner {
                topics: DashMap::new(),
                pubsub,
                counter: AtomicU32::new(0),
            }),
        }
    }

    /// A unique ref: 12 bytes (time in ns, a counter) as 16 URL-safe base64 characters, the
    /// shape Phoenix uses. Clients treat it as opaque.
    fn new_ref(&self) -> String {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        let n = self.inner.counter.fetch_add(1, Ordering::Relaxed);
        let mut raw = [0u8; 12];
        raw[..8].copy_from_slice(&nanos.to_be_bytes());
        raw[8..].copy_from_slice(&n.to_be_bytes());
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
    }

    fn render(&self, meta: Value, prev: Option<&str>) -> Result<(Value, String), PresenceError> {
        let Value::Object(mut m) = meta else {
            return Err(PresenceError::MetaNotObject);
        };
        let r = self.new_ref();
        m.insert("phx_ref".into(), Value::String(r.clone()));
        match prev {
            Some(p) => m.insert("phx_ref_prev".into(), Value::String(p.into())),
            None => m.remove("phx_ref_prev"),
        };
        Ok((Value::Object(m), r))
    }

    /// Tracks `key` on `topic` for `owner` and broadcasts the join. Returns the new `phx_ref`.
    pub fn track(
        &self,
        topic: &str,
        owner: Owner,
        key: &str,
        meta: Value,
    ) -> Result<String, PresenceError> {
        let (rendered, r) = self.render(meta, None)?;
        {
            let mut t = self.inner.topics.entry(topic.to_owned()).or_default();
            let metas = t.keys.entry(key.to_owned()).or_default();
            if metas.iter().any(|m| m.owner == owner) {
                return Err(PresenceError::AlreadyTracked);
            }
            metas.push(Meta {
                owner,
                rendered: rendered.clone(),
            });
        }
        self.send_diff(topic, entry(key, vec![rendered]), Diff::new());
        Ok(r)
    }

    /// Replaces the owner's meta for `key`: one diff with the new meta in `joins` (carrying
    /// `phx_ref_prev`) and the old one in `leaves`.
    pub fn update(
        &self,
        topic: &str,
        owner: Owner,
        key: &str,
        meta: Value,
    ) -> Result<String, PresenceError> {
        let (old, new, r) = {
            let mut t = self
                .inner
                .topics
                .get_mut(topic)
                .ok_or(PresenceError::NotTracked)?;
            let slot = t
                .keys
                .get_mut(key)
                .and_then(|metas| metas.iter_mut().find(|m| m.owner == owner))
                .ok_or(PresenceError::NotTracked)?;
            let prev = slot.rendered["phx_ref"].as_str().map(str::to_owned);
            let (rendered, r) = self.render(meta, prev.as_deref())?;
            let old = std::mem::replace(&mut slot.rendered, rendered.clone());
            (old, rendered, r)
        };
        self.send_diff(topic, entry(key, vec![new]), entry(key, vec![old]));
        Ok(r)
    }

    /// Stops tracking `key` for `owner`.
    pub fn untrack(&self, topic: &str, owner: Owner, key: &str) -> Result<(), PresenceError> {
        let left = self.remove(topic, |k, m| k == key && m.owner == owner);
        if left.is_empty() {
            return Err(PresenceError::NotTracked);
        }
        self.send_diff(topic, Diff::new(), left);
        Ok(())
    }

    /// Removes every entry `owner` tracks on `topic` (its channel left, crashed or closed).
    pub fn untrack_all(&self, topic: &str, owner: Owner) {
        let left = self.remove(topic, |_, m| m.owner == owner);
        if !left.is_empty() {
            self.send_diff(topic, Diff::new(), left);
        }
    }

    fn remove(&self, topic: &str, mut gone: impl FnMut(&str, &Meta) -> bool) -> Diff {
        let mut left = Diff::new();
        self.inner.topics.remove_if_mut(topic, |_, t| {
            t.keys.retain(|k, metas| {
                let mut out = Vec::new();
                metas.retain(|m| {
                    let g = gone(k, m);
                    if g {
                        out.push(m.rendered.clone());
                    }
                    !g
                });
                if !out.is_empty() {
                    left.extend(entry(k, out));
                }
                !metas.is_empty()
            });
            t.keys.is_empty()
        });
        left
    }

    /// Presence entries (metas) tracked on this node, all topics together.
    pub fn entry_count(&self) -> usize {
        self.inner
            .topics
            .iter()
            .map(|t| t.keys.values().map(Vec::len).sum::<usize>())
            .sum()
    }

    /// Keys present on a topic (for the inspector).
    pub fn keys(&self, topic: &str) -> Vec<String> {
        self.inner
            .topics
            .get(topic)
            .map(|t| t.keys.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// The whole state of a topic: `{key: {"metas": [...]}}`, what `presence_state` carries.
    pub fn list(&self, topic: &str) -> Value {
        let mut out = Map::new();
        if let Some(t) = self.inner.topics.get(topic) {
            for (k, metas) in &t.keys {
                out.extend(entry(k, metas.iter().map(|m| m.rendered.clone()).collect()));
            }
        }
        Value::Object(out)
    }

    fn send_diff(&self, topic: &str, joins: Diff, leaves: Diff) {
        let mut p = Map::new();
        p.insert("joins".into(), Value::Object(joins));
        p.insert("leaves".into(), Value::Object(leaves));
        self.inner
            .pubsub
            .broadcast(topic, "presence_diff", Payload::Json(Value::Object(p)));
    }
}

fn entry(key: &str, metas: Vec<Value>) -> Diff {
    let mut inner = Map::new();
    inner.insert("metas".into(), Value::Array(metas));
    let mut m = Map::new();
    m.insert(key.to_owned(), Value::Object(inner));
    m
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pubsub::{Dispatch, Subscriber};
    use serde_json::json;
    use std::sync::Mutex;

    #[derive(Default)]
    struct Diffs(Mutex<Vec<Value>>);
    impl Subscriber for Diffs {
        fn deliver(&self, d: &Dispatch<'_>) {
            let Payload::Json(v) = &d.broadcast.payload else {
                panic!()
            };
            self.0.lock().unwrap().push(v.clone());
        }
    }

    fn refs(v: &Value, key: &str) -> Vec<String> {
        v[key]["metas"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["phx_ref"].as_str().unwrap().to_owned())
            .collect()
    }

    #[test]
    fn track_update_untrack_produce_phoenix_diffs() {
        let ps = PubSub::new();
        let diffs: Arc<Diffs> = Arc::default();
        ps.subscribe("room", ps.next_id(), diffs.clone());
        let p = Presence::new(ps);

        let r1 = p.track("room", 1, "u1", json!({"online_at": "t"})).unwrap();
        assert_eq!(r1.len(), 16);
        let r2 = p
            .track("room", 2, "u1", json!({"online_at": "t2"}))
            .unwrap();
        assert_ne!(r1, r2);
        assert_eq!(
            p.track("room", 2, "u1", json!({})),
            Err(PresenceError::AlreadyTracked)
        );
        assert_eq!(refs(&p.list("room"), "u1"), vec![r1.clone(), r2.clone()]);
        assert_eq!(
            diffs.0.lock().unwrap()[0],
            json!({"joins": {"u1": {"metas": [{"online_at": "t", "phx_ref": r1}]}}, "leaves": {}})
        );

        let r3 = p
            .update("room", 1, "u1", json!({"online_at": "t", "status": "away"}))
            .unwrap();
        let d = diffs.0.lock().unwrap()[2].clone();
        assert_eq!(
            d,
            json!({
                "joins": {"u1": {"metas": [{"online_at": "t", "status": "away", "phx_ref": r3, "phx_ref_prev": r1}]}},
                "leaves": {"u1": {"metas": [{"online_at": "t", "phx_ref": r1}]}}
            })
        );

        p.untrack_all("room", 2);
        assert_eq!(
            diffs.0.lock().unwrap()[3],
            json!({"joins": {}, "leaves": {"u1": {"metas": [{"online_at": "t2", "phx_ref": r2}]}}})
        );
        assert_eq!(refs(&p.list("room"), "u1"), vec![r3]);
        p.untrack("room", 1, "u1").unwrap();
        assert_eq!(p.list("room"), json!({}));
        assert!(p.inner.topics.is_empty());
        assert_eq!(p.untrack("room", 1, "u1"), Err(PresenceError::NotTracked));
        assert_eq!(
            p.track("room", 1, "u1", json!("x")),
            Err(PresenceError::MetaNotObject)
        );
    }
}
