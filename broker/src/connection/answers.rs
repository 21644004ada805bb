//! The answer frames a connection's commands share: a refusal, an error, a forbidden action, an
//! unknown subscription.

use weir_protocol::{Denied, Error, ErrorCode, Frame};

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
        denied: None,
    })
}

/// `Error{Forbidden}` for request `req`, naming the key, action and topic refused (in the
/// message, and the action and topic as [`Denied`]).
pub(super) fn forbidden(req: u64, refused: &crate::permissions::Forbidden) -> Frame {
    Frame::Error(Error {
        req,
        code: ErrorCode::Forbidden,
        message: refused.to_string(),
        denied: Some(Denied {
            action: refused.action,
            topic: refused.topic.clone(),
        }),
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
