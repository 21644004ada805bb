//! [`CircuitBreaker`]: stop publishing to a broker that keeps refusing, and probe it once it had
//! time to recover.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::{BreakerPolicy, Verdict};

/// The circuit breaker's state, as [`CircuitBreaker::state`] and
/// [`crate::Publisher::breaker_state`] report it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Publishes go through; failures are counted.
    Closed,
    /// Publishes fail at once until `until`.
    Open {
        /// When the cool-down ends and one probe will be let through.
        until: Instant,
    },
    /// The cool-down is over: one probe may go (or is out); its outcome closes the breaker or
    /// opens it again.
    HalfOpen,
}

/// Permission to publish, from [`CircuitBreaker::allow`]. Its outcome goes back with
/// [`CircuitBreaker::record`], or [`CircuitBreaker::cancel`] when the publish was not sent —
/// otherwise a half-open breaker keeps waiting for a probe that never answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pass {
    /// The breaker's state change count when the pass was given: outcomes of passes from before
    /// the last change are stale and ignored.
    epoch: u64,
    probe: bool,
}

impl Pass {
    /// Whether this pass is the half-open breaker's one probe.
    pub fn is_probe(&self) -> bool {
        self.probe
    }
}

/// The state as kept (the public [`BreakerState`] also folds in the clock).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Closed,
    Open { until: Instant },
    HalfOpen { probe_out: bool },
}

/// A circuit breaker: closed → open after [`BreakerPolicy::consecutive_failures`] failures in a
/// row, or a failure ratio of at least [`BreakerPolicy::failure_ratio`] over the last
/// [`BreakerPolicy::sample`] outcomes → half-open after [`BreakerPolicy::cooldown`], letting
/// exactly one probe through → closed when the probe succeeds, open again when it fails.
///
/// Only outcomes of passes given in the current state count: a publish let through while closed
/// whose answer arrives after the breaker opened says nothing about the probe. Memory: the last
/// `sample` outcomes, as booleans.
#[derive(Debug)]
pub struct CircuitBreaker {
    policy: BreakerPolicy,
    state: State,
    /// Incremented on every state change.
    epoch: u64,
    consecutive: u32,
    /// The last `sample` outcomes while closed (`true` = failure), oldest first.
    recent: VecDeque<bool>,
    recent_failures: usize,
}

impl CircuitBreaker {
    /// A closed breaker.
    pub fn new(policy: BreakerPolicy) -> CircuitBreaker {
        CircuitBreaker {
            policy,
            state: State::Closed,
            epoch: 0,
            consecutive: 0,
            recent: VecDeque::new(),
            recent_failures: 0,
        }
    }

