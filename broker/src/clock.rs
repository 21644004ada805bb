//! [`Clock`]: the broker's one source of time for the deadlines it promises consumers and the
//! rates it promises keys — real time in the daemon, a paused clock that only moves when told
//! in tests, so a test of a 30 s ack deadline takes no 30 s and cannot flake on a loaded
//! machine.
//!
//! # What the clock governs
//!
//! Every time a consumer or a key can observe as a *rule* of the broker:
//! - group **ack deadlines** — set when a delivery is planned, restarted by `Progress`, expired
//!   by the topic's dispatcher, which sleeps on the clock until the next one is due
//!   (`topic/dispatch.rs`, `topic/groups.rs`, `group/`);
//! - **nack delays** — when a nacked message may be redelivered, and the rest of a delay kept
//!   across a restart (a group's stored record holds it as wall-clock milliseconds, converted
//!   against this clock both ways);
//! - the age of the oldest unacked delivery a group reports (`oldest_unacked_ms`), measured
//!   against its delivery times;
//! - the **commit time** stamped on every stored record (`timestamp_ms`, as
//!   [`Clock::unix_ms`]) and the topics' **`max_age`** measured against it (`topic/age.rs`);
//! - **rate windows**: the per-key token buckets (`messages_per_s`, `bytes_per_s`,
//!   `ops_per_s`) in `admission/`, and the per-address window of failed authentications
//!   (`max_auth_failures_per_s`, `auth_limit.rs`) with its retry hint.
//!
//! # What stays on real time, and why
//!
//! Everything that measures or protects the machine rather than states a rule to a client:
//! - socket timeouts (`idle_timeout`, `slow_consumer_timeout`, the admin port's header, body
//!   and idle timeouts, the graceful-stop grace) — they bound resources a peer holds, and tokio
//!   drives them;
//! - latency measurements (publish→confirm, publish→deliver, commit latency, worker busy/idle
//!   time) and what is derived from them: overload detection on the commit p99, its retry
//!   hints, the measured drain rate — a paused clock would measure nothing;
//! - `block`-policy parking deadlines (`max_block`): a parked publish holds memory and a
//!   producer, and the writer that expires them bounds that hold in real time;
//! - the group-commit delay, fsync intervals, high-water records and the state flush period
//!   (storage cadence);
//! - stall warnings, rate-limited log lines (other than the one failed authentications share
//!   with their window) and the dead-letter mover's retry pause (operator-facing).
//!
//! # Bounds
//!
//! A paused clock is one value in a `watch` channel: sleepers hold a receiver each while they
//! sleep and drop it when they wake; nothing else is kept, however often it is advanced.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::watch;

/// The broker's clock: real time ([`Clock::system`], the default), or a paused clock for tests
/// ([`Clock::paused`]) that stands still until [`Clock::advance`] moves it. Cheap to clone;
/// clones share one time.
#[derive(Debug, Clone, Default)]
pub struct Clock {
    paused: Option<Arc<watch::Sender<Instant>>>,
    /// A paused clock's start: its `Instant` and the wall-clock milliseconds it stands for.
    epoch: Option<(Instant, u64)>,
}

impl Clock {
    /// Real time: [`Clock::now`] is [`Instant::now`], [`Clock::sleep_until`] is a tokio timer.
    pub fn system() -> Clock {
        Clock {
            paused: None,
            epoch: None,
        }
    }

    /// A paused clock, starting at the real time of the call and moving only by
    /// [`Clock::advance`]. Sleepers wake only when an advance reaches their instant.
    pub fn paused() -> Clock {
        let start = Instant::now();
        let (now, _) = watch::channel(start);
        Clock {
            paused: Some(Arc::new(now)),
            epoch: Some((start, system_ms())),
        }
    }

    /// Whether this is a paused (test) clock.
    pub fn is_paused(&self) -> bool {
        self.paused.is_some()
    }

    /// The current time on this clock.
    pub fn now(&self) -> Instant {
        match &self.paused {
            None => Instant::now(),
            Some(now) => *now.borrow(),
        }
    }

    /// The current time on this clock as milliseconds since the Unix epoch: the wall clock on
    /// the system clock; on a paused clock, the wall-clock time it was made at plus every
    /// advance since (it stands still with the rest of it).
    pub fn unix_ms(&self) -> u64 {
        match self.epoch {
            None => system_ms(),
            Some((start, ms)) => ms + self.now().duration_since(start).as_millis() as u64,
        }
    }

