//! One publish, whichever door it came in by — a `Publish` frame ([`crate::connection`]) or
//! `POST /topics/{name}/messages` ([`crate::admin`]): the same checks, in the same order,
//! counted and logged the same way.
//!
//! In order, each refusal counted and logged by [`count_refusal`]:
//! 1. the broker is shutting down: `ShuttingDown` (it takes no new publishes);
//! 2. the message would not fit in one `Deliver` frame (`max_frame_bytes`): `MessageTooLarge`;
//! 3. admission before any topic — overload, the memory budget, the key's token buckets
//!    ([`crate::admission::Admission::admit_publish`]);
//! 4. the topic's own bounds and overflow policy ([`Topic::publish`], which counts its own
//!    refusals): queued for its commit, parked (`block`), or refused.

use std::time::Instant;

use bytes::Bytes;
use weir_protocol::{Deliver, Headers, Limit, RejectReason};

use crate::admission::KeyLimits;
use crate::broker::Broker;
use crate::topic::{Admitted, AppendError, Refusal, Topic};

/// Runs one publish of `payload` with `headers` to `topic` on behalf of `key` through every
/// check above. `Ok` means the topic took it: its [`crate::topic::Confirm`] resolves to the
/// sequence once it is durable (or to a later refusal: a parked publish that timed out, or
/// the broker stopping). Waits only while the topic writer's `append_queue` is full.
pub(crate) async fn publish(
    broker: &Broker,
    key: &KeyLimits,
    topic: &Topic,
    headers: Headers,
    payload: Bytes,
) -> Result<Admitted, AppendError> {
    let refuse = |r: Refusal| {
        count_refusal(broker, &topic.config().name, Some(topic), &r);
        AppendError::Refused(r)
    };
    if broker.is_shutting_down() {
        let grace = broker.config().limits.shutdown_grace_ms;
        return Err(refuse(Refusal {
            reason: RejectReason::ShuttingDown,
            limit: Limit::new("shutdown_grace_ms", grace),
            retry_after_ms: None,
        }));
    }
    let max_frame = broker.config().limits.max_frame_bytes;
    if Deliver::max_body_bytes(&headers, payload.len()) > max_frame as usize {
        return Err(refuse(too_large_for_a_frame(broker)));
    }
    // What the broker holds for it: the payload and its headers.
    let held = payload.len() as u64 + crate::storage::log::header_bytes(&headers);
    let permit = broker
        .admission()
        .admit_publish(key, held, Instant::now())
        .map_err(refuse)?;
    topic.publish(headers, payload, permit).await
}

/// Accounts for a publish to `topic_name` refused before the topic saw it: counted by reason
/// in the broker's metrics, logged at most once per second per topic and reason, and counted
/// and noted on the topic if it exists (`TopicInfo.rejected`, `TopicInfo.refusing`).
pub(crate) fn count_refusal(broker: &Broker, topic_name: &str, topic: Option<&Topic>, r: &Refusal) {
    broker.metrics().refused(r.reason);
    broker.admission().log_refusal(topic_name, r);
    if let Some(topic) = topic {
        topic.note_refusal(r);
    }
}

/// The refusal of a message that cannot travel in one frame of `max_frame_bytes`
/// (`MessageTooLarge`, no retry hint: retrying cannot help).
pub(crate) fn too_large_for_a_frame(broker: &Broker) -> Refusal {
    let max_frame = broker.config().limits.max_frame_bytes;
    Refusal {
        reason: RejectReason::MessageTooLarge,
        limit: Limit::new("max_frame_bytes", u64::from(max_frame)),
        retry_after_ms: None,
    }
}

/// The refusal of a publish that would auto-create a topic past `max_topics` (no retry hint:
/// only deleting a topic helps), counted in the broker's metrics.
pub(crate) fn too_many_topics(broker: &Broker, max: u32) -> Refusal {
    broker.metrics().refused(RejectReason::TooManyTopics);
    Refusal {
        reason: RejectReason::TooManyTopics,
        limit: Limit::new("max_topics", u64::from(max)),
        retry_after_ms: None,
    }
}
