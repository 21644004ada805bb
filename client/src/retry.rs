//! Retrying refused publishes without making things worse: exponential backoff with full
//! jitter that never comes back sooner than the broker's `retry_after_ms`, a retry budget so
//! retries stay a small fraction of the traffic, and a circuit breaker that stops publishing to a
//! broker that keeps refusing.
//!
//! Off by default: [`crate::Publisher::publish`] surfaces every refusal. Turn it on with
//! [`crate::Publisher::with_retry`]. The pure parts — [`full_jitter`], [`RetryBudget`],
//! [`CircuitBreaker`] — take the time as an argument, so they are tested without sleeping.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use rand::Rng;
use weir_protocol::RejectReason;

use crate::error::PublishError;

/// How a publisher retries refused publishes.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// The first backoff ceiling; doubled per attempt. Default 50 ms.
    pub base: Duration,
    /// The largest backoff ceiling. Default 5 s.
    pub cap: Duration,
    /// Most retries of one publish. Default 5.
    pub max_retries: u32,
    /// Retries may be at most this fraction of the publishes of the last
    /// [`RetryPolicy::budget_window`]. Default 0.1.
    pub budget_ratio: f64,
    /// Retries always allowed per window, however few publishes there were. Default 10.
    pub budget_floor: u32,
    /// The window the budget counts over. Default 10 s.
    pub budget_window: Duration,
    /// Most retries waiting or in flight at once. Default 32.
    pub max_concurrent_retries: usize,
    /// The circuit breaker.
    pub breaker: BreakerPolicy,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            base: Duration::from_millis(50),
            cap: Duration::from_secs(5),
            max_retries: 5,
            budget_ratio: 0.1,
            budget_floor: 10,
            budget_window: Duration::from_secs(10),
            max_concurrent_retries: 32,
            breaker: BreakerPolicy::default(),
        }
    }
}

/// When the circuit breaker opens and how long it stays open.
#[derive(Debug, Clone, PartialEq)]
pub struct BreakerPolicy {
    /// Open after this many failures in a row. Default 10.
    pub consecutive_failures: u32,
    /// ... or when at least this fraction of the last [`BreakerPolicy::sample`] outcomes
    /// failed. Default 0.5.
    pub failure_ratio: f64,
    /// How many recent outcomes the ratio looks at (and needs before it applies). Default 20.
    pub sample: usize,
    /// How long the breaker stays open before letting one probe through. Default 1 s.
    pub cooldown: Duration,
}

impl Default for BreakerPolicy {
    fn default() -> Self {
        BreakerPolicy {
            consecutive_failures: 10,
            failure_ratio: 0.5,
            sample: 20,
            cooldown: Duration::from_secs(1),
        }
    }
}

/// Whether a publish outcome may be retried: refusals that say waiting helps (a full topic, a
/// rate limit, an overloaded broker) and carry a retry hint. Everything else surfaces at once.
pub fn retryable(error: &PublishError) -> bool {
    matches!(
        error,
        PublishError::Rejected {
            reason: RejectReason::TopicFull | RejectReason::RateLimited | RejectReason::Overloaded,
            retry_after_ms: Some(_),
            ..
        }
    )
}

/// Full jitter: a uniformly random delay in `[0, min(cap, base · 2^attempt)]`, but never less
/// than the broker's `retry_after`.
pub fn full_jitter(
    base: Duration,
    cap: Duration,
    attempt: u32,
    retry_after: Duration,
    rng: &mut impl Rng,
) -> Duration {
    let ceiling = base
        .saturating_mul(1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX))
        .min(cap);
    let jitter = Duration::from_secs_f64(rng.random::<f64>() * ceiling.as_secs_f64());
    jitter.max(retry_after)
}

/// The retry budget: publishes and retries per second over a sliding window (one bucket per
/// second, so memory is bounded by the window's length in seconds), and the retries waiting or
/// in flight now.
#[derive(Debug)]
pub struct RetryBudget {
    ratio: f64,
    floor: u32,
    window: Duration,
    max_concurrent: usize,
    /// `(second, publishes, retries)`, oldest first.
    buckets: VecDeque<(u64, u64, u64)>,
    origin: Instant,
    in_flight: usize,
}

impl RetryBudget {
    /// A budget per `policy`, counting time from `now`.
    pub fn new(policy: &RetryPolicy, now: Instant) -> RetryBudget {
        RetryBudget {
            ratio: policy.budget_ratio,
            floor: policy.budget_floor,
            window: policy.budget_window.max(Duration::from_secs(1)),
            max_concurrent: policy.max_concurrent_retries,
            buckets: VecDeque::new(),
            origin: now,
            in_flight: 0,
        }
    }

