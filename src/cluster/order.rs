//! Recorded broadcasts in seq order on every node.
//!
//! One node's writes leave in commit order (`crate::history`), but with writers on several
//! nodes seq 6 (written on B) can reach node C before seq 5 (written on A), and a node's own 7
//! can be ready before B's 6 arrives. Each node therefore delivers a recorded topic's
//! broadcasts strictly by seq: one that comes early waits (`hold`) for those before it; a gap
//! that does not close is filled from the change log ([`Backfill`]); one already delivered is
//! dropped. A topic's order starts at the first join on this node (the join reply's seq) or,
//! with nobody subscribed, at the first broadcast.
//!
//! Topics are ordered against each other where a broadcast says so ([`After`]): one next in
//! line on its topic waits, and its topic behind it, until the topic it comes after has been
//! delivered here up to the seq it names; if that does not happen within the hold, the other
//! topic's gap is filled from the change log. Events filled from the log keep their
//! dependency, so a catch-up delivers them in the same order.
//!
//! The change log also has the last word on what exists: a held broadcast whose seq is past the
//! topic's latest in the log was not numbered by this cluster's database and is dropped, never
//! waited for nor skipped to. When the Redis link comes back, every topic with subscribers here
//! is caught up from the log ([`Order::catch_up`]): a write made elsewhere during the outage
//! reaches them without waiting for the next one. Seqs are compared with checked arithmetic:
//! `i64::MAX` has no successor, it does not wrap.

use super::Stats;
use crate::protocol::Payload;
use crate::pubsub::{After, Broadcast, PubSub, Sequencer, SubId};
use futures_util::future::LocalBoxFuture;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// A recorded event as the change log keeps it.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub seq: i64,
    pub event: String,
    pub payload: Value,
    /// What it is delivered after (see [`After`]).
    pub after: Option<After>,
}

/// What the change log holds of a topic past a seq.
#[derive(Debug, Clone, PartialEq)]
pub struct Filled {
    /// The events asked for, in order; fewer when the log no longer holds them.
    pub events: Vec<Event>,
    /// The topic's latest seq in the log (0 before any event).
    pub latest: i64,
}

/// Where a gap's missing events come from: the change log.
pub trait Backfill: Send + Sync + 'static {
    /// `topic`'s recorded events numbered `after + 1` to `upto` (to the latest without one), in
    /// order, and the topic's latest seq.
    fn events(
        &self,
        topic: &str,
        after: i64,
        upto: Option<i64>,
    ) -> LocalBoxFuture<'static, Result<Filled, String>>;
}

/// Recorded broadcasts a topic may hold back at once; more start a fill at once.
const MAX_HELD: usize = 4096;
/// A topic with nothing held and no subscriber is forgotten after this long.
const IDLE: Duration = Duration::from_secs(600);

struct TopicOrder {
    /// The last seq delivered here; `None` until the topic's order starts.
    last: Option<i64>,
    held: BTreeMap<i64, (Option<SubId>, Arc<Broadcast>)>,
    /// Since when the first held broadcast has been waiting.
    waiting_since: Option<Instant>,
    filling: bool,
    /// Seqs up to here that are not held are not to be had (a fill found them gone from the
    /// change log): delivery steps over them.
    gone: i64,
    /// Topics whose next broadcast waits for this one to move on (see [`After`]).
    dependents: BTreeSet<String>,
    touched: Instant,
}

impl TopicOrder {
    fn new() -> TopicOrder {
        TopicOrder {
            last: None,
            held: BTreeMap::new(),
            waiting_since: None,
            filling: false,
            gone: 0,
            dependents: BTreeSet::new(),
            touched: Instant::now(),
        }
    }

    fn hold(&mut self, s: i64, from: Option<SubId>, b: Arc<Broadcast>) {
        self.held.insert(s, (from, b));
        self.waiting_since.get_or_insert_with(Instant::now);
    }
}

type Topics = HashMap<String, TopicOrder>;

