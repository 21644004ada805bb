//! Overload detection from storage: the p99 of recent commit latencies, and the work queued
//! for the writers. Either over its threshold means the broker is behind, and new publishes are
//! refused with `Rejected{Overloaded}` until it recovers.

use std::time::{Duration, Instant};

use super::latency::LatencyWindow;
use crate::loom::sync::atomic::{AtomicU64, Ordering};

/// The shortest retry hint given.
const MIN_RETRY: Duration = Duration::from_millis(1);

/// Why the broker considers itself overloaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Overload {
    /// Commit latency p99 over the window is above the threshold.
    CommitLatency {
        /// The measured p99 (an estimate at most 1/16 above the true value; the comparison
        /// with the threshold itself is exact).
        p99: Duration,
        threshold: Duration,
    },
    /// At least `threshold` appends are waiting for their commit.
    QueuedWork {
        /// Appends waiting now.
        queued: u64,
        threshold: u64,
    },
}

/// Decides whether storage is behind: the commit-latency p99 over a sliding window (bounded
/// memory, see [`LatencyWindow`]) against `commit_p99`, and a gauge of queued appends against
/// `max_queued`. Time is passed in.
///
/// At its bounds it answers [`Overload`], and [`retry_after`](OverloadDetector::retry_after)
/// says when to come back. The gauge saturates at 0: more `dequeued` than `queued` never
/// wraps it into a permanent overload.
#[derive(Debug)]
pub struct OverloadDetector {
    latency: LatencyWindow,
    commit_p99: Duration,
    queued: AtomicU64,
    max_queued: u64,
}

impl OverloadDetector {
    /// A detector calling the broker overloaded while the p99 commit latency over the last
    /// `window` exceeds `commit_p99`, or while at least `max_queued` appends wait for their
    /// commit.
    pub fn new(
        window: Duration,
        commit_p99: Duration,
        max_queued: u64,
        now: Instant,
    ) -> OverloadDetector {
        OverloadDetector {
            latency: LatencyWindow::new(window, commit_p99, now),
            commit_p99,
            queued: AtomicU64::new(0),
            max_queued,
        }
    }

    /// Records one commit's latency, observed at `now`.
    pub fn record_commit(&self, latency: Duration, now: Instant) {
        self.latency.record(latency, now);
    }

    /// Counts `n` more appends waiting for a commit.
    pub fn queued(&self, n: u64) {
        self.queued.fetch_add(n, Ordering::Relaxed);
    }

    /// Counts `n` appends done with (committed or failed); never below 0.
    pub fn dequeued(&self, n: u64) {
        let _ = self
            .queued
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |q| {
                Some(q.saturating_sub(n))
            });
    }

    /// Appends waiting for a commit now.
    pub fn queued_now(&self) -> u64 {
        self.queued.load(Ordering::Relaxed)
    }

    /// `Some` while too much work is queued (checked first, it is the cheaper signal) or the
    /// window's commit p99 is above the threshold.
    pub fn check(&self, now: Instant) -> Option<Overload> {
        let queued = self.queued_now();
        if queued >= self.max_queued {
            return Some(Overload::QueuedWork {
                queued,
                threshold: self.max_queued,
            });
        }
        if !self.latency.p99_above_watch(now) {
            return None;
        }
        Some(Overload::CommitLatency {
            p99: self.latency.p99(now).unwrap_or(self.commit_p99),
            threshold: self.commit_p99,
        })
    }

    /// How long to tell a client refused for `overload` to wait, between 1 ms and the window:
    /// - `CommitLatency`: until every commit slower than the threshold has left the window (if
    ///   no new one arrives, the p99 is back under the threshold by then);
    /// - `QueuedWork`: [`progress_hint`](Self::progress_hint) × ⌈queued / threshold⌉ — the
    ///   writers' commit time per threshold's worth of queued appends.
    pub fn retry_after(&self, overload: &Overload, now: Instant) -> Duration {
        let window = self.latency.window();
        let wait = match overload {
            Overload::CommitLatency { threshold, .. } => self
                .latency
                .quiet_at(*threshold, now)
                .map_or(MIN_RETRY, |at| at.saturating_duration_since(now)),
            Overload::QueuedWork { queued, threshold } => {
                let laps = queued.div_ceil((*threshold).max(1)).max(1);
                self.progress_hint(now)
                    .saturating_mul(u32::try_from(laps).unwrap_or(u32::MAX))
            }
        };
        wait.clamp(MIN_RETRY, window.max(MIN_RETRY))
    }

    /// How soon the writers are likely to have made progress (freeing memory, draining the
    /// queue): the window's commit p99, or one slot of the window when nothing was committed
    /// lately; between 1 ms and the window.
    pub fn progress_hint(&self, now: Instant) -> Duration {
        let window = self.latency.window();
        self.latency
            .p99(now)
            .unwrap_or(self.latency.slot())
            .clamp(MIN_RETRY, window.max(MIN_RETRY))
    }

    /// The commit latency window.
    pub fn latency(&self) -> &LatencyWindow {
        &self.latency
    }

    /// The commit p99 threshold.
    pub fn commit_p99(&self) -> Duration {
        self.commit_p99
    }

    /// The queued-appends threshold.
    pub fn max_queued(&self) -> u64 {
        self.max_queued
    }
}

