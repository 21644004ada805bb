//! `POST /topics/{name}/messages`: publishes one message, for clients without the Rust crate.
//!
//! The body is the payload (any content type). Request headers named `weir-header-NAME` become
//! message headers `NAME` (lowercase, as HTTP header names are case-insensitive; values must be
//! UTF-8; the values of a repeated name keep their order). An `Idempotency-Key` header becomes
//! the message's `weir-msg-id` (ahead of any other): a second publish with the same key
//! within the topic's dedup window stores nothing and is answered `200` with the first one's
//! sequence and `"duplicate": true`. The client authenticates as on every
//! keyed admin route ([`super::auth`]): `Authorization: Bearer TOKEN` when `[[keys]]` are
//! configured (401 without, 403 with a wrong one, 429 past `max_auth_failures_per_s`); without
//! keys, anonymously from loopback only.
//!
//! The publish passes exactly the checks of a wire publish ([`crate::publish`]) and is answered
//! once the outcome is known:
//!
//! | outcome | status | body |
//! |---|---|---|
//! | stored durably (the confirm resolved) | 201 | `{"topic", "seq", "duplicate": false}` |
//! | a duplicate (same `Idempotency-Key` / `weir-msg-id` in the dedup window): nothing stored | 200 | `{"topic", "seq": the first one's, "duplicate": true}` |
//! | the first publish with that key is still being stored | 409, `Retry-After: 1` | `{"reason": "duplicate_pending", ...}` |
//! | the key may not `publish` to the topic (checked first: nothing is created or stored) | 403 | `{"error", "action", "topic"}` |
//! | `TopicFull`, `RateLimited`, `Overloaded` | 429, `Retry-After` in whole seconds (rounded up, at least 1) when there is a hint | `{"reason", "limit": {"name", "value"}, "retry_after_ms"}` |
//! | `MessageTooLarge` (`max_message_bytes`, or a body over `max_frame_bytes` — announced by `Content-Length`, answered before the body is read, or sent) | 413 | the same |
//! | `ShuttingDown` | 503 | the same |
//! | `TooManyTopics` (auto-create at `max_topics`) | 507 | the same |
//! | unknown topic (auto-create off) | 404 | `{"error"}` |
//! | an invalid topic name, a header value that is not UTF-8 | 400 | `{"error"}` |
//! | storage failure | 500 | `{"error"}` |
//!
//! Bounds: the body is read only after authentication and the topic lookup, and never past
//! `max_frame_bytes` (axum's body limit; a `Content-Length` over it is refused before the topic
//! lookup); it must arrive within `admin.body_read_timeout_ms` (else 408, see
//! [`super::connections`]); a `block` topic holds the request while the publish is parked (at
//! most its `max_block_ms`, then 429).

use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, FromRequest, Path, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{post, MethodRouter};
use axum::{Extension, Json};
use serde::Serialize;
use weir_protocol::{Headers, MSG_ID_HEADER};

use super::responses::{error_response, forbidden, refusal_response, unknown_topic};
use crate::admission::KeyLimits;
use crate::broker::{Broker, CreateError};
use crate::keys::Identity;
use crate::permissions::Action;
use crate::refusal::Refusal;
use crate::topic::{Admitted, AppendError, Topic};

/// Request headers with this prefix (any case) become message headers, the prefix cut off.
pub const HEADER_PREFIX: &str = "weir-header-";

/// The route's handler, its request body bounded by the broker's `max_frame_bytes`.
pub(super) fn route(broker: &Broker) -> MethodRouter<Broker> {
    let max_body = broker.config().limits.max_frame_bytes as usize;
    post(publish).layer(DefaultBodyLimit::max(max_body))
}

/// The answer to a durably stored publish (`201 Created`).
#[derive(Debug, Serialize)]
pub struct Published {
    /// The topic it was stored in.
    pub topic: String,
    /// Its sequence number in that topic (a duplicate's: the first one's).
    pub seq: u64,
    /// Whether it duplicated a message the topic's dedup window holds (nothing was stored).
    pub duplicate: bool,
}

/// Why an HTTP publish was not stored; each becomes one status (see the module table).
enum Failure {
    /// No such topic, and auto-create is off.
    UnknownTopic(String),
    /// An invalid topic name or message header, or a body that could not be read.
    BadRequest(String),
    /// A bound refused the publish.
    Refused(Refusal),
    /// Storage failed, or the topic's writer stopped.
    Internal(String),
}

impl From<AppendError> for Failure {
    fn from(e: AppendError) -> Failure {
        match e {
            AppendError::Refused(r) => Failure::Refused(r),
            AppendError::Storage(message) => Failure::Internal(message),
            e @ AppendError::StorageFailed(_) => Failure::Internal(e.to_string()),
        }
    }
}

/// `POST /topics/{name}/messages`, behind [`super::auth::require_key`] (which gives the
/// identity): `201 {"topic", "seq"}` once the message is durable, or the status and body of
/// why not (see the module table). As on the wire, the time from the request to its answer,
/// whatever the answer, goes to the publish→confirm histogram.
async fn publish(
    State(broker): State<Broker>,
    Path(name): Path<String>,
    Extension(identity): Extension<Identity>,
    request: Request,
) -> Response {
    let received = Instant::now();
    if let Some(forbidden) = forbidden(&broker, &identity, Action::Publish, &name) {
        broker.metrics().observe_publish_confirm(received.elapsed());
        return forbidden;
    }
    let answer = match store(&broker, &name, &identity, request).await {
        Ok(Stored::New(seq)) => {
            let body = Published {
                topic: name,
                seq,
                duplicate: false,
            };
            (StatusCode::CREATED, Json(body)).into_response()
        }
        Ok(Stored::Duplicate(seq)) => {
            let body = Published {
                topic: name,
                seq,
                duplicate: true,
            };
            (StatusCode::OK, Json(body)).into_response()
        }
        Err(failure) => failure.into_response(),
    };
    broker.metrics().observe_publish_confirm(received.elapsed());
    answer
}

