//! Admission control: what a publish (or an expensive operation) must pass before it touches a
//! topic, and the concurrency primitives behind it. Each check refuses fast, with a reason, the
//! limit that fired, and when to come back:
//!
//! 1. **Overload** — at least `overload_queued_appends` appends waiting for their commit across
//!    all topics (the writers are behind), or the commit latency p99 over the last
//!    `overload_window_ms` above `overload_commit_p99_ms`: `Rejected{Overloaded}` until it
//!    recovers.
//! 2. **Memory budget** — the payload must fit in `memory_budget_bytes`, shared by every
//!    payload the broker holds for clients (queued, parked, cached):
//!    `Rejected{Overloaded}` naming `memory_budget_bytes`.
//! 3. **Rate limits** — the client's API key has token buckets for messages/s and bytes/s (and
//!    for expensive operations): `Rejected{RateLimited}` with the bucket's refill time. Only
//!    that key's publishes are refused.
//!
//! Time: the key's buckets refill on the broker's [`Clock`] (tests pause and advance it);
//! overload and the memory budget's retry hint watch storage, so they take real time.
//!
//! # Layout
//! - [`bucket`] — [`TokenBucket`] and the messages + bytes pair [`RateLimit`].
//! - [`budget`] — [`MemoryBudget`] and its [`MemoryPermit`]s.
//! - [`share`] — [`ConnectionMemory`]: one connection's share of the budget.
//! - [`room`] — [`RoomSignal`]: wakes dispatchers waiting for outbound memory.
//! - [`latency`] — [`LatencyWindow`]: a sliding-window p99 in bounded memory.
//! - [`overload`] — [`OverloadDetector`]: commit p99 and queued work against thresholds.
//! - [`parking`] — [`ParkingLot`]: the bounded FIFO behind the `block` policy.
//!
//! The primitives take their sync types from `crate::loom`, so the loom model tests
//! (`loom_tests.rs`) check them under every interleaving:
//! `RUSTFLAGS="--cfg weir_loom" LOOM_MAX_PREEMPTIONS=2 cargo test -p weir-broker --lib --release admission::`

pub mod bucket;
pub mod budget;
pub mod latency;
pub mod overload;
pub mod parking;
pub mod room;
pub mod share;

#[cfg(all(test, weir_loom))]
mod loom_tests;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use weir_protocol::{Limit, RejectReason};

use crate::clock::Clock;
use crate::config::Config;
use crate::keys::{Identity, RateConfig};
use crate::refusal::Refusal;

pub use crate::refusal_log::RefusalLog;
pub use bucket::{RateKind, RateLimit, Refill, TokenBucket};
pub use budget::{MemoryBudget, MemoryFull, MemoryPermit};
pub use overload::{Overload, OverloadDetector};
pub use room::RoomSignal;
pub use share::ConnectionMemory;

pub use crate::work::Work;

/// How often one (topic, reason) may log a refusal line.
const LOG_PERIOD: Duration = Duration::from_secs(1);
/// Most (topic, reason) pairs the refusal log remembers.
const LOG_KEYS: usize = 4096;

/// The token buckets of one API key, shared by all its connections.
#[derive(Debug)]
pub struct KeyLimits {
    rate: RateConfig,
    publish: RateLimit,
    ops: TokenBucket,
}

impl KeyLimits {
    fn new(rate: RateConfig, now: Instant) -> KeyLimits {
        KeyLimits {
            rate,
            publish: RateLimit::new(
                rate.messages_per_s,
                rate.messages_burst,
                rate.bytes_per_s,
                rate.bytes_burst,
                now,
            ),
            ops: TokenBucket::new(rate.ops_per_s, rate.ops_burst, now),
        }
    }

    /// The key's publish buckets (messages/s and bytes/s).
    pub fn publish(&self) -> &RateLimit {
        &self.publish
    }

    /// The key's expensive-operation bucket.
    pub fn ops(&self) -> &TokenBucket {
        &self.ops
    }

    /// Gives back the tokens of a publish of `len` bytes that a later check refused, so a
    /// refused publish costs the key nothing.
    pub fn give_back(&self, len: u64) {
        self.publish.messages().give_back(1);
        self.publish.bytes().give_back(len);
    }

