//! Token buckets: [`TokenBucket`] (`rate` units per second sustained, `burst` at once) and
//! [`RateLimit`], the messages/s + bytes/s pair a publish must pass. Time is passed in, so
//! callers (and tests) decide what "now" is.
//!
//! The level is kept in exact integer nano-tokens (tokens × 10⁹): `Δt` nanoseconds refill
//! `Δt × rate` nano-tokens, so there is no rounding drift at any rate, and the refill time told
//! to a refused caller is exact to the nanosecond (rounded up).

use std::time::{Duration, Instant};

use crate::loom::sync::Mutex;

/// Nano-tokens per token.
const NANO: u128 = 1_000_000_000;

/// What a bucket says to a request it cannot serve now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Refill {
    /// Enough tokens will have accumulated after this long (if nobody else takes them first).
    After(Duration),
    /// The request is larger than the whole burst: it can never be served, so retrying is
    /// pointless. Orders after every `After`.
    Never,
}

/// A token bucket holding at most `burst` tokens and refilling `rate` per second.
///
/// At its bound (not enough tokens) a request is refused with [`Refill::After`] — the time until
/// enough tokens will have refilled, the `retry_after` the broker sends — and takes nothing. A
/// request for more than `burst` tokens is refused with [`Refill::Never`]. Over any interval of
/// length `t` it serves at most `burst + rate × t` tokens, however many threads take at once.
///
/// A tiny mutex guards the level (a few integer operations inside); times passed out of order
/// by racing threads never refill twice: a `now` earlier than the last one seen refills nothing.
#[derive(Debug)]
pub struct TokenBucket {
    rate: u64,
    burst: u64,
    level: Mutex<Level>,
}

#[derive(Debug, Clone, Copy)]
struct Level {
    /// Tokens × 10⁹, at most `burst × 10⁹`.
    nano: u128,
    /// The latest time the level was brought up to.
    at: Instant,
}

impl TokenBucket {
    /// A full bucket refilling `rate` tokens per second up to `burst`. Both are raised to at
    /// least 1 (a zero rate or burst would refuse forever; configuration rejects them).
    pub fn new(rate: u64, burst: u64, now: Instant) -> TokenBucket {
        let burst = burst.max(1);
        TokenBucket {
            rate: rate.max(1),
            burst,
            level: Mutex::new(Level {
                nano: u128::from(burst) * NANO,
                at: now,
            }),
        }
    }

    /// Takes `n` tokens, or says when they will be there (taking nothing). `n == 0` always
    /// succeeds; `n > burst` is [`Refill::Never`].
    pub fn try_take(&self, n: u64, now: Instant) -> Result<(), Refill> {
        if n > self.burst {
            return Err(Refill::Never);
        }
        let need = u128::from(n) * NANO;
        let mut level = self.lock();
        self.refill(&mut level, now);
        if level.nano >= need {
            level.nano -= need;
            return Ok(());
        }
        Err(Refill::After(self.time_for(need - level.nano)))
    }

    /// Whether `n` tokens could be taken at `now`, and if not when — takes nothing.
    pub fn check(&self, n: u64, now: Instant) -> Result<(), Refill> {
        if n > self.burst {
            return Err(Refill::Never);
        }
        let need = u128::from(n) * NANO;
        let mut level = self.lock();
        self.refill(&mut level, now);
        match need.checked_sub(level.nano) {
            None | Some(0) => Ok(()),
            Some(missing) => Err(Refill::After(self.time_for(missing))),
        }
    }

    /// Returns `n` tokens taken by a request that was refused later on (for example by a second
    /// bucket). The level never goes past the burst: tokens returned to a full bucket are lost.
    pub fn give_back(&self, n: u64) {
        let mut level = self.lock();
        level.nano = (level.nano + u128::from(n) * NANO).min(self.cap());
    }

    /// Whole tokens available at `now` (for metrics and tests).
    pub fn available(&self, now: Instant) -> u64 {
        let mut level = self.lock();
        self.refill(&mut level, now);
        (level.nano / NANO) as u64
    }

    /// The sustained rate, tokens per second.
    pub fn rate(&self) -> u64 {
        self.rate
    }

    /// The burst: the most tokens held, and the largest request that can ever be served.
    pub fn burst(&self) -> u64 {
        self.burst
    }

    fn cap(&self) -> u128 {
        u128::from(self.burst) * NANO
    }

    fn refill(&self, level: &mut Level, now: Instant) {
        if now <= level.at {
            return;
        }
        let elapsed = now.duration_since(level.at).as_nanos();
        let added = elapsed.saturating_mul(u128::from(self.rate));
        level.nano = level.nano.saturating_add(added).min(self.cap());
        level.at = now;
    }