/// Refuses a body announced over `max_frame_bytes`, finds the topic, reads the body,
/// publishes, and waits for the confirm.
async fn store(
    broker: &Broker,
    name: &str,
    identity: &Identity,
    request: Request,
) -> Result<Stored, Failure> {
    refuse_announced_too_large(broker, name, request.headers())?;
    let headers = message_headers(request.headers())?;
    let key = broker.admission().limits_for(identity);
    let topic = find_topic(broker, name, &key).await?;
    let payload = Bytes::from_request(request, &())
        .await
        .map_err(|e| unreadable_body(broker, &topic, e))?;
    let admitted = crate::publish::publish(
        broker,
        &key,
        broker.admission().inbound(),
        &topic,
        crate::storage::log::Message {
            producer: None,
            headers,
            payload,
        },
    )
    .await?;
    let (confirm, stored): (_, fn(u64) -> Stored) = match admitted {
        Admitted::Queued(confirm) | Admitted::Parked(confirm) => (confirm, Stored::New),
        Admitted::Duplicate(original) => (original, Stored::Duplicate),
    };
    match confirm.await {
        Ok(outcome) => Ok(stored(outcome?)),
        Err(_) => Err(Failure::Internal("topic writer stopped".into())),
    }
}

/// What a publish over HTTP stored.
enum Stored {
    /// The message, as this sequence.
    New(u64),
    /// Nothing: it duplicates (by its `Idempotency-Key`) the message stored as this sequence.
    Duplicate(u64),
}

/// A body whose `Content-Length` is over `max_frame_bytes` is refused as too large for a frame
/// at once, before any of it is read (and before the topic is looked up or created); the
/// refusal counts for the topic if it exists.
fn refuse_announced_too_large(
    broker: &Broker,
    name: &str,
    headers: &HeaderMap,
) -> Result<(), Failure> {
    let announced = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    let max = u64::from(broker.config().limits.max_frame_bytes);
    match announced {
        Some(length) if length > max => {
            let r = crate::publish::too_large_for_a_frame(broker);
            let topic = broker.topic(name);
            crate::publish::count_refusal(broker, name, topic.as_deref(), &r);
            Err(Failure::Refused(r))
        }
        _ => Ok(()),
    }
}

/// The message headers carried as `weir-header-NAME` request headers, after the
/// `Idempotency-Key` as `weir-msg-id` when there is one.
fn message_headers(headers: &HeaderMap) -> Result<Headers, Failure> {
    let idempotency_key = headers.get("idempotency-key").map(|key| {
        std::str::from_utf8(key.as_bytes())
            .map(|key| (MSG_ID_HEADER.to_owned(), key.to_owned()))
            .map_err(|_| Failure::BadRequest("Idempotency-Key is not UTF-8".into()))
    });
    idempotency_key
        .into_iter()
        .chain(headers.iter().filter_map(|(name, value)| {
            let name = name.as_str().strip_prefix(HEADER_PREFIX)?;
            let value = std::str::from_utf8(value.as_bytes()).map_err(|_| {
                Failure::BadRequest(format!("header {HEADER_PREFIX}{name} is not UTF-8"))
            });
            Some(value.map(|value| (name.to_owned(), value.to_owned())))
        }))
        .collect()
}

/// The topic to publish to, auto-created as a wire publish would create it (paying `key`'s
/// `ops_per_s`).
async fn find_topic(broker: &Broker, name: &str, key: &KeyLimits) -> Result<Arc<Topic>, Failure> {
    broker
        .topic_or_create(name, Some(key))
        .await
        .map_err(|e| match e {
            CreateError::Refused(r) => Failure::Refused(r),
            CreateError::Unknown(name) => Failure::UnknownTopic(name),
            CreateError::TooMany(max) => {
                Failure::Refused(crate::publish::too_many_topics(broker, max))
            }
            CreateError::Invalid(message) => Failure::BadRequest(message),
            e @ (CreateError::Exists(_) | CreateError::Failed(_) | CreateError::OverCeiling(_)) => {
                Failure::Internal(e.to_string())
            }
        })
}

/// A body that could not be read: over the body limit it is refused as too large for a frame.
fn unreadable_body(broker: &Broker, topic: &Topic, e: BytesRejection) -> Failure {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        let r = crate::publish::too_large_for_a_frame(broker);
        crate::publish::count_refusal(broker, topic.name(), Some(topic), &r);
        Failure::Refused(r)
    } else {
        Failure::BadRequest(e.body_text())
    }
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        match self {
            Failure::Refused(r) => refusal_response(r),
            Failure::UnknownTopic(name) => unknown_topic(&name),
            Failure::BadRequest(message) => error_response(StatusCode::BAD_REQUEST, message),
            Failure::Internal(message) => {
                error_response(StatusCode::INTERNAL_SERVER_ERROR, message)
            }
        }
    }
}