/// Whether what `a` names has been delivered here, or needs not be: nobody here subscribes to
/// its topic.
fn ready(topics: &Topics, ps: &PubSub, a: &After) -> bool {
    topics
        .get(&a.topic)
        .and_then(|t| t.last)
        .is_some_and(|last| last >= a.seq)
        || ps.subscriber_count(&a.topic) == 0
}

/// Delivers what `topic` holds and is now in line, then what the topics waiting for it hold,
/// and so on, each as far as it can go.
fn release(topics: &mut Topics, ps: &PubSub, topic: &str) {
    let mut work = vec![topic.to_owned()];
    // The first one's dependents are looked at in any case: its order may have been moved on
    // by its caller (an anchor, a skip).
    let mut first = true;
    while let Some(name) = work.pop() {
        let moved = step(topics, ps, &name);
        if moved || std::mem::take(&mut first) {
            if let Some(t) = topics.get_mut(&name) {
                work.extend(std::mem::take(&mut t.dependents));
            }
        }
    }
}

/// Delivers `name`'s held broadcasts that are next in line and whose [`After`] holds, stepping
/// over those [`TopicOrder::gone`]; one whose `After` does not hold yet stops it, and `name`
/// waits among the dependents of the topic it names. Returns whether it delivered any.
fn step(topics: &mut Topics, ps: &PubSub, name: &str) -> bool {
    let Some(start) = topics.get(name).and_then(|t| t.last) else {
        return false;
    };
    let mut last = start;
    let mut blocked = None;
    while let Some(next) = last.checked_add(1) {
        let Some(t) = topics.get_mut(name) else { break };
        // Behind: delivered already.
        while let Some(e) = t.held.first_entry() {
            if *e.key() > last {
                break;
            }
            e.remove();
        }
        let first = t.held.keys().next().copied();
        if first != Some(next) {
            if t.gone < next {
                break;
            }
            let to = first.map_or(t.gone, |f| t.gone.min(f - 1));
            log::warn!(
                "{name}: recorded broadcasts after {last} up to {to} never arrived and are not in the change log; going on without them"
            );
            last = to;
            continue;
        }
        let waits = topics
            .get(name)
            .and_then(|t| t.held.get(&next))
            .and_then(|(_, b)| b.after.as_ref());
        if let Some(a) = waits.filter(|a| a.topic != name) {
            if !ready(topics, ps, a) {
                blocked = Some(a.topic.clone());
                break;
            }
        }
        let Some((from, b)) = topics.get_mut(name).and_then(|t| t.held.remove(&next)) else {
            break;
        };
        ps.deliver_in_order(from, &b);
        last = next;
    }
    if let Some(t) = topics.get_mut(name) {
        t.last = Some(last);
        if t.held.is_empty() {
            t.waiting_since = None;
        } else if last != start || t.waiting_since.is_none() {
            t.waiting_since = Some(Instant::now());
        }
    }
    if let Some(on) = blocked {
        topics
            .entry(on)
            .or_insert_with(TopicOrder::new)
            .dependents
            .insert(name.to_owned());
    }
    last != start
}

/// A fill to start: `topic` after `after` up to `upto`; `held` is the largest seq held then.
struct Fill {
    topic: String,
    after: i64,
    upto: Option<i64>,
    held: Option<i64>,
}

/// A node's [`Sequencer`].
pub struct Order {
    topics: Mutex<Topics>,
    hold: Duration,
    backfill: Option<Arc<dyn Backfill>>,
    stats: Arc<Stats>,
}

impl Order {
    pub fn new(hold: Duration, backfill: Option<Arc<dyn Backfill>>, stats: Arc<Stats>) -> Order {
        Order {
            topics: Mutex::new(HashMap::new()),
            hold,
            backfill,
            stats,
        }
    }

