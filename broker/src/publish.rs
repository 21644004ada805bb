//! One publish, whichever door it came in by — a `Publish` frame ([`crate::connection`]) or
//! `POST /topics/{name}/messages` ([`crate::admin`]): the same checks, in the same order,
//! counted and logged the same way.
//!
//! In order, each refusal counted and logged by [`count_refusal`]:
//! 1. the broker is shutting down: `ShuttingDown` (it takes no new publishes);
//! 2. more than `limits.max_headers` headers, or more than `limits.max_header_bytes` of header
//!    names and values: `MessageTooLarge` naming that bound;
//! 3. the message would not fit in one `Deliver` frame (`max_frame_bytes`), with room kept for
//!    the origin headers a dead-letter copy adds: `MessageTooLarge` — so the broker never
//!    stores a message it could not deliver, here or as a dead letter;
//! 4. the disk budget (`storage.max_bytes`, `storage.min_free_bytes`, against the free space
//!    last measured): `StorageFull` naming the bound (checked again before the commit);
//! 5. admission before any topic — overload, the memory (the connection's share, then the
//!    broker's budget), the key's token buckets
//!    ([`crate::admission::Admission::admit_publish`]);
//! 6. the topic's own bounds and overflow policy ([`Topic::publish`], which counts its own
//!    refusals): queued for its commit, parked (`block`), or refused — and then the key's
//!    rate tokens are given back, so a refused publish costs the key nothing.

use std::time::Instant;

use weir_protocol::{Deliver, Limit, ProducerStamp, RejectReason};

use crate::admission::{KeyLimits, MemoryBudget, MemoryPermit};
use crate::broker::Broker;
use crate::refusal::Refusal;
use crate::storage::log::{self, Message};
use crate::topic::{Admitted, AppendError, BatchPart, Topic};

/// Runs one publish of `message` to `topic` on behalf of `key` through every check above, holding its memory from `memory` (the connection's inbound budget, or the
/// broker's inbound half for HTTP). `Ok` means the topic took it: its [`crate::topic::Confirm`]
/// resolves to the sequence once it is durable (or to a later refusal: a parked publish that
/// timed out, or the broker stopping). Waits only while the topic writer's `append_queue` is
/// full.
pub(crate) async fn publish(
    broker: &Broker,
    key: &KeyLimits,
    memory: &MemoryBudget,
    topic: &Topic,
    message: Message,
) -> Result<Admitted, AppendError> {
    let (message, permit) = admit(broker, key, memory, topic, message)?;
    let size = message.size();
    let admitted = topic.publish(message, permit, 0).await;
    if let Err(AppendError::Refused(_)) = admitted {
        key.give_back(size);
    }
    admitted
}

/// Runs a batch of messages to `topic` through the same checks, each on its own, in order:
/// what the topic did with each ([`Topic::publish_batch`]), consecutive queued messages as one
/// run. A message the topic refuses gives its key's rate tokens back, as a single one does.
/// With a `producer` stamp, message `i` is the producer's `seq + i` (the caller checked that
/// no sequence passes `u64::MAX`).
pub(crate) async fn publish_batch(
    broker: &Broker,
    key: &KeyLimits,
    memory: &MemoryBudget,
    topic: &Topic,
    (messages, producer): (Vec<weir_protocol::BatchMessage>, Option<ProducerStamp>),
) -> Vec<BatchPart> {
    let mut sizes = Vec::with_capacity(messages.len());
    let items: Vec<_> = messages
        .into_iter()
        .zip(0u64..)
        .map(|(m, i)| {
            let message = Message {
                producer: producer.map(|p| ProducerStamp {
                    id: p.id,
                    seq: p.seq.saturating_add(i),
                }),
                headers: m.headers,
                payload: m.payload,
            };
            let item = admit(broker, key, memory, topic, message);
            sizes.push(item.as_ref().ok().map(|(message, _)| message.size()));
            item
        })
        .collect();
    let parts = topic.publish_batch(items).await;
    let mut at = 0;
    for part in &parts {
        match part {
            BatchPart::Run { count, .. } => at += count,
            BatchPart::Refused(AppendError::Refused(_)) => {
                if let Some(Some(size)) = sizes.get(at) {
                    key.give_back(*size);
                }
                at += 1;
            }
            BatchPart::Refused(_) | BatchPart::Parked(_) | BatchPart::Duplicate(_) => at += 1,
        }
    }
    parts
}

