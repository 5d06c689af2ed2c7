//! Presence across Fawkes nodes, on Phoenix.Tracker's model: each node owns the entries its
//! channels track, publishes its changes as numbered deltas and a heartbeat carrying its latest
//! number, and asks a node for its whole state when it missed a delta or first hears of it. A
//! node silent for `presence_down_after` is down and its entries leave everywhere; a node that
//! restarts comes back as a new incarnation, so its old entries leave at once.
//!
//! The messages are JSON on a channel of their own, `fawkes:<pubsub-name>:presence`; Phoenix
//! nodes neither read nor write it.

use super::link::Outgoing;
use super::{ClusterConfig, Stats};
use crate::presence::{Change, Presence, Replication};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

pub fn redis_channel(pubsub_name: &str) -> String {
    format!("fawkes:{pubsub_name}:presence")
}

/// Entries per state message: a full sync of many presences goes out in parts.
const ENTRIES_PER_PART: usize = 500;
/// Parts one state may have; a peer claiming more is not believed.
const MAX_PARTS: u32 = 10_000;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Wire {
    /// Changes numbered `seq` (one more than the last).
    Delta {
        node: String,
        inc: String,
        seq: u64,
        changes: Vec<Change>,
    },
    /// Alive, and `seq` is the latest delta sent.
    Heartbeat { node: String, inc: String, seq: u64 },
    /// Asks incarnation `to` for its whole state.
    SyncRequest {
        node: String,
        inc: String,
        to: String,
    },
    /// Part `part` of `parts` of a node's whole state as of delta `seq`.
    State {
        node: String,
        inc: String,
        seq: u64,
        part: u32,
        parts: u32,
        entries: Vec<(String, String, Value)>,
    },
}

impl Wire {
    fn from(&self) -> (&str, &str) {
        match self {
            Wire::Delta { node, inc, .. }
            | Wire::Heartbeat { node, inc, .. }
            | Wire::SyncRequest { node, inc, .. }
            | Wire::State { node, inc, .. } => (node, inc),
        }
    }
}

/// Hands this node's presence changes to a replication task without waiting.
pub(super) struct Changes {
    pub tx: mpsc::Sender<Change>,
    /// A change could not be queued: the task reads this node's presences again (here the
    /// next delta skips a number, so the others resync).
    pub lost: Arc<AtomicBool>,
}

impl Replication for Changes {
    fn changed(&self, change: Change) {
        if self.tx.try_send(change).is_err() {
            self.lost.store(true, Ordering::Relaxed);
        }
    }
}

/// What this node knows of another.
struct View {
    inc: Arc<str>,
    /// The last delta applied.
    seq: u64,
    synced: bool,
    last_seen: Instant,
    asked_at: Option<Instant>,
    parts: Option<Parts>,
}

struct Parts {
    seq: u64,
    parts: u32,
    got: u32,
    entries: Vec<(String, String, Value)>,
}

/// The tracker: run by [`start`] as one task.
struct Tracker {
    presence: Presence,
    node: String,
    inc: Arc<str>,
    seq: u64,
    views: HashMap<String, View>,
    down_after: Duration,
    stats: Arc<Stats>,
    out: mpsc::Sender<Outgoing>,
    channel: Arc<str>,
    lost: Arc<AtomicBool>,
    state_wanted: bool,
    max_message_bytes: usize,
}

/// Starts replicating `presence`. Messages for the presence channel go in through the returned
/// sender; what the tracker publishes goes to `out`.
pub(super) fn start(
    presence: &Presence,
    config: &ClusterConfig,
    stats: Arc<Stats>,
    out: mpsc::Sender<Outgoing>,
) -> mpsc::Sender<Vec<u8>> {
    let (changes_tx, mut changes) = mpsc::channel::<Change>(65_536);
    let (in_tx, mut inbound) = mpsc::channel::<Vec<u8>>(4096);
    let lost = Arc::new(AtomicBool::new(false));
    presence.set_replication(Changes {
        tx: changes_tx,
        lost: lost.clone(),
    });
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let mut t = Tracker {
        presence: presence.clone(),
        node: config.node_name.clone(),
        inc: format!(
            "{}/{nanos:x}{:08x}",
            config.node_name,
            rand::random::<u32>()
        )
        .into(),
        seq: 0,
        views: HashMap::new(),
        down_after: config.presence_down_after,
        stats,
        out,
        channel: redis_channel(&config.pubsub_name).into(),
        lost,
        state_wanted: false,
        max_message_bytes: config.max_message_bytes,
    };
    // Often enough that a few heartbeats fit in the down period, as Phoenix.Tracker's 1.5 s
    // against its 30 s.
    let beat =
        (config.presence_down_after / 10).clamp(Duration::from_millis(100), Duration::from_secs(3));
    crate::task::spawn(async move {
        let mut tick = tokio::time::interval(beat);
        loop {
            tokio::select! {
                Some(c) = changes.recv() => {
                    let mut batch = vec![c];
                    while batch.len() < ENTRIES_PER_PART {
                        match changes.try_recv() {
                            Ok(c) => batch.push(c),
                            Err(_) => break,
                        }
                    }
                    t.send_delta(batch);
                }
                Some(bytes) = inbound.recv() => t.receive(&bytes),
                _ = tick.tick() => t.tick(),
            }
        }
    });
    in_tx
}

