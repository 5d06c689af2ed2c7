//! A replica's presences as `Phoenix.Tracker.State` keeps them (phoenix_pubsub 2.1.3,
//! `state.ex`): each presence is a dot `{Replica, Clock}` that only its replica adds; a
//! replica's context is the last clock it has seen of each replica with no gap, its clouds the
//! dots seen past a gap. A merge takes the other side's adds this side has not seen, and drops
//! the rows the other side has seen and no longer holds: that is how a leave spreads. The
//! outgoing delta collects this replica's own events (and the removes it observed) between two
//! heartbeats. `docs/phoenix-tracker.md` §3 has the rules with examples.

use super::wire::{Clocks, Context, Entry, Mode, Replica, State, Status, Tag, Transfer};
use crate::cluster::term::{Pid, Term};
use std::collections::{BTreeMap, BTreeSet};

type Clouds = BTreeMap<Replica, BTreeSet<u64>>;

/// Where a presence is: `{Topic, Pid, Key}`, the key of Elixir's values table. One channel
/// process tracks one key once per topic.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Place {
    pub topic: Vec<u8>,
    pub pid: Pid,
    pub key: Vec<u8>,
}

/// A presence with its metas and the dot that added it.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub place: Place,
    pub meta: Term,
    pub tag: Tag,
}

/// The presences one step brought and took away (a merge, a replica up or down): each
/// topic's presence_diff is made from them. An update is a join and a leave of one place.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Diff {
    pub joins: Vec<Row>,
    pub leaves: Vec<Row>,
}

/// This replica's events since its last heartbeat.
#[derive(Debug, Clone, Default)]
struct Delta {
    clouds: Clouds,
    values: BTreeMap<Tag, Entry>,
    range: (Context, Context),
}

#[derive(Debug, Clone)]
pub struct ReplicaState {
    replica: Replica,
    context: Context,
    clouds: Clouds,
    rows: BTreeMap<Place, (Term, Tag)>,
    replicas: BTreeMap<Replica, Status>,
    delta: Delta,
}

fn covered(context: &Context, clouds: &Clouds, tag: &Tag) -> bool {
    context.get(&tag.replica).is_some_and(|&c| c >= tag.clock)
        || clouds
            .get(&tag.replica)
            .is_some_and(|cloud| cloud.contains(&tag.clock))
}

fn put_tag(clouds: &mut Clouds, tag: &Tag) {
    clouds
        .entry(tag.replica.clone())
        .or_default()
        .insert(tag.clock);
}

fn delete_tag(clouds: &mut Clouds, tag: &Tag) {
    if let Some(cloud) = clouds.get_mut(&tag.replica) {
        cloud.remove(&tag.clock);
    }
}

fn entry(place: &Place, meta: &Term) -> Entry {
    Entry {
        pid: place.pid.clone(),
        topic: place.topic.clone(),
        key: place.key.clone(),
        meta: meta.clone(),
    }
}

impl ReplicaState {
    pub fn new(replica: Replica) -> ReplicaState {
        let mut state = ReplicaState {
            context: [(replica.clone(), 0)].into(),
            clouds: Clouds::new(),
            rows: BTreeMap::new(),
            replicas: [(replica.clone(), Status::Up)].into(),
            delta: Delta::default(),
            replica,
        };
        state.reset_delta();
        state
    }

    pub fn replica(&self) -> &Replica {
        &self.replica
    }

    /// What this replica gossips in its heartbeats: its context without the replicas it holds
    /// down (a peer that never knew them would otherwise ask for them forever).
    pub fn clocks(&self) -> Clocks {
        let context = self
            .context
            .iter()
            .filter(|(r, _)| self.replicas.get(*r) != Some(&Status::Down))
            .map(|(r, &c)| (r.clone(), c))
            .collect();
        (self.replica.clone(), context)
    }

    /// The presence at `place`, on a replica up or down.
    pub fn get(&self, place: &Place) -> Option<(&Term, &Tag)> {
        self.rows.get(place).map(|(meta, tag)| (meta, tag))
    }

    /// A topic's presences on the replicas that are up, in place order.
    pub fn list(&self, topic: &[u8]) -> Vec<Row> {
        self.rows
            .iter()
            .skip_while(|(p, _)| p.topic.as_slice() < topic)
            .take_while(|(p, _)| p.topic.as_slice() == topic)
            .filter(|(_, (_, tag))| self.replicas.get(&tag.replica) != Some(&Status::Down))
            .map(|(place, (meta, tag))| Row {
                place: place.clone(),
                meta: meta.clone(),
                tag: tag.clone(),
            })
            .collect()
    }

