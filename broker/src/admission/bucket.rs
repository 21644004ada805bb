//! A token bucket: `rate` units per second sustained, `burst` at once. Time is passed in, so
//! callers (and tests) decide what "now" is.

use std::time::{Duration, Instant};

use crate::loom::sync::Mutex;

/// What a bucket says to a request it cannot serve now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refill {
    /// Enough tokens will have accumulated after this long.
    After(Duration),
    /// The request is larger than the whole burst: it can never be served.
    Never,
}

/// A token bucket. At its bound (empty) a request is refused with the time until enough tokens
/// have refilled — the `retry_after` the broker sends.
#[derive(Debug)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    state: Mutex<Level>,
}

#[derive(Debug, Clone, Copy)]
struct Level {
    tokens: f64,
    at: Instant,
}

impl TokenBucket {
    /// A full bucket refilling `rate` tokens per second up to `burst` (both at least 1).
    pub fn new(rate: u64, burst: u64, now: Instant) -> TokenBucket {
        let burst = burst.max(1) as f64;
        TokenBucket {
            rate: rate.max(1) as f64,
            burst,
            state: Mutex::new(Level {
                tokens: burst,
                at: now,
            }),
        }
    }

    /// Takes `n` tokens, or says when they will be there.
    pub fn try_take(&self, n: u64, now: Instant) -> Result<(), Refill> {
        let n = n as f64;
        if n > self.burst {
            return Err(Refill::Never);
        }
        let mut level = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let elapsed = now.saturating_duration_since(level.at).as_secs_f64();
        level.tokens = (level.tokens + elapsed * self.rate).min(self.burst);
        level.at = level.at.max(now);
        if level.tokens >= n {
            level.tokens -= n;
            return Ok(());
        }
        let wait = (n - level.tokens) / self.rate;
        Err(Refill::After(Duration::from_secs_f64(wait)))
    }

    /// Returns `n` tokens taken by a request that was refused later on (never above burst).
    pub fn give_back(&self, n: u64) {
        let mut level = self.state.lock().unwrap_or_else(|p| p.into_inner());
        level.tokens = (level.tokens + n as f64).min(self.burst);
    }
}

#[cfg(all(test, not(weir_loom)))]
mod tests {
    use super::*;

    #[test]
    fn serves_the_burst_then_the_rate_and_says_when() {
        let t0 = Instant::now();
        let bucket = TokenBucket::new(10, 5, t0);
        for _ in 0..5 {
            bucket.try_take(1, t0).unwrap();
        }
        assert_eq!(
            bucket.try_take(1, t0),
            Err(Refill::After(Duration::from_millis(100)))
        );
        assert_eq!(
            bucket.try_take(3, t0),
            Err(Refill::After(Duration::from_millis(300)))
        );
        bucket.try_take(1, t0 + Duration::from_millis(100)).unwrap();
        assert!(bucket.try_take(1, t0 + Duration::from_millis(100)).is_err());
        // Refill is capped at the burst.
        let later = t0 + Duration::from_secs(60);
        for _ in 0..5 {
            bucket.try_take(1, later).unwrap();
        }
        assert!(bucket.try_take(1, later).is_err());
        assert_eq!(bucket.try_take(6, later), Err(Refill::Never));
    }

    #[test]
    fn given_back_tokens_are_usable_but_never_past_the_burst() {
        let t0 = Instant::now();
        let bucket = TokenBucket::new(1, 2, t0);
        bucket.try_take(2, t0).unwrap();
        bucket.give_back(5);
        bucket.try_take(2, t0).unwrap();
        assert!(bucket.try_take(1, t0).is_err());
    }
}