#[cfg(all(test, not(weir_loom)))]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn detector(t0: Instant) -> OverloadDetector {
        OverloadDetector::new(Duration::from_secs(1), 100 * MS, 1_000, t0)
    }

    #[test]
    fn overloaded_while_the_window_s_p99_is_slow_and_recovers_as_it_ages_out() {
        let t0 = Instant::now();
        let d = detector(t0);
        assert_eq!(d.check(t0), None);
        for i in 0..100 {
            d.record_commit(5 * MS, t0 + i * MS);
        }
        assert_eq!(d.check(t0 + 100 * MS), None);
        for i in 0..5 {
            d.record_commit(400 * MS, t0 + (200 + i) * MS);
        }
        let slow = d.check(t0 + 300 * MS).expect("overloaded");
        assert_eq!(
            slow,
            Overload::CommitLatency {
                p99: 400 * MS,
                threshold: 100 * MS
            }
        );
        // The slow commits sit in the slot [200, 300) ms: it leaves the window at 1.2 s.
        assert_eq!(d.retry_after(&slow, t0 + 300 * MS), 900 * MS);
        assert!(d.check(t0 + 1_199 * MS).is_some());
        assert_eq!(d.check(t0 + 1_200 * MS), None);
    }

    #[test]
    fn one_slow_commit_among_few_is_an_overload() {
        let t0 = Instant::now();
        let d = detector(t0);
        d.record_commit(5 * MS, t0);
        d.record_commit(150 * MS, t0);
        assert!(matches!(
            d.check(t0),
            Some(Overload::CommitLatency { p99, .. }) if p99 == 150 * MS
        ));
    }

    #[test]
    fn a_p99_at_the_threshold_is_not_an_overload() {
        let t0 = Instant::now();
        let d = detector(t0);
        for _ in 0..1_000 {
            d.record_commit(100 * MS, t0);
        }
        assert_eq!(d.check(t0), None);
        d.record_commit(100 * MS + Duration::from_nanos(1), t0);
        assert_eq!(d.check(t0), None, "1 slow in 1 001 is under 1%");
    }

    #[test]
    fn queued_work_over_its_threshold_is_an_overload_with_a_paced_hint() {
        let t0 = Instant::now();
        let d = detector(t0);
        d.queued(999);
        assert_eq!(d.check(t0), None);
        d.queued(1_501);
        let over = d.check(t0).expect("overloaded");
        assert_eq!(
            over,
            Overload::QueuedWork {
                queued: 2_500,
                threshold: 1_000
            }
        );
        // No commit seen yet: one slot (100 ms) per threshold's worth, 3 of them.
        assert_eq!(d.retry_after(&over, t0), 300 * MS);
        for _ in 0..10 {
            d.record_commit(20 * MS, t0);
        }
        assert_eq!(d.retry_after(&over, t0), 60 * MS);
        d.dequeued(1_501);
        assert_eq!(d.check(t0), None);
    }

    #[test]
    fn the_queue_gauge_never_goes_below_zero() {
        let t0 = Instant::now();
        let d = detector(t0);
        d.queued(2);
        d.dequeued(5);
        assert_eq!(d.queued_now(), 0);
        d.queued(1);
        assert_eq!(d.queued_now(), 1);
    }

    #[test]
    fn hints_stay_between_a_millisecond_and_the_window() {
        let t0 = Instant::now();
        let d = detector(t0);
        d.record_commit(Duration::from_micros(10), t0);
        assert_eq!(d.progress_hint(t0), MS);
        let huge = Overload::QueuedWork {
            queued: u64::MAX,
            threshold: 1,
        };
        assert_eq!(d.retry_after(&huge, t0), Duration::from_secs(1));
        let gone = Overload::CommitLatency {
            p99: 400 * MS,
            threshold: 100 * MS,
        };
        assert_eq!(
            d.retry_after(&gone, t0),
            MS,
            "no slow commit left in the window"
        );
    }
}