    /// The state at `now` (an open breaker past its cool-down reads as half-open).
    pub fn state(&self, now: Instant) -> BreakerState {
        match self.state {
            State::Closed => BreakerState::Closed,
            State::Open { until } if now < until => BreakerState::Open { until },
            State::Open { .. } | State::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }

    /// Whether a publish may go at `now`. Closed: yes. Open: no, `Err` says how long until the
    /// cool-down ends. Half-open: exactly one pass, the probe, until its outcome is recorded or
    /// it is cancelled; meanwhile `Err(cooldown)`.
    pub fn allow(&mut self, now: Instant) -> Result<Pass, Duration> {
        match self.state {
            State::Closed => Ok(self.pass(false)),
            State::Open { until } if now < until => Err(until - now),
            State::Open { .. } | State::HalfOpen { probe_out: false } => {
                self.set(State::HalfOpen { probe_out: true });
                Ok(self.pass(true))
            }
            State::HalfOpen { probe_out: true } => Err(self.policy.cooldown),
        }
    }

    /// Records the outcome of a publish let through with `pass`. A success closes a half-open
    /// breaker; a failure counts towards opening a closed one and re-opens a half-open one. An
    /// [`Verdict::Unknown`] outcome is a [`CircuitBreaker::cancel`].
    pub fn record(&mut self, pass: Pass, verdict: Verdict, now: Instant) {
        if verdict == Verdict::Unknown {
            return self.cancel(pass);
        }
        if pass.epoch != self.epoch {
            return;
        }
        let failed = verdict == Verdict::Failure;
        match self.state {
            State::Closed => {
                self.consecutive = if failed { self.consecutive + 1 } else { 0 };
                self.remember(failed);
                if failed && self.tripped() {
                    self.open(now);
                }
            }
            State::HalfOpen { probe_out: true } if pass.probe => {
                if failed {
                    self.open(now);
                } else {
                    self.set(State::Closed);
                }
            }
            _ => {}
        }
    }

    /// Gives back a pass whose publish was never sent (refused locally, cancelled, or no retry
    /// was allowed after all): a half-open breaker lets another probe through.
    pub fn cancel(&mut self, pass: Pass) {
        if pass.probe && pass.epoch == self.epoch {
            if let State::HalfOpen { probe_out: true } = self.state {
                self.state = State::HalfOpen { probe_out: false };
            }
        }
    }

    fn pass(&self, probe: bool) -> Pass {
        Pass {
            epoch: self.epoch,
            probe,
        }
    }

    fn tripped(&self) -> bool {
        let sample = self.policy.sample.max(1);
        self.consecutive >= self.policy.consecutive_failures
            || (self.recent.len() >= sample
                && self.recent_failures as f64 >= self.policy.failure_ratio * sample as f64)
    }

    fn open(&mut self, now: Instant) {
        self.set(State::Open {
            until: now + self.policy.cooldown,
        });
    }

    fn set(&mut self, state: State) {
        self.state = state;
        self.epoch += 1;
        self.consecutive = 0;
        self.recent.clear();
        self.recent_failures = 0;
    }

    fn remember(&mut self, failed: bool) {
        if self.recent.len() >= self.policy.sample.max(1) && self.recent.pop_front() == Some(true) {
            self.recent_failures -= 1;
        }
        self.recent.push_back(failed);
        self.recent_failures += usize::from(failed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const COOLDOWN: Duration = Duration::from_secs(1);

    fn breaker(consecutive_failures: u32) -> CircuitBreaker {
        CircuitBreaker::new(BreakerPolicy {
            consecutive_failures,
            cooldown: COOLDOWN,
            ..BreakerPolicy::default()
        })
    }

    fn fail(b: &mut CircuitBreaker, now: Instant) {
        let pass = b.allow(now).expect("allowed");
        b.record(pass, Verdict::Failure, now);
    }

    #[test]
    fn opens_after_n_consecutive_failures_and_rejects_while_open() {
        let t0 = Instant::now();
        let mut b = breaker(3);
        fail(&mut b, t0);
        fail(&mut b, t0);
        // A success in between starts the count again.
        let pass = b.allow(t0).unwrap();
        b.record(pass, Verdict::Success, t0);
        fail(&mut b, t0);
        fail(&mut b, t0);
        assert_eq!(b.state(t0), BreakerState::Closed);
        fail(&mut b, t0);
        assert_eq!(
            b.state(t0),
            BreakerState::Open {
                until: t0 + COOLDOWN
            }
        );
        for ms in [0, 1, 400, 999] {
            let now = t0 + Duration::from_millis(ms);
            assert_eq!(b.allow(now), Err(COOLDOWN - Duration::from_millis(ms)));
        }
    }

    #[test]
    fn half_open_lets_exactly_one_probe_through_and_closes_on_success() {
        let t0 = Instant::now();
        let mut b = breaker(1);
        fail(&mut b, t0);
        let later = t0 + COOLDOWN;
        assert_eq!(b.state(later), BreakerState::HalfOpen);
        let probe = b.allow(later).unwrap();
        assert!(probe.is_probe());
        for _ in 0..100 {
            assert_eq!(b.allow(later), Err(COOLDOWN), "only one probe at a time");
        }
        b.record(probe, Verdict::Success, later);
        assert_eq!(b.state(later), BreakerState::Closed);
        assert!(!b.allow(later).unwrap().is_probe());
    }

    #[test]
    fn a_failed_probe_reopens_for_another_cooldown() {
        let t0 = Instant::now();
        let mut b = breaker(1);
        fail(&mut b, t0);
        let later = t0 + COOLDOWN + Duration::from_millis(5);
        let probe = b.allow(later).unwrap();
        b.record(probe, Verdict::Failure, later);
        assert_eq!(
            b.state(later),
            BreakerState::Open {
                until: later + COOLDOWN
            }
        );
        assert!(b.allow(later + COOLDOWN / 2).is_err());
        assert!(b.allow(later + COOLDOWN).unwrap().is_probe());
    }

    /// A probe that was never sent (or whose outcome says nothing) must not leave the breaker
    /// waiting for it forever.
    #[test]
    fn a_cancelled_probe_lets_the_next_one_through() {
        let t0 = Instant::now();
        let mut b = breaker(1);
        fail(&mut b, t0);
        let later = t0 + COOLDOWN;
        let probe = b.allow(later).unwrap();
        b.cancel(probe);
        let probe = b.allow(later).unwrap();
        assert!(probe.is_probe());
        b.record(probe, Verdict::Unknown, later);
        assert!(b.allow(later).unwrap().is_probe());
    }

    /// Answers to publishes let through before the breaker opened do not decide the probe.
    #[test]
    fn stale_outcomes_are_ignored() {
        let t0 = Instant::now();
        let mut b = breaker(2);
        let old_a = b.allow(t0).unwrap();
        let old_b = b.allow(t0).unwrap();
        fail(&mut b, t0);
        fail(&mut b, t0);
        let later = t0 + COOLDOWN;
        let probe = b.allow(later).unwrap();
        b.record(old_a, Verdict::Success, later);
        assert_eq!(
            b.state(later),
            BreakerState::HalfOpen,
            "not closed by an old success"
        );
        b.record(old_b, Verdict::Failure, later);
        assert_eq!(
            b.state(later),
            BreakerState::HalfOpen,
            "not re-opened by an old failure"
        );
        b.cancel(old_a);
        assert!(
            b.allow(later).is_err(),
            "an old pass cannot free the probe slot"
        );
        b.record(probe, Verdict::Success, later);
        assert_eq!(b.state(later), BreakerState::Closed);
    }

    #[test]
    fn also_opens_on_a_failure_ratio() {
        let t0 = Instant::now();
        let mut b = CircuitBreaker::new(BreakerPolicy {
            consecutive_failures: 100,
            failure_ratio: 0.5,
            sample: 10,
            cooldown: COOLDOWN,
        });
        for i in 0..9 {
            let pass = b.allow(t0).unwrap();
            let verdict = if i % 2 == 0 {
                Verdict::Success
            } else {
                Verdict::Failure
            };
            b.record(pass, verdict, t0);
        }
        assert_eq!(b.state(t0), BreakerState::Closed, "4 of 9: sample not full");
        fail(&mut b, t0);
        assert!(matches!(b.state(t0), BreakerState::Open { .. }), "5 of 10");
    }

    #[test]
    fn the_ratio_looks_at_the_last_sample_only() {
        let t0 = Instant::now();
        let mut b = CircuitBreaker::new(BreakerPolicy {
            consecutive_failures: 100,
            failure_ratio: 0.5,
            sample: 10,
            cooldown: COOLDOWN,
        });
        // Alternating 4 failures then 6 successes, over and over: never half of the last 10.
        for _ in 0..50 {
            for verdict in [Verdict::Failure; 4]
                .into_iter()
                .chain([Verdict::Success; 6])
            {
                let pass = b.allow(t0).unwrap();
                b.record(pass, verdict, t0);
            }
            assert_eq!(b.state(t0), BreakerState::Closed);
        }
    }
}
