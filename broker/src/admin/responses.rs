//! The answers every admin route shares: `{"error"}` bodies, `404` for an unknown topic, a
//! refusal at a bound (status, `Retry-After` and the [`Refused`] body), and `403` for an action
//! the request's key may not take. Depends on no other admin module, so each can take these.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use weir_protocol::{Limit, RejectReason};

use crate::broker::Broker;
use crate::keys::Identity;
use crate::permissions::{Action, Forbidden};
use crate::refusal::Refusal;

/// The answer to a publish a bound refused: the same fields as the wire's `Rejected`.
#[derive(Debug, Serialize)]
pub struct Refused {
    /// Why, e.g. `TopicFull`.
    pub reason: RejectReason,
    /// The bound that fired: `{"name", "value"}`.
    pub limit: Limit,
    /// When to come back, if waiting can help.
    pub retry_after_ms: Option<u64>,
    /// For `topic_full`: the group holding the topic's oldest unacked message (absent when
    /// none does).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub held_by: Option<String>,
}

/// The status a refusal is answered with.
fn refusal_status(reason: RejectReason) -> StatusCode {
    match reason {
        RejectReason::TopicFull | RejectReason::RateLimited | RejectReason::Overloaded => {
            StatusCode::TOO_MANY_REQUESTS
        }
        RejectReason::MessageTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        RejectReason::TooManyTopics | RejectReason::StorageFull => StatusCode::INSUFFICIENT_STORAGE,
        RejectReason::ShuttingDown
        | RejectReason::TooManyConnections
        | RejectReason::StorageDamaged => StatusCode::SERVICE_UNAVAILABLE,
        RejectReason::SequenceTooOld => StatusCode::UNPROCESSABLE_ENTITY,
        RejectReason::DuplicatePending => StatusCode::CONFLICT,
    }
}

/// The answer to a refusal: its status ([`refusal_status`]), `Retry-After` in whole seconds
/// (rounded up, at least 1) when it has a retry hint, and the [`Refused`] body.
pub(super) fn refusal_response(r: Refusal) -> Response {
    let status = refusal_status(r.reason);
    let retry_after_s = r.retry_after_ms.map(|ms| ms.div_ceil(1000).max(1));
    let body = Refused {
        reason: r.reason,
        limit: r.limit,
        retry_after_ms: r.retry_after_ms,
        held_by: r.held_by,
    };
    let mut response = (status, Json(body)).into_response();
    if let Some(seconds) = retry_after_s {
        let value = HeaderValue::from(seconds);
        response.headers_mut().insert(header::RETRY_AFTER, value);
    }
    response
}

/// `404 {"error": "unknown topic NAME"}`.
pub(super) fn unknown_topic(name: &str) -> Response {
    error_response(StatusCode::NOT_FOUND, format!("unknown topic {name}"))
}

/// An error the admin endpoint answers with: `status` and `{"error": message}`.
pub(super) fn error_response(status: StatusCode, message: String) -> Response {
    (status, Json(serde_json::json!({ "error": message }))).into_response()
}

/// `None` when the request's key may take `action` on `topic`; else the `403` to answer, the
/// refusal counted and logged as on the wire.
pub(super) fn forbidden(
    broker: &Broker,
    identity: &Identity,
    action: Action,
    topic: &str,
) -> Option<Response> {
    let now = broker.clock().now();
    let refused = identity.access.check(action, topic, now).err()?;
    Some(forbidden_response(&refused))
}

/// `403 {"error", "action", "topic"}` for a refused action.
pub(super) fn forbidden_response(refused: &Forbidden) -> Response {
    let body = serde_json::json!({
        "error": refused.to_string(),
        "action": refused.action.name(),
        "topic": refused.topic,
    });
    (StatusCode::FORBIDDEN, axum::Json(body)).into_response()
}
