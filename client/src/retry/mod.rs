//! Retrying refused publishes without making things worse: backoff with full jitter that never
//! comes back sooner than the broker's `retry_after_ms`, a retry budget so retries stay a small
//! fraction of the traffic, and a circuit breaker that stops publishing to a broker that keeps
//! refusing.
//!
//! Off by default: [`crate::Publisher::publish`] surfaces every refusal. Turn it on with
//! [`crate::Publisher::with_retry`].
//!
//! # What is retried, and what the breaker counts
//!
//! | outcome of a publish | retried? | for the breaker |
//! |---|---|---|
//! | confirmed | — | success |
//! | `Rejected{TopicFull \| RateLimited \| Overloaded \| StorageFull}` **with** `retry_after_ms` | yes | failure |
//! | `Rejected{DuplicatePending}` (its pending original was not stored after all) | yes | failure |
//! | `ConnectionLost` (the connection ended before an answer) | no (it may have been stored) | failure |
//! | `NotSent` (no connection could be opened for it: reconnecting gave up, or failed after an idle close) | no | failure |
//! | `Rejected{ShuttingDown \| MessageTooLarge \| TooManyTopics \| ...}`, a refusal without a hint, a broker `Error` | no | success (the broker answered) |
//! | `TooLarge` (refused locally, never sent) | no | nothing |
//!
//! With reconnecting on (the default, [`crate::ReconnectPolicy`]), a `Rejected{ShuttingDown}`
//! never reaches this table: the connection holds the publish and resends it once the broker
//! is back.
//!
//! # Layout
//!
//! The maths is pure and takes the time (and the random source) as arguments, so it is tested
//! without sleeping:
//! - [`Backoff`] (`backoff`): full-jitter delays;
//! - [`RetryBudget`] (`budget`): a sliding window of publishes and retries, and the retries
//!   going on now;
//! - [`CircuitBreaker`] (`breaker`): closed → open → half-open → closed;
//! - `driver` (private): the publisher's shared retry state and the loop that re-publishes.

mod backoff;
mod breaker;
mod budget;
pub(crate) mod driver;

use std::time::Duration;

use weir_protocol::RejectReason;

use crate::error::PublishError;

pub use backoff::Backoff;
pub use breaker::{BreakerState, CircuitBreaker, Pass};
pub use budget::{RetryBudget, BUDGET_BUCKETS};

/// The latest retry a publisher scheduled ([`crate::Publisher::last_retry`]): which refusal it
/// answers, how long it waits before resending, and which retry of its publish it is — what a
/// caller shows while a publish is still unconfirmed.
#[derive(Debug, Clone)]
pub struct RetryNotice {
    /// The refusal being retried (its reason, the limit that fired, the broker's hint).
    pub refusal: PublishError,
    /// How long the retry waits before it is sent (the hint plus jitter).
    pub delay: Duration,
    /// Which retry of its publish this is, from 1, at most [`RetryPolicy::max_retries`].
    pub retry: u32,
}

/// How a publisher retries refused publishes. Every field has a default
/// ([`RetryPolicy::default`]); override with struct-update syntax.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// The first backoff ceiling, doubled per attempt. Default 50 ms.
    pub base: Duration,
    /// The largest backoff ceiling (the broker's hint may still ask for longer). Default 5 s.
    pub cap: Duration,
    /// Most retries of one publish; after the last, the refusal surfaces. Default 5.
    pub max_retries: u32,
    /// Retries may be at most this fraction of the publishes of the last
    /// [`RetryPolicy::budget_window`]. Default 0.1 (10 %).
    pub budget_ratio: f64,
    /// Retries allowed per window however few publishes there were (the burst allowance): the
    /// budget is `max(budget_floor, budget_ratio × publishes)`. Default 10.
    pub budget_floor: u32,
    /// The sliding window the budget counts over, in [`BUDGET_BUCKETS`] buckets (100 ms each
    /// at the default). At least 100 ms. Default 10 s.
    pub budget_window: Duration,
    /// Most retries waiting for their backoff or in flight at once, across the publisher and
    /// its clones. Past it, refusals surface at once. Default 32.
    pub max_concurrent_retries: usize,
    /// The circuit breaker.
    pub breaker: BreakerPolicy,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            base: Duration::from_millis(50),
            cap: Duration::from_secs(5),
            max_retries: 5,
            budget_ratio: 0.1,
            budget_floor: 10,
            budget_window: Duration::from_secs(10),
            max_concurrent_retries: 32,
            breaker: BreakerPolicy::default(),
        }
    }
}

impl RetryPolicy {
    /// The policy's backoff.
    pub fn backoff(&self) -> Backoff {
        Backoff {
            base: self.base,
            cap: self.cap,
        }
    }
}

