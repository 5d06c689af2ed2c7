//! One Presence shard's replica, as `Phoenix.Tracker.Shard` runs it (phoenix_pubsub 2.1.3,
//! `shard.ex`): the replicas heard from and when, a heartbeat each `broadcast_period` (with the
//! delta when there is one, else only every `max_silent_periods + 1` periods), a transfer asked
//! every `clock_sample_periods` from the replicas known to know more, a replica silent for
//! `down_period` down (its presences hidden) and for `permdown_period` gone. Pure: time comes
//! in as an argument and what to publish and what changed come out, so the task that runs it
//! (and the tests) decide the IO.
//!
//! This node's presences come in as [`Change`]s, the way the engine's presence hands them to
//! any replication; the others' go out as changes per replica, which the engine shows on its
//! sockets as presence_diffs.

use super::clock::ClockSet;
use super::state::{Diff, Place, ReplicaState};
use super::wire::{Envelope, Message, Replica, Route, Transfer};
use crate::cluster::term::{self, Pid, Reference, Term};
use crate::presence::Change;
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Phoenix.Tracker's options, with its defaults.
#[derive(Debug, Clone)]
pub struct ShardConfig {
    /// This node's pubsub node name: the replica's name, and whom `only` messages are for.
    pub node_name: String,
    /// `phx_presence:<Tracker>_shard<N>`.
    pub topic: Vec<u8>,
    pub broadcast_period: Duration,
    pub max_silent_periods: u32,
    pub down_period: Duration,
    pub permdown_period: Duration,
    pub clock_sample_periods: u32,
    /// Presences this replica holds, its own and its peers'; a peer's message that would take
    /// it past this is refused.
    pub max_presences: usize,
    /// Whether this node writes MapSets with `version: 2`, as Elixir up to 1.14 does.
    pub mapset_version: bool,
}

impl ShardConfig {
    pub fn new(node_name: &str, tracker: &str, shard: u32) -> ShardConfig {
        ShardConfig {
            node_name: node_name.to_owned(),
            topic: format!("phx_presence:Elixir.{tracker}_shard{shard}").into_bytes(),
            broadcast_period: Duration::from_millis(1500),
            max_silent_periods: 10,
            down_period: Duration::from_secs(30),
            permdown_period: Duration::from_secs(20 * 60),
            clock_sample_periods: 2,
            max_presences: 1_000_000,
            mapset_version: true,
        }
    }
}

/// What a step asks of the world: messages to publish, and other replicas' presences that came
/// and went (per replica: `name/vsn`).
#[derive(Debug, Default, PartialEq)]
pub struct Out {
    pub publish: Vec<Envelope>,
    pub changes: Vec<(Arc<str>, Vec<Change>)>,
    /// Replicas whose presences all left at once (down or gone).
    pub dropped: Vec<Arc<str>>,
    /// Why a peer's message was not taken, if it was not.
    pub refused: Option<String>,
}

#[derive(Debug, Clone)]
struct Peer {
    vsn: i128,
    last_heartbeat: Instant,
    up: bool,
}

pub struct Shard {
    config: ShardConfig,
    state: ReplicaState,
    peers: HashMap<String, Peer>,
    pending_clocks: ClockSet,
    silent_periods: u32,
    sample_countdown: u32,
    /// This node's presences by `(topic, key, phx_ref)`, where each is in the state.
    own: HashMap<(String, String, String), Place>,
    next_pid: u32,
    pid_creation: u32,
}

/// How other nodes name a replica's presences in the engine: `name/vsn`.
pub fn replica_id(r: &Replica) -> Arc<str> {
    format!("{}/{}", r.name, r.vsn).into()
}

impl Shard {
    /// A new incarnation of this node's replica; `vsn` differs from every earlier one (Phoenix
    /// takes the time in microseconds).
    pub fn new(config: ShardConfig, vsn: i128) -> Shard {
        Shard {
            state: ReplicaState::new(Replica::new(&config.node_name, vsn)),
            peers: HashMap::new(),
            pending_clocks: ClockSet::default(),
            // The first tick sends a heartbeat at once, as Phoenix's does.
            silent_periods: config.max_silent_periods,
            sample_countdown: config.clock_sample_periods,
            own: HashMap::new(),
            next_pid: 0,
            // Never 0 (a local pid's), and new with each incarnation.
            pid_creation: (vsn as u32) | 1,
            config,
        }
    }

