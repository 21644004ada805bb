//! Admission control: what a publish (or an expensive operation) must pass before it touches a
//! topic. Each check refuses fast, with a reason, the limit that fired, and when to come back:
//!
//! 1. **Overload** — commit latency p99 over the last `overload_window_ms` above
//!    `overload_commit_p99_ms`: `Rejected{Overloaded}` until it recovers.
//!    Likewise while more than `overload_queued_appends` appends wait for their commit across
//!    all topics (the writers are behind).
//! 2. **Memory budget** — the payload must fit in `memory_budget_bytes`, shared by every payload
//!    the broker holds for clients until it is committed (queued or parked):
//!    `Rejected{Overloaded}` naming `memory_budget_bytes`.
//! 3. **Rate limits** — the client's API key has token buckets for messages/s and bytes/s (and
//!    for expensive operations): `Rejected{RateLimited}` with the bucket's refill time. Only
//!    that key's publishes are refused.
//!
//! # Layout
//! - [`bucket`] — the token bucket.
//! - [`budget`] — the memory budget and its permits.
//! - [`overload`] — commit-latency overload detection.
//! - [`log`] — rate-limited refusal log lines.

pub mod bucket;
pub mod budget;
pub mod log;
pub mod overload;

#[cfg(all(test, weir_loom))]
mod loom_tests;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use weir_protocol::{Limit, RejectReason};

use crate::config::Config;
use crate::keys::{Identity, RateConfig};
use crate::topic::Refusal;
use bucket::{Refill, TokenBucket};
use budget::{MemoryBudget, MemoryPermit};
use log::RefusalLog;
use overload::OverloadDetector;

/// The token buckets of one API key, shared by all its connections.
#[derive(Debug)]
pub struct KeyLimits {
    rate: RateConfig,
    messages: TokenBucket,
    bytes: TokenBucket,
    ops: TokenBucket,
}

impl KeyLimits {
    fn new(rate: RateConfig, now: Instant) -> KeyLimits {
        KeyLimits {
            rate,
            messages: TokenBucket::new(rate.messages_per_s, rate.messages_burst, now),
            bytes: TokenBucket::new(rate.bytes_per_s, rate.bytes_burst, now),
            ops: TokenBucket::new(rate.ops_per_s, rate.ops_burst, now),
        }
    }
}

/// The broker's admission control. One per broker.
#[derive(Debug)]
pub struct Admission {
    keys: HashMap<String, Arc<KeyLimits>>,
    budget: MemoryBudget,
    overload: OverloadDetector,
    log: RefusalLog,
    /// Appends waiting for their commit, across all topics.
    queued: AtomicU64,
    max_queued: u64,
}

impl Admission {
    /// Admission for `config`: one set of buckets per configured key, plus `anonymous`.
    pub fn new(config: &Config, now: Instant) -> Admission {
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
        Admission {
            keys,
            budget: MemoryBudget::new(l.memory_budget_bytes),
            overload: OverloadDetector::new(
                Duration::from_millis(l.overload_window_ms),
                Duration::from_millis(l.overload_commit_p99_ms),
            ),
            log: RefusalLog::default(),
            queued: AtomicU64::new(0),
            max_queued: l.overload_queued_appends,
        }
    }

    /// The buckets of an authenticated identity (keys are fixed at start, so this always finds
    /// them; an unknown name gets fresh buckets of its own rate).
    pub fn limits_for(&self, identity: &Identity) -> Arc<KeyLimits> {
        self.keys
            .get(&identity.name)
            .cloned()
            .unwrap_or_else(|| Arc::new(KeyLimits::new(identity.rate, Instant::now())))
    }

    /// Admits a publish of `len` payload bytes by `key`: the memory it will hold until committed
    /// comes with the returned permit.
    pub fn admit_publish(
        &self,
        key: &KeyLimits,
        len: u64,
        now: Instant,
    ) -> Result<MemoryPermit, Refusal> {
        let queued = self.queued.load(Ordering::Relaxed);
        if queued >= self.max_queued {
            let limit = Limit::new("overload_queued_appends", self.max_queued);
            return Err(refusal(
                RejectReason::Overloaded,
                limit,
                Some(self.overload.retry_after()),
            ));
        }
        if let Some(overload) = self.overload.check(now) {
            let overload::Overload::CommitLatency { threshold, .. } = overload;
            let limit = Limit::new("overload_commit_p99_ms", threshold.as_millis() as u64);
            return Err(refusal(
                RejectReason::Overloaded,
                limit,
                Some(self.overload.retry_after()),
            ));
        }
        let Some(permit) = self.budget.try_acquire(len) else {
            let limit = Limit::new("memory_budget_bytes", self.budget.capacity());
            return Err(refusal(
                RejectReason::Overloaded,
                limit,
                Some(self.overload.retry_after()),
            ));
        };
        take(
            &key.messages,
            1,
            "messages_per_s",
            key.rate.messages_per_s,
            now,
        )?;
        if let Err(e) = take(&key.bytes, len, "bytes_per_s", key.rate.bytes_per_s, now) {
            key.messages.give_back(1);
            return Err(e);
        }
        Ok(permit)
    }

