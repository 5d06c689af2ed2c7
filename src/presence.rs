//! Presence: who is on a topic, in Phoenix's own wire format.
//!
//! Each tracked entry is a key (a user id, say) with a list of metas, one per tracking channel
//! (two browser tabs: one key, two metas). Every meta carries a unique `phx_ref`; an update
//! carries the previous one as `phx_ref_prev`. Changes go to the topic as a `presence_diff`
//! broadcast with `joins` and `leaves`; a joiner gets the whole state from [`Presence::list`],
//! conventionally pushed as `presence_state`. The official clients' `Presence` classes build
//! their lists from exactly these two events.
//!
//! On several nodes, each node owns the entries its own channels track and hears of the others'
//! through [`Replication`] (`crate::cluster::tracker`); [`Presence::list`] is their union, and
//! each node sends `presence_diff` to its own subscribers only, as Phoenix.Tracker does.

use crate::protocol::Payload;
use crate::pubsub::{PubSub, SubId};
use base64::Engine;
use dashmap::DashMap;
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, OnceLock};

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

/// A presence change made on this node, for the others (as JSON, `{"op": "join", ...}`).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Change {
    /// `meta` as sent, with its `phx_ref`.
    Join {
        topic: String,
        key: String,
        meta: Value,
    },
    Leave {
        topic: String,
        key: String,
        phx_ref: String,
    },
}

/// Tells the other nodes of this node's changes; must not block.
pub trait Replication: Send + Sync + 'static {
    fn changed(&self, change: Change);
}

/// Another node's entry, known by its node (incarnation) and `phx_ref`.
struct RemoteMeta {
    node: Arc<str>,
    rendered: Value,
}