    fn bucket(&mut self, now: Instant) -> &mut (u64, u64, u64) {
        let second = now.saturating_duration_since(self.origin).as_secs();
        let oldest = second.saturating_sub(self.window.as_secs().saturating_sub(1));
        while self.buckets.front().is_some_and(|(s, _, _)| *s < oldest) {
            self.buckets.pop_front();
        }
        if self.buckets.back().is_none_or(|(s, _, _)| *s != second) {
            self.buckets.push_back((second, 0, 0));
        }
        self.buckets.back_mut().expect("just pushed")
    }

    /// Counts one original publish.
    pub fn record_publish(&mut self, now: Instant) {
        self.bucket(now).1 += 1;
    }

    /// Takes permission for one retry: refused when retries in the window would pass
    /// `max(floor, ratio × publishes)`, or when `max_concurrent_retries` are already going.
    /// A granted retry must be ended with [`RetryBudget::end_retry`].
    pub fn try_begin_retry(&mut self, now: Instant) -> bool {
        self.bucket(now);
        let (publishes, retries) = self
            .buckets
            .iter()
            .fold((0, 0), |(p, r), (_, bp, br)| (p + bp, r + br));
        let allowed = ((publishes as f64 * self.ratio) as u64).max(u64::from(self.floor));
        if retries + 1 > allowed || self.in_flight >= self.max_concurrent {
            return false;
        }
        self.bucket(now).2 += 1;
        self.in_flight += 1;
        true
    }

    /// Ends a retry granted by [`RetryBudget::try_begin_retry`].
    pub fn end_retry(&mut self) {
        self.in_flight = self.in_flight.saturating_sub(1);
    }
}

/// The circuit breaker's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Publishes go through.
    Closed,
    /// Publishes fail at once until `until`.
    Open {
        /// When one probe will be let through.
        until: Instant,
    },
    /// One probe is (or may be) in flight; its outcome closes or re-opens the breaker.
    HalfOpen,
}

/// Closed → open after too many failures → half-open (one probe) after the cool-down →
/// closed on the probe's success, open again on its failure.
#[derive(Debug)]
pub struct CircuitBreaker {
    policy: BreakerPolicy,
    state: BreakerState,
    consecutive: u32,
    recent: VecDeque<bool>,
    probing: bool,
}

impl CircuitBreaker {
    /// A closed breaker.
    pub fn new(policy: BreakerPolicy) -> CircuitBreaker {
        CircuitBreaker {
            policy,
            state: BreakerState::Closed,
            consecutive: 0,
            recent: VecDeque::new(),
            probing: false,
        }
    }

    /// The state now (an open breaker past its cool-down reads as half-open).
    pub fn state(&self, now: Instant) -> BreakerState {
        match self.state {
            BreakerState::Open { until } if now >= until => BreakerState::HalfOpen,
            state => state,
        }
    }

    /// Whether a publish may go now. In half-open, exactly one probe is let through until its
    /// outcome is recorded. `Err` carries how long until a probe will be allowed.
    pub fn allow(&mut self, now: Instant) -> Result<(), Duration> {
        match self.state(now) {
            BreakerState::Closed => Ok(()),
            BreakerState::Open { until } => Err(until - now),
            BreakerState::HalfOpen if self.probing => Err(self.policy.cooldown),
            BreakerState::HalfOpen => {
                self.state = BreakerState::HalfOpen;
                self.probing = true;
                Ok(())
            }
        }
    }

    /// Records a success: closes a half-open breaker.
    pub fn success(&mut self) {
        self.consecutive = 0;
        self.remember(true);
        if self.state == BreakerState::HalfOpen {
            self.close();
        }
    }

    /// Records a failure: may open the breaker (a failed probe re-opens it at once).
    pub fn failure(&mut self, now: Instant) {
        self.consecutive += 1;
        self.remember(false);
        let failed = self.recent.iter().filter(|ok| !**ok).count();
        let ratio_tripped = self.recent.len() >= self.policy.sample
            && failed as f64 >= self.policy.failure_ratio * self.recent.len() as f64;
        let tripped = self.consecutive >= self.policy.consecutive_failures || ratio_tripped;
        if self.state == BreakerState::HalfOpen || (self.state == BreakerState::Closed && tripped) {
            self.state = BreakerState::Open {
                until: now + self.policy.cooldown,
            };
            self.probing = false;
        }
    }

    fn close(&mut self) {
        self.state = BreakerState::Closed;
        self.probing = false;
        self.consecutive = 0;
        self.recent.clear();
    }