    /// How many presences the state holds, on every replica.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// Tracks a presence of this replica's own (the caller checked the place is free).
    pub fn join(&mut self, place: Place, meta: Term) -> Tag {
        let tag = self.bump();
        self.delta.values.insert(tag.clone(), entry(&place, &meta));
        self.rows.insert(place, (meta, tag.clone()));
        tag
    }

    /// Untracks a presence; what it was, if it was there.
    pub fn leave(&mut self, place: &Place) -> Option<Row> {
        let (meta, tag) = self.rows.remove(place)?;
        self.forget(&tag);
        self.bump();
        Some(Row {
            place: place.clone(),
            meta,
            tag,
        })
    }

    /// Replaces a presence's metas: the old dot leaves, two clocks pass (a leave and a join
    /// in one, as Phoenix does it) and the new metas come under the second. The old metas, if
    /// the place was tracked.
    pub fn update(&mut self, place: &Place, meta: Term) -> Option<Term> {
        let (old, tag) = self.rows.get(place)?.clone();
        self.forget(&tag);
        self.bump();
        let tag = self.bump();
        self.delta.values.insert(tag.clone(), entry(place, &meta));
        self.rows.insert(place.clone(), (meta, tag));
        Some(old)
    }

    /// Merges a peer's heartbeat delta or transfer.
    pub fn merge(&mut self, remote: &Transfer) -> Diff {
        match remote {
            Transfer::Delta(delta) => {
                let values = delta.values.as_ref();
                self.merge_values(delta, values.unwrap_or(&BTreeMap::new()))
            }
            Transfer::Full(head, values) => self.merge_values(head, values),
        }
    }

    fn merge_values(&mut self, remote: &State, remote_map: &BTreeMap<Tag, Entry>) -> Diff {
        // Adds of replicas this side knows, not seen yet. A peer never adds at a place this
        // replica holds itself (its pids are its own); one that claims to is not believed.
        let joins: Vec<Row> = remote_map
            .iter()
            .filter(|(tag, _)| {
                self.context.contains_key(&tag.replica)
                    && !covered(&self.context, &self.clouds, tag)
            })
            .map(|(tag, e)| Row {
                place: Place {
                    topic: e.topic.clone(),
                    pid: e.pid.clone(),
                    key: e.key.clone(),
                },
                meta: e.meta.clone(),
                tag: tag.clone(),
            })
            .filter(|row| {
                self.rows
                    .get(&row.place)
                    .is_none_or(|(_, t)| t.replica != self.replica)
            })
            .collect();
        let mut clouds = self.clouds.clone();
        for (replica, cloud) in &remote.clouds {
            if self.context.contains_key(replica) {
                clouds.entry(replica.clone()).or_default().extend(cloud);
            }
        }
        // Others' rows the peer has seen and no longer holds: removed there.
        let leaves: Vec<Row> = self
            .rows
            .iter()
            .filter(|(_, (_, tag))| {
                tag.replica != self.replica
                    && !remote_map.contains_key(tag)
                    && covered(&remote.context, &remote.clouds, tag)
            })
            .map(|(place, (meta, tag))| Row {
                place: place.clone(),
                meta: meta.clone(),
                tag: tag.clone(),
            })
            .collect();
        for row in &leaves {
            delete_tag(&mut clouds, &row.tag);
            self.remove_delta_tag(&row.tag);
            self.rows.remove(&row.place);
        }
        for row in &joins {
            self.rows
                .insert(row.place.clone(), (row.meta.clone(), row.tag.clone()));
        }
        let mut context = self.context.clone();
        for (replica, &clock) in &remote.context {
            if let Some(c) = context.get_mut(replica) {
                *c = (*c).max(clock);
            }
        }
        self.clouds = clouds;
        self.put_context(context);
        self.compact();
        Diff { joins, leaves }
    }

    /// Whether there is anything to send at the next heartbeat.
    pub fn has_delta(&self) -> bool {
        self.delta.clouds.values().any(|cloud| !cloud.is_empty())
    }

