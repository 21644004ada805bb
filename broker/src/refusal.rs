//! A refusal: what every refused request carries back to its client, whichever check refused it
//! (admission, a topic's bounds, the connection limits).

use weir_protocol::{Limit, RejectReason};

/// A request refused at a bound: why, the bound that fired, and when to come back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// Why it was refused.
    pub reason: RejectReason,
    /// The bound that fired.
    pub limit: Limit,
    /// When to retry, if retrying can help; `None` when it cannot.
    pub retry_after_ms: Option<u64>,
}