    fn remember(&mut self, ok: bool) {
        if self.recent.len() == self.policy.sample.max(1) {
            self.recent.pop_front();
        }
        self.recent.push_back(ok);
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;

    use super::*;
    use weir_protocol::Limit;

    #[test]
    fn full_jitter_stays_within_its_bounds_and_honours_retry_after() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let (base, cap) = (Duration::from_millis(50), Duration::from_secs(2));
        for attempt in 0..8 {
            let ceiling = (base * 2u32.pow(attempt)).min(cap);
            let draws: Vec<Duration> = (0..10_000)
                .map(|_| full_jitter(base, cap, attempt, Duration::ZERO, &mut rng))
                .collect();
            assert!(
                draws.iter().all(|d| *d <= ceiling),
                "attempt {attempt} went past {ceiling:?}"
            );
            let mean = draws.iter().sum::<Duration>() / draws.len() as u32;
            // Uniform on [0, ceiling]: the mean is near the middle, and draws are spread.
            assert!(
                mean > ceiling * 2 / 5 && mean < ceiling * 3 / 5,
                "attempt {attempt}: mean {mean:?}"
            );
            assert!(
                draws.iter().any(|d| *d < ceiling / 10)
                    && draws.iter().any(|d| *d > ceiling * 9 / 10)
            );
        }
        let hint = Duration::from_millis(700);
        assert!((0..1000).all(|_| full_jitter(base, cap, 0, hint, &mut rng) >= hint));
        assert!(
            full_jitter(base, cap, 200, Duration::ZERO, &mut rng) <= cap,
            "huge attempts cannot overflow"
        );
    }

    #[test]
    fn the_retry_budget_caps_retries_under_a_rejection_storm() {
        let t0 = Instant::now();
        let policy = RetryPolicy {
            budget_floor: 10,
            budget_ratio: 0.1,
            ..RetryPolicy::default()
        };
        let mut budget = RetryBudget::new(&policy, t0);
        let mut granted = 0;
        // 1 000 publishes over 5 s, every one refused and wanting a retry.
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

    #[test]
    fn at_most_max_concurrent_retries_at_once() {
        let t0 = Instant::now();
        let policy = RetryPolicy {
            max_concurrent_retries: 3,
            budget_floor: 1000,
            ..RetryPolicy::default()
        };
        let mut budget = RetryBudget::new(&policy, t0);
        assert_eq!((0..10).filter(|_| budget.try_begin_retry(t0)).count(), 3);
        budget.end_retry();
        assert!(budget.try_begin_retry(t0));
    }

    #[test]
    fn the_breaker_opens_probes_once_and_closes_or_reopens() {
        let t0 = Instant::now();
        let policy = BreakerPolicy {
            consecutive_failures: 3,
            cooldown: Duration::from_secs(1),
            ..BreakerPolicy::default()
        };
        let mut breaker = CircuitBreaker::new(policy);
        for _ in 0..2 {
            breaker.failure(t0);
        }
        assert_eq!(breaker.state(t0), BreakerState::Closed);
        breaker.failure(t0);
        assert_eq!(
            breaker.state(t0),
            BreakerState::Open {
                until: t0 + Duration::from_secs(1)
            }
        );
        assert_eq!(
            breaker.allow(t0 + Duration::from_millis(400)),
            Err(Duration::from_millis(600))
        );
        // Cool-down over: exactly one probe.
        let later = t0 + Duration::from_secs(1);
        assert_eq!(breaker.state(later), BreakerState::HalfOpen);
        assert!(breaker.allow(later).is_ok());
        assert!(
            breaker.allow(later).is_err(),
            "a second probe while the first is out"
        );
        breaker.failure(later);
        assert!(
            matches!(breaker.state(later), BreakerState::Open { .. }),
            "a failed probe re-opens"
        );
        let again = later + Duration::from_secs(1);
        assert!(breaker.allow(again).is_ok());
        breaker.success();
        assert_eq!(breaker.state(again), BreakerState::Closed);
        assert!(breaker.allow(again).is_ok());
    }

    #[test]
    fn the_breaker_also_opens_on_a_failure_ratio() {
        let t0 = Instant::now();
        let policy = BreakerPolicy {
            consecutive_failures: 100,
            failure_ratio: 0.5,
            sample: 10,
            ..BreakerPolicy::default()
        };
        let mut breaker = CircuitBreaker::new(policy);
        for i in 0..10 {
            if i % 2 == 0 {
                breaker.success();
            } else {
                breaker.failure(t0);
            }
        }
        assert!(matches!(breaker.state(t0), BreakerState::Open { .. }));
    }

    #[test]
    fn only_refusals_that_waiting_can_fix_are_retryable() {
        let refused = |reason, retry_after_ms| PublishError::Rejected {
            reason,
            limit: Limit::new("x", 1),
            retry_after_ms,
        };
        assert!(retryable(&refused(RejectReason::TopicFull, Some(5))));
        assert!(retryable(&refused(RejectReason::RateLimited, Some(5))));
        assert!(retryable(&refused(RejectReason::Overloaded, Some(5))));
        assert!(!retryable(&refused(RejectReason::TopicFull, None)));
        assert!(!retryable(&refused(RejectReason::MessageTooLarge, None)));
        assert!(!retryable(&refused(RejectReason::ShuttingDown, Some(5))));
        assert!(!retryable(&PublishError::ConnectionLost));
    }
}