    /// Admits one expensive operation (topic create, subscribe) by `key`.
    pub fn admit_op(&self, key: &KeyLimits, now: Instant) -> Result<(), Refusal> {
        take(&key.ops, 1, "ops_per_s", key.rate.ops_per_s, now)
    }

    /// Counts appends queued for a commit (`n` > 0) or done with it (`n` < 0).
    pub fn queued(&self, n: i64) {
        if n >= 0 {
            self.queued.fetch_add(n as u64, Ordering::Relaxed);
        } else {
            self.queued.fetch_sub(n.unsigned_abs(), Ordering::Relaxed);
        }
    }

    /// Records a storage commit's latency for overload detection.
    pub fn record_commit(&self, latency: Duration) {
        self.overload.record(latency, Instant::now());
    }

    /// The memory budget.
    pub fn budget(&self) -> &MemoryBudget {
        &self.budget
    }

    /// Logs a refusal, at most once per topic and reason per second.
    pub fn log_refusal(&self, topic: &str, refusal: &Refusal) {
        self.log
            .note(topic, refusal.reason, &refusal.limit, Instant::now());
    }
}

/// Takes `n` from a bucket, or refuses naming its rate.
fn take(bucket: &TokenBucket, n: u64, name: &str, rate: u64, now: Instant) -> Result<(), Refusal> {
    bucket.try_take(n, now).map_err(|refill| {
        let retry = match refill {
            Refill::After(wait) => Some(wait),
            Refill::Never => None,
        };
        refusal(RejectReason::RateLimited, Limit::new(name, rate), retry)
    })
}

fn refusal(reason: RejectReason, limit: Limit, retry_after: Option<Duration>) -> Refusal {
    let retry_after_ms = retry_after.map(|d| (d.as_micros().div_ceil(1000) as u64).max(1));
    Refusal {
        reason,
        limit,
        retry_after_ms,
    }
}

#[cfg(all(test, not(weir_loom)))]
mod tests {
    use super::*;

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
        }
    }

    #[test]
    fn a_key_over_its_rate_is_refused_with_the_refill_time() {
        let rate = RateConfig {
            messages_per_s: 10,
            messages_burst: 2,
            ..RateConfig::default()
        };
        let admission = Admission::new(&config(rate, 1 << 20), Instant::now());
        let key = admission.limits_for(&anonymous(rate));
        let now = Instant::now();
        admission.admit_publish(&key, 10, now).unwrap();
        admission.admit_publish(&key, 10, now).unwrap();
        let refused = admission.admit_publish(&key, 10, now).unwrap_err();
        assert_eq!(refused.reason, RejectReason::RateLimited);
        assert_eq!(
            (refused.limit.name.as_str(), refused.limit.value),
            ("messages_per_s", 10)
        );
        assert_eq!(refused.retry_after_ms, Some(100));
    }

    #[test]
    fn the_memory_budget_refuses_with_overloaded_and_frees_on_drop() {
        let admission = Admission::new(&config(RateConfig::default(), 100), Instant::now());
        let key = admission.limits_for(&anonymous(RateConfig::default()));
        let held = admission.admit_publish(&key, 80, Instant::now()).unwrap();
        let refused = admission
            .admit_publish(&key, 30, Instant::now())
            .unwrap_err();
        assert_eq!(
            (refused.reason, refused.limit.name.as_str()),
            (RejectReason::Overloaded, "memory_budget_bytes")
        );
        drop(held);
        admission.admit_publish(&key, 30, Instant::now()).unwrap();
    }

    #[test]
    fn too_much_queued_work_makes_publishes_overloaded() {
        let mut c = config(RateConfig::default(), 1 << 20);
        c.limits.overload_queued_appends = 2;
        let admission = Admission::new(&c, Instant::now());
        let key = admission.limits_for(&anonymous(RateConfig::default()));
        admission.queued(2);
        let refused = admission
            .admit_publish(&key, 1, Instant::now())
            .unwrap_err();
        assert_eq!(
            (refused.reason, refused.limit.name.as_str()),
            (RejectReason::Overloaded, "overload_queued_appends")
        );
        admission.queued(-1);
        admission.admit_publish(&key, 1, Instant::now()).unwrap();
    }

    #[test]
    fn slow_commits_make_publishes_overloaded() {
        let mut c = config(RateConfig::default(), 1 << 20);
        c.limits.overload_commit_p99_ms = 50;
        let admission = Admission::new(&c, Instant::now());
        let key = admission.limits_for(&anonymous(RateConfig::default()));
        admission.record_commit(Duration::from_millis(200));
        let refused = admission
            .admit_publish(&key, 1, Instant::now())
            .unwrap_err();
        assert_eq!(
            (refused.reason, refused.limit.value),
            (RejectReason::Overloaded, 50)
        );
        assert!(refused.retry_after_ms.is_some());
    }
}