    /// How long `missing` nano-tokens take to refill, rounded up to the nanosecond.
    fn time_for(&self, missing: u128) -> Duration {
        let nanos = missing.div_ceil(u128::from(self.rate));
        let secs = u64::try_from(nanos / NANO).unwrap_or(u64::MAX);
        Duration::new(secs, (nanos % NANO) as u32)
    }

    fn lock(&self) -> crate::loom::sync::MutexGuard<'_, Level> {
        self.level.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Which bucket of a [`RateLimit`] refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateKind {
    /// The messages/s bucket.
    Messages,
    /// The bytes/s bucket.
    Bytes,
}

/// A publish refused by a [`RateLimit`]: the bucket with the longer wait, and that wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimited {
    /// The bucket that fired (the one with the longer refill when both did).
    pub kind: RateKind,
    /// When to come back.
    pub refill: Refill,
}

/// The publish rate of one API key: a messages/s bucket and a bytes/s bucket.
///
/// A publish takes 1 message token and `len` byte tokens, or neither: if the bytes bucket
/// refuses after the messages bucket took its token, the token is given back. (Between the
/// take and the give-back another publish may see one token fewer — a brief under-serve,
/// never an over-serve.)
#[derive(Debug)]
pub struct RateLimit {
    messages: TokenBucket,
    bytes: TokenBucket,
}

impl RateLimit {
    /// Full buckets: `messages_per_s` sustained with `messages_burst` at once, and likewise for
    /// payload bytes.
    pub fn new(
        messages_per_s: u64,
        messages_burst: u64,
        bytes_per_s: u64,
        bytes_burst: u64,
        now: Instant,
    ) -> RateLimit {
        RateLimit {
            messages: TokenBucket::new(messages_per_s, messages_burst, now),
            bytes: TokenBucket::new(bytes_per_s, bytes_burst, now),
        }
    }

    /// Takes one message and `len` bytes, or nothing. A refusal names the bucket whose refill
    /// takes longer ([`Refill::Never`] when `len` exceeds the bytes burst).
    pub fn try_take(&self, len: u64, now: Instant) -> Result<(), RateLimited> {
        if let Err(refill) = self.messages.try_take(1, now) {
            let limited = RateLimited {
                kind: RateKind::Messages,
                refill,
            };
            return Err(match self.bytes.check(len, now) {
                Err(bytes) if bytes > refill => RateLimited {
                    kind: RateKind::Bytes,
                    refill: bytes,
                },
                _ => limited,
            });
        }
        if let Err(refill) = self.bytes.try_take(len, now) {
            self.messages.give_back(1);
            return Err(RateLimited {
                kind: RateKind::Bytes,
                refill,
            });
        }
        Ok(())
    }

    /// The messages/s bucket.
    pub fn messages(&self) -> &TokenBucket {
        &self.messages
    }

    /// The bytes/s bucket.
    pub fn bytes(&self) -> &TokenBucket {
        &self.bytes
    }
}

