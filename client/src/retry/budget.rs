//! [`RetryBudget`]: retries as a bounded fraction of recent publishes, and a cap on the retries
//! going on at once.

use std::time::{Duration, Instant};

use super::RetryPolicy;

/// How many buckets the budget's sliding window is cut into (100 ms each for the default 10 s
/// window). Fixed, so the budget's memory does not depend on its configuration.
pub const BUDGET_BUCKETS: usize = 100;

/// Publishes and retries counted in one slice of the window.
#[derive(Debug, Clone, Copy, Default)]
struct Bucket {
    /// Which slice of time since the origin this bucket counts; a bucket whose slice has left
    /// the window is stale and reset before reuse.
    slice: u64,
    publishes: u64,
    retries: u64,
}

/// The retry budget of one publisher (and its clones).
///
/// - **Ratio.** Over a sliding window ([`RetryPolicy::budget_window`], kept as a ring of
///   [`BUDGET_BUCKETS`] buckets), retries may be at most `max(budget_floor, budget_ratio ×
///   publishes)`, where publishes are original publishes only (retries do not earn budget). So
///   in a refusal storm retries add at most 10 % (by default) to the load, plus a small burst
///   allowance for quiet publishers.
/// - **Concurrency.** At most [`RetryPolicy::max_concurrent_retries`] retries are waiting for
///   their backoff or in flight at once.
///
/// Past either bound, [`RetryBudget::try_begin_retry`] says no and the refusal surfaces to the
/// app. Memory: a fixed array of buckets and one counter, whatever the traffic.
#[derive(Debug)]
pub struct RetryBudget {
    ratio: f64,
    floor: u64,
    max_concurrent: usize,
    origin: Instant,
    width: Duration,
    buckets: [Bucket; BUDGET_BUCKETS],
    in_flight: usize,
}

impl RetryBudget {
    /// A budget per `policy`, counting time from `now`. A ratio that is negative or not finite
    /// counts as 0; a window shorter than 100 ms counts as 100 ms.
    pub fn new(policy: &RetryPolicy, now: Instant) -> RetryBudget {
        let ratio = if policy.budget_ratio.is_finite() {
            policy.budget_ratio.max(0.0)
        } else {
            0.0
        };
        let window = policy.budget_window.max(Duration::from_millis(100));
        RetryBudget {
            ratio,
            floor: u64::from(policy.budget_floor),
            max_concurrent: policy.max_concurrent_retries,
            origin: now,
            width: window / BUDGET_BUCKETS as u32,
            buckets: [Bucket::default(); BUDGET_BUCKETS],
            in_flight: 0,
        }
    }

    fn slice(&self, now: Instant) -> u64 {
        let elapsed = now.saturating_duration_since(self.origin).as_nanos();
        u64::try_from(elapsed / self.width.as_nanos()).unwrap_or(u64::MAX)
    }

    /// The bucket counting `now`, reset first if it still holds an older slice.
    fn bucket(&mut self, now: Instant) -> &mut Bucket {
        let slice = self.slice(now);
        let bucket = &mut self.buckets[(slice % BUDGET_BUCKETS as u64) as usize];
        if bucket.slice != slice {
            *bucket = Bucket {
                slice,
                ..Bucket::default()
            };
        }
        bucket
    }

    /// `(publishes, retries)` counted in the window ending at `now`.
    pub fn in_window(&self, now: Instant) -> (u64, u64) {
        let slice = self.slice(now);
        let oldest = slice.saturating_sub(BUDGET_BUCKETS as u64 - 1);
        self.buckets
            .iter()
            .filter(|b| (oldest..=slice).contains(&b.slice))
            .fold((0, 0), |(p, r), b| (p + b.publishes, r + b.retries))
    }

    /// How many retries the window ending at `now` allows in total:
    /// `max(floor, ratio × publishes)`.
    pub fn allowed(&self, now: Instant) -> u64 {
        let (publishes, _) = self.in_window(now);
        ((publishes as f64 * self.ratio) as u64).max(self.floor)
    }

    /// Retries granted and not yet ended.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Counts one original publish (sent to the broker, not a retry).
    pub fn record_publish(&mut self, now: Instant) {
        self.bucket(now).publishes += 1;
    }

    /// Takes permission for one retry. Refused (`false`) when the retries of the window would
    /// pass [`RetryBudget::allowed`], or when `max_concurrent_retries` are already going. A
    /// granted retry counts against the window at once and must be ended with
    /// [`RetryBudget::end_retry`] when its outcome is known (or it is abandoned).
    pub fn try_begin_retry(&mut self, now: Instant) -> bool {
        let (_, retries) = self.in_window(now);
        if retries >= self.allowed(now) || self.in_flight >= self.max_concurrent {
            return false;
        }
        self.bucket(now).retries += 1;
        self.in_flight += 1;
        true
    }

