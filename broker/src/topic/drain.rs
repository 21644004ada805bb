//! A topic's measured drain rate: how many messages per second leave it (acked by every group,
//! or evicted). It turns "the topic is full" into "come back in N ms".

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// How far back the rate looks.
const WINDOW: Duration = Duration::from_secs(5);
/// At most one sample per this interval, so the sample ring is bounded by WINDOW / RESOLUTION.
const RESOLUTION: Duration = Duration::from_millis(100);
/// Bound on the sample ring (WINDOW / RESOLUTION plus slack).
const MAX_SAMPLES: usize = 64;

/// Cumulative drained count, sampled at most every [`RESOLUTION`]: each sample is the time a
/// bucket started and the cumulative count *before* it, so the count at any moment of the last
/// [`WINDOW`] is known to within one bucket.
pub struct DrainRate {
    total: u64,
    samples: VecDeque<(Instant, u64)>,
    since: Instant,
}

impl DrainRate {
    /// A rate with no drains yet, measured from `now`.
    pub fn new(now: Instant) -> DrainRate {
        DrainRate {
            total: 0,
            samples: VecDeque::with_capacity(MAX_SAMPLES),
            since: now,
        }
    }

    /// Records `n` messages leaving the topic at `now`.
    pub fn record(&mut self, n: u64, now: Instant) {
        let new_bucket = self
            .samples
            .back()
            .is_none_or(|(at, _)| now.saturating_duration_since(*at) >= RESOLUTION);
        if new_bucket {
            self.samples.push_back((now, self.total));
        }
        self.total += n;
        while self.samples.len() > MAX_SAMPLES
            || self
                .samples
                .front()
                .is_some_and(|(at, _)| now.saturating_duration_since(*at) > WINDOW)
        {
            self.samples.pop_front();
        }
    }

    /// Messages per second drained over the last [`WINDOW`] (or since creation, if younger).
    pub fn per_second(&self, now: Instant) -> f64 {
        let window = now.saturating_duration_since(self.since).min(WINDOW);
        if window.is_zero() {
            return 0.0;
        }
        let start = now - window;
        // The cumulative count at the window's start: the count before the first bucket that
        // began after it (nothing drained between), or the current count if none did.
        let at_start = self
            .samples
            .iter()
            .find(|(at, _)| *at > start)
            .map_or(self.total, |&(_, before)| before);
        (self.total - at_start) as f64 / window.as_secs_f64()
    }

    /// How long until `over` more messages will have drained at the measured rate, clamped to
    /// `[1 ms, max]`; `max` when nothing drains.
    pub fn retry_after(&self, over: u64, max: Duration, now: Instant) -> Duration {
        let rate = self.per_second(now);
        if rate <= 0.0 {
            return max;
        }
        Duration::from_secs_f64(over as f64 / rate).clamp(Duration::from_millis(1), max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_follows_recent_drains() {
        let t0 = Instant::now();
        let mut d = DrainRate::new(t0);
        for i in 1..=50 {
            d.record(100, t0 + Duration::from_millis(100 * i)); // 1 000 msg/s for 5 s
        }
        let rate = d.per_second(t0 + Duration::from_secs(5));
        assert!((900.0..=1100.0).contains(&rate), "{rate}");
        // Nothing drains for 10 s: the rate falls to zero.
        assert_eq!(d.per_second(t0 + Duration::from_secs(15)), 0.0);
    }

    #[test]
    fn retry_after_grows_as_the_drain_rate_falls() {
        let t0 = Instant::now();
        let max = Duration::from_secs(5);
        let hint = |per_tick: u64| {
            let mut d = DrainRate::new(t0);
            for i in 1..=50 {
                d.record(per_tick, t0 + Duration::from_millis(100 * i));
            }
            d.retry_after(10, max, t0 + Duration::from_secs(5))
        };
        let (fast, slow, slower) = (hint(100), hint(10), hint(1));
        assert!(fast < slow && slow < slower, "{fast:?} {slow:?} {slower:?}");
        assert_eq!(fast, Duration::from_millis(10)); // 10 over at 1 000/s
        assert_eq!(
            DrainRate::new(t0).retry_after(10, max, t0 + Duration::from_secs(1)),
            max
        );
    }

    #[test]
    fn samples_stay_bounded() {
        let t0 = Instant::now();
        let mut d = DrainRate::new(t0);
        for i in 0..100_000 {
            d.record(1, t0 + Duration::from_millis(i));
        }
        assert!(d.samples.len() <= MAX_SAMPLES);
    }
}