    /// The delta to send, as the wire carries it; a new one starts.
    pub fn take_delta(&mut self, mapset_version: bool) -> State {
        let delta = std::mem::take(&mut self.delta);
        self.reset_delta();
        self.compact();
        State {
            replica: self.replica.clone(),
            context: Context::new(),
            clouds: delta.clouds,
            values: Some(delta.values),
            mode: Mode::Delta,
            replicas: BTreeMap::new(),
            range: delta.range,
            mapset_version,
        }
    }

    /// What a transfer answers a replica that knows `known` with: the whole state, limited to
    /// the replicas it knows, less its own presences. (Phoenix answers with a delta when one
    /// of its recent ones covers the gap; the whole state is always a valid answer.)
    pub fn extract(&self, to: &Replica, known: &Context, mapset_version: bool) -> Transfer {
        let knows = |r: &Replica| known.contains_key(r);
        let head = State {
            replica: self.replica.clone(),
            context: self
                .context
                .iter()
                .filter(|(r, _)| knows(r))
                .map(|(r, &c)| (r.clone(), c))
                .collect(),
            clouds: self
                .clouds
                .iter()
                .filter(|(r, _)| knows(r))
                .map(|(r, c)| (r.clone(), c.clone()))
                .collect(),
            values: None,
            mode: Mode::Normal,
            replicas: self.replicas.clone(),
            range: Default::default(),
            mapset_version,
        };
        let values = self
            .rows
            .iter()
            .filter(|(_, (_, tag))| tag.replica != *to && knows(&tag.replica))
            .map(|(place, (meta, tag))| (tag.clone(), entry(place, meta)))
            .collect();
        Transfer::Full(head, values)
    }

    /// A replica heard from: known from now on; its presences, kept while it was down, are
    /// back.
    pub fn replica_up(&mut self, replica: &Replica) -> Vec<Row> {
        self.context.entry(replica.clone()).or_insert(0);
        self.replicas.insert(replica.clone(), Status::Up);
        self.rows_of(replica)
    }

    /// A replica silent too long: its presences are hidden (kept, should it come back).
    pub fn replica_down(&mut self, replica: &Replica) -> Vec<Row> {
        self.replicas.insert(replica.clone(), Status::Down);
        self.rows_of(replica)
    }

    /// A replica gone for good: everything of it is dropped, its dots are no longer believed.
    pub fn permdown(&mut self, replica: &Replica) {
        self.context.remove(replica);
        self.clouds.remove(replica);
        self.rows.retain(|_, (_, tag)| tag.replica != *replica);
        self.replicas.remove(replica);
        let delta = &mut self.delta;
        delta.range.0.remove(replica);
        delta.range.1.remove(replica);
        delta.clouds.remove(replica);
        delta.values.retain(|tag, _| tag.replica != *replica);
    }

    fn rows_of(&self, replica: &Replica) -> Vec<Row> {
        self.rows
            .iter()
            .filter(|(_, (_, tag))| tag.replica == *replica)
            .map(|(place, (meta, tag))| Row {
                place: place.clone(),
                meta: meta.clone(),
                tag: tag.clone(),
            })
            .collect()
    }

    /// A dot removed here: out of the clouds, and into the delta so that the peers drop it.
    fn forget(&mut self, tag: &Tag) {
        delete_tag(&mut self.clouds, tag);
        self.remove_delta_tag(tag);
    }

    fn remove_delta_tag(&mut self, tag: &Tag) {
        put_tag(&mut self.delta.clouds, tag);
        self.delta.values.remove(tag);
    }

    /// The next own dot.
    fn bump(&mut self) -> Tag {
        let clock = self.context.get(&self.replica).copied().unwrap_or(0) + 1;
        let tag = Tag {
            replica: self.replica.clone(),
            clock,
        };
        put_tag(&mut self.clouds, &tag);
        put_tag(&mut self.delta.clouds, &tag);
        let mut context = self.context.clone();
        context.insert(self.replica.clone(), clock);
        self.put_context(context);
        tag
    }

    /// Sets the context; the delta's range ends at the own clock.
    fn put_context(&mut self, context: Context) {
        let own = context.get(&self.replica).copied().unwrap_or(0);
        self.context = context;
        self.delta.range.1.insert(self.replica.clone(), own);
    }

