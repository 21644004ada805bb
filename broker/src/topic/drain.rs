//! A topic's measured drain rate: how many messages per second leave it (acked by every group,
//! or evicted). It turns "the topic is full" into "come back in N ms" — and, since a thousand
//! producers told "1 ms" come back together, hands refused producers consecutive slots of the
//! drain ([`DrainRate::spread_retry_after`]), so those that honour their hints return at about
//! the rate room frees up, not all at once.

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
    /// The earliest time the next refused producer may be told to come back: one message's
    /// drain time after the slot handed to the refusal before it.
    next_slot: Option<Instant>,
}

impl DrainRate {
    /// A rate with no drains yet, measured from `now`.
    pub fn new(now: Instant) -> DrainRate {
        DrainRate {
            total: 0,
            samples: VecDeque::with_capacity(MAX_SAMPLES),
            since: now,
            next_slot: None,
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
    /// `[1 ms, max]`; `max` when nothing drains. The hint every refusal carried before hints
    /// were spread; the tests compare against it.
    #[cfg(test)]
    pub fn retry_after(&self, over: u64, max: Duration, now: Instant) -> Duration {
        let rate = self.per_second(now);
        if rate <= 0.0 {
            return max;
        }
        Duration::from_secs_f64(over as f64 / rate).clamp(Duration::from_millis(1), max)
    }

    /// The retry hint of one more refusal at `now`: [`DrainRate::retry_after`] for `over`, but
    /// no earlier than the slot after the one handed to the previous refusal — each refusal
    /// takes the next slot, one message's drain time (`1 / rate`) after the last. Producers
    /// that honour their hints then come back spread over the time the freed room can take
    /// them, at about the drain rate, however many they are. Clamped to `[1 ms, max]`: past
    /// `max` of waiting producers, the rest are told `max` (and come back at the rate they
    /// were refused, at most one `max` later). `max` when nothing drains. Slots in the past are
    /// forgotten: the first refusal after a quiet spell gets the plain hint.
    pub fn spread_retry_after(&mut self, over: u64, max: Duration, now: Instant) -> Duration {
        let rate = self.per_second(now);
        if rate <= 0.0 {
            return max;
        }
        let plain = Duration::from_secs_f64(over as f64 / rate);
        let queued = self
            .next_slot
            .filter(|slot| *slot > now)
            .map_or(Duration::ZERO, |slot| slot - now);
        let hint = plain.max(queued).clamp(Duration::from_millis(1), max);
        self.next_slot = Some(now + hint + Duration::from_secs_f64(1.0 / rate));
        hint
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

    /// A topic draining 1 000 msg/s for `secs` seconds, with `producers` that each publish one
    /// message at a time, continuously, honouring every hint exactly. Returns the publishes
    /// offered per second over the last half of the run (after the initial rush).
    fn honouring_producers(producers: usize, secs: u64, spread: bool) -> f64 {
        use std::cmp::Reverse;
        use std::collections::BinaryHeap;
        const BOUND: u64 = 100;
        let (t0, max) = (Instant::now(), Duration::from_secs(5));
        let mut drain = DrainRate::new(t0);
        // Warm the rate up: 1 000 msg/s for the last 5 s.
        for i in 1..=50 {
            drain.record(100, t0 + Duration::from_millis(100 * i));
        }
        let start = t0 + Duration::from_secs(5);
        let mut depth = BOUND;
        let mut due: BinaryHeap<Reverse<(Instant, usize)>> =
            (0..producers).map(|p| Reverse((start, p))).collect();
        let (mut offered, mut counted_from) = (0u64, None);
        let end = start + Duration::from_secs(secs);
        let mut next_drain = start;
        while let Some(Reverse((at, p))) = due.pop() {
            if at >= end {
                break;
            }
            // One message leaves every millisecond up to `at`.
            while next_drain <= at {
                if depth > 0 {
                    depth -= 1;
                    drain.record(1, next_drain);
                }
                next_drain += Duration::from_millis(1);
            }
            if at >= start + Duration::from_secs(secs / 2) {
                counted_from.get_or_insert(at);
                offered += 1;
            }
            if depth < BOUND {
                depth += 1;
                due.push(Reverse((at, p)));
            } else {
                let over = depth + 1 - BOUND;
                let hint = match spread {
                    true => drain.spread_retry_after(over, max, at),
                    false => drain.retry_after(over, max, at),
                };
                due.push(Reverse((at + hint, p)));
            }
        }
        offered as f64 / (secs as f64 / 2.0)
    }

    #[test]
    fn producers_honouring_spread_hints_come_back_at_about_the_drain_rate() {
        for producers in [10, 100, 1_000, 4_000] {
            let spread = honouring_producers(producers, 10, true);
            assert!(
                spread <= 3.0 * 1_000.0,
                "{producers} producers offered {spread:.0}/s against a drain of 1 000/s"
            );
        }
        // The plain hint (what every refusal carried before): a retry storm, every producer
        // back every millisecond.
        let plain = honouring_producers(200, 2, false);
        assert!(plain > 50.0 * 1_000.0, "{plain:.0}/s");
    }

    #[test]
    fn consecutive_refusals_take_consecutive_slots_up_to_the_cap() {
        let t0 = Instant::now();
        let mut d = DrainRate::new(t0);
        for i in 1..=50 {
            d.record(100, t0 + Duration::from_millis(100 * i)); // 1 000 msg/s
        }
        let now = t0 + Duration::from_secs(5);
        let max = Duration::from_millis(50);
        let hints: Vec<u64> = (0..100)
            .map(|_| d.spread_retry_after(1, max, now).as_millis() as u64)
            .collect();
        // 1 ms apart (one message's drain time at ~1 000/s), then held at the cap.
        assert_eq!(hints[0], 1);
        assert!(hints.windows(2).all(|w| w[0] <= w[1]), "{hints:?}");
        assert!((9..=11).contains(&hints[10]), "{hints:?}");
        assert_eq!(hints[99], 50, "capped: {hints:?}");
        // After a quiet spell the slots are forgotten.
        let later = now + Duration::from_secs(1);
        assert!(d.spread_retry_after(1, max, later) <= Duration::from_millis(2));
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