/// The checks before the topic (steps 1–5 above) for one message: the message and its
/// memory, or its refusal (counted and logged).
fn admit(
    broker: &Broker,
    key: &KeyLimits,
    memory: &MemoryBudget,
    topic: &Topic,
    message: Message,
) -> Result<(Message, MemoryPermit), AppendError> {
    let refuse = |r: Refusal| {
        count_refusal(broker, topic.name(), Some(topic), &r);
        AppendError::Refused(r)
    };
    if broker.is_shutting_down() {
        let grace = broker.config().limits.shutdown_grace_ms;
        return Err(refuse(Refusal::new(
            RejectReason::ShuttingDown,
            Limit::new("shutdown_grace_ms", grace),
            None,
        )));
    }
    if let Some(limit) = header_bound_exceeded(broker, &message.headers) {
        return Err(refuse(too_large(limit)));
    }
    if !fits_a_frame(broker, &message.headers, message.payload.len()) {
        return Err(refuse(too_large_for_a_frame(broker)));
    }
    if let Err(limit) = broker.disk().check(log::record_len(&message)) {
        return Err(refuse(storage_full(broker, limit)));
    }
    let permit = broker
        .admission()
        .admit_publish(key, memory, message.memory_bytes(), Instant::now())
        .map_err(refuse)?;
    Ok((message, permit))
}

/// The header bound `headers` break (`limits.max_headers`, then `limits.max_header_bytes`), if
/// any.
pub(crate) fn header_bound_exceeded(
    broker: &Broker,
    headers: &[(String, String)],
) -> Option<Limit> {
    let l = &broker.config().limits;
    if headers.len() > l.max_headers as usize {
        return Some(Limit::new("max_headers", u64::from(l.max_headers)));
    }
    if log::header_bytes(headers) > u64::from(l.max_header_bytes) {
        return Some(Limit::new(
            "max_header_bytes",
            u64::from(l.max_header_bytes),
        ));
    }
    None
}

/// Whether a message of `headers` and `payload_len` bytes, with a dead-letter copy's origin
/// headers added, still fits in one `Deliver` frame of `max_frame_bytes`.
pub(crate) fn fits_a_frame(
    broker: &Broker,
    headers: &[(String, String)],
    payload_len: usize,
) -> bool {
    let l = &broker.config().limits;
    let room = crate::dead_letter::origin::origin_room(l.max_reason_bytes);
    Deliver::max_body_bytes(headers, payload_len) as u64 + room <= u64::from(l.max_frame_bytes)
}

/// The refusal of a publish whose header is larger than any the broker accepts: too large for
/// `max_header_bytes` (answered from its id alone; see [`crate::reader`]).
pub(crate) fn header_too_large(broker: &Broker) -> Refusal {
    let max = broker.config().limits.max_header_bytes;
    too_large(Limit::new("max_header_bytes", u64::from(max)))
}

/// The refusal of a publish the disk budget has no room for (`StorageFull` naming the bound;
/// come back after `max_retry_after_ms`: room returns as consumers ack and segments go).
fn storage_full(broker: &Broker, limit: Limit) -> Refusal {
    Refusal::new(
        RejectReason::StorageFull,
        limit,
        Some(broker.config().limits.max_retry_after_ms),
    )
}

/// A `MessageTooLarge` refusal naming `limit` (no retry hint: retrying cannot help).
fn too_large(limit: Limit) -> Refusal {
    Refusal::new(RejectReason::MessageTooLarge, limit, None)
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
    too_large(Limit::new("max_frame_bytes", u64::from(max_frame)))
}

/// The refusal of a publish that would auto-create a topic past `max_topics` (no retry hint:
/// only deleting a topic helps), counted in the broker's metrics.
pub(crate) fn too_many_topics(broker: &Broker, max: u32) -> Refusal {
    broker.metrics().refused(RejectReason::TooManyTopics);
    Refusal::new(
        RejectReason::TooManyTopics,
        Limit::new("max_topics", u64::from(max)),
        None,
    )
}