/// When the circuit breaker opens and how long it stays open.
#[derive(Debug, Clone, PartialEq)]
pub struct BreakerPolicy {
    /// Open after this many failures in a row (0 behaves as 1). Default 10.
    pub consecutive_failures: u32,
    /// ... or when at least this fraction of the last [`BreakerPolicy::sample`] outcomes
    /// failed. Default 0.5.
    pub failure_ratio: f64,
    /// How many recent outcomes the ratio looks at; the ratio applies only once that many are
    /// known (at least 1). Default 20.
    pub sample: usize,
    /// How long the breaker stays open before it lets one probe through. Default 1 s.
    pub cooldown: Duration,
}

impl Default for BreakerPolicy {
    fn default() -> Self {
        BreakerPolicy {
            consecutive_failures: 10,
            failure_ratio: 0.5,
            sample: 20,
            cooldown: Duration::from_secs(1),
        }
    }
}

/// Whether a publish outcome may be retried: a refusal that says waiting helps (a full topic, a
/// rate limit, an overloaded broker, a full disk budget, a duplicate whose original was not
/// stored after all) and carries a retry-after hint. A retry carries the publish's producer
/// stamp again, so it is never stored twice. Everything else — including
/// [`RejectReason::ShuttingDown`] — surfaces at once.
pub fn retryable(error: &PublishError) -> bool {
    matches!(
        error,
        PublishError::Rejected {
            reason: RejectReason::TopicFull
                | RejectReason::RateLimited
                | RejectReason::Overloaded
                | RejectReason::StorageFull
                | RejectReason::DuplicatePending,
            retry_after_ms: Some(_),
            ..
        }
    )
}

/// What one publish outcome tells the circuit breaker (see the table in the [module
/// docs](self)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The broker answered and is not refusing for load: a confirm, or an answer that waiting
    /// cannot change.
    Success,
    /// A retryable refusal, or the connection lost before an answer.
    Failure,
    /// Nothing was learned about the broker (the publish was refused locally, never sent).
    Unknown,
}

impl Verdict {
    /// The verdict on one publish outcome.
    pub fn of(outcome: &Result<u64, PublishError>) -> Verdict {
        match outcome {
            Ok(_) => Verdict::Success,
            Err(PublishError::TooLarge { .. }) => Verdict::Unknown,
            Err(PublishError::ConnectionLost | PublishError::NotSent(_)) => Verdict::Failure,
            Err(e) if retryable(e) => Verdict::Failure,
            Err(_) => Verdict::Success,
        }
    }
}

#[cfg(test)]
mod tests {
    use weir_protocol::{ErrorCode, Limit};

    use super::*;

    fn refused(reason: RejectReason, retry_after_ms: Option<u64>) -> PublishError {
        PublishError::Rejected {
            reason,
            limit: Limit::new("x", 1),
            retry_after_ms,
            held_by: None,
        }
    }

    #[test]
    fn only_refusals_that_waiting_can_fix_are_retryable() {
        assert!(retryable(&refused(RejectReason::TopicFull, Some(5))));
        assert!(retryable(&refused(RejectReason::RateLimited, Some(5))));
        assert!(retryable(&refused(RejectReason::Overloaded, Some(5))));
        assert!(retryable(&refused(
            RejectReason::DuplicatePending,
            Some(10)
        )));
        assert!(!retryable(&refused(RejectReason::SequenceTooOld, None)));
        assert!(!retryable(&refused(RejectReason::TopicFull, None)));
        assert!(!retryable(&refused(RejectReason::MessageTooLarge, None)));
        assert!(!retryable(&refused(RejectReason::TooManyTopics, Some(5))));
        assert!(!retryable(&refused(RejectReason::ShuttingDown, Some(5))));
        assert!(!retryable(&PublishError::ConnectionLost));
        assert!(!retryable(&PublishError::TooLarge { len: 9, max: 8 }));
        let not_sent =
            PublishError::NotSent(std::sync::Arc::new(crate::ClientError::ConnectionLost));
        assert!(!retryable(&not_sent));
    }

    #[test]
    fn the_breaker_counts_load_refusals_and_lost_connections_as_failures() {
        assert_eq!(Verdict::of(&Ok(1)), Verdict::Success);
        assert_eq!(
            Verdict::of(&Err(refused(RejectReason::Overloaded, Some(5)))),
            Verdict::Failure
        );
        assert_eq!(
            Verdict::of(&Err(PublishError::ConnectionLost)),
            Verdict::Failure
        );
        let io = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        let not_sent = PublishError::NotSent(std::sync::Arc::new(io.into()));
        assert_eq!(Verdict::of(&Err(not_sent)), Verdict::Failure);
        assert_eq!(
            Verdict::of(&Err(refused(RejectReason::MessageTooLarge, None))),
            Verdict::Success
        );
        assert_eq!(
            Verdict::of(&Err(refused(RejectReason::ShuttingDown, None))),
            Verdict::Success
        );
        let unknown_topic = PublishError::Broker {
            code: ErrorCode::UnknownTopic,
            message: "no".into(),
        };
        assert_eq!(Verdict::of(&Err(unknown_topic)), Verdict::Success);
        assert_eq!(
            Verdict::of(&Err(PublishError::TooLarge { len: 9, max: 8 })),
            Verdict::Unknown
        );
    }
}