    fn topics(&self) -> MutexGuard<'_, Topics> {
        self.topics.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Releases what has waited long enough, filling gaps; runs for as long as the server does.
    pub fn run(self: Arc<Self>, ps: PubSub) {
        crate::task::spawn(async move {
            let mut tick = tokio::time::interval((self.hold / 4).max(Duration::from_millis(5)));
            loop {
                tick.tick().await;
                for Fill {
                    topic,
                    after,
                    upto,
                    held,
                } in self.due(&ps)
                {
                    let me = self.clone();
                    let ps = ps.clone();
                    crate::task::spawn(async move { me.fill(&ps, topic, after, upto, held).await });
                }
            }
        });
    }

    /// Topics whose wait is over: without an order yet, it starts before the first held;
    /// with a gap, a fill is started (returned) or, without a change log, the gap is skipped;
    /// waiting on another topic ([`After`]), that topic's gap is filled (or skipped) likewise.
    fn due(&self, ps: &PubSub) -> Vec<Fill> {
        let now = Instant::now();
        let mut fills = Vec::new();
        let mut topics = self.topics();
        topics.retain(|topic, t| {
            !t.held.is_empty()
                || now.duration_since(t.touched) < IDLE
                || ps.subscriber_count(topic) > 0
        });
        let waited: Vec<String> = topics
            .iter()
            .filter(|(_, t)| {
                !t.filling
                    && (t.held.len() > MAX_HELD
                        || t.waiting_since
                            .is_some_and(|w| now.duration_since(w) >= self.hold))
            })
            .map(|(topic, _)| topic.clone())
            .collect();
        for topic in waited {
            // Gone, or being filled by now for a topic that waited on it.
            let Some(t) = topics.get_mut(&topic).filter(|t| !t.filling) else {
                continue;
            };
            let Some((&first, (_, b))) = t.held.first_key_value() else {
                continue;
            };
            // `first` is past `last`: what is behind was dropped on arrival.
            let before = first.saturating_sub(1);
            match (t.last, &self.backfill) {
                (None, _) => t.last = Some(before),
                // Next in line, so waiting on another topic.
                (Some(last), _) if before <= last => {
                    if let Some(a) = b.after.clone() {
                        fills.extend(self.wait_on(&mut topics, ps, &topic, a));
                        continue;
                    }
                }
                (Some(last), Some(_)) => {
                    t.filling = true;
                    fills.push(Fill {
                        topic: topic.clone(),
                        after: last,
                        upto: Some(before),
                        held: t.held.keys().next_back().copied(),
                    });
                    continue;
                }
                (Some(last), None) => {
                    log::warn!(
                        "{topic}: recorded broadcasts after {last} up to {before} never arrived; going on without them"
                    );
                    t.last = Some(before);
                }
            }
            release(&mut topics, ps, &topic);
        }
        fills
    }

    /// `topic` has waited long enough on what `a` names: delivers it if that holds by now;
    /// otherwise fills the other topic's gap up to `a.seq` from the change log (returned), or
    /// without one goes on without it. A topic whose order has not started here (a join still
    /// reading) is waited for.
    fn wait_on(&self, topics: &mut Topics, ps: &PubSub, topic: &str, a: After) -> Option<Fill> {
        if a.topic == topic || ready(topics, ps, &a) {
            release(topics, ps, topic);
            return None;
        }
        let on = topics
            .entry(a.topic.clone())
            .or_insert_with(TopicOrder::new);
        on.dependents.insert(topic.to_owned());
        let last = on.last.filter(|_| !on.filling)?;
        if self.backfill.is_some() {
            on.filling = true;
            return Some(Fill {
                held: on.held.keys().next_back().copied(),
                topic: a.topic,
                after: last,
                upto: Some(a.seq),
            });
        }
        on.gone = on.gone.max(a.seq);
        release(topics, ps, &a.topic);
        None
    }