    /// Ends a retry granted by [`RetryBudget::try_begin_retry`]. It still counts in its
    /// window's ratio until that slides past.
    pub fn end_retry(&mut self) {
        self.in_flight = self.in_flight.saturating_sub(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(floor: u32, ratio: f64, concurrent: usize) -> RetryPolicy {
        RetryPolicy {
            budget_floor: floor,
            budget_ratio: ratio,
            max_concurrent_retries: concurrent,
            ..RetryPolicy::default()
        }
    }

    /// 1 000 publishes over 5 s, every one refused and wanting a retry: at most 10 % of them
    /// plus the burst allowance are retried.
    #[test]
    fn the_budget_caps_retries_under_a_rejection_storm() {
        let t0 = Instant::now();
        let mut budget = RetryBudget::new(&policy(10, 0.1, 1000), t0);
        let mut granted = 0;
        for i in 0..1000u64 {
            let now = t0 + Duration::from_millis(i * 5);
            budget.record_publish(now);
            if budget.try_begin_retry(now) {
                granted += 1;
                budget.end_retry();
            }
        }
        assert!(granted <= 100 + 10, "{granted} retries for 1 000 publishes");
        assert!(
            granted >= 90,
            "the budget should allow about 10 %: {granted}"
        );
    }

    /// The same storm where every retry is refused again and wants another: retries still stay
    /// within the budget, whatever the number of attempts each publish would take.
    #[test]
    fn retries_of_retries_share_the_same_budget() {
        let t0 = Instant::now();
        let mut budget = RetryBudget::new(&policy(10, 0.1, 1000), t0);
        let mut granted = 0;
        for i in 0..1000u64 {
            let now = t0 + Duration::from_millis(i * 5);
            budget.record_publish(now);
            for _attempt in 0..5 {
                if !budget.try_begin_retry(now) {
                    break;
                }
                granted += 1;
                budget.end_retry();
            }
        }
        assert!(granted <= 110, "{granted} retries for 1 000 publishes");
    }

    #[test]
    fn the_floor_allows_a_burst_when_publishes_are_few() {
        let t0 = Instant::now();
        let mut budget = RetryBudget::new(&policy(3, 0.1, 1000), t0);
        budget.record_publish(t0);
        assert_eq!((0..10).filter(|_| budget.try_begin_retry(t0)).count(), 3);
        assert_eq!(budget.in_window(t0), (1, 3));
    }

    /// Retries leave the window as it slides: a budget spent at t0 is available again one
    /// window later, and half of it after half a window once the older half has slid out.
    #[test]
    fn the_window_slides() {
        let t0 = Instant::now();
        let mut budget = RetryBudget::new(&policy(4, 0.0, 1000), t0);
        let spend = |budget: &mut RetryBudget, now| {
            (0..10)
                .filter(|_| {
                    let ok = budget.try_begin_retry(now);
                    if ok {
                        budget.end_retry();
                    }
                    ok
                })
                .count()
        };
        assert_eq!(spend(&mut budget, t0), 4);
        assert_eq!(spend(&mut budget, t0 + Duration::from_secs(9)), 0);
        assert_eq!(spend(&mut budget, t0 + Duration::from_secs(10)), 4);
        assert_eq!(spend(&mut budget, t0 + Duration::from_secs(15)), 0);
        assert_eq!(spend(&mut budget, t0 + Duration::from_secs(20)), 4);
        // A long silence: everything old is stale, nothing overflows.
        assert_eq!(
            spend(&mut budget, t0 + Duration::from_secs(86_400 * 365)),
            4
        );
    }

    #[test]
    fn at_most_max_concurrent_retries_at_once() {
        let t0 = Instant::now();
        let mut budget = RetryBudget::new(&policy(1000, 0.1, 3), t0);
        assert_eq!((0..10).filter(|_| budget.try_begin_retry(t0)).count(), 3);
        assert_eq!(budget.in_flight(), 3);
        budget.end_retry();
        assert!(budget.try_begin_retry(t0));
        assert!(!budget.try_begin_retry(t0));
        let none = RetryBudget::new(&policy(1000, 0.1, 0), t0).try_begin_retry(t0);
        assert!(!none, "max_concurrent_retries 0 turns retries off");
    }

    #[test]
    fn odd_ratios_and_windows_are_tamed() {
        let t0 = Instant::now();
        for ratio in [f64::NAN, -1.0, f64::INFINITY] {
            let mut budget = RetryBudget::new(&policy(2, ratio, 1000), t0);
            (0..100).for_each(|_| budget.record_publish(t0));
            assert_eq!(budget.allowed(t0), 2, "ratio {ratio}");
        }
        let tiny = RetryPolicy {
            budget_window: Duration::ZERO,
            ..policy(1, 0.0, 10)
        };
        let mut budget = RetryBudget::new(&tiny, t0);
        assert!(budget.try_begin_retry(t0));
        assert!(!budget.try_begin_retry(t0 + Duration::from_millis(99)));
        assert!(budget.try_begin_retry(t0 + Duration::from_millis(100)));
    }
}