    pub fn replica(&self) -> &Replica {
        self.state.replica()
    }

    /// The shard's topic: `phx_presence:Elixir.<Tracker>_shard<N>`.
    pub fn topic(&self) -> &[u8] {
        &self.config.topic
    }

    pub fn broadcast_period(&self) -> Duration {
        self.config.broadcast_period
    }

    /// Presences held, this node's and its peers'.
    pub fn presences(&self) -> usize {
        self.state.len()
    }

    /// Replicas up and down.
    pub fn peers(&self) -> (usize, usize) {
        let up = self.peers.values().filter(|p| p.up).count();
        (up, self.peers.len() - up)
    }

    /// A presence change on this node. An update arrives as the join of the new meta (with
    /// `phx_ref_prev`) and then the leave of the old one: Phoenix's update, one event.
    pub fn local(&mut self, change: Change) {
        match change {
            Change::Join { topic, key, meta } => {
                let prev = meta["phx_ref_prev"].as_str().map(str::to_owned);
                self.put(topic, key, meta, prev);
            }
            Change::Leave {
                topic,
                key,
                phx_ref,
            } => {
                if let Some(place) = self.own.remove(&(topic, key, phx_ref)) {
                    self.state.leave(&place);
                }
            }
        }
    }

    /// Tracks a presence of this node's, in place of the one whose `phx_ref` was `prev`.
    fn put(&mut self, topic: String, key: String, meta: Value, prev: Option<String>) {
        let Some(phx_ref) = meta["phx_ref"].as_str().map(str::to_owned) else {
            return;
        };
        let meta_term = meta_term(&meta);
        let moved = prev.and_then(|prev| self.own.remove(&(topic.clone(), key.clone(), prev)));
        let place = match moved {
            Some(place) => {
                self.state.update(&place, meta_term);
                place
            }
            None => {
                let place = Place {
                    topic: topic.clone().into_bytes(),
                    pid: self.new_pid(),
                    key: key.clone().into_bytes(),
                };
                self.state.join(place.clone(), meta_term);
                place
            }
        };
        self.own.insert((topic, key, phx_ref), place);
    }

    /// This node's presences as the engine has them, after a change was lost on the way: what
    /// the replica holds and the engine does not leaves, what it lacks joins.
    pub fn resync_own(&mut self, entries: Vec<(String, String, Value)>) {
        let mut have: HashMap<(String, String, String), Value> = HashMap::new();
        for (topic, key, meta) in entries {
            if let Some(r) = meta["phx_ref"].as_str() {
                have.insert((topic, key, r.to_owned()), meta);
            }
        }
        let gone: Vec<_> = (self.own.keys())
            .filter(|k| !have.contains_key(*k))
            .cloned()
            .collect();
        for (topic, key, phx_ref) in gone {
            self.local(Change::Leave {
                topic,
                key,
                phx_ref,
            });
        }
        for (k, meta) in have {
            if !self.own.contains_key(&k) {
                let (topic, key, _) = k;
                self.put(topic, key, meta, None);
            }
        }
    }

    /// One pid per tracked presence: Elixir nodes key presences by `{Topic, Pid, Key}`, so the
    /// same user on two sockets of this node must have two. ID and serial stay within what
    /// OTP 25 reads (15 and 13 bits).
    fn new_pid(&mut self) -> Pid {
        let n = self.next_pid;
        self.next_pid = (n + 1) & ((1 << 28) - 1);
        Pid {
            node: self.pid_node(),
            id: n & 0x7fff,
            serial: n >> 15,
            creation: self.pid_creation,
        }
    }

    /// The node this replica's pids and references name: not one an Elixir node runs as.
    fn pid_node(&self) -> String {
        format!("{}@fawkes", self.config.node_name)
    }

