//! The answer frames a connection's commands share: a refusal, an error, an unknown subscription.

use weir_protocol::{Error, ErrorCode, Frame};

use crate::refusal::Refusal;

/// `Rejected` for request `id`, carrying the refusal.
pub(super) fn rejected(id: u64, r: Refusal) -> Frame {
    r.into_frame(id)
}

/// `Error` for request `req`.
pub(super) fn error(req: u64, code: ErrorCode, message: impl Into<String>) -> Frame {
    Frame::Error(Error {
        req,
        code,
        message: message.into(),
    })
}

/// `Error{UnknownSubscription}` for subscription `sub`.
pub(super) fn unknown_sub(sub: u64) -> Frame {
    error(
        sub,
        ErrorCode::UnknownSubscription,
        format!("subscription {sub} is not open on this connection"),
    )
}