    /// Gives back the token of an operation that a later check refused (it did nothing).
    pub fn give_back_op(&self) {
        self.ops.give_back(1);
    }
}

/// The broker's admission control. One per broker.
#[derive(Debug)]
pub struct Admission {
    keys: HashMap<String, Arc<KeyLimits>>,
    budget: MemoryBudget,
    /// The half of `budget` for what clients send: read buffers, publishes until committed,
    /// caches.
    inbound: MemoryBudget,
    /// The half of `budget` for deliveries until they are written.
    outbound: MemoryBudget,
    /// Each connection's share of memory (`max_connection_memory_bytes`, at most a half).
    connection_share: u64,
    /// Signalled when connections' writers free outbound memory.
    delivery_room: RoomSignal,
    overload: OverloadDetector,
    log: RefusalLog<(String, RejectReason)>,
    /// The broker's clock: the keys' buckets refill on it.
    clock: Clock,
}

impl Admission {
    /// Admission for `config`: one set of buckets per configured key, plus `anonymous`, all
    /// refilling on `clock`.
    pub fn new(config: &Config, clock: Clock) -> Admission {
        let now = clock.now();
        let mut keys: HashMap<String, Arc<KeyLimits>> = config
            .keys
            .iter()
            .map(|k| {
                (
                    k.name.clone(),
                    Arc::new(KeyLimits::new(k.rate.unwrap_or(config.default_rate), now)),
                )
            })
            .collect();
        keys.insert(
            "anonymous".into(),
            Arc::new(KeyLimits::new(config.default_rate, now)),
        );
        let l = &config.limits;
        let budget = MemoryBudget::new(l.memory_budget_bytes);
        let half = budget.limit();
        let (inbound, outbound) = (
            budget.child(half, l.memory_budget_bytes / 2),
            budget.child(half, l.memory_budget_bytes / 2),
        );
        Admission {
            keys,
            connection_share: l.max_connection_memory_bytes.min(l.memory_budget_bytes / 2),
            budget,
            inbound,
            outbound,
            delivery_room: RoomSignal::default(),
            overload: OverloadDetector::new(
                Duration::from_millis(l.overload_window_ms),
                Duration::from_millis(l.overload_commit_p99_ms),
                l.overload_queued_appends,
                now,
            ),
            log: RefusalLog::new(LOG_PERIOD, LOG_KEYS),
            clock,
        }
    }

    /// The buckets of an authenticated identity (keys are fixed at start, so this always finds
    /// them; an unknown name gets fresh buckets of its own rate).
    pub fn limits_for(&self, identity: &Identity) -> Arc<KeyLimits> {
        self.keys
            .get(&identity.name)
            .cloned()
            .unwrap_or_else(|| Arc::new(KeyLimits::new(identity.rate, self.clock.now())))
    }

    /// Admits a publish that will hold `len` bytes of memory, by `key`, drawing the memory from
    /// `memory` (the publishing connection's inbound budget, or [`Admission::inbound`]): the
    /// memory comes with the returned permit until the publish is committed. Checks overload,
    /// then the memory (naming the level that has no room: the connection's share, or the
    /// broker's budget), then the key's rates; a refusal takes nothing (no memory, no tokens).
    /// A caller whose later check refuses gives the tokens back ([`KeyLimits::give_back`]).
    ///
    /// `now` is real time, for the overload and memory checks (they watch storage); the key's
    /// buckets read the broker's clock.
    pub fn admit_publish(
        &self,
        key: &KeyLimits,
        memory: &MemoryBudget,
        len: u64,
        now: Instant,
    ) -> Result<MemoryPermit, Refusal> {
        if let Some(overload) = self.overload.check(now) {
            let limit = match &overload {
                Overload::QueuedWork { threshold, .. } => {
                    Limit::new("overload_queued_appends", *threshold)
                }
                Overload::CommitLatency { threshold, .. } => {
                    Limit::new("overload_commit_p99_ms", threshold.as_millis() as u64)
                }
            };
            let retry = self.overload.retry_after(&overload, now);
            return Err(refusal(RejectReason::Overloaded, limit, Some(retry)));
        }
        let permit = memory
            .try_acquire(len)
            .map_err(|full| self.memory_refusal(full, now))?;
        key.publish
            .try_take(len, self.clock.now())
            .map_err(|limited| {
                let limit = match limited.kind {
                    RateKind::Messages => Limit::new("messages_per_s", key.rate.messages_per_s),
                    RateKind::Bytes => Limit::new("bytes_per_s", key.rate.bytes_per_s),
                };
                rate_refusal(limit, limited.refill)
            })?;
        Ok(permit)
    }