    fn envelope(&self, route: Route, node: &str, message: Message) -> Envelope {
        Envelope {
            route,
            node: node.to_owned(),
            topic: self.config.topic.clone(),
            message,
        }
    }

    /// Every `broadcast_period`: the heartbeat (with the delta, if any), the transfers to ask
    /// for, the replicas to mark down.
    pub fn tick(&mut self, now: Instant) -> Out {
        let mut out = Out::default();
        let me = self.replica().clone();
        // The delta if there is one, else an empty heartbeat once silent long enough.
        let clocks = self.state.clocks();
        let beat = if self.state.has_delta() {
            Some(Some(self.state.take_delta(self.config.mapset_version)))
        } else if self.silent_periods >= self.config.max_silent_periods {
            Some(None)
        } else {
            None
        };
        match beat {
            Some(delta) => {
                let heartbeat = Message::Heartbeat {
                    from: me.clone(),
                    delta,
                    clocks,
                };
                out.publish
                    .push(self.envelope(Route::Except, &me.name, heartbeat));
                self.silent_periods = 0;
            }
            None => self.silent_periods += 1,
        }
        if self.sample_countdown <= 1 {
            let clocks = self.state.clocks();
            self.pending_clocks.append(clocks.clone());
            let ahead: Vec<Replica> = self
                .pending_clocks
                .replicas()
                .filter(|r| **r != me)
                .cloned()
                .collect();
            for r in ahead {
                // A reference, as Phoenix's make_ref/0 gives; it only comes back.
                let id = Term::Ref(Box::new(Reference {
                    node: self.pid_node(),
                    creation: self.pid_creation,
                    ids: vec![
                        rand::random::<u32>() & 0x3ffff,
                        rand::random(),
                        rand::random(),
                    ],
                }));
                let req = Message::TransferReq {
                    id,
                    from: me.clone(),
                    clocks: clocks.clone(),
                };
                out.publish.push(self.envelope(Route::Only, &r.name, req));
            }
            self.pending_clocks.clear();
            self.sample_countdown = self.config.clock_sample_periods;
        } else {
            self.sample_countdown -= 1;
        }
        let silent: Vec<(String, Peer)> = self
            .peers
            .iter()
            .map(|(n, p)| (n.clone(), p.clone()))
            .collect();
        for (name, peer) in silent {
            let r = Replica {
                name,
                vsn: peer.vsn,
            };
            let quiet = now.saturating_duration_since(peer.last_heartbeat);
            if quiet > self.config.permdown_period {
                if peer.up {
                    self.down(&r, &mut out);
                }
                self.permdown(&r, &mut out);
            } else if quiet > self.config.down_period && peer.up {
                log::warn!("presence: replica {} silent for {quiet:?}", r.name);
                self.down(&r, &mut out);
            }
        }
        out
    }

    /// A message from the shard's topic. Its own echoes and messages for other nodes are
    /// passed over.
    pub fn receive(&mut self, env: Envelope, now: Instant) -> Out {
        let mut out = Out::default();
        let me = self.replica().clone();
        let for_me = match env.route {
            Route::Except => env.node != me.name,
            Route::Only => env.node == me.name,
        };
        if !for_me || env.topic != self.config.topic {
            return out;
        }
        match env.message {
            Message::Heartbeat {
                from,
                delta,
                clocks,
            } => {
                if from.name == me.name {
                    out.refused = Some(format!("a replica calls itself {}", from.name));
                    return out;
                }
                match delta {
                    None => {
                        self.pending_clocks.append(clocks);
                        self.heartbeat(&from, now, &mut out);
                    }
                    Some(delta) => {
                        self.heartbeat(&from, now, &mut out);
                        self.merge(&Transfer::Delta(delta), &mut out);
                        self.pending_clocks.append(clocks);
                    }
                }
            }
            Message::TransferReq { id, from, clocks } => {
                let transfer = self
                    .state
                    .extract(&from, &clocks.1, self.config.mapset_version);
                let ack = Message::TransferAck {
                    id,
                    from: me.clone(),
                    transfer,
                };
                out.publish
                    .push(self.envelope(Route::Only, &from.name, ack));
            }
            Message::TransferAck { transfer, .. } => self.merge(&transfer, &mut out),
            Message::GracefulPermdown { from } => {
                if self
                    .peers
                    .get(&from.name)
                    .is_some_and(|p| p.vsn == from.vsn)
                {
                    self.down(&from, &mut out);
                    self.permdown(&from, &mut out);
                }
            }
        }
        out
    }