    /// Moves a paused clock forward by `by`, waking every sleeper whose instant it reaches.
    ///
    /// # Panics
    /// On the system clock: real time cannot be advanced, and a test that tries has started
    /// its broker without a paused clock.
    pub fn advance(&self, by: Duration) {
        let now = self
            .paused
            .as_ref()
            .expect("Clock::advance on the system clock: start the broker with Clock::paused()");
        now.send_modify(|t| *t += by);
    }

    /// Resolves once [`Clock::now`] has reached `at` (at once if it already has). On a paused
    /// clock it waits for an [`Clock::advance`] that reaches `at`, never polling; if no advance
    /// ever does, it never resolves — as a real timer far in the future would not.
    pub fn sleep_until(&self, at: Instant) -> impl Future<Output = ()> + Send + 'static {
        let paused = self.paused.as_ref().map(|now| now.subscribe());
        async move {
            let Some(mut now) = paused else {
                return tokio::time::sleep_until(at.into()).await;
            };
            // The receiver was subscribed before this check, so an advance racing it is seen
            // here or wakes `changed` below: no advance is lost.
            while *now.borrow_and_update() < at {
                if now.changed().await.is_err() {
                    // Every handle to the clock is gone: time can never move again.
                    return std::future::pending().await;
                }
            }
        }
    }
}

/// The wall clock in milliseconds since the Unix epoch (0 before it).
fn system_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[tokio::test]
    async fn a_paused_sleep_wakes_when_an_advance_reaches_it_and_not_before() {
        let clock = Clock::paused();
        let t0 = clock.now();
        let mut sleep = Box::pin(clock.sleep_until(t0 + 100 * MS));
        // Real time passing moves nothing.
        let early = tokio::time::timeout(20 * MS, &mut sleep).await;
        assert!(early.is_err(), "woke with no advance");
        assert_eq!(clock.now(), t0, "a paused clock stands still");
        clock.advance(99 * MS);
        let early = tokio::time::timeout(20 * MS, &mut sleep).await;
        assert!(early.is_err(), "woke 1 ms before its instant");
        clock.advance(MS);
        tokio::time::timeout(Duration::from_secs(10), &mut sleep)
            .await
            .expect("an advance to its instant wakes it");
        assert_eq!(clock.now(), t0 + 100 * MS);
    }

    #[tokio::test]
    async fn clones_share_one_paused_time_and_past_instants_do_not_wait() {
        let clock = Clock::paused();
        let other = clock.clone();
        let t0 = clock.now();
        other.advance(Duration::from_secs(5));
        assert_eq!(clock.now(), t0 + Duration::from_secs(5));
        assert!(clock.is_paused());
        assert_eq!(
            clock.unix_ms(),
            other.unix_ms(),
            "clones share one wall time too"
        );
        tokio::time::timeout(Duration::from_secs(10), clock.sleep_until(t0))
            .await
            .expect("an instant already passed resolves at once");
        // A sleeper made before another handle advances is woken by it.
        let sleeper = tokio::spawn(clock.sleep_until(t0 + Duration::from_secs(6)));
        tokio::task::yield_now().await;
        other.advance(Duration::from_secs(1));
        tokio::time::timeout(Duration::from_secs(10), sleeper)
            .await
            .expect("woken by an advance on a clone")
            .expect("sleeper task");
    }

    #[tokio::test]
    async fn the_system_clock_moves_with_real_time_and_sleeps_on_it() {
        let clock = Clock::system();
        assert!(!clock.is_paused());
        let t0 = clock.now();
        clock.sleep_until(t0 + 5 * MS).await;
        assert!(clock.now() >= t0 + 5 * MS, "slept until its instant");
        assert!(Clock::default().now() >= t0, "the default is real time");
    }

    #[test]
    fn unix_ms_stands_still_on_a_paused_clock_and_moves_by_its_advances() {
        let clock = Clock::paused();
        let start = clock.unix_ms();
        std::thread::sleep(2 * MS);
        assert_eq!(clock.unix_ms(), start, "real time passing moves nothing");
        clock.advance(Duration::from_secs(600));
        assert_eq!(clock.unix_ms(), start + 600_000);
        let wall = Clock::system().unix_ms();
        assert!(wall >= start, "the system clock is wall time");
    }

    #[test]
    #[should_panic(expected = "system clock")]
    fn advancing_the_system_clock_is_a_test_bug() {
        Clock::system().advance(MS);
    }
}