struct Inner {
    topics: DashMap<String, TopicState>,
    /// Other nodes' entries: topic -> key -> metas.
    remote: DashMap<String, BTreeMap<String, Vec<RemoteMeta>>>,
    replication: OnceLock<Box<dyn Replication>>,
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
                remote: DashMap::new(),
                replication: OnceLock::new(),
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
        self.replicate(|| Change::Join {
            topic: topic.to_owned(),
            key: key.to_owned(),
            meta: rendered.clone(),
        });
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
        self.replicate(|| Change::Join {
            topic: topic.to_owned(),
            key: key.to_owned(),
            meta: new.clone(),
        });
        self.replicate_leaves(topic, &entry(key, vec![old.clone()]));
        self.send_diff(topic, entry(key, vec![new]), entry(key, vec![old]));
        Ok(r)
    }

    /// Stops tracking `key` for `owner`.
    pub fn untrack(&self, topic: &str, owner: Owner, key: &str) -> Result<(), PresenceError> {
        let left = self.remove(topic, |k, m| k == key && m.owner == owner);
        if left.is_empty() {
            return Err(PresenceError::NotTracked);
        }
        self.replicate_leaves(topic, &left);
        self.send_diff(topic, Diff::new(), left);
        Ok(())
    }

    /// Removes every entry `owner` tracks on `topic` (its channel left, crashed or closed).
    pub fn untrack_all(&self, topic: &str, owner: Owner) {
        let left = self.remove(topic, |_, m| m.owner == owner);
        if !left.is_empty() {
            self.replicate_leaves(topic, &left);
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

    /// Keys present on a topic, on every node (for the inspector).
    pub fn keys(&self, topic: &str) -> Vec<String> {
        match self.list(topic) {
            Value::Object(m) => m.into_iter().map(|(k, _)| k).collect(),
            _ => Vec::new(),
        }
    }

    /// The whole state of a topic, on every node: `{key: {"metas": [...]}}`, what
    /// `presence_state` carries.
    pub fn list(&self, topic: &str) -> Value {
        let mut keys: BTreeMap<String, Vec<Value>> = BTreeMap::new();
        if let Some(t) = self.inner.topics.get(topic) {
            for (k, metas) in &t.keys {
                keys.entry(k.clone())
                    .or_default()
                    .extend(metas.iter().map(|m| m.rendered.clone()));
            }
        }
        if let Some(r) = self.inner.remote.get(topic) {
            for (k, metas) in r.iter() {
                keys.entry(k.clone())
                    .or_default()
                    .extend(metas.iter().map(|m| m.rendered.clone()));
            }
        }
        let mut out = Map::new();
        for (k, metas) in keys {
            out.extend(entry(&k, metas));
        }
        Value::Object(out)
    }

    /// Entries tracked here and on other nodes.
    pub fn entry_count(&self) -> usize {
        let local: usize = (self.inner.topics.iter())
            .map(|t| t.keys.values().map(Vec::len).sum::<usize>())
            .sum();
        let remote: usize = (self.inner.remote.iter())
            .map(|t| t.values().map(Vec::len).sum::<usize>())
            .sum();
        local + remote
    }

    fn send_diff(&self, topic: &str, joins: Diff, leaves: Diff) {
        let mut p = Map::new();
        p.insert("joins".into(), Value::Object(joins));
        p.insert("leaves".into(), Value::Object(leaves));
        let payload = Payload::Json(Value::Object(p));
        let ps = &self.inner.pubsub;
        if self.inner.replication.get().is_some() {
            // Every node tells its own subscribers, from what it has replicated.
            ps.local_broadcast(crate::pubsub::Broadcast {
                topic: topic.to_owned(),
                event: "presence_diff".to_owned(),
                payload,
                seq: None,
                after: None,
            });
        } else {
            ps.broadcast(topic, "presence_diff", payload);
        }
    }

    /// Replicates this node's changes from now on (once).
    pub fn set_replication(&self, r: impl Replication) {
        if self.inner.replication.set(Box::new(r)).is_err() {
            log::warn!("presence replication already set; ignoring the new one");
        }
    }

    fn replicate(&self, change: impl FnOnce() -> Change) {
        if let Some(r) = self.inner.replication.get() {
            r.changed(change());
        }
    }

    fn replicate_leaves(&self, topic: &str, left: &Diff) {
        if self.inner.replication.get().is_none() {
            return;
        }
        for (key, metas) in left {
            for m in metas["metas"].as_array().into_iter().flatten() {
                if let Some(r) = m["phx_ref"].as_str() {
                    self.replicate(|| Change::Leave {
                        topic: topic.to_owned(),
                        key: key.clone(),
                        phx_ref: r.to_owned(),
                    });
                }
            }
        }
    }

    /// Every entry tracked on this node: (topic, key, meta), for another node's full sync.
    pub fn local_entries(&self) -> Vec<(String, String, Value)> {
        let mut out = Vec::new();
        for t in self.inner.topics.iter() {
            for (k, metas) in &t.keys {
                for m in metas {
                    out.push((t.key().clone(), k.clone(), m.rendered.clone()));
                }
            }
        }
        out
    }

    /// Applies another node's changes and tells this node's subscribers. A join already known
    /// or a leave of an unknown entry changes nothing (a full sync may overlap deltas).
    pub fn apply_remote(&self, node: &Arc<str>, changes: Vec<Change>) {
        let mut diffs: BTreeMap<String, (Diff, Diff)> = BTreeMap::new();
        for c in changes {
            match c {
                Change::Join { topic, key, meta } => {
                    let Some(r) = meta.get("phx_ref").and_then(Value::as_str) else {
                        continue;
                    };
                    let mut t = self.inner.remote.entry(topic.clone()).or_default();
                    let metas = t.entry(key.clone()).or_default();
                    if metas
                        .iter()
                        .any(|m| m.node == *node && m.rendered["phx_ref"] == r)
                    {
                        continue;
                    }
                    metas.push(RemoteMeta {
                        node: node.clone(),
                        rendered: meta.clone(),
                    });
                    drop(t);
                    push_meta(&mut diffs.entry(topic).or_default().0, &key, meta);
                }
                Change::Leave {
                    topic,
                    key,
                    phx_ref,
                } => {
                    let gone = self.remove_remote(&topic, |k, m| {
                        k == key && m.node == *node && m.rendered["phx_ref"] == phx_ref.as_str()
                    });
                    merge(&mut diffs.entry(topic).or_default().1, gone);
                }
            }
        }
        for (topic, (joins, leaves)) in diffs {
            if !joins.is_empty() || !leaves.is_empty() {
                self.send_diff(&topic, joins, leaves);
            }
        }
    }

    /// Another node's entries, all at once: what it no longer has leaves, what is new joins.
    pub fn replace_remote(&self, node: &Arc<str>, entries: Vec<(String, String, Value)>) {
        let fresh: std::collections::HashSet<(String, String, String)> = entries
            .iter()
            .filter_map(|(t, k, m)| Some((t.clone(), k.clone(), m["phx_ref"].as_str()?.to_owned())))
            .collect();
        let mut leaves = Vec::new();
        for t in self.inner.remote.iter() {
            for (k, metas) in t.iter() {
                for m in metas.iter().filter(|m| m.node == *node) {
                    let r = m.rendered["phx_ref"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned();
                    if !fresh.contains(&(t.key().clone(), k.clone(), r.clone())) {
                        leaves.push(Change::Leave {
                            topic: t.key().clone(),
                            key: k.clone(),
                            phx_ref: r,
                        });
                    }
                }
            }
        }
        let joins = entries
            .into_iter()
            .map(|(topic, key, meta)| Change::Join { topic, key, meta });
        self.apply_remote(node, leaves.into_iter().chain(joins).collect());
    }

    /// A node is down or gone: its entries leave, one diff per topic.
    pub fn drop_remote_node(&self, node: &Arc<str>) {
        self.replace_remote(node, Vec::new());
    }

    fn remove_remote(&self, topic: &str, mut gone: impl FnMut(&str, &RemoteMeta) -> bool) -> Diff {
        let mut left = Diff::new();
        self.inner.remote.remove_if_mut(topic, |_, keys| {
            keys.retain(|k, metas| {
                metas.retain(|m| {
                    let g = gone(k, m);
                    if g {
                        push_meta(&mut left, k, m.rendered.clone());
                    }
                    !g
                });
                !metas.is_empty()
            });
            keys.is_empty()
        });
        left
    }
}

fn push_meta(diff: &mut Diff, key: &str, meta: Value) {
    let e = diff
        .entry(key.to_owned())
        .or_insert_with(|| serde_json::json!({"metas": []}));
    if let Some(a) = e["metas"].as_array_mut() {
        a.push(meta);
    }
}

fn merge(into: &mut Diff, from: Diff) {
    for (k, v) in from {
        for m in v["metas"].as_array().into_iter().flatten() {
            push_meta(into, &k, m.clone());
        }
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