    /// What to send when this node stops: its presences leave every peer at once.
    pub fn graceful_permdown(&self) -> Envelope {
        let me = self.replica().clone();
        self.envelope(
            Route::Except,
            &me.name,
            Message::GracefulPermdown { from: me.clone() },
        )
    }

    /// The replica table on a heartbeat: a new name is up; a known one is refreshed (and up
    /// again if it was down); a new vsn under a known name is a restart, whose old presences
    /// go at once.
    fn heartbeat(&mut self, from: &Replica, now: Instant, out: &mut Out) {
        let fresh = Peer {
            vsn: from.vsn,
            last_heartbeat: now,
            up: true,
        };
        match self.peers.insert(from.name.clone(), fresh) {
            None => self.up(from, out),
            Some(old) if old.vsn == from.vsn => {
                if !old.up {
                    self.up(from, out);
                }
            }
            Some(old) => {
                let old_ref = Replica {
                    name: from.name.clone(),
                    vsn: old.vsn,
                };
                if old.up {
                    self.down(&old_ref, out);
                }
                self.permdown(&old_ref, out);
                self.up(from, out);
            }
        }
    }

    fn up(&mut self, r: &Replica, out: &mut Out) {
        log::info!("presence: replica {} is up", r.name);
        let rows = self.state.replica_up(r);
        changes(
            out,
            Diff {
                joins: rows,
                leaves: Vec::new(),
            },
        );
    }

    fn down(&mut self, r: &Replica, out: &mut Out) {
        log::warn!("presence: replica {} is down; its presences leave", r.name);
        if let Some(p) = self.peers.get_mut(&r.name).filter(|p| p.vsn == r.vsn) {
            p.up = false;
        }
        self.state.replica_down(r);
        out.dropped.push(replica_id(r));
    }

    fn permdown(&mut self, r: &Replica, out: &mut Out) {
        self.state.permdown(r);
        if self.peers.get(&r.name).is_some_and(|p| p.vsn == r.vsn) {
            self.peers.remove(&r.name);
        }
        out.dropped.push(replica_id(r));
    }

    fn merge(&mut self, transfer: &Transfer, out: &mut Out) {
        let incoming = match transfer {
            Transfer::Delta(d) => d.values.as_ref().map_or(0, BTreeMap::len),
            Transfer::Full(_, values) => values.len(),
        };
        if self.state.len() + incoming > self.config.max_presences {
            out.refused = Some(format!(
                "{incoming} presences past the bound of {}",
                self.config.max_presences
            ));
            return;
        }
        let diff = self.state.merge(transfer);
        changes(out, diff);
    }
}

/// Rows that came and went, as the engine's changes, per replica. A row that JSON cannot
/// carry, or without a `phx_ref`, is left out (Phoenix's clients key metas by it).
fn changes(out: &mut Out, diff: Diff) {
    let mut by: BTreeMap<&Replica, Vec<Change>> = BTreeMap::new();
    let text = |b: &[u8]| String::from_utf8(b.to_vec()).ok();
    for (row, join) in
        (diff.joins.iter().map(|r| (r, true))).chain(diff.leaves.iter().map(|r| (r, false)))
    {
        let (Some(topic), Some(key), Ok(meta)) = (
            text(&row.place.topic),
            text(&row.place.key),
            term::to_json(&row.meta),
        ) else {
            continue;
        };
        let Some(phx_ref) = meta["phx_ref"].as_str().map(str::to_owned) else {
            continue;
        };
        let change = if join {
            Change::Join { topic, key, meta }
        } else {
            Change::Leave {
                topic,
                key,
                phx_ref,
            }
        };
        by.entry(&row.tag.replica).or_default().push(change);
    }
    for (r, c) in by {
        out.changes.push((replica_id(r), c));
    }
}