    /// The refusal of a publish a level of the memory budget has no room for: `Overloaded`,
    /// naming that level (`memory_budget_bytes`, or the connection's
    /// `max_connection_memory_bytes`), retry once storage has made progress.
    pub fn memory_refusal(&self, full: MemoryFull, now: Instant) -> Refusal {
        let limit = Limit::new(full.name, full.value);
        let retry = self.overload.progress_hint(now);
        refusal(RejectReason::Overloaded, limit, Some(retry))
    }

    /// The memory budget of a new connection: its share, drawn from the inbound and outbound
    /// halves.
    pub fn connection_memory(&self) -> ConnectionMemory {
        ConnectionMemory::new(&self.inbound, &self.outbound, self.connection_share)
    }

    /// Admits one expensive operation (topic create, subscribe) by `key`, on the broker's clock.
    pub fn admit_op(&self, key: &KeyLimits) -> Result<(), Refusal> {
        key.ops
            .try_take(1, self.clock.now())
            .map_err(|refill| rate_refusal(Limit::new("ops_per_s", key.rate.ops_per_s), refill))
    }

    /// Counts appends queued for a commit (`n` > 0) or done with it (`n` < 0). The gauge never
    /// goes below 0.
    pub fn queued(&self, n: i64) {
        if n >= 0 {
            self.overload.queued(n.unsigned_abs());
        } else {
            self.overload.dequeued(n.unsigned_abs());
        }
    }

    /// Records a storage commit's latency, finishing now, for overload detection.
    pub fn record_commit(&self, latency: Duration) {
        self.record_commit_at(latency, Instant::now());
    }

    /// Records a storage commit's latency observed at `now`.
    pub fn record_commit_at(&self, latency: Duration, now: Instant) {
        self.overload.record_commit(latency, now);
    }

    /// The whole memory budget (`memory_budget_bytes`).
    pub fn budget(&self) -> &MemoryBudget {
        &self.budget
    }

    /// The inbound half of the budget: read buffers, publishes until committed, tail caches.
    pub fn inbound(&self) -> &MemoryBudget {
        &self.inbound
    }

    /// The outbound half of the budget: deliveries until their connection has written them.
    pub fn outbound(&self) -> &MemoryBudget {
        &self.outbound
    }

    /// Signalled whenever a connection's writer frees outbound memory.
    pub fn delivery_room(&self) -> &RoomSignal {
        &self.delivery_room
    }

    /// The overload detector (commit p99, queued appends).
    pub fn overload(&self) -> &OverloadDetector {
        &self.overload
    }

    /// Logs a refused publish, at most once per topic and reason per second.
    pub fn log_refusal(&self, topic: &str, refusal: &Refusal) {
        self.log_refusal_at(Work::Publish, topic, refusal, Instant::now());
    }

    /// Logs a refusal of `work` on `target` (a topic, or `-`) at `now`, at most once per work,
    /// target and reason per second, under the work refused ("refusing subscribes"); returns
    /// whether a line was written.
    pub fn log_refusal_at(
        &self,
        work: Work,
        target: &str,
        refusal: &Refusal,
        now: Instant,
    ) -> bool {
        let key = (format!("{}/{target}", work.label()), refusal.reason);
        let Some(suppressed) = self.log.note(key, now) else {
            return false;
        };
        tracing::warn!(
            topic = target,
            reason = ?refusal.reason,
            limit = %refusal.limit.name,
            limit_value = refusal.limit.value,
            retry_after_ms = refusal.retry_after_ms,
            suppressed,
            "refusing {}",
            work.plural()
        );
        true
    }
}

