//! Reconnecting after a lost connection: the [`ReconnectPolicy`] (full-jitter backoff, bounded
//! in time and attempts), the [`ConnectionState`] a client reports while it reconnects, and
//! `Schedule` (crate-private), the pure arithmetic of when to try again and when to give up.

use std::time::{Duration, Instant};

use rand::Rng;

use crate::retry::Backoff;

/// How the client reconnects after the broker closes its connection (`GoingAway`: shutting
/// down, slow consumer) or the connection is lost (reset, end of stream, i/o error).
///
/// Attempt 1 goes at once; before attempt `n + 1` the client waits a full-jitter backoff, a
/// uniformly random time in `[0, min(max_backoff, initial_backoff · 2^(n-1))]`, plus the
/// broker's `retry_after` when it refused the connection at its `max_connections`. It gives up
/// when `max_elapsed` has passed since the connection was lost, or after `max_attempts`
/// attempts: the client is then closed with [`crate::ClientError::ReconnectFailed`], naming the
/// address, how long it tried and the last attempt's error. An attempt in progress at
/// `max_elapsed` is finished first, so giving up takes at most `max_elapsed` plus one
/// attempt ([`crate::ClientOptions::connect_timeout`] +
/// [`crate::ClientOptions::handshake_timeout`]). An attempt refused for a reason waiting cannot
/// fix (a bad token, another protocol version, an HTTP peer) gives up at once.
///
/// See [`crate::Client`] for what is resent and resubscribed on the new connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReconnectPolicy {
    /// The jitter ceiling before the second attempt, doubled per attempt. Default 100 ms.
    pub initial_backoff: Duration,
    /// The largest jitter ceiling. Default 5 s.
    pub max_backoff: Duration,
    /// How long after the loss the client may keep trying. Default 60 s; [`Duration::ZERO`]
    /// turns reconnecting off.
    pub max_elapsed: Duration,
    /// Most attempts per loss, `None` for no bound but `max_elapsed`. Default `None`;
    /// `Some(0)` turns reconnecting off.
    pub max_attempts: Option<u32>,
}

impl Default for ReconnectPolicy {
    fn default() -> Self {
        ReconnectPolicy {
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
            max_elapsed: Duration::from_secs(60),
            max_attempts: None,
        }
    }
}

impl ReconnectPolicy {
    /// No reconnecting: a lost connection ends the client at once with the error that ended
    /// it (what every client did before reconnecting existed). An idle close is still healed,
    /// with a single attempt when the next operation needs the broker (see [`crate::Client`]).
    pub fn disabled() -> ReconnectPolicy {
        ReconnectPolicy {
            max_elapsed: Duration::ZERO,
            max_attempts: Some(0),
            ..ReconnectPolicy::default()
        }
    }

    /// Whether the client reconnects after a lost connection.
    pub fn is_enabled(&self) -> bool {
        !self.max_elapsed.is_zero() && self.max_attempts != Some(0)
    }

    fn backoff(&self) -> Backoff {
        Backoff {
            base: self.initial_backoff,
            cap: self.max_backoff,
        }
    }
}

/// The state of a client's connection, as [`crate::Client::state`] and
/// [`crate::Client::watch_state`] report it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectionState {
    /// A socket is open, past its handshake.
    Connected,
    /// The connection was lost and the client is reconnecting: `attempt` (from 1) is the
    /// attempt under way or the next one, `since` when the connection was lost.
    Reconnecting {
        /// The attempt under way, or the next one during a backoff.
        attempt: u32,
        /// When the connection was lost.
        since: Instant,
    },
    /// No socket, and nothing needs one: after an idle close (or a loss with nothing pending
    /// and no subscription), the next operation that needs the broker reconnects.
    Disconnected,
    /// Ended for good ([`crate::Client::closed_reason`] says why).
    Closed,
}

/// When to attempt the next reconnect, for one loss of the connection. Pure: the caller gives
/// the time and the randomness.
#[derive(Debug)]
pub(crate) struct Schedule {
    policy: ReconnectPolicy,
    since: Instant,
    attempts: u32,
}

impl Schedule {
    /// The schedule of a loss at `since`.
    pub fn new(policy: ReconnectPolicy, since: Instant) -> Schedule {
        Schedule {
            policy,
            since,
            attempts: 0,
        }
    }

    /// When the connection was lost.
    pub fn since(&self) -> Instant {
        self.since
    }

    /// Counts an attempt about to start; returns its number (from 1).
    pub fn begin_attempt(&mut self) -> u32 {
        self.attempts += 1;
        self.attempts
    }