#[cfg(all(test, not(weir_loom)))]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn serves_the_burst_then_the_rate_and_says_when() {
        let t0 = Instant::now();
        let bucket = TokenBucket::new(10, 5, t0);
        for _ in 0..5 {
            bucket.try_take(1, t0).unwrap();
        }
        assert_eq!(bucket.try_take(1, t0), Err(Refill::After(100 * MS)));
        assert_eq!(bucket.try_take(3, t0), Err(Refill::After(300 * MS)));
        bucket.try_take(1, t0 + 100 * MS).unwrap();
        assert_eq!(
            bucket.try_take(1, t0 + 100 * MS),
            Err(Refill::After(100 * MS))
        );
        assert_eq!(
            bucket.try_take(1, t0 + 150 * MS),
            Err(Refill::After(50 * MS))
        );
    }

    #[test]
    fn refill_is_capped_at_the_burst() {
        let t0 = Instant::now();
        let bucket = TokenBucket::new(10, 5, t0);
        let later = t0 + Duration::from_secs(3600);
        assert_eq!(bucket.available(later), 5);
        bucket.try_take(5, later).unwrap();
        assert!(bucket.try_take(1, later).is_err());
    }

    #[test]
    fn a_request_larger_than_the_burst_is_never_served() {
        let t0 = Instant::now();
        let bucket = TokenBucket::new(1_000, 5, t0);
        assert_eq!(bucket.try_take(6, t0), Err(Refill::Never));
        assert_eq!(bucket.check(6, t0), Err(Refill::Never));
        assert_eq!(bucket.available(t0), 5, "a refusal takes nothing");
        assert!(Refill::Never > Refill::After(Duration::MAX));
    }

    #[test]
    fn zero_tokens_always_pass_and_zero_settings_are_raised_to_one() {
        let t0 = Instant::now();
        let bucket = TokenBucket::new(0, 0, t0);
        assert_eq!((bucket.rate(), bucket.burst()), (1, 1));
        bucket.try_take(1, t0).unwrap();
        bucket.try_take(0, t0).unwrap();
        assert_eq!(
            bucket.try_take(1, t0),
            Err(Refill::After(Duration::from_secs(1)))
        );
    }

    #[test]
    fn rates_that_do_not_divide_a_second_do_not_drift() {
        let t0 = Instant::now();
        // 3/s: a token every 333 333 333⅓ ns. After exactly 1 s, exactly 3 tokens.
        let bucket = TokenBucket::new(3, 3, t0);
        bucket.try_take(3, t0).unwrap();
        assert_eq!(
            bucket.try_take(1, t0),
            Err(Refill::After(Duration::from_nanos(333_333_334)))
        );
        let t1 = t0 + Duration::from_secs(1);
        bucket.try_take(3, t1).unwrap();
        assert!(bucket.try_take(1, t1).is_err());
        // High rates: 1 GB/s refills a byte per nanosecond.
        let bytes = TokenBucket::new(1 << 30, 1 << 20, t0);
        bytes.try_take(1 << 20, t0).unwrap();
        assert!(bytes
            .try_take(1024, t0 + Duration::from_nanos(900))
            .is_err());
        bytes
            .try_take(1024, t0 + Duration::from_nanos(954))
            .unwrap();
    }

    #[test]
    fn an_earlier_now_from_a_racing_thread_refills_nothing() {
        let t0 = Instant::now();
        let bucket = TokenBucket::new(10, 1, t0);
        bucket.try_take(1, t0 + 100 * MS).unwrap();
        // A caller that read the clock earlier arrives late: no refill, no time travel.
        assert_eq!(
            bucket.try_take(1, t0 + 50 * MS),
            Err(Refill::After(100 * MS))
        );
        bucket.try_take(1, t0 + 200 * MS).unwrap();
    }

    #[test]
    fn given_back_tokens_are_usable_but_never_past_the_burst() {
        let t0 = Instant::now();
        let bucket = TokenBucket::new(1, 2, t0);
        bucket.try_take(2, t0).unwrap();
        bucket.give_back(5);
        assert_eq!(bucket.available(t0), 2);
        bucket.try_take(2, t0).unwrap();
        assert!(bucket.try_take(1, t0).is_err());
    }

    #[test]
    fn huge_settings_saturate_instead_of_overflowing() {
        let t0 = Instant::now();
        let bucket = TokenBucket::new(u64::MAX, u64::MAX, t0);
        bucket.try_take(u64::MAX, t0).unwrap();
        bucket
            .try_take(u64::MAX, t0 + Duration::from_secs(1))
            .unwrap();
        let slow = TokenBucket::new(1, u64::MAX, t0);
        slow.try_take(u64::MAX, t0).unwrap();
        assert_eq!(
            slow.try_take(u64::MAX, t0),
            Err(Refill::After(Duration::from_secs(u64::MAX)))
        );
    }

    #[test]
    fn a_publish_takes_a_message_and_its_bytes_or_neither() {
        let t0 = Instant::now();
        let limit = RateLimit::new(10, 2, 100, 100, t0);
        limit.try_take(60, t0).unwrap();
        // The bytes bucket refuses: the message token goes back.
        assert_eq!(
            limit.try_take(60, t0),
            Err(RateLimited {
                kind: RateKind::Bytes,
                refill: Refill::After(200 * MS)
            })
        );
        assert_eq!(limit.messages().available(t0), 1);
        limit.try_take(40, t0).unwrap();
        assert_eq!(limit.bytes().available(t0), 0);
        // Both refuse: the longer wait names its bucket (messages 100 ms, bytes 10 ms).
        assert_eq!(
            limit.try_take(1, t0),
            Err(RateLimited {
                kind: RateKind::Messages,
                refill: Refill::After(100 * MS)
            })
        );
        assert_eq!(
            limit.try_take(50, t0),
            Err(RateLimited {
                kind: RateKind::Bytes,
                refill: Refill::After(500 * MS)
            })
        );
        // Larger than the bytes burst: never, whatever the messages bucket says.
        assert_eq!(
            limit.try_take(101, t0),
            Err(RateLimited {
                kind: RateKind::Bytes,
                refill: Refill::Never
            })
        );
        assert_eq!(limit.messages().available(t0), 0);
    }
}
