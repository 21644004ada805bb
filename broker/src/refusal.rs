//! A refusal: what every refused request carries back to its client, whichever check refused it
//! (admission, a topic's bounds, the connection limits).

use weir_protocol::{Frame, Limit, RejectReason, Rejected};

/// A request refused at a bound: why, the bound that fired, and when to come back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// Why it was refused.
    pub reason: RejectReason,
    /// The bound that fired.
    pub limit: Limit,
    /// When to retry, if retrying can help; `None` when it cannot.
    pub retry_after_ms: Option<u64>,
    /// For `TopicFull`: the group holding the topic's oldest unacked message, if any.
    pub held_by: Option<String>,
}

impl Refusal {
    /// A refusal for `reason` at `limit`, worth retrying after `retry_after_ms` if given.
    pub fn new(reason: RejectReason, limit: Limit, retry_after_ms: Option<u64>) -> Refusal {
        Refusal {
            reason,
            limit,
            retry_after_ms,
            held_by: None,
        }
    }

    /// The `Rejected` frame answering request `id` with this refusal.
    pub fn into_frame(self, id: u64) -> Frame {
        Frame::Rejected(Rejected {
            id,
            reason: self.reason,
            limit: self.limit,
            retry_after_ms: self.retry_after_ms,
            held_by: self.held_by,
        })
    }
}