impl Tracker {
    fn publish(&self, w: &Wire) {
        let bytes = serde_json::to_vec(w).expect("JSON of strings and values");
        self.stats.presence_sent.fetch_add(1, Ordering::Relaxed);
        let m = Outgoing {
            channel: self.channel.clone(),
            bytes,
            recorded: None,
        };
        if self.out.try_send(m).is_err() {
            self.stats.unpublished.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn send_delta(&mut self, changes: Vec<Change>) {
        // A change lost before it was queued: skip a number, so every node asks for a full state.
        if self.lost.swap(false, Ordering::Relaxed) {
            self.seq += 1;
        }
        self.seq += 1;
        self.publish(&Wire::Delta {
            node: self.node.clone(),
            inc: self.inc.to_string(),
            seq: self.seq,
            changes,
        });
    }

    fn tick(&mut self) {
        if self.lost.swap(false, Ordering::Relaxed) {
            self.seq += 1;
        }
        self.publish(&Wire::Heartbeat {
            node: self.node.clone(),
            inc: self.inc.to_string(),
            seq: self.seq,
        });
        if std::mem::take(&mut self.state_wanted) {
            self.send_state();
        }
        let now = Instant::now();
        let down: Vec<String> = (self.views.iter())
            .filter(|(_, v)| now.duration_since(v.last_seen) >= self.down_after)
            .map(|(n, _)| n.clone())
            .collect();
        for n in down {
            if let Some(v) = self.views.remove(&n) {
                log::warn!(
                    "cluster: node {n} silent for {:?}: down, its presences leave",
                    self.down_after
                );
                self.presence.drop_remote_node(&v.inc);
            }
        }
    }

    fn send_state(&mut self) {
        let entries = self.presence.local_entries();
        let parts = entries.len().div_ceil(ENTRIES_PER_PART).max(1);
        let mut chunks = entries.chunks(ENTRIES_PER_PART);
        for part in 0..parts {
            self.publish(&Wire::State {
                node: self.node.clone(),
                inc: self.inc.to_string(),
                seq: self.seq,
                part: part as u32,
                parts: parts as u32,
                entries: chunks.next().map(<[_]>::to_vec).unwrap_or_default(),
            });
        }
    }

    fn receive(&mut self, bytes: &[u8]) {
        self.stats.presence_received.fetch_add(1, Ordering::Relaxed);
        if bytes.len() > self.max_message_bytes {
            self.stats.ignored.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let w: Wire = match serde_json::from_slice(bytes) {
            Ok(w) => w,
            Err(e) => {
                log::debug!("cluster: unreadable presence message: {e}");
                self.stats.ignored.fetch_add(1, Ordering::Relaxed);
                return;
            }
        };
        let (node, inc) = w.from();
        if node == self.node {
            if inc != &*self.inc {
                log::warn!("cluster: another node calls itself {node}: node names must differ");
            }
            return;
        }
        let (node, inc) = (node.to_owned(), inc.to_owned());
        let now = Instant::now();
        let view = match self.views.get_mut(&node) {
            Some(v) if *v.inc == *inc => v,
            old => {
                if let Some(old) = old {
                    log::info!("cluster: node {node} restarted; its old presences leave");
                    self.presence.drop_remote_node(&old.inc.clone());
                } else {
                    log::info!("cluster: node {node} is up");
                }
                self.views.insert(
                    node.clone(),
                    View {
                        inc: inc.into(),
                        seq: 0,
                        synced: false,
                        last_seen: now,
                        asked_at: None,
                        parts: None,
                    },
                );
                self.views.get_mut(&node).expect("just inserted")
            }
        };
        view.last_seen = now;
        let mut ask = false;
        match w {
            Wire::Delta { seq, changes, .. } => {
                if view.synced && seq == view.seq + 1 {
                    view.seq = seq;
                    let inc = view.inc.clone();
                    self.presence.apply_remote(&inc, changes);
                } else if !view.synced || seq > view.seq {
                    view.synced = false;
                    ask = true;
                }
            }
            Wire::Heartbeat { seq, .. } => ask = !view.synced || seq != view.seq,
            Wire::SyncRequest { to, .. } => self.state_wanted |= to == *self.inc,
            Wire::State {
                seq,
                part,
                parts,
                entries,
                ..
            } => {
                if parts == 0 || parts > MAX_PARTS || part >= parts {
                    return;
                }
                let p = match &mut view.parts {
                    Some(p) if p.seq == seq && p.parts == parts => p,
                    slot => slot.insert(Parts {
                        seq,
                        parts,
                        got: 0,
                        entries: Vec::new(),
                    }),
                };
                p.got += 1;
                p.entries.extend(entries);
                if p.got == p.parts {
                    let whole = view.parts.take().expect("parts in progress");
                    view.seq = whole.seq;
                    view.synced = true;
                    let inc = view.inc.clone();
                    self.presence.replace_remote(&inc, whole.entries);
                }
            }
        }
        // Ask at most once a second per node: a state takes a moment to arrive.
        if ask
            && view
                .asked_at
                .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(1))
        {
            view.asked_at = Some(now);
            let to = view.inc.to_string();
            self.publish(&Wire::SyncRequest {
                node: self.node.clone(),
                inc: self.inc.to_string(),
                to,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn wire_format() {
        let w = Wire::Delta {
            node: "a".into(),
            inc: "a/1".into(),
            seq: 3,
            changes: vec![
                Change::Join {
                    topic: "room".into(),
                    key: "u1".into(),
                    meta: json!({"phx_ref": "r1"}),
                },
                Change::Leave {
                    topic: "room".into(),
                    key: "u1".into(),
                    phx_ref: "r0".into(),
                },
            ],
        };
        let text = serde_json::to_value(&w).unwrap();
        assert_eq!(
            text,
            json!({"type": "delta", "node": "a", "inc": "a/1", "seq": 3, "changes": [
                {"op": "join", "topic": "room", "key": "u1", "meta": {"phx_ref": "r1"}},
                {"op": "leave", "topic": "room", "key": "u1", "phx_ref": "r0"}]})
        );
        assert_eq!(serde_json::from_value::<Wire>(text).unwrap(), w);
    }
}