/// A `RateLimited` refusal naming `limit`; no retry hint when retrying can never help.
fn rate_refusal(limit: Limit, refill: Refill) -> Refusal {
    let retry = match refill {
        Refill::After(wait) => Some(wait),
        Refill::Never => None,
    };
    refusal(RejectReason::RateLimited, limit, retry)
}

/// A refusal; the retry hint is rounded up to whole milliseconds, at least 1.
fn refusal(reason: RejectReason, limit: Limit, retry_after: Option<Duration>) -> Refusal {
    let retry_after_ms = retry_after.map(|d| {
        u64::try_from(d.as_micros().div_ceil(1000))
            .unwrap_or(u64::MAX)
            .max(1)
    });
    Refusal::new(reason, limit, retry_after_ms)
}

#[cfg(all(test, not(weir_loom)))]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn config(rate: RateConfig, budget: u64) -> Config {
        let mut config = Config {
            default_rate: rate,
            ..Config::default()
        };
        config.limits.memory_budget_bytes = budget;
        config
    }

    fn anonymous(rate: RateConfig) -> Identity {
        Identity {
            name: "anonymous".into(),
            rate,
            access: std::sync::Arc::new(crate::permissions::Access::new(
                "anonymous",
                crate::permissions::Grants::all(),
            )),
        }
    }

    #[test]
    fn a_key_over_its_message_rate_is_refused_with_the_refill_time() {
        let rate = RateConfig {
            messages_per_s: 10,
            messages_burst: 2,
            ..RateConfig::default()
        };
        let clock = Clock::paused();
        let t0 = clock.now();
        let admission = Admission::new(&config(rate, 1 << 20), clock.clone());
        let key = admission.limits_for(&anonymous(rate));
        admission
            .admit_publish(&key, admission.inbound(), 10, t0)
            .unwrap();
        admission
            .admit_publish(&key, admission.inbound(), 10, t0)
            .unwrap();
        let refused = admission
            .admit_publish(&key, admission.inbound(), 10, t0)
            .unwrap_err();
        assert_eq!(refused.reason, RejectReason::RateLimited);
        assert_eq!(
            (refused.limit.name.as_str(), refused.limit.value),
            ("messages_per_s", 10)
        );
        assert_eq!(refused.retry_after_ms, Some(100));
        assert_eq!(admission.budget().used(), 0, "a refusal holds no memory");
        // The buckets refill on the broker's clock, not on the real time passed in.
        clock.advance(99 * MS);
        let early = admission.admit_publish(&key, admission.inbound(), 10, t0 + 100 * MS);
        assert_eq!(early.unwrap_err().retry_after_ms, Some(1));
        clock.advance(MS);
        admission
            .admit_publish(&key, admission.inbound(), 10, t0)
            .unwrap();
    }

    #[test]
    fn a_key_over_its_byte_rate_is_refused_and_keeps_its_message_token() {
        let rate = RateConfig {
            messages_per_s: 10,
            messages_burst: 2,
            bytes_per_s: 1_000,
            bytes_burst: 1_000,
            ..RateConfig::default()
        };
        let clock = Clock::paused();
        let t0 = clock.now();
        let admission = Admission::new(&config(rate, 1 << 20), clock.clone());
        let key = admission.limits_for(&anonymous(rate));
        admission
            .admit_publish(&key, admission.inbound(), 900, t0)
            .unwrap();
        let refused = admission
            .admit_publish(&key, admission.inbound(), 300, t0)
            .unwrap_err();
        assert_eq!(
            (
                refused.reason,
                refused.limit.name.as_str(),
                refused.retry_after_ms
            ),
            (RejectReason::RateLimited, "bytes_per_s", Some(200))
        );
        admission
            .admit_publish(&key, admission.inbound(), 100, t0)
            .unwrap();
        // Larger than the byte burst: no retry can help, so no hint.
        clock.advance(1_000 * MS);
        let never = admission
            .admit_publish(&key, admission.inbound(), 1_001, t0)
            .unwrap_err();
        assert_eq!(never.retry_after_ms, None);
    }

    #[test]
    fn expensive_operations_have_their_own_bucket() {
        let rate = RateConfig {
            ops_per_s: 1,
            ops_burst: 1,
            ..RateConfig::default()
        };
        let clock = Clock::paused();
        let t0 = clock.now();
        let admission = Admission::new(&config(rate, 1 << 20), clock);
        let key = admission.limits_for(&anonymous(rate));
        admission.admit_op(&key).unwrap();
        let refused = admission.admit_op(&key).unwrap_err();
        assert_eq!(
            (refused.limit.name.as_str(), refused.retry_after_ms),
            ("ops_per_s", Some(1_000))
        );
        admission
            .admit_publish(&key, admission.inbound(), 1, t0)
            .unwrap();
    }

    #[test]
    fn the_memory_budget_refuses_with_overloaded_and_frees_on_drop() {
        let clock = Clock::paused();
        let t0 = clock.now();
        let admission = Admission::new(&config(RateConfig::default(), 100), clock);
        let key = admission.limits_for(&anonymous(RateConfig::default()));
        // Publishes have the inbound half: 50 of 100.
        let held = admission
            .admit_publish(&key, admission.inbound(), 40, t0)
            .unwrap();
        let refused = admission
            .admit_publish(&key, admission.inbound(), 11, t0)
            .unwrap_err();
        assert_eq!(
            (refused.reason, refused.limit.name.as_str()),
            (RejectReason::Overloaded, "memory_budget_bytes")
        );
        // No commit seen yet: come back after one slot of the window (100 ms of 1 s).
        assert_eq!(refused.retry_after_ms, Some(100));
        drop(held);
        admission
            .admit_publish(&key, admission.inbound(), 50, t0)
            .unwrap();
    }

    #[test]
    fn too_much_queued_work_makes_publishes_overloaded() {
        let clock = Clock::paused();
        let t0 = clock.now();
        let mut c = config(RateConfig::default(), 1 << 20);
        c.limits.overload_queued_appends = 2;
        let admission = Admission::new(&c, clock);
        let key = admission.limits_for(&anonymous(RateConfig::default()));
        admission.queued(2);
        let refused = admission
            .admit_publish(&key, admission.inbound(), 1, t0)
            .unwrap_err();
        assert_eq!(
            (refused.reason, refused.limit.name.as_str()),
            (RejectReason::Overloaded, "overload_queued_appends")
        );
        admission.queued(-1);
        admission
            .admit_publish(&key, admission.inbound(), 1, t0)
            .unwrap();
        admission.queued(-5);
        assert_eq!(admission.overload().queued_now(), 0, "never below zero");
    }

    #[test]
    fn slow_commits_make_publishes_overloaded_until_they_leave_the_window() {
        let clock = Clock::paused();
        let t0 = clock.now();
        let mut c = config(RateConfig::default(), 1 << 20);
        c.limits.overload_commit_p99_ms = 50;
        let admission = Admission::new(&c, clock);
        let key = admission.limits_for(&anonymous(RateConfig::default()));
        admission.record_commit_at(200 * MS, t0);
        let refused = admission
            .admit_publish(&key, admission.inbound(), 1, t0 + 10 * MS)
            .unwrap_err();
        assert_eq!(
            (
                refused.reason,
                refused.limit.name.as_str(),
                refused.limit.value
            ),
            (RejectReason::Overloaded, "overload_commit_p99_ms", 50)
        );
        assert_eq!(refused.retry_after_ms, Some(990));
        admission
            .admit_publish(&key, admission.inbound(), 1, t0 + 1_000 * MS)
            .unwrap();
    }

    #[test]
    fn refusal_lines_are_rate_limited_per_topic_and_reason() {
        let clock = Clock::paused();
        let t0 = clock.now();
        let admission = Admission::new(&config(RateConfig::default(), 1), clock);
        let full = Refusal::new(
            RejectReason::TopicFull,
            Limit::new("max_messages", 10),
            Some(5),
        );
        let publish = Work::Publish;
        assert!(admission.log_refusal_at(publish, "a", &full, t0));
        assert!(!admission.log_refusal_at(publish, "a", &full, t0 + 999 * MS));
        assert!(admission.log_refusal_at(publish, "b", &full, t0));
        assert!(admission.log_refusal_at(Work::Subscribe, "a", &full, t0 + 999 * MS));
        assert!(admission.log_refusal_at(publish, "a", &full, t0 + 1_000 * MS));
    }
}
