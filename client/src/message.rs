//! [`Message`]: one publish as the publisher hands it to the connection, and as the connection
//! keeps it until the broker answers (to resend it after a reconnect) and a retry resends it.

use bytes::Bytes;
use weir_protocol::{Headers, ProducerStamp};

/// One message as handed to the connection: its topic, headers, body and producer stamp. A
/// retry or a resend after a reconnect sends a clone (the body is reference-counted; headers,
/// usually none, are copied) — with the same stamp, so the broker stores it once.
#[derive(Debug, Clone)]
pub(crate) struct Message {
    pub topic: String,
    pub headers: Headers,
    pub payload: Bytes,
    /// Its publisher's id and its number there (sent on protocol v6 connections).
    pub producer: Option<ProducerStamp>,
}

impl Message {
    /// A message for `topic`, without a producer stamp.
    pub fn new(topic: &str, headers: Headers, payload: Bytes) -> Message {
        Message {
            topic: topic.to_owned(),
            headers,
            payload,
            producer: None,
        }
    }
}
