//! The inspector's gauges over the last 15 minutes: a sampler reads this process's gauges every
//! period (`--inspector-sample-ms`) into a ring of fixed length, and `/admin/api/gauges` serves
//! it for the page's charts. The values are those `/metrics` serves (see
//! `crate::server::exposition`), except deliveries, turned into a rate over each period.

use crate::endpoint::Endpoint;
use crate::metrics::{Transport, ENGINE};
use serde::Serialize;
use std::collections::VecDeque;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How far back the charts go.
pub const WINDOW: Duration = Duration::from_secs(15 * 60);
/// The sampling period without `--inspector-sample-ms`.
pub const DEFAULT_PERIOD_MS: u64 = 5000;
/// The shortest period: the ring then holds 9,000 samples.
pub const MIN_PERIOD_MS: u64 = 100;
/// The longest period: the ring then holds 15.
pub const MAX_PERIOD_MS: u64 = 60_000;

/// The gauges as read at one moment; deliveries as the counter's total.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Reading {
    /// Milliseconds since the Unix epoch.
    pub at_ms: u64,
    pub connections: i64,
    pub deliveries_total: u64,
    pub resident_bytes: Option<u64>,
    pub open_fds: Option<u64>,
    pub queued_bytes: u64,
    pub presence_entries: u64,
    pub tasks: i64,
}

impl Reading {
    /// This process's gauges now, with `endpoint`'s deliveries, queues and presence.
    pub fn now(endpoint: &Endpoint) -> Reading {
        let connections = [Transport::WebSocket, Transport::LongPoll]
            .into_iter()
            .flat_map(|t| [false, true].map(|v2| ENGINE.open_connections(t, v2)))
            .sum();
        Reading {
            at_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
            connections,
            deliveries_total: endpoint.pubsub().counters().deliveries.load(Relaxed),
            resident_bytes: crate::metrics::resident_bytes(),
            open_fds: crate::metrics::open_fds(),
            queued_bytes: endpoint.queued_bytes() as u64,
            presence_entries: endpoint.presence().entry_count() as u64,
            tasks: ENGINE.tasks.load(Relaxed),
        }
    }
}

/// One point of the charts, as `/admin/api/gauges` serves it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Sample {
    /// Milliseconds since the Unix epoch.
    pub at_ms: u64,
    pub connections: i64,
    /// Deliveries since the previous sample, per second of the time between them; `null` for the
    /// first sample, which has no previous one.
    pub deliveries_per_second: Option<f64>,
    pub resident_bytes: Option<u64>,
    pub open_fds: Option<u64>,
    pub queued_bytes: u64,
    pub presence_entries: u64,
    pub tasks: i64,
}

/// The last `capacity` samples, oldest first; a new one pushes the oldest out.
#[derive(Debug)]
pub struct Ring {
    capacity: usize,
    samples: VecDeque<Sample>,
    /// The previous reading's time and deliveries total, for the next rate.
    last: Option<(u64, u64)>,
}

impl Ring {
    /// A ring of `capacity` samples (at least one).
    pub fn new(capacity: usize) -> Ring {
        let capacity = capacity.max(1);
        Ring {
            capacity,
            samples: VecDeque::with_capacity(capacity),
            last: None,
        }
    }

    /// A ring holding [`WINDOW`] of samples taken every `period`.
    pub fn for_period(period: Duration) -> Ring {
        let period = period.as_millis().max(1);
        Ring::new((WINDOW.as_millis() / period) as usize)
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Adds a reading as a sample, dropping the oldest when full.
    pub fn push(&mut self, r: Reading) {
        let rate = self.last.and_then(|(at, total)| {
            // A clock set back gives no rate rather than a made-up one; the counter only grows.
            let elapsed = r.at_ms.checked_sub(at).filter(|&ms| ms > 0)?;
            let delta = r.deliveries_total.saturating_sub(total);
            Some(delta as f64 * 1000.0 / elapsed as f64)
        });
        self.last = Some((r.at_ms, r.deliveries_total));
        if self.samples.len() == self.capacity {
            self.samples.pop_front();
        }
        self.samples.push_back(Sample {
            at_ms: r.at_ms,
            connections: r.connections,
            deliveries_per_second: rate,
            resident_bytes: r.resident_bytes,
            open_fds: r.open_fds,
            queued_bytes: r.queued_bytes,
            presence_entries: r.presence_entries,
            tasks: r.tasks,
        });
    }

    /// The samples taken after `after_ms` (all with 0), oldest first.
    pub fn after(&self, after_ms: u64) -> Vec<Sample> {
        // Samples are in time order: skip the old ones from the back rather than scan them all.
        let newer = self
            .samples
            .iter()
            .rev()
            .take_while(|s| s.at_ms > after_ms)
            .count();
        self.samples
            .range(self.samples.len() - newer..)
            .cloned()
            .collect()
    }
}

/// The sampled gauges of this process, shared by the sampler and the inspector's handlers.
pub struct Gauges {
    period: Duration,
    ring: Mutex<Ring>,
}

impl Gauges {
    /// Samples `endpoint`'s gauges every `period` on the current actix runtime (the first at
    /// once), as long as the returned handle lives.
    pub fn start(endpoint: Endpoint, period: Duration) -> Arc<Gauges> {
        let gauges = Arc::new(Gauges {
            period,
            ring: Mutex::new(Ring::for_period(period)),
        });
        let weak = Arc::downgrade(&gauges);
        crate::task::spawn(async move {
            let mut tick = actix_rt::time::interval(period);
            // After a stall, sample once and go on at the period, not in a burst.
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(gauges) = weak.upgrade() else {
                    break;
                };
                let reading = Reading::now(&endpoint);
                gauges.ring().push(reading);
            }
        });
        gauges
    }