    fn reset_delta(&mut self) {
        let own: Context = self
            .context
            .get_key_value(&self.replica)
            .map(|(r, &c)| (r.clone(), c))
            .into_iter()
            .collect();
        self.delta = Delta {
            clouds: Clouds::new(),
            values: BTreeMap::new(),
            range: (own.clone(), own),
        };
    }

    /// Moves each cloud's dots that continue the context into it, and drops those it covers.
    fn compact(&mut self) {
        let mut context = std::mem::take(&mut self.context);
        for (replica, cloud) in self.clouds.iter_mut() {
            cloud.retain(|&clock| match context.get_mut(replica) {
                Some(c) if *c + 1 == clock => {
                    *c = clock;
                    false
                }
                Some(c) if *c >= clock => false,
                None if clock == 1 => {
                    context.insert(replica.clone(), 1);
                    false
                }
                _ => true,
            });
        }
        self.put_context(context);
    }
}

#[cfg(test)]
mod tests {
    use super::super::wire::{decode, Envelope, Message, Route};
    use super::*;
    use crate::cluster::term::{self, Atoms};
    use crate::cluster::tests::capture;

    fn r(name: &str, vsn: i128) -> Replica {
        Replica::new(name, vsn)
    }

    fn place(topic: &str, id: u32, key: &str) -> Place {
        Place {
            topic: topic.into(),
            pid: Pid {
                node: "f@fawkes".into(),
                id,
                serial: 0,
                creation: 1,
            },
            key: key.into(),
        }
    }

    fn meta(phx_ref: &str) -> Term {
        Term::Map(vec![(
            Term::Atom("phx_ref".into()),
            Term::Binary(phx_ref.into()),
        )])
    }

    fn keys(rows: &[Row]) -> Vec<String> {
        rows.iter()
            .map(|row| String::from_utf8_lossy(&row.place.key).into_owned())
            .collect()
    }

    fn cloud(s: &ReplicaState, of: &Replica) -> Vec<u64> {
        s.delta
            .clouds
            .get(of)
            .into_iter()
            .flatten()
            .copied()
            .collect()
    }

    /// Two replicas that have heard each other's heartbeats.
    fn pair() -> (ReplicaState, ReplicaState) {
        let (mut a, mut b) = (ReplicaState::new(r("a", 1)), ReplicaState::new(r("b", 2)));
        a.replica_up(&r("b", 2));
        b.replica_up(&r("a", 1));
        (a, b)
    }

    /// `from`'s next heartbeat delta merged into `to`.
    fn gossip(from: &mut ReplicaState, to: &mut ReplicaState) -> Diff {
        to.merge(&Transfer::Delta(from.take_delta(true)))
    }

    #[test]
    fn own_events_number_the_dots_as_phoenix_does() {
        // docs/phoenix-tracker.md §3.2: join 1; leave 2 (1 in the clouds, no value); join 3;
        // update 4 and 5 (3 in the clouds, the value under 5).
        let me = r("me", 1);
        let mut s = ReplicaState::new(me.clone());
        assert!(!s.has_delta());
        s.join(place("t", 1, "u1"), meta("A"));
        assert_eq!((s.context[&me], cloud(&s, &me)), (1, vec![1]));
        s.leave(&place("t", 1, "u1")).unwrap();
        assert_eq!(cloud(&s, &me), [1, 2]);
        assert!(s.delta.values.is_empty());
        s.join(place("t", 1, "u1"), meta("B"));
        assert_eq!(s.update(&place("t", 1, "u1"), meta("C")), Some(meta("B")));
        assert_eq!(cloud(&s, &me), [1, 2, 3, 4, 5]);
        let tags: Vec<_> = s.delta.values.keys().map(|t| t.clock).collect();
        assert_eq!(tags, [5]);
        assert_eq!(
            s.get(&place("t", 1, "u1")),
            Some((
                &meta("C"),
                &Tag {
                    replica: me.clone(),
                    clock: 5
                }
            ))
        );
        assert_eq!(s.leave(&place("t", 9, "u1")), None);
        // The delta spans the clocks since the last one; the next one starts where it ended.
        let d = s.take_delta(true);
        assert_eq!(
            d.range,
            ([(me.clone(), 0)].into(), [(me.clone(), 5)].into())
        );
        assert!(!s.has_delta());
        s.join(place("t", 2, "u2"), meta("D"));
        assert_eq!(
            s.take_delta(true).range,
            ([(me.clone(), 5)].into(), [(me.clone(), 6)].into())
        );
    }

