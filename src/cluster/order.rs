//! Recorded broadcasts in seq order on every node.
//!
//! One node's writes leave in commit order (`crate::history`), but with writers on several
//! nodes seq 6 (written on B) can reach node C before seq 5 (written on A), and a node's own 7
//! can be ready before B's 6 arrives. Each node therefore delivers a recorded topic's
//! broadcasts strictly by seq: one that comes early waits (`hold`) for those before it; a gap
//! that does not close is filled from the change log ([`Backfill`]); one already delivered is
//! dropped. A topic's order starts at the first join on this node (the join reply's seq) or,
//! with nobody subscribed, at the first broadcast.

use super::Stats;
use crate::protocol::Payload;
use crate::pubsub::{Broadcast, PubSub, Sequencer, SubId};
use futures_util::future::LocalBoxFuture;
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Recorded events as (seq, event, payload), in seq order, or why they could not be read.
pub type Events = Result<Vec<(i64, String, Value)>, String>;

/// Where a gap's missing events come from: the change log.
pub trait Backfill: Send + Sync + 'static {
    /// `topic`'s recorded events numbered `after + 1` to `upto`, in order: (seq, event, payload).
    /// Fewer when the log no longer holds them.
    fn events(&self, topic: &str, after: i64, upto: i64) -> LocalBoxFuture<'static, Events>;
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
            if s > last + 1 {
                break;
            }
            let (from, b) = entry.remove();
            if s == last + 1 {
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
                for (topic, after, upto) in self.due(&ps) {
                    let me = self.clone();
                    let ps = ps.clone();
                    actix_rt::spawn(async move { me.fill(&ps, topic, after, upto).await });
                }
            }
        });
    }

    /// Topics whose wait is over: without an order yet, it starts before the first held;
    /// with a gap, a fill is started (returned) or, without a change log, the gap is skipped.
    fn due(&self, ps: &PubSub) -> Vec<(String, i64, i64)> {
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
            match (t.last, &self.backfill) {
                (None, _) => t.last = Some(first - 1),
                (Some(last), Some(_)) => {
                    t.filling = true;
                    fills.push((topic.clone(), last, first - 1));
                    return true;
                }
                (Some(last), None) => {
                    log::warn!(
                        "{topic}: recorded broadcasts {} to {} never arrived; going on without them",
                        last + 1,
                        first - 1
                    );
                    t.last = Some(first - 1);
                }
            }
            t.drain(ps);
            true
        });
        fills
    }

    async fn fill(&self, ps: &PubSub, topic: String, after: i64, upto: i64) {
        let got = match &self.backfill {
            Some(b) => b.events(&topic, after, upto).await,
            None => Ok(Vec::new()),
        };
        let mut topics = self.topics();
        let Some(t) = topics.get_mut(&topic) else {
            return;
        };
        t.filling = false;
        let mut last = t.last.unwrap_or(after);
        match got {
            Ok(events) => {
                for (s, event, payload) in events {
                    if s <= last || s > upto {
                        continue;
                    }
                    if s > last + 1 {
                        log::warn!(
                            "{topic}: recorded broadcasts {} to {} are no longer in the change log",
                            last + 1,
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
            }
            Err(e) => log::warn!("{topic}: reading the change log to fill a gap: {e}"),
        }
        if last < upto {
            log::warn!(
                "{topic}: recorded broadcasts {} to {upto} are no longer in the change log; going on without them",
                last + 1
            );
            last = upto;
        }
        t.last = Some(last);
        t.drain(ps);
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
            Some(last) if s == last + 1 && !t.filling => {
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

    struct Log;
    impl Backfill for Log {
        fn events(&self, _: &str, after: i64, upto: i64) -> LocalBoxFuture<'static, Events> {
            // The log kept everything but seq 3.
            let v = (after + 1..=upto)
                .filter(|s| *s != 3)
                .map(|s| (s, "e".to_owned(), json!({ "seq": s })))
                .collect();
            Box::pin(async move { Ok(v) })
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
        let (ps, seen, order) = setup(Some(Arc::new(Log)));
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