/// A meta as an Elixir app writes it: atom keys (`phx_ref` must be one: Phoenix matches on
/// it), and what is inside them as decoded JSON.
fn meta_term(meta: &Value) -> Term {
    match meta {
        Value::Object(m) => Term::Map(
            m.iter()
                .map(|(k, v)| {
                    // An atom has at most 255 characters.
                    let key = if k.chars().count() <= 255 {
                        Term::Atom(k.clone())
                    } else {
                        Term::Binary(k.as_bytes().to_vec())
                    };
                    (key, term::from_json(v))
                })
                .collect(),
        ),
        other => term::from_json(other),
    }
}

#[cfg(test)]
mod tests {
    use super::super::wire::decode;
    use super::*;
    use crate::cluster::tests::capture;
    use serde_json::json;

    const P: Duration = Duration::from_millis(1500);

    fn shard(name: &str, vsn: i128) -> Shard {
        Shard::new(ShardConfig::new(name, "App.Presence", 0), vsn)
    }

    fn join(topic: &str, key: &str, phx_ref: &str) -> Change {
        Change::Join {
            topic: topic.into(),
            key: key.into(),
            meta: json!({"phx_ref": phx_ref, "device": "phone"}),
        }
    }

    fn leave(topic: &str, key: &str, phx_ref: &str) -> Change {
        Change::Leave {
            topic: topic.into(),
            key: key.into(),
            phx_ref: phx_ref.into(),
        }
    }

    /// Everything `out` publishes, delivered to `to` (which passes over what is not for it).
    fn deliver(out: Out, to: &mut Shard, now: Instant) -> Out {
        let mut got = Out::default();
        for env in out.publish {
            let o = to.receive(env, now);
            got.publish.extend(o.publish);
            got.changes.extend(o.changes);
            got.dropped.extend(o.dropped);
            got.refused = got.refused.or(o.refused);
        }
        got
    }