    /// Takes `topic`'s events after `after` (up to `upto`, or the latest) from the change log,
    /// then delivers what is held and now in line. Broadcasts held when the fill started (up to
    /// seq `held`) were committed before the log was read: those past its latest were not
    /// numbered by this cluster's database and are dropped. Those that came during the read
    /// may be newer than it, and stay.
    async fn fill(
        &self,
        ps: &PubSub,
        topic: String,
        after: i64,
        upto: Option<i64>,
        held: Option<i64>,
    ) {
        let got = match &self.backfill {
            Some(b) => b.events(&topic, after, upto).await,
            None => Err("no change log".to_owned()),
        };
        let mut topics = self.topics();
        let Some(t) = topics.get_mut(&topic) else {
            return;
        };
        t.filling = false;
        let last = *t.last.get_or_insert(after);
        let target = match got {
            Ok(Filled { events, latest }) => {
                for e in events {
                    if e.seq <= last || upto.is_some_and(|u| e.seq > u) {
                        continue;
                    }
                    if let std::collections::btree_map::Entry::Vacant(v) = t.held.entry(e.seq) {
                        v.insert((
                            None,
                            Arc::new(Broadcast {
                                topic: topic.clone(),
                                event: e.event,
                                payload: Payload::Json(e.payload),
                                seq: Some(e.seq),
                                after: e.after,
                            }),
                        ));
                        self.stats.backfilled.fetch_add(1, Ordering::Relaxed);
                    }
                }
                if let (Some(past), Some(held)) = (latest.checked_add(1), held) {
                    let mut unknown = t.held.split_off(&past);
                    if let Some(after_held) = held.checked_add(1) {
                        t.held.append(&mut unknown.split_off(&after_held));
                    }
                    if let Some(first) = unknown.keys().next() {
                        self.stats
                            .unknown
                            .fetch_add(unknown.len() as u64, Ordering::Relaxed);
                        log::warn!(
                            "{topic}: dropped {} recorded broadcast(s) from seq {first} on: the change log's latest is {latest}",
                            unknown.len()
                        );
                    }
                }
                Some(upto.map_or(latest, |u| u.min(latest)))
            }
            Err(e) => {
                log::warn!("{topic}: reading the change log: {e}");
                upto
            }
        };
        // What the log no longer holds up to there is stepped over.
        if let Some(target) = target {
            t.gone = t.gone.max(target);
        }
        release(&mut topics, ps, &topic);
    }

    /// Another node announced that `topic` reached `seq` (its broadcasts up to there could not
    /// be published): if this node orders the topic for subscribers and is behind, it fills
    /// the gap from the change log.
    pub fn reached(self: &Arc<Self>, ps: &PubSub, topic: &str, seq: i64) {
        if self.backfill.is_none() {
            return;
        }
        let (last, held) = {
            let mut topics = self.topics();
            let Some(t) = topics.get_mut(topic) else {
                return;
            };
            match t.last {
                Some(last) if seq > last && !t.filling && ps.subscriber_count(topic) > 0 => {
                    t.filling = true;
                    (last, t.held.keys().next_back().copied())
                }
                _ => return,
            }
        };
        let (me, ps, topic) = (self.clone(), ps.clone(), topic.to_owned());
        crate::task::spawn(async move { me.fill(&ps, topic, last, Some(seq), held).await });
    }

    /// Catches up every topic with subscribers here from the change log: what was written
    /// while this node heard nothing (the Redis link down) reaches them now, in order, once.
    /// One topic at a time, so that a node with many topics does not take every pooled
    /// connection at once.
    pub fn catch_up(self: &Arc<Self>, ps: &PubSub) {
        if self.backfill.is_none() {
            return;
        }
        let due: Vec<(String, i64, Option<i64>)> = self
            .topics()
            .iter_mut()
            .filter(|(topic, t)| !t.filling && ps.subscriber_count(topic) > 0)
            .filter_map(|(topic, t)| {
                let last = t.last?;
                t.filling = true;
                Some((topic.clone(), last, t.held.keys().next_back().copied()))
            })
            .collect();
        if due.is_empty() {
            return;
        }
        log::info!(
            "cluster: catching up {} recorded topic(s) from the change log",
            due.len()
        );
        let (me, ps) = (self.clone(), ps.clone());
        crate::task::spawn(async move {
            for (topic, last, held) in due {
                me.fill(&ps, topic, last, None, held).await;
            }
        });
    }
}