    #[test]
    fn a_join_makes_the_heartbeat_of_capture_08_byte_for_byte() {
        let bytes = capture("08_");
        let env = decode(&bytes, term::Bounds::default()).unwrap();
        let Message::Heartbeat {
            from,
            delta: Some(d),
            ..
        } = &env.message
        else {
            panic!("{:?}", env.message)
        };
        let (_, e) = d.values.as_ref().unwrap().first_key_value().unwrap();
        let mut s = ReplicaState::new(from.clone());
        s.join(
            Place {
                topic: e.topic.clone(),
                pid: e.pid.clone(),
                key: e.key.clone(),
            },
            e.meta.clone(),
        );
        let clocks = s.clocks();
        let ours = Envelope {
            route: Route::Except,
            node: from.name.clone(),
            topic: env.topic.clone(),
            message: Message::Heartbeat {
                from: from.clone(),
                delta: Some(s.take_delta(true)),
                clocks,
            },
        };
        assert_eq!(ours.encode(Atoms::Otp25), bytes);
    }

    #[test]
    fn capture_10s_transfer_merges_into_a_new_replica() {
        let env = decode(&capture("10_"), term::Bounds::default()).unwrap();
        let Message::TransferAck { transfer, .. } = &env.message else {
            panic!("{:?}", env.message)
        };
        let (phx1, phx2) = (r("phx1", 1796005961704246), r("phx2", 1796005990722661));
        let mut s = ReplicaState::new(r("fawkes", 7));
        // Values of replicas not heard from yet are not taken.
        assert!(s.clone().merge(transfer).joins.is_empty());
        s.replica_up(&phx1);
        s.replica_up(&phx2);
        let diff = s.merge(transfer);
        assert_eq!(
            (keys(&diff.joins), diff.leaves.len()),
            (vec!["u1".into(), "u3".into()], 0)
        );
        // Dots 1-3 of phx1 and 1 of phx2 are now all seen without a gap.
        assert_eq!(
            s.clocks().1,
            [(phx1, 3), (phx2, 1), (r("fawkes", 7), 0)].into()
        );
        // In place order (the pids').
        assert_eq!(keys(&s.list(b"channel:lobby")), ["u3", "u1"]);
        // Merged again, nothing new.
        assert_eq!(s.merge(transfer), Diff::default());
    }

    #[test]
    fn joins_updates_and_leaves_reach_the_other_replica() {
        let (mut a, mut b) = pair();
        a.join(place("t", 1, "alice"), meta("A1"));
        a.join(place("t", 2, "bob"), meta("B1"));
        let d = gossip(&mut a, &mut b);
        assert_eq!(
            (keys(&d.joins), d.leaves.len()),
            (vec!["alice".into(), "bob".into()], 0)
        );
        // An update is one join and one leave of the same place.
        a.update(&place("t", 1, "alice"), meta("A2"));
        let d = gossip(&mut a, &mut b);
        assert_eq!(
            (keys(&d.joins), keys(&d.leaves)),
            (vec!["alice".into()], vec!["alice".into()])
        );
        assert_eq!(
            (&d.joins[0].meta, &d.leaves[0].meta),
            (&meta("A2"), &meta("A1"))
        );
        a.leave(&place("t", 2, "bob"));
        let d = gossip(&mut a, &mut b);
        assert_eq!((d.joins.len(), keys(&d.leaves)), (0, vec!["bob".into()]));
        assert_eq!(b.list(b"t"), a.list(b"t"));
        assert_eq!(b.clocks().1[&r("a", 1)], 5);
        // The same delta twice changes nothing.
        a.join(place("t", 3, "carol"), meta("C1"));
        let delta = Transfer::Delta(a.take_delta(true));
        assert_eq!(b.merge(&delta).joins.len(), 1);
        assert_eq!(b.merge(&delta), Diff::default());
    }

    #[test]
    fn a_lost_delta_is_healed_by_a_transfer() {
        let (mut a, mut b) = pair();
        a.join(place("t", 1, "alice"), meta("A1"));
        a.take_delta(true); // lost on the way
        a.join(place("t", 2, "bob"), meta("B1"));
        let d = gossip(&mut a, &mut b);
        assert_eq!(keys(&d.joins), ["bob"]);
        // Dot 2 waits in the cloud behind the missing 1; a's clocks are not covered.
        assert_eq!(b.clocks().1[&r("a", 1)], 0);
        assert!(!super::super::clock::dominates(
            &b.clocks().1,
            &a.clocks().1
        ));
        let t = a.extract(b.replica(), &b.clocks().1, true);
        let d = b.merge(&t);
        assert_eq!((keys(&d.joins), d.leaves.len()), (vec!["alice".into()], 0));
        assert_eq!(b.clocks().1, a.clocks().1);
        assert_eq!(b.list(b"t"), a.list(b"t"));
    }

