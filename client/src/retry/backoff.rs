//! [`Backoff`]: exponential backoff with full jitter, on top of the broker's retry-after hint.

use std::time::Duration;

use rand::Rng;

/// Exponential backoff with full jitter: before retry number `attempt` (0 for the first), wait
/// the broker's `retry_after` plus a uniformly random time in `[0, min(cap, base · 2^attempt)]`.
///
/// The hint is a floor, never shortened. The jitter is added to it rather than compared with it
/// (`max(hint, jitter)`), because every publisher refused by the same full topic at the same
/// moment gets about the same hint: with `max`, all of them whose jitter ceiling is below the
/// hint would come back at the same instant and be refused together again. Added on top, the
/// retries stay spread over the whole ceiling. Without a hint the delay is plain full jitter in
/// `[0, min(cap, base · 2^attempt)]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// The jitter ceiling of the first retry, doubled per attempt.
    pub base: Duration,
    /// The largest jitter ceiling. A broker hint longer than this is still honoured.
    pub cap: Duration,
}

impl Backoff {
    /// The jitter ceiling before retry number `attempt`: `min(cap, base · 2^attempt)`, without
    /// overflowing for any `attempt`.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let factor = 1u32.checked_shl(attempt).unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.cap)
    }

    /// The delay before retry number `attempt`: `retry_after + uniform[0, ceiling(attempt)]`
    /// (nanosecond resolution; saturating at [`Duration::MAX`]).
    pub fn delay(&self, attempt: u32, retry_after: Duration, rng: &mut impl Rng) -> Duration {
        let ceiling = u64::try_from(self.ceiling(attempt).as_nanos()).unwrap_or(u64::MAX);
        let jitter = Duration::from_nanos(rng.random_range(0..=ceiling));
        retry_after.saturating_add(jitter)
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;

    use super::*;

    const BACKOFF: Backoff = Backoff {
        base: Duration::from_millis(50),
        cap: Duration::from_secs(2),
    };

    #[test]
    fn the_ceiling_doubles_up_to_the_cap_without_overflow() {
        assert_eq!(BACKOFF.ceiling(0), Duration::from_millis(50));
        assert_eq!(BACKOFF.ceiling(1), Duration::from_millis(100));
        assert_eq!(BACKOFF.ceiling(5), Duration::from_millis(1600));
        assert_eq!(BACKOFF.ceiling(6), Duration::from_secs(2));
        assert_eq!(BACKOFF.ceiling(u32::MAX), Duration::from_secs(2));
        let huge = Backoff {
            base: Duration::MAX,
            cap: Duration::MAX,
        };
        assert_eq!(huge.ceiling(40), Duration::MAX);
        let _ = huge.delay(40, Duration::MAX, &mut rand::rngs::StdRng::seed_from_u64(1));
    }

    /// Full jitter: 10 000 draws per attempt stay in `[0, ceiling]`, are spread over it (mean
    /// near the middle, draws in both the lowest and the highest tenth), and are not all equal.
    #[test]
    fn full_jitter_stays_within_the_ceiling_and_is_spread() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for attempt in 0..10 {
            let ceiling = BACKOFF.ceiling(attempt);
            let draws: Vec<Duration> = (0..10_000)
                .map(|_| BACKOFF.delay(attempt, Duration::ZERO, &mut rng))
                .collect();
            assert!(
                draws.iter().all(|d| *d <= ceiling),
                "attempt {attempt} went past {ceiling:?}"
            );
            let mean = draws.iter().sum::<Duration>() / draws.len() as u32;
            assert!(
                mean > ceiling * 2 / 5 && mean < ceiling * 3 / 5,
                "attempt {attempt}: mean {mean:?} of a uniform on [0, {ceiling:?}]"
            );
            assert!(draws.iter().any(|d| *d < ceiling / 10));
            assert!(draws.iter().any(|d| *d > ceiling * 9 / 10));
            let mut distinct = draws.clone();
            distinct.sort_unstable();
            distinct.dedup();
            assert!(distinct.len() > 9_000, "attempt {attempt}: draws repeat");
        }
    }

    /// With a hint, no draw comes sooner than it, and the draws are still spread over
    /// `[hint, hint + ceiling]` — also when the hint is longer than the ceiling.
    #[test]
    fn never_sooner_than_the_broker_hint_and_still_spread() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        for hint in [Duration::from_millis(20), Duration::from_millis(700)] {
            for attempt in [0, 3, 8] {
                let ceiling = BACKOFF.ceiling(attempt);
                let draws: Vec<Duration> = (0..10_000)
                    .map(|_| BACKOFF.delay(attempt, hint, &mut rng))
                    .collect();
                assert!(draws.iter().all(|d| *d >= hint && *d <= hint + ceiling));
                assert!(draws.iter().any(|d| *d < hint + ceiling / 10));
                assert!(draws.iter().any(|d| *d > hint + ceiling * 9 / 10));
            }
        }
        // A hint beyond the cap is honoured in full.
        let long = Duration::from_secs(30);
        assert!((0..100).all(|_| BACKOFF.delay(0, long, &mut rng) >= long));
    }
}