    pub fn period(&self) -> Duration {
        self.period
    }

    pub fn ring(&self) -> MutexGuard<'_, Ring> {
        self.ring.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reading(at_ms: u64, deliveries_total: u64) -> Reading {
        Reading {
            at_ms,
            connections: (at_ms / 1000) as i64,
            deliveries_total,
            resident_bytes: Some(1 << 20),
            open_fds: Some(10),
            queued_bytes: 0,
            presence_entries: 0,
            tasks: 3,
        }
    }

    fn rates(ring: &Ring) -> Vec<Option<f64>> {
        ring.after(0)
            .iter()
            .map(|s| s.deliveries_per_second)
            .collect()
    }

    #[test]
    fn the_window_at_a_period_is_a_fixed_count() {
        assert_eq!(Ring::for_period(Duration::from_secs(5)).capacity(), 180);
        assert_eq!(
            Ring::for_period(Duration::from_millis(100)).capacity(),
            9000
        );
        assert_eq!(Ring::for_period(Duration::from_secs(60)).capacity(), 15);
        assert_eq!(Ring::for_period(Duration::from_secs(3600)).capacity(), 1);
        // What the README gives for the ring's memory: 9,000 samples of 88 bytes at most.
        assert_eq!(std::mem::size_of::<Sample>(), 88);
    }

    #[test]
    fn a_full_ring_drops_its_oldest() {
        let mut ring = Ring::new(3);
        for i in 1..=5 {
            ring.push(reading(i * 1000, 0));
        }
        let kept: Vec<u64> = ring.after(0).iter().map(|s| s.at_ms).collect();
        assert_eq!(kept, [3000, 4000, 5000]);
        let connections: Vec<i64> = ring.after(0).iter().map(|s| s.connections).collect();
        assert_eq!(connections, [3, 4, 5]);
    }

    #[test]
    fn deliveries_become_a_rate_over_the_time_between_samples() {
        let mut ring = Ring::new(10);
        ring.push(reading(10_000, 100));
        ring.push(reading(15_000, 600)); // 500 in 5 s
        ring.push(reading(15_500, 600)); // none
        ring.push(reading(16_000, 650)); // 50 in 0.5 s
        assert_eq!(rates(&ring), [None, Some(100.0), Some(0.0), Some(100.0)]);
        // The rate is taken from the reading before, even once that sample is dropped.
        let mut small = Ring::new(1);
        small.push(reading(1_000, 0));
        small.push(reading(3_000, 30));
        assert_eq!(rates(&small), [Some(15.0)]);
    }

    #[test]
    fn a_clock_set_back_gives_no_rate() {
        let mut ring = Ring::new(10);
        ring.push(reading(10_000, 0));
        ring.push(reading(9_000, 10));
        ring.push(reading(9_000, 20));
        ring.push(reading(10_000, 30));
        assert_eq!(rates(&ring), [None, None, None, Some(10.0)]);
    }

    #[test]
    fn after_gives_only_newer_samples() {
        let mut ring = Ring::new(10);
        for at in [1000, 2000, 3000] {
            ring.push(reading(at, 0));
        }
        let at = |v: Vec<Sample>| v.iter().map(|s| s.at_ms).collect::<Vec<_>>();
        assert_eq!(at(ring.after(0)), [1000, 2000, 3000]);
        assert_eq!(at(ring.after(1999)), [2000, 3000]);
        assert_eq!(at(ring.after(2000)), [3000]);
        assert_eq!(at(ring.after(3000)), Vec::<u64>::new());
    }
}