impl Sequencer for Order {
    fn admit(&self, ps: &PubSub, from: Option<SubId>, b: Arc<Broadcast>) {
        let Some(s) = b.seq else {
            ps.deliver_in_order(from, &b);
            return;
        };
        let mut topics = self.topics();
        let free = b.after.as_ref().is_none_or(|a| ready(&topics, ps, a));
        let topic = b.topic.clone();
        let t = topics.entry(topic.clone()).or_insert_with(TopicOrder::new);
        t.touched = Instant::now();
        match t.last {
            Some(last) if s <= last => {
                self.stats.duplicates.fetch_add(1, Ordering::Relaxed);
                return;
            }
            Some(last) if Some(s) == last.checked_add(1) && !t.filling && free => {
                ps.deliver_in_order(from, &b);
                t.last = Some(s);
            }
            // Nobody here to keep an order for: it starts with this one.
            None if ps.subscriber_count(&topic) == 0 => {
                ps.deliver_in_order(from, &b);
                t.last = Some(s);
            }
            Some(last) if Some(s) == last.checked_add(1) && !t.filling => t.hold(s, from, b),
            _ => {
                t.hold(s, from, b);
                return;
            }
        }
        // Moved on, or next in line but waiting on another topic: see what follows.
        if !t.held.is_empty() || !t.dependents.is_empty() {
            release(&mut topics, ps, &topic);
        }
    }