    fn heartbeat_kinds(out: &Out) -> Vec<&'static str> {
        out.publish
            .iter()
            .map(|e| match &e.message {
                Message::Heartbeat { delta: None, .. } => "empty",
                Message::Heartbeat { .. } => "delta",
                Message::TransferReq { .. } => "transfer_req",
                Message::TransferAck { .. } => "transfer_ack",
                Message::GracefulPermdown { .. } => "graceful_permdown",
            })
            .collect()
    }

    /// A pair where a tracks alice and b has had her in a's delta.
    fn alice_known(t: Instant) -> (Shard, Shard) {
        let (mut a, mut b) = pair(t);
        a.local(join("room:1", "alice", "A1"));
        deliver(a.tick(t + P), &mut b, t + P);
        (a, b)
    }

    /// Two shards that have heard each other's first heartbeats.
    fn pair(t: Instant) -> (Shard, Shard) {
        let (mut a, mut b) = (shard("a", 1), shard("b", 2));
        let (ta, tb) = (a.tick(t), b.tick(t));
        deliver(ta, &mut b, t);
        deliver(tb, &mut a, t);
        (a, b)
    }

    #[test]
    fn a_heartbeat_at_once_then_every_eleventh_period_when_idle() {
        let t = Instant::now();
        let mut a = shard("a", 1);
        let kinds: Vec<Vec<&str>> = (0..13)
            .map(|i| heartbeat_kinds(&a.tick(t + P * i)))
            .collect();
        let empty: Vec<usize> = (0..13).filter(|&i| kinds[i] == ["empty"]).collect();
        assert_eq!(empty, [0, 11]);
        assert!(kinds.iter().all(|k| k.is_empty() || k == &["empty"]));
    }

    #[test]
    fn joins_updates_and_leaves_reach_the_peer_as_changes() {
        let t = Instant::now();
        let (mut a, mut b) = pair(t);
        a.local(join("room:1", "alice", "A1"));
        let out = deliver(a.tick(t + P), &mut b, t + P);
        let id = replica_id(a.replica());
        let meta = json!({"phx_ref": "A1", "device": "phone"});
        assert_eq!(
            out.changes,
            [(
                id.clone(),
                vec![Change::Join {
                    topic: "room:1".into(),
                    key: "alice".into(),
                    meta
                }]
            )]
        );
        // An update: the new meta with phx_ref_prev, then the old one's leave.
        let new = json!({"phx_ref": "A2", "phx_ref_prev": "A1", "device": "laptop"});
        a.local(Change::Join {
            topic: "room:1".into(),
            key: "alice".into(),
            meta: new.clone(),
        });
        a.local(leave("room:1", "alice", "A1"));
        let out = deliver(a.tick(t + P * 2), &mut b, t + P * 2);
        assert_eq!(
            out.changes,
            [(
                id.clone(),
                vec![
                    Change::Join {
                        topic: "room:1".into(),
                        key: "alice".into(),
                        meta: new
                    },
                    leave("room:1", "alice", "A1"),
                ]
            )]
        );
        a.local(leave("room:1", "alice", "A2"));
        let out = deliver(a.tick(t + P * 3), &mut b, t + P * 3);
        assert_eq!(out.changes, [(id, vec![leave("room:1", "alice", "A2")])]);
        assert_eq!((a.presences(), b.presences()), (0, 0));
    }

    #[test]
    fn the_same_user_twice_is_two_presences() {
        let t = Instant::now();
        let (mut a, mut b) = pair(t);
        a.local(join("room:1", "alice", "A1"));
        a.local(join("room:1", "alice", "A2"));
        deliver(a.tick(t + P), &mut b, t + P);
        assert_eq!(b.presences(), 2);
    }

    #[test]
    fn a_lost_delta_is_asked_for_and_sent() {
        let t = Instant::now();
        let (mut a, mut b) = pair(t);
        a.local(join("room:1", "alice", "A1"));
        a.tick(t + P); // lost
        a.local(join("room:1", "bob", "B1"));
        let mut now = t + P * 2;
        let out = deliver(a.tick(now), &mut b, now);
        assert_eq!(out.changes[0].1.len(), 1);
        // At b's next gap check it asks a; a's answer brings alice.
        let mut healed = Vec::new();
        for _ in 0..3 {
            now += P;
            let asks = b.tick(now);
            let answer = deliver(asks, &mut a, now);
            healed.extend(deliver(answer, &mut b, now).changes);
        }
        assert_eq!(healed.len(), 1, "{healed:?}");
        assert_eq!(
            healed[0].1,
            [join("room:1", "alice", "A1")].map(|c| match c {
                Change::Join { topic, key, .. } => Change::Join {
                    topic,
                    key,
                    meta: json!({"phx_ref": "A1", "device": "phone"}),
                },
                other => other,
            })
        );
        assert_eq!(b.presences(), 2);
    }

    #[test]
    fn a_silent_peer_is_down_after_the_down_period_and_back_on_its_heartbeat() {
        let t = Instant::now();
        let (mut a, mut b) = alice_known(t);
        let id = replica_id(a.replica());
        assert!(b.tick(t + Duration::from_secs(30)).dropped.is_empty());
        assert_eq!(
            b.tick(t + Duration::from_secs(32)).dropped,
            std::slice::from_ref(&id)
        );
        assert_eq!(b.peers(), (0, 1));
        // Its next heartbeat: up, its presences back.
        let mut beat = a.tick(t + Duration::from_secs(33));
        while heartbeat_kinds(&beat).is_empty() {
            beat = a.tick(t + Duration::from_secs(34));
        }
        let out = deliver(beat, &mut b, t + Duration::from_secs(34));
        assert_eq!(out.changes.len(), 1);
        assert_eq!(b.peers(), (1, 0));
        // Silent for the permdown period: gone.
        let out = b.tick(t + Duration::from_secs(34 + 20 * 60 + 1));
        assert_eq!(out.dropped, [id.clone(), id]);
        assert_eq!((b.peers(), b.presences()), ((0, 0), 0));
    }

    #[test]
    fn a_restarted_peer_drops_its_old_presences_at_once() {
        let t = Instant::now();
        let (a, mut b) = alice_known(t);
        let old = replica_id(a.replica());
        let mut a2 = shard("a", 99);
        let out = deliver(a2.tick(t + P * 2), &mut b, t + P * 2);
        assert_eq!(out.dropped, [old.clone(), old]);
        assert_eq!((b.peers(), b.presences()), ((1, 0), 0));
    }

    #[test]
    fn a_graceful_permdown_drops_at_once() {
        let t = Instant::now();
        let (a, mut b) = alice_known(t);
        let out = b.receive(a.graceful_permdown(), t + P);
        assert_eq!(out.dropped.len(), 2);
        assert_eq!(b.presences(), 0);
        // Another vsn's permdown under the same name is not this one's.
        let (_, mut b) = pair(t);
        let out = b.receive(shard("a", 5).graceful_permdown(), t);
        assert!(out.dropped.is_empty());
    }

    #[test]
    fn own_echoes_and_others_messages_are_passed_over() {
        let t = Instant::now();
        let (mut a, mut b) = pair(t);
        a.local(join("room:1", "alice", "A1"));
        let out = a.tick(t + P);
        // Redis hands a its own heartbeat back.
        assert_eq!(
            deliver(
                Out {
                    publish: out.publish.clone(),
                    ..Out::default()
                },
                &mut a,
                t
            ),
            Out::default()
        );
        // A transfer answer meant for c.
        let mut c = shard("c", 3);
        let mut env = deliver(c.tick(t), &mut a, t);
        assert!(env.publish.is_empty());
        let req = Envelope {
            route: Route::Only,
            node: "a".into(),
            topic: b"phx_presence:Elixir.App.Presence_shard0".to_vec(),
            message: Message::TransferReq {
                id: Term::Atom("x".into()),
                from: c.replica().clone(),
                clocks: c.state.clocks(),
            },
        };
        env = a.receive(req, t);
        assert_eq!(env.publish[0].node, "c");
        assert_eq!(deliver(env, &mut b, t), Out::default());
    }

    #[test]
    fn a_lost_change_is_mended_from_the_engines_presences() {
        let t = Instant::now();
        let (mut a, mut b) = pair(t);
        a.local(join("room:1", "alice", "A1"));
        a.local(join("room:1", "bob", "B1"));
        deliver(a.tick(t + P), &mut b, t + P);
        // The engine now has bob (his update lost) and carol (her join lost); alice left.
        let bob = json!({"phx_ref": "B2", "phx_ref_prev": "B1", "device": "phone"});
        let carol = json!({"phx_ref": "C1", "device": "phone"});
        a.resync_own(vec![
            ("room:1".into(), "bob".into(), bob.clone()),
            ("room:1".into(), "carol".into(), carol.clone()),
        ]);
        let out = deliver(a.tick(t + P * 2), &mut b, t + P * 2);
        let mut got = out.changes[0].1.clone();
        got.sort_by_key(|c| format!("{c:?}"));
        let j = |key: &str, meta: &Value| Change::Join {
            topic: "room:1".into(),
            key: key.into(),
            meta: meta.clone(),
        };
        let mut want = vec![
            j("bob", &bob),
            j("carol", &carol),
            leave("room:1", "alice", "A1"),
            leave("room:1", "bob", "B1"),
        ];
        want.sort_by_key(|c| format!("{c:?}"));
        assert_eq!(got, want);
        assert_eq!(b.presences(), 2);
    }

    #[test]
    fn a_peer_past_the_bound_is_refused() {
        let t = Instant::now();
        let (mut a, mut b) = pair(t);
        b.config.max_presences = 1;
        a.local(join("room:1", "alice", "A1"));
        a.local(join("room:1", "bob", "B1"));
        let out = deliver(a.tick(t + P), &mut b, t + P);
        assert!(out.refused.unwrap().contains("past the bound of 1"));
        assert_eq!(b.presences(), 0);
    }

    #[test]
    fn an_elixir_nodes_heartbeat_brings_its_presence() {
        // Capture 08: phx2's heartbeat after one join on channel:lobby.
        let env = decode(&capture("08_"), term::Bounds::default()).unwrap();
        let mut f = Shard::new(ShardConfig::new("f1", "PhoenixFixture.Presence", 0), 7);
        let out = f.receive(env, Instant::now());
        assert_eq!(
            out.changes,
            [(
                Arc::from("phx2/1796005873803970"),
                vec![Change::Join {
                    topic: "channel:lobby".into(),
                    key: "u2".into(),
                    meta: json!({"online_at": "2026-11-30T02:31:22Z", "phx_ref": "GOyx1aasKdYYKwCC"}),
                }]
            )]
        );
        assert_eq!(f.peers(), (1, 0));
    }

    #[test]
    fn metas_go_out_with_atom_keys() {
        let t = meta_term(&json!({"phx_ref": "A1", "n": 1, "nested": {"k": null}}));
        let Term::Map(pairs) = t else { panic!() };
        assert_eq!(pairs[0].0, Term::Atom("n".into()));
        assert_eq!(
            pairs[1].1,
            Term::Map(vec![(
                Term::Binary(b"k".to_vec()),
                Term::Atom("nil".into())
            )])
        );
        let long = "k".repeat(256);
        let Term::Map(pairs) = meta_term(&json!({ long.clone(): 1 })) else {
            panic!()
        };
        assert_eq!(pairs[0].0, Term::Binary(long.into_bytes()));
    }
}

