//! The origin headers a dead-letter copy carries, and the frame room they take — apart from
//! the mover, so the configuration and the publish checks can size frames without it.

use weir_protocol::Headers;

/// The origin headers a dead-letter copy carries, replacing any a message already had (so a
/// message dead-lettered twice carries one set, of its latest death).
pub(super) const ORIGIN_HEADERS: [&str; 5] = [
    "weir-origin-topic",
    "weir-origin-seq",
    "weir-origin-group",
    "weir-attempts",
    "weir-reason",
];

/// What a message's `weir-msg-id` is called in its dead-letter copy: the id belongs to the
/// dedup window of the topic it was published to, not to the dead-letter topic's.
pub(super) const ORIGIN_MSG_ID_HEADER: &str = "weir-origin-msg-id";

/// The most bytes the origin headers add to a message's `Deliver` frame when reasons are cut at
/// `max_reason_bytes`: names, values (topic and group names at most 200 bytes, seq and attempts
/// as decimal numbers) and their varint lengths. A publish keeps this room in its frame
/// ([`crate::publish::fits_a_frame`]), so its dead-letter copy is always deliverable, and a
/// dead-letter topic does not count it against its `max_message_bytes`.
pub(crate) fn origin_room(max_reason_bytes: u32) -> u64 {
    let renamed_id = ORIGIN_MSG_ID_HEADER.len() - weir_protocol::MSG_ID_HEADER.len();
    let names: usize = ORIGIN_HEADERS.iter().map(|n| n.len()).sum::<usize>() + renamed_id;
    let values = 200 + 20 + 200 + 10 + max_reason_bytes as usize;
    let lengths = 2 * ORIGIN_HEADERS.len() * 3 + 3;
    (names + values + lengths) as u64
}

/// `(topic, group, seq)` of a dead-lettered message, from its origin headers.
pub(super) fn origin_of(headers: &Headers) -> Option<(String, String, u64)> {
    let get = |name: &str| headers.iter().find(|(k, _)| k == name).map(|(_, v)| v);
    Some((
        get("weir-origin-topic")?.clone(),
        get("weir-origin-group")?.clone(),
        get("weir-origin-seq")?.parse().ok()?,
    ))
}