    fn anchor(&self, ps: &PubSub, topic: &str, seq: i64) {
        let mut topics = self.topics();
        let t = topics
            .entry(topic.to_owned())
            .or_insert_with(TopicOrder::new);
        t.touched = Instant::now();
        // A later join's reply covers at least what was delivered here before it subscribed,
        // so an order once started stays.
        if t.last.is_none() {
            t.last = Some(seq);
            release(&mut topics, ps, topic);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pubsub::{Dispatch, Subscriber};
    use serde_json::json;

    #[derive(Default)]
    struct Seqs(Mutex<Vec<i64>>);
    impl Subscriber for Seqs {
        fn deliver(&self, d: &Dispatch<'_>) {
            self.0.lock().unwrap().push(d.broadcast.seq.unwrap());
        }
    }

    fn b(seq: i64) -> Broadcast {
        Broadcast {
            topic: "t".into(),
            event: "e".into(),
            payload: Payload::Json(json!({ "seq": seq })),
            seq: Some(seq),
            after: None,
        }
    }

    /// A change log whose latest seq is `0.0` and which kept everything but seq 3.
    struct Log(Mutex<i64>);
    impl Backfill for Log {
        fn events(
            &self,
            _: &str,
            after: i64,
            upto: Option<i64>,
        ) -> LocalBoxFuture<'static, Result<Filled, String>> {
            let latest = *self.0.lock().unwrap();
            let events = (after + 1..=upto.unwrap_or(latest).min(latest))
                .filter(|s| *s != 3)
                .map(|seq| Event {
                    seq,
                    event: "e".to_owned(),
                    payload: json!({ "seq": seq }),
                    after: None,
                })
                .collect();
            Box::pin(async move { Ok(Filled { events, latest }) })
        }
    }

    fn setup(backfill: Option<Arc<dyn Backfill>>) -> (PubSub, Arc<Seqs>, Arc<Order>) {
        let ps = PubSub::new();
        let order = Arc::new(Order::new(
            Duration::from_millis(40),
            backfill,
            Arc::default(),
        ));
        ps.set_sequencer(order.clone());
        let seen: Arc<Seqs> = Arc::default();
        ps.subscribe("t", ps.next_id(), seen.clone());
        (ps, seen, order)
    }

    async fn settle(seen: &Seqs, n: usize) -> Vec<i64> {
        for _ in 0..200 {
            if seen.0.lock().unwrap().len() >= n {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        tokio::time::sleep(Duration::from_millis(60)).await;
        seen.0.lock().unwrap().clone()
    }

    #[actix_rt::test]
    async fn early_ones_wait_and_duplicates_drop() {
        let (ps, seen, order) = setup(None);
        order.clone().run(ps.clone());
        ps.anchor_recorded("t", 4);
        for s in [6, 5, 3, 5, 7, 9, 8] {
            ps.local_broadcast(b(s));
        }
        assert_eq!(settle(&seen, 5).await, vec![5, 6, 7, 8, 9]);
        assert_eq!(order.stats.duplicates.load(Ordering::Relaxed), 2);
    }

    #[actix_rt::test]
    async fn a_gap_that_does_not_close_is_filled_from_the_log() {
        let (ps, seen, order) = setup(Some(Arc::new(Log(Mutex::new(100)))));
        order.clone().run(ps.clone());
        ps.anchor_recorded("t", 0);
        ps.local_broadcast(b(1));
        // 2..=5 never arrive; the log has 2, 4 and 5 (3 was trimmed).
        ps.local_broadcast(b(6));
        ps.local_broadcast(b(7));
        assert_eq!(settle(&seen, 6).await, vec![1, 2, 4, 5, 6, 7]);
        assert_eq!(order.stats.backfilled.load(Ordering::Relaxed), 3);
        // A straggler after the fill is a duplicate.
        ps.local_broadcast(b(4));
        ps.local_broadcast(b(8));
        assert_eq!(settle(&seen, 7).await, vec![1, 2, 4, 5, 6, 7, 8]);
    }

    #[actix_rt::test]
    async fn a_seq_past_the_logs_latest_is_dropped_not_waited_for() {
        let log = Arc::new(Log(Mutex::new(2)));
        let (ps, seen, order) = setup(Some(log.clone()));
        order.clone().run(ps.clone());
        ps.anchor_recorded("t", 0);
        ps.local_broadcast(b(1));
        // Numbered by no database of this cluster: past the log's latest (2).
        ps.local_broadcast(b(i64::MAX));
        assert_eq!(settle(&seen, 2).await, vec![1, 2]);
        assert_eq!(order.stats.unknown.load(Ordering::Relaxed), 1);
        // The topic goes on with the next real one.
        *log.0.lock().unwrap() = 4;
        ps.local_broadcast(b(4));
        ps.local_broadcast(b(3));
        assert_eq!(settle(&seen, 4).await, vec![1, 2, 3, 4]);
    }

    #[actix_rt::test]
    async fn the_largest_seq_does_not_wrap() {
        let (ps, seen, order) = setup(None);
        order.clone().run(ps.clone());
        ps.anchor_recorded("t", i64::MAX - 1);
        ps.local_broadcast(b(i64::MAX));
        ps.local_broadcast(b(i64::MAX));
        ps.local_broadcast(b(i64::MIN));
        assert_eq!(settle(&seen, 1).await, vec![i64::MAX]);
        assert_eq!(order.stats.duplicates.load(Ordering::Relaxed), 2);
    }

    #[actix_rt::test]
    async fn catching_up_delivers_what_came_after_the_last_delivered() {
        let log = Arc::new(Log(Mutex::new(0)));
        let (ps, seen, order) = setup(Some(log.clone()));
        order.clone().run(ps.clone());
        ps.anchor_recorded("t", 0);
        ps.local_broadcast(b(1));
        // 2 to 5 were written while this node heard nothing; nothing after them arrives.
        *log.0.lock().unwrap() = 5;
        order.catch_up(&ps);
        assert_eq!(settle(&seen, 4).await, vec![1, 2, 4, 5]);
        // What Redis still brings of them is a duplicate.
        ps.local_broadcast(b(5));
        ps.local_broadcast(b(6));
        assert_eq!(settle(&seen, 5).await, vec![1, 2, 4, 5, 6]);
        assert_eq!(order.stats.duplicates.load(Ordering::Relaxed), 1);
    }

    #[actix_rt::test]
    async fn what_arrives_during_a_catch_up_is_kept() {
        let (ps, seen, order) = setup(Some(Arc::new(Log(Mutex::new(5)))));
        order.clone().run(ps.clone());
        ps.anchor_recorded("t", 0);
        order.catch_up(&ps);
        // Committed after the catch-up read the log (whose latest it saw as 5): held meanwhile,
        // then delivered, not taken for a seq the log does not know.
        ps.local_broadcast(b(6));
        assert_eq!(settle(&seen, 5).await, vec![1, 2, 4, 5, 6]);
        assert_eq!(order.stats.unknown.load(Ordering::Relaxed), 0);
    }

    #[actix_rt::test]
    async fn without_a_join_the_first_held_starts_the_order() {
        let (ps, seen, order) = setup(None);
        order.clone().run(ps.clone());
        // A subscriber that never anchors: the first broadcasts wait once, then flow in order.
        ps.local_broadcast(b(11));
        ps.local_broadcast(b(10));
        ps.local_broadcast(b(12));
        assert_eq!(settle(&seen, 3).await, vec![10, 11, 12]);
    }

    /// What reaches a subscriber of several topics, in order: (topic, seq).
    #[derive(Default)]
    struct Seen(Mutex<Vec<(String, i64)>>);
    impl Subscriber for Seen {
        fn deliver(&self, d: &Dispatch<'_>) {
            let b = d.broadcast;
            self.0
                .lock()
                .unwrap()
                .push((b.topic.clone(), b.seq.unwrap()));
        }
    }

    impl Seen {
        fn now(&self) -> Vec<(&'static str, i64)> {
            let name = |t: &str| if t == "r" { "r" } else { "t" };
            let seen = self.0.lock().unwrap();
            seen.iter().map(|(t, s)| (name(t), *s)).collect()
        }
    }

    /// Recorded broadcast `seq` of `topic`, after `after` if any.
    fn on(topic: &str, seq: i64, after: Option<(&str, i64)>) -> Broadcast {
        Broadcast {
            topic: topic.into(),
            event: "e".into(),
            payload: Payload::Json(json!({ "seq": seq })),
            seq: Some(seq),
            after: after.map(|(topic, seq)| After {
                topic: topic.into(),
                seq,
            }),
        }
    }

    /// Change logs of several topics, each whole.
    struct Logs(HashMap<&'static str, Vec<Event>>);
    impl Backfill for Logs {
        fn events(
            &self,
            topic: &str,
            after: i64,
            upto: Option<i64>,
        ) -> LocalBoxFuture<'static, Result<Filled, String>> {
            let all = self.0.get(topic).cloned().unwrap_or_default();
            let latest = all.last().map_or(0, |e| e.seq);
            let events = all
                .into_iter()
                .filter(|e| e.seq > after && upto.is_none_or(|u| e.seq <= u))
                .collect();
            Box::pin(async move { Ok(Filled { events, latest }) })
        }
    }

    fn logged(topic: &str, seq: i64, after: Option<(&str, i64)>) -> Event {
        let b = on(topic, seq, after);
        Event {
            seq,
            event: b.event,
            payload: json!({ "seq": seq }),
            after: b.after,
        }
    }

    /// A subscriber of `r` and `t` (both anchored at 0 unless `anchored` says otherwise).
    fn two(
        backfill: Option<Arc<dyn Backfill>>,
        anchored: &[&str],
    ) -> (PubSub, Arc<Seen>, Arc<Order>) {
        let ps = PubSub::new();
        let order = Arc::new(Order::new(
            Duration::from_millis(40),
            backfill,
            Arc::default(),
        ));
        ps.set_sequencer(order.clone());
        let seen: Arc<Seen> = Arc::default();
        for topic in ["r", "t"] {
            ps.subscribe(topic, ps.next_id(), seen.clone());
        }
        for topic in anchored {
            ps.anchor_recorded(topic, 0);
        }
        (ps, seen, order)
    }

    async fn wait_for(seen: &Seen, n: usize) -> Vec<(&'static str, i64)> {
        for _ in 0..200 {
            if seen.0.lock().unwrap().len() >= n {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        seen.now()
    }

    #[actix_rt::test]
    async fn a_broadcast_waits_for_what_it_comes_after_and_its_topic_behind_it() {
        let (ps, seen, order) = two(None, &["r", "t"]);
        order.clone().run(ps.clone());
        ps.local_broadcast(on("t", 1, Some(("r", 2))));
        ps.local_broadcast(on("t", 2, None));
        ps.local_broadcast(on("r", 1, None));
        assert_eq!(seen.now(), vec![("r", 1)]);
        ps.local_broadcast(on("r", 2, None));
        assert_eq!(seen.now(), vec![("r", 1), ("r", 2), ("t", 1), ("t", 2)]);
        // Already there: no wait.
        ps.local_broadcast(on("t", 3, Some(("r", 2))));
        assert_eq!(wait_for(&seen, 5).await.last(), Some(&("t", 3)));
    }

    #[actix_rt::test]
    async fn what_does_not_come_is_filled_from_the_other_topics_log() {
        let logs = Logs(HashMap::from([(
            "r",
            vec![logged("r", 1, None), logged("r", 2, None)],
        )]));
        let (ps, seen, order) = two(Some(Arc::new(logs)), &["r", "t"]);
        order.clone().run(ps.clone());
        // r's 1 and 2 never arrive, and nothing after them on r does either.
        ps.local_broadcast(on("t", 1, Some(("r", 2))));
        assert_eq!(seen.now(), vec![]);
        assert_eq!(wait_for(&seen, 3).await, vec![("r", 1), ("r", 2), ("t", 1)]);
        assert_eq!(order.stats.backfilled.load(Ordering::Relaxed), 2);
    }

    #[actix_rt::test]
    async fn without_the_change_log_a_missing_one_is_waited_out_then_skipped() {
        let (ps, seen, order) = two(None, &["r", "t"]);
        order.clone().run(ps.clone());
        ps.local_broadcast(on("t", 1, Some(("r", 2))));
        assert_eq!(wait_for(&seen, 1).await, vec![("t", 1)]);
        // r goes on after what was skipped.
        ps.local_broadcast(on("r", 3, None));
        assert_eq!(seen.now(), vec![("t", 1), ("r", 3)]);
    }

    #[actix_rt::test]
    async fn nothing_waits_for_a_topic_nobody_here_subscribes_to() {
        let ps = PubSub::new();
        let order = Arc::new(Order::new(Duration::from_secs(60), None, Arc::default()));
        ps.set_sequencer(order.clone());
        let seen: Arc<Seen> = Arc::default();
        ps.subscribe("t", ps.next_id(), seen.clone());
        ps.anchor_recorded("t", 0);
        ps.local_broadcast(on("t", 1, Some(("r", 5))));
        assert_eq!(seen.now(), vec![("t", 1)]);
    }

    #[actix_rt::test]
    async fn a_topic_whose_order_has_not_started_is_waited_for() {
        // r is subscribed to but not anchored yet: a join still reading.
        let (ps, seen, order) = two(None, &["t"]);
        order.clone().run(ps.clone());
        ps.local_broadcast(on("t", 1, Some(("r", 1))));
        assert_eq!(wait_for(&seen, 1).await, vec![]);
        // The join's reads covered r through 1: t's goes now.
        ps.anchor_recorded("r", 1);
        assert_eq!(seen.now(), vec![("t", 1)]);
    }

    #[actix_rt::test]
    async fn filled_events_keep_what_they_come_after() {
        let logs = Logs(HashMap::from([
            ("r", vec![logged("r", 1, None)]),
            (
                "t",
                vec![logged("t", 1, Some(("r", 1))), logged("t", 2, None)],
            ),
        ]));
        let (ps, seen, order) = two(Some(Arc::new(logs)), &["r", "t"]);
        // A catch-up that reads t's log before r's.
        order.fill(&ps, "t".into(), 0, None, None).await;
        assert_eq!(seen.now(), vec![]);
        order.fill(&ps, "r".into(), 0, None, None).await;
        assert_eq!(seen.now(), vec![("r", 1), ("t", 1), ("t", 2)]);
    }
}