/// Real Phoenix 1.7.24 nodes' traffic (captures 13-18 and 22-24: three Elixir nodes with
/// distribution on, five presences), as a Fawkes shard in phx3's place takes it.
#[cfg(test)]
mod golden {
    use super::super::wire::{decode, Envelope};
    use super::*;
    use crate::cluster::term::{Atoms, Bounds};
    use crate::cluster::tests::capture;

    fn read(prefix: &str) -> Envelope {
        let bytes = capture(prefix);
        let env = decode(&bytes, Bounds::default()).unwrap();
        // Written back as the OTP 25 node wrote it.
        assert_eq!(env.encode(Atoms::Otp25), bytes, "{prefix}");
        env
    }

    fn keys(out: &Out, join: bool) -> Vec<String> {
        let mut k: Vec<String> = (out.changes.iter().flat_map(|(_, c)| c))
            .filter_map(|c| match c {
                Change::Join { key, .. } if join => Some(key.clone()),
                Change::Leave { key, .. } if !join => Some(key.clone()),
                _ => None,
            })
            .collect();
        k.sort();
        k
    }

    #[test]
    fn several_presences_from_three_elixir_nodes() {
        let mut s = Shard::new(ShardConfig::new("phx3", "PhoenixFixture.Presence", 0), 9);
        let t = Instant::now();
        let out = s.receive(read("13_"), t);
        assert_eq!(keys(&out, true), ["u1", "u2", "u3"]);
        let out = s.receive(read("14_"), t);
        assert_eq!(keys(&out, true), ["u4", "u5"]);
        // phx2's transfer to phx3 holds the five: nothing new.
        let out = s.receive(read("16_"), t);
        assert_eq!(out.changes, []);
        // u2 leaves phx1; phx2 passes the removal on.
        let out = s.receive(read("17_"), t);
        assert_eq!(
            (keys(&out, true), keys(&out, false)),
            (vec![], vec!["u2".to_owned()])
        );
        assert_eq!(s.receive(read("18_"), t).changes, []);
        // The transfer after phx3's restart brings u6, who joined phx1 meanwhile.
        assert_eq!(keys(&s.receive(read("22_"), t), true), ["u6"]);
        assert_eq!((s.presences(), s.peers()), (5, (2, 0)));
        // phx2 leaves for good: its two presences with it.
        let out = s.receive(read("23_"), t);
        let phx2: Arc<str> = Arc::from("phx2/1796698278472472");
        assert_eq!(out.dropped, [phx2.clone(), phx2]);
        assert_eq!((s.presences(), s.peers()), (3, (1, 0)));
        // phx1's leaves (dots of presences phx3 never saw among them) take the other three.
        let out = s.receive(read("24_"), t);
        assert_eq!(keys(&out, false), ["u1", "u3", "u6"]);
        assert_eq!(s.presences(), 0);
    }
}