    #[test]
    fn a_transfer_drops_what_the_sender_has_seen_removed() {
        let (mut a, mut b) = pair();
        a.join(place("t", 1, "alice"), meta("A1"));
        gossip(&mut a, &mut b);
        a.leave(&place("t", 1, "alice"));
        a.take_delta(true); // the leave is lost
        let t = a.extract(b.replica(), &b.clocks().1, true);
        let Transfer::Full(head, values) = &t else {
            panic!()
        };
        assert!(values.is_empty() && head.values.is_none() && head.mode == Mode::Normal);
        let d = b.merge(&t);
        assert_eq!((d.joins.len(), keys(&d.leaves)), (0, vec!["alice".into()]));
        assert!(b.is_empty());
    }

    #[test]
    fn a_transfer_leaves_out_the_requesters_own_and_unknown_replicas() {
        let (mut a, mut b) = pair();
        let c = r("c", 3);
        let mut cs = ReplicaState::new(c.clone());
        cs.replica_up(a.replica());
        a.replica_up(&c);
        b.join(place("t", 1, "bob"), meta("B1"));
        cs.join(place("t", 2, "carol"), meta("C1"));
        gossip(&mut b, &mut a);
        gossip(&mut cs, &mut a);
        assert_eq!(a.len(), 2);
        // b does not know c: only what b knows and does not hold itself.
        let Transfer::Full(head, values) = a.extract(b.replica(), &b.clocks().1, true) else {
            panic!()
        };
        assert!(values.is_empty());
        assert!(!head.context.contains_key(&c));
    }

    #[test]
    fn a_removal_seen_by_a_third_replica_is_passed_on() {
        let (mut a, mut b) = pair();
        let c = r("c", 3);
        let mut cs = ReplicaState::new(c.clone());
        for s in [&mut a, &mut b] {
            s.replica_up(&c);
            cs.replica_up(s.replica());
        }
        a.join(place("t", 1, "alice"), meta("A1"));
        let delta = Transfer::Delta(a.take_delta(true));
        b.merge(&delta);
        cs.merge(&delta);
        a.leave(&place("t", 1, "alice"));
        // Only b hears the leave; it forwards the removed dot in its own next delta.
        gossip(&mut a, &mut b);
        let forwarded = b.take_delta(true);
        assert!(forwarded.clouds[a.replica()].contains(&1));
        let d = cs.merge(&Transfer::Delta(forwarded));
        assert_eq!(keys(&d.leaves), ["alice"]);
    }

    #[test]
    fn a_down_replica_is_hidden_then_back_or_dropped_for_good() {
        let (mut a, mut b) = pair();
        a.join(place("t", 1, "alice"), meta("A1"));
        gossip(&mut a, &mut b);
        let ra = a.replica().clone();
        assert_eq!(keys(&b.replica_down(&ra)), ["alice"]);
        assert!(b.list(b"t").is_empty());
        assert!(!b.clocks().1.contains_key(&ra));
        assert_eq!(keys(&b.replica_up(&ra)), ["alice"]);
        assert_eq!(keys(&b.list(b"t")), ["alice"]);
        b.replica_down(&ra);
        b.permdown(&ra);
        assert!(b.is_empty() && !b.clocks().1.contains_key(&ra));
        // A permdowned replica's adds are no longer taken.
        a.join(place("t", 2, "bob"), meta("B1"));
        assert_eq!(gossip(&mut a, &mut b), Diff::default());
    }

    #[test]
    fn a_peer_cannot_add_a_presence_where_this_replica_has_its_own() {
        let (mut a, mut b) = pair();
        a.join(place("t", 1, "alice"), meta("mine"));
        b.join(place("t", 1, "alice"), meta("forged"));
        assert!(gossip(&mut b, &mut a).joins.is_empty());
        assert_eq!(a.get(&place("t", 1, "alice")).unwrap().0, &meta("mine"));
    }
}
