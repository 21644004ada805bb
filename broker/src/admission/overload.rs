//! Overload detection from storage: the p99 of recent commit latencies, and the work queued
//! for the writers. Either over its threshold means the broker is behind, and new publishes are
//! refused with `Rejected{Overloaded}` until it recovers.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::loom::sync::Mutex;

/// Most recent commit latencies kept (bounded memory).
const SAMPLES: usize = 512;

/// Why the broker considers itself overloaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Overload {
    /// Commit latency p99 over the window is above the threshold.
    CommitLatency {
        /// The measured p99.
        p99: Duration,
        /// The threshold.
        threshold: Duration,
    },
}

/// The commit latencies of the last `window`, at most [`SAMPLES`] of them.
#[derive(Debug)]
pub struct OverloadDetector {
    window: Duration,
    threshold: Duration,
    samples: Mutex<VecDeque<(Instant, Duration)>>,
}

impl OverloadDetector {
    /// A detector calling the broker overloaded when the p99 commit latency over the last
    /// `window` exceeds `threshold`.
    pub fn new(window: Duration, threshold: Duration) -> OverloadDetector {
        OverloadDetector {
            window,
            threshold,
            samples: Mutex::new(VecDeque::with_capacity(SAMPLES)),
        }
    }

    /// Records one commit's latency.
    pub fn record(&self, latency: Duration, now: Instant) {
        let mut samples = self.samples.lock().unwrap_or_else(|p| p.into_inner());
        if samples.len() == SAMPLES {
            samples.pop_front();
        }
        samples.push_back((now, latency));
    }

    /// `Some` while the p99 of the window's commit latencies is above the threshold.
    pub fn check(&self, now: Instant) -> Option<Overload> {
        let mut samples = self.samples.lock().unwrap_or_else(|p| p.into_inner());
        while samples
            .front()
            .is_some_and(|(at, _)| now.saturating_duration_since(*at) > self.window)
        {
            samples.pop_front();
        }
        if samples.is_empty() {
            return None;
        }
        let mut latencies: Vec<Duration> = samples.iter().map(|(_, l)| *l).collect();
        drop(samples);
        latencies.sort_unstable();
        let p99 = latencies[(latencies.len() * 99).div_ceil(100).saturating_sub(1)];
        (p99 > self.threshold).then_some(Overload::CommitLatency {
            p99,
            threshold: self.threshold,
        })
    }

    /// How long to tell refused clients to wait: the window, by when slow samples age out.
    pub fn retry_after(&self) -> Duration {
        self.window
    }
}

#[cfg(all(test, not(weir_loom)))]
mod tests {
    use super::*;

    #[test]
    fn overloaded_while_the_window_s_p99_is_slow_and_recovers_as_it_ages_out() {
        let t0 = Instant::now();
        let d = OverloadDetector::new(Duration::from_secs(1), Duration::from_millis(100));
        for i in 0..100 {
            d.record(Duration::from_millis(5), t0 + Duration::from_millis(i));
        }
        assert_eq!(d.check(t0 + Duration::from_millis(100)), None);
        for i in 0..5 {
            d.record(
                Duration::from_millis(400),
                t0 + Duration::from_millis(200 + i),
            );
        }
        let slow = d.check(t0 + Duration::from_millis(300));
        assert!(
            matches!(slow, Some(Overload::CommitLatency { p99, .. }) if p99 == Duration::from_millis(400))
        );
        // A second later the slow commits have left the window.
        d.record(Duration::from_millis(5), t0 + Duration::from_millis(1300));
        assert_eq!(d.check(t0 + Duration::from_millis(1300)), None);
    }

    #[test]
    fn keeps_a_bounded_number_of_samples() {
        let t0 = Instant::now();
        let d = OverloadDetector::new(Duration::from_secs(60), Duration::from_secs(1));
        for _ in 0..10_000 {
            d.record(Duration::from_millis(1), t0);
        }
        assert_eq!(d.samples.lock().unwrap().len(), SAMPLES);
    }
}
