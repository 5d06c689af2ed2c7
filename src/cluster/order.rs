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
//! The change log also has the last word on what exists: a held broadcast whose seq is past the
//! topic's latest in the log was not numbered by this cluster's database and is dropped, never
//! waited for nor skipped to. When the Redis link comes back, every topic with subscribers here
//! is caught up from the log ([`Order::catch_up`]): a write made elsewhere during the outage
//! reaches them without waiting for the next one. Seqs are compared with checked arithmetic:
//! `i64::MAX` has no successor, it does not wrap.

use super::Stats;
use crate::protocol::Payload;
use crate::pubsub::{Broadcast, PubSub, Sequencer, SubId};
use futures_util::future::LocalBoxFuture;
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Recorded events as the change log keeps them: (seq, event, payload).
pub type Events = Vec<(i64, String, Value)>;

/// What the change log holds of a topic past a seq.
#[derive(Debug, Clone, PartialEq)]
pub struct Filled {
    /// The events asked for, in order; fewer when the log no longer holds them.
    pub events: Events,
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
    touched: Instant,
}

impl TopicOrder {
    fn new() -> TopicOrder {
        TopicOrder {
            last: None,
            held: BTreeMap::new(),
            waiting_since: None,
            filling: false,
            touched: Instant::now(),
        }
    }

    /// Delivers what is held and now next in line; drops what is behind.
    fn drain(&mut self, ps: &PubSub) {
        let Some(mut last) = self.last else { return };
        while let Some(entry) = self.held.first_entry() {
            let s = *entry.key();
            let next = s > last;
            if next && Some(s) != last.checked_add(1) {
                break;
            }
            let (from, b) = entry.remove();
            if next {
                ps.deliver_in_order(from, &b);
                last = s;
            }
        }
        self.last = Some(last);
        self.waiting_since = if self.held.is_empty() {
            None
        } else {
            Some(Instant::now())
        };
    }

    fn hold(&mut self, s: i64, from: Option<SubId>, b: Arc<Broadcast>) {
        self.held.insert(s, (from, b));
        self.waiting_since.get_or_insert_with(Instant::now);
    }
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
    topics: Mutex<HashMap<String, TopicOrder>>,
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

    fn topics(&self) -> MutexGuard<'_, HashMap<String, TopicOrder>> {
        self.topics.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Releases what has waited long enough, filling gaps; runs for as long as the server does.
    pub fn run(self: Arc<Self>, ps: PubSub) {
        actix_rt::spawn(async move {
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
                    actix_rt::spawn(async move { me.fill(&ps, topic, after, upto, held).await });
                }
            }
        });
    }

    /// Topics whose wait is over: without an order yet, it starts before the first held;
    /// with a gap, a fill is started (returned) or, without a change log, the gap is skipped.
    fn due(&self, ps: &PubSub) -> Vec<Fill> {
        let now = Instant::now();
        let mut fills = Vec::new();
        let mut topics = self.topics();
        topics.retain(|topic, t| {
            let Some(first) = t.held.keys().next().copied() else {
                return now.duration_since(t.touched) < IDLE || ps.subscriber_count(topic) > 0;
            };
            let waited = t
                .waiting_since
                .is_some_and(|w| now.duration_since(w) >= self.hold);
            if t.filling || !(waited || t.held.len() > MAX_HELD) {
                return true;
            }
            // `first` is past `last`: what is behind was dropped on arrival.
            let before = first.saturating_sub(1);
            match (t.last, &self.backfill) {
                (None, _) => t.last = Some(before),
                (Some(last), Some(_)) => {
                    t.filling = true;
                    fills.push(Fill {
                        topic: topic.clone(),
                        after: last,
                        upto: Some(before),
                        held: t.held.keys().next_back().copied(),
                    });
                    return true;
                }
                (Some(last), None) => {
                    log::warn!(
                        "{topic}: recorded broadcasts after {last} up to {before} never arrived; going on without them"
                    );
                    t.last = Some(before);
                }
            }
            t.drain(ps);
            true
        });
        fills
    }

    /// Delivers `topic`'s events after `after` (up to `upto`, or the latest) from the change
    /// log, then what is held and now in line. Broadcasts held when the fill started (up to
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
        let mut last = t.last.unwrap_or(after);
        let target = match got {
            Ok(Filled { events, latest }) => {
                for (s, event, payload) in events {
                    if s <= last || upto.is_some_and(|u| s > u) {
                        continue;
                    }
                    if Some(s) != last.checked_add(1) {
                        log::warn!(
                            "{topic}: recorded broadcasts after {last} up to {} are no longer in the change log",
                            s - 1
                        );
                    }
                    let b = Arc::new(Broadcast {
                        topic: topic.clone(),
                        event,
                        payload: Payload::Json(payload),
                        seq: Some(s),
                    });
                    ps.deliver_in_order(None, &b);
                    self.stats.backfilled.fetch_add(1, Ordering::Relaxed);
                    last = s;
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
        if let Some(target) = target.filter(|&t| t > last) {
            log::warn!(
                "{topic}: recorded broadcasts after {last} up to {target} are no longer in the change log; going on without them"
            );
            last = target;
        }
        t.last = Some(last);
        t.drain(ps);
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
        actix_rt::spawn(async move { me.fill(&ps, topic, last, Some(seq), held).await });
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
        actix_rt::spawn(async move {
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
        let t = topics
            .entry(b.topic.clone())
            .or_insert_with(TopicOrder::new);
        t.touched = Instant::now();
        match t.last {
            Some(last) if s <= last => {
                self.stats.duplicates.fetch_add(1, Ordering::Relaxed);
            }
            Some(last) if Some(s) == last.checked_add(1) && !t.filling => {
                ps.deliver_in_order(from, &b);
                t.last = Some(s);
                t.drain(ps);
            }
            // Nobody here to keep an order for: it starts with this one.
            None if ps.subscriber_count(&b.topic) == 0 => {
                ps.deliver_in_order(from, &b);
                t.last = Some(s);
            }
            _ => t.hold(s, from, b),
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
            t.drain(ps);
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
                .map(|s| (s, "e".to_owned(), json!({ "seq": s })))
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
}