    /// After a failed attempt at `now`: how long to wait before the next one (`hint`, the
    /// broker's retry-after, plus full jitter, cut so the next attempt starts no later than
    /// `max_elapsed` after the loss), or `None` to give up (`max_elapsed` passed, or
    /// `max_attempts` made).
    pub fn next_delay(&self, now: Instant, hint: Duration, rng: &mut impl Rng) -> Option<Duration> {
        if !self.policy.is_enabled() {
            return None;
        }
        if self
            .policy
            .max_attempts
            .is_some_and(|max| self.attempts >= max)
        {
            return None;
        }
        let elapsed = now.saturating_duration_since(self.since);
        let left = self.policy.max_elapsed.checked_sub(elapsed)?;
        if left.is_zero() {
            return None;
        }
        let delay = self
            .policy
            .backoff()
            .delay(self.attempts.saturating_sub(1), hint, rng);
        Some(delay.min(left))
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;

    use super::*;

    fn policy() -> ReconnectPolicy {
        ReconnectPolicy {
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(1),
            max_elapsed: Duration::from_secs(10),
            max_attempts: None,
        }
    }

    /// The delay after attempt `n` is full jitter in `[0, min(cap, base · 2^(n-1))]`: within
    /// the ceiling, spread over it, the ceiling doubling up to the cap.
    #[test]
    fn delays_are_full_jitter_within_a_doubling_capped_ceiling() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let t0 = Instant::now();
        let mut s = Schedule::new(policy(), t0);
        let mut made = 0;
        for (attempt, ceiling_ms) in [(1, 100), (2, 200), (3, 400), (4, 800), (5, 1000), (9, 1000)]
        {
            while made < attempt {
                made = s.begin_attempt();
            }
            let ceiling = Duration::from_millis(ceiling_ms);
            let draws: Vec<Duration> = (0..2000)
                .map(|_| s.next_delay(t0, Duration::ZERO, &mut rng).unwrap())
                .collect();
            assert!(draws.iter().all(|d| *d <= ceiling), "attempt {attempt}");
            assert!(draws.iter().any(|d| *d < ceiling / 10), "attempt {attempt}");
            assert!(
                draws.iter().any(|d| *d > ceiling * 9 / 10),
                "attempt {attempt}"
            );
        }
    }

    #[test]
    fn a_retry_after_hint_is_a_floor() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        let t0 = Instant::now();
        let mut s = Schedule::new(policy(), t0);
        s.begin_attempt();
        let hint = Duration::from_millis(300);
        for _ in 0..500 {
            let d = s.next_delay(t0, hint, &mut rng).unwrap();
            assert!(d >= hint && d <= hint + Duration::from_millis(100), "{d:?}");
        }
    }

    /// No delay reaches past `max_elapsed`, and once it has passed the schedule gives up.
    #[test]
    fn it_gives_up_at_max_elapsed_and_never_waits_past_it() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(9);
        let t0 = Instant::now();
        let mut s = Schedule::new(policy(), t0);
        s.begin_attempt();
        let near_end = t0 + Duration::from_millis(9_950);
        for _ in 0..500 {
            let d = s
                .next_delay(near_end, Duration::from_secs(3), &mut rng)
                .unwrap();
            assert!(d <= Duration::from_millis(50), "{d:?}");
        }
        assert_eq!(
            s.next_delay(t0 + Duration::from_secs(10), Duration::ZERO, &mut rng),
            None
        );
        assert_eq!(
            s.next_delay(t0 + Duration::from_secs(60), Duration::ZERO, &mut rng),
            None
        );
    }

    #[test]
    fn it_gives_up_after_max_attempts() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let t0 = Instant::now();
        let mut s = Schedule::new(
            ReconnectPolicy {
                max_attempts: Some(2),
                ..policy()
            },
            t0,
        );
        assert_eq!(s.begin_attempt(), 1);
        assert!(s.next_delay(t0, Duration::ZERO, &mut rng).is_some());
        assert_eq!(s.begin_attempt(), 2);
        assert_eq!(s.next_delay(t0, Duration::ZERO, &mut rng), None);
    }

    #[test]
    fn disabled_never_retries_and_the_default_is_on() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        assert!(ReconnectPolicy::default().is_enabled());
        assert!(!ReconnectPolicy::disabled().is_enabled());
        let zero_time = ReconnectPolicy {
            max_elapsed: Duration::ZERO,
            ..ReconnectPolicy::default()
        };
        assert!(!zero_time.is_enabled());
        let t0 = Instant::now();
        let mut s = Schedule::new(ReconnectPolicy::disabled(), t0);
        s.begin_attempt();
        assert_eq!(s.next_delay(t0, Duration::ZERO, &mut rng), None);
    }
}
