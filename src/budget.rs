//! A socket's budget for costly pushes: events whose handling runs a database query or answers
//! with a large reply. The message rate limit ([`crate::Limits::max_messages_per_second`])
//! bounds how many frames a client sends; this bounds what those frames may cost, so one
//! anonymous socket cannot turn small pushes into seconds of server CPU or megabytes sent.
//!
//! Two token buckets per socket, shared by all its channels: pushes per second, and reply bytes
//! per second. The bytes bucket may go into debt (a reply's size is known only once it is
//! built); the next costly push then waits until the debt is paid off.

use std::time::{Duration, Instant};

#[derive(Debug)]
struct Bucket {
    /// Tokens per second, and the most that accrue.
    rate: f64,
    level: f64,
    at: Instant,
}

impl Bucket {
    fn new(rate: f64, now: Instant) -> Bucket {
        Bucket {
            rate,
            level: rate,
            at: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.at).as_secs_f64();
        self.level = (self.level + dt * self.rate).min(self.rate);
        self.at = now;
    }

    /// How long until the level reaches `need`; zero when it has.
    fn wait_for(&self, need: f64) -> Duration {
        if self.level >= need {
            Duration::ZERO
        } else {
            Duration::from_secs_f64((need - self.level) / self.rate)
        }
    }
}

/// One socket's budget; see the module's documentation.
#[derive(Debug)]
pub struct PushBudget {
    pushes: Option<Bucket>,
    bytes: Option<Bucket>,
}

impl PushBudget {
    /// `pushes_per_second` costly pushes (a burst of as many) and `bytes_per_second` of their
    /// replies; 0 turns either bound off.
    pub fn new(pushes_per_second: u32, bytes_per_second: usize, now: Instant) -> PushBudget {
        let bucket = |rate: f64| (rate > 0.0).then(|| Bucket::new(rate, now));
        PushBudget {
            pushes: bucket(pushes_per_second as f64),
            bytes: bucket(bytes_per_second as f64),
        }
    }

    /// Takes one costly push, or says how long until one is allowed (nothing is taken then).
    pub fn spend(&mut self, now: Instant) -> Result<(), Duration> {
        let mut wait = Duration::ZERO;
        if let Some(b) = &mut self.pushes {
            b.refill(now);
            wait = wait.max(b.wait_for(1.0));
        }
        if let Some(b) = &mut self.bytes {
            b.refill(now);
            wait = wait.max(b.wait_for(0.0));
        }
        if !wait.is_zero() {
            return Err(wait);
        }
        if let Some(b) = &mut self.pushes {
            b.level -= 1.0;
        }
        Ok(())
    }

    /// Charges the bytes of a reply already built; the bucket may go into debt.
    pub fn charge_bytes(&mut self, n: usize, now: Instant) {
        if let Some(b) = &mut self.bytes {
            b.refill(now);
            b.level -= n as f64;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pushes_refill_at_their_rate() {
        let t0 = Instant::now();
        let mut b = PushBudget::new(2, 0, t0);
        assert_eq!(b.spend(t0), Ok(()));
        assert_eq!(b.spend(t0), Ok(()));
        assert_eq!(b.spend(t0), Err(Duration::from_millis(500)));
        // A refusal takes nothing.
        assert_eq!(b.spend(t0), Err(Duration::from_millis(500)));
        assert_eq!(b.spend(t0 + Duration::from_millis(500)), Ok(()));
        // Never more than a burst of `rate`, however long idle.
        let later = t0 + Duration::from_secs(3600);
        assert_eq!(b.spend(later), Ok(()));
        assert_eq!(b.spend(later), Ok(()));
        assert!(b.spend(later).is_err());
    }

    #[test]
    fn a_large_reply_is_a_debt_the_next_push_waits_out() {
        let t0 = Instant::now();
        let mut b = PushBudget::new(100, 1000, t0);
        assert_eq!(b.spend(t0), Ok(()));
        b.charge_bytes(3000, t0);
        assert_eq!(b.spend(t0), Err(Duration::from_secs(2)));
        assert_eq!(b.spend(t0 + Duration::from_secs(2)), Ok(()));
    }

    #[test]
    fn zero_is_no_bound() {
        let t0 = Instant::now();
        let mut b = PushBudget::new(0, 0, t0);
        b.charge_bytes(usize::MAX, t0);
        for _ in 0..10_000 {
            assert_eq!(b.spend(t0), Ok(()));
        }
    }
}
