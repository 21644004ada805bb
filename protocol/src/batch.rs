//! Protocol v5 batch frames: many messages in one frame each way, and settlements as ranges.
//!
//! - [`PublishBatch`]: messages for one topic with consecutive publish ids. Each message keeps
//!   its own headers, bounds and answer: the broker confirms stored runs with [`Confirmed`]
//!   (ids `first_id..first_id + count` stored as `first_seq..`) and refuses each refused
//!   message with its own `Rejected` (reason, limit, retry hint), as for single publishes.
//! - [`DeliverBatch`]: deliveries to one subscription coalesced into one frame; each one still
//!   consumes one credit.
//! - [`Settle`]: acks, nacks, terms or progress for ranges of sequence numbers.
//!
//! Payloads travel after the header like a single publish's, concatenated in message order;
//! each entry's `len` says where its payload ends, and decoding slices them out of the read
//! buffer without a copy.
//!
//! Bounds on decode (more is a malformed frame, refused before allocating): at most
//! [`MAX_BATCH_MESSAGES`] messages, at most [`MAX_BATCH_HEADERS`] headers over all of them
//! (and [`crate::MAX_HEADERS_CEILING`] on one), at most [`crate::MAX_SEQS_PER_FRAME`] ranges.

use std::fmt;
use std::marker::PhantomData;

use bytes::Bytes;
use serde::de::{DeserializeSeed, Error as _, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};

use crate::bounded::BoundedVec;
use crate::types::Headers;
use crate::MAX_HEADERS_CEILING;

/// Most messages one [`PublishBatch`] or [`DeliverBatch`] may carry on the wire.
pub const MAX_BATCH_MESSAGES: usize = 4096;

/// Most headers all the messages of one batch frame may carry together. A decoded header costs
/// ~48 bytes against 2 on the wire: this caps what one frame can make a peer allocate at
/// ~800 KiB, whatever its size.
pub const MAX_BATCH_HEADERS: usize = 16_384;

/// Publishes messages to one topic; message `i` has publish id `first_id + i`. Answered per
/// message: [`Confirmed`] runs for the stored ones, `Rejected` or `Error` for each other. An
/// empty batch is answered by nothing and changes nothing (it does not auto-create its topic).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishBatch {
    /// The publish id of the first message; the others follow consecutively.
    pub first_id: u64,
    /// The target topic.
    pub topic: String,
    /// The messages, in order; at most [`MAX_BATCH_MESSAGES`].
    #[serde(deserialize_with = "publish_entries")]
    pub messages: Vec<BatchMessage>,
    /// The producer stamp of the first message; message `i` is the producer's `seq + i`.
    /// Since protocol v6.
    #[serde(default, with = "crate::since::v6")]
    pub producer: Option<crate::ProducerStamp>,
}

/// One message of a [`PublishBatch`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchMessage {
    /// Its headers, stored and delivered with it.
    pub headers: Headers,
    /// Its payload's length on the wire (set by [`BatchMessage::new`]).
    pub len: u32,
    /// Its body; carried after the frame's header, not inside it.
    #[serde(skip)]
    pub payload: Bytes,
}

impl BatchMessage {
    /// A message of `headers` and `payload`, its `len` set to match.
    pub fn new(headers: Headers, payload: Bytes) -> BatchMessage {
        BatchMessage {
            headers,
            len: payload.len() as u32,
            payload,
        }
    }
}

/// Confirms a run of publishes: ids `first_id..first_id + count` are stored, durable under the
/// topic's policy, as sequences `first_seq..first_seq + count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Confirmed {
    /// The first publish id of the run.
    pub first_id: u64,
    /// How many consecutive publishes the run confirms.
    pub count: u32,
    /// The sequence of the first; the others follow consecutively.
    pub first_seq: u64,
}

/// Deliveries to one subscription in one frame; each consumes one credit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliverBatch {
    /// The subscription id.
    pub sub: u64,
    /// The deliveries, in the order the broker sent them; at most [`MAX_BATCH_MESSAGES`].
    #[serde(deserialize_with = "delivery_entries")]
    pub messages: Vec<BatchDelivery>,
}

/// One delivery of a [`DeliverBatch`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchDelivery {
    /// The message's sequence number in its topic.
    pub seq: u64,
    /// 1 for the first delivery to the group, +1 for each redelivery.
    pub attempt: u32,
    /// The headers the message was published with.
    pub headers: Headers,
    /// Its payload's length on the wire (set by [`BatchDelivery::new`]).
    pub len: u32,
    /// The message body; carried after the frame's header, not inside it.
    #[serde(skip)]
    pub payload: Bytes,
}

impl BatchDelivery {
    /// A delivery of message `seq` (its `attempt`-th), its `len` set to match `payload`.
    pub fn new(seq: u64, attempt: u32, headers: Headers, payload: Bytes) -> BatchDelivery {
        BatchDelivery {
            seq,
            attempt,
            headers,
            len: payload.len() as u32,
            payload,
        }
    }
}

/// Settles the deliveries a subscription holds in `ranges` (inclusive; sequences in them not
/// in flight to this subscription are ignored, as in `Ack`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Settle {
    /// The subscription id.
    pub sub: u64,
    /// Inclusive ranges `(from, to)`; at most [`crate::MAX_SEQS_PER_FRAME`].
    #[serde(deserialize_with = "ranges")]
    pub ranges: Vec<(u64, u64)>,
    /// What to do with them.
    pub how: Settlement,
}

/// What a [`Settle`] does with its deliveries (as `Ack`, `Nack`, `Term` and `Progress` do).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Settlement {
    /// Processed.
    Ack,
    /// Failed: redeliver after at least this many milliseconds.
    Nack {
        /// The delay.
        delay_ms: u64,
    },
    /// Can never be processed: dead-letter now, with this reason.
    Term {
        /// Why, kept as the dead letter's `weir-reason` header.
        reason: String,
    },
    /// Still working: restart their ack deadlines.
    Progress,
}

/// Sorted sequence numbers as inclusive ranges of consecutive ones (`[1, 2, 3, 7]` is
/// `[(1, 3), (7, 7)]`). `seqs` is sorted and deduplicated in place.
pub fn seq_ranges(seqs: &mut Vec<u64>) -> Vec<(u64, u64)> {
    seqs.sort_unstable();
    seqs.dedup();
    let mut ranges: Vec<(u64, u64)> = Vec::new();
    for &seq in seqs.iter() {
        match ranges.last_mut() {
            Some((_, to)) if *to + 1 == seq => *to = seq,
            _ => ranges.push((seq, seq)),
        }
    }
    ranges
}

fn ranges<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<(u64, u64)>, D::Error> {
    d.deserialize_seq(BoundedVec::new(crate::MAX_SEQS_PER_FRAME, "ranges"))
}

fn publish_entries<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<BatchMessage>, D::Error> {
    d.deserialize_seq(Entries(PhantomData))
}

fn delivery_entries<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<BatchDelivery>, D::Error> {
    d.deserialize_seq(Entries(PhantomData))
}

/// An entry of a batch frame, decoded with a share of the frame's header budget.
trait Entry: Sized {
    /// Fields the entry encodes (bincode encodes a struct as a tuple of its fields).
    const FIELDS: usize;
    /// Reads the entry's fields from `seq`, its headers taking at most `budget`.
    fn visit<'de, A: SeqAccess<'de>>(seq: &mut A, budget: &mut usize) -> Result<Self, A::Error>;
}

impl Entry for BatchMessage {
    const FIELDS: usize = 2;

    fn visit<'de, A: SeqAccess<'de>>(seq: &mut A, budget: &mut usize) -> Result<Self, A::Error> {
        let headers = field(seq.next_element_seed(HeadersSeed(budget))?)?;
        let len = field(seq.next_element()?)?;
        Ok(BatchMessage {
            headers,
            len,
            payload: Bytes::new(),
        })
    }
}

impl Entry for BatchDelivery {
    const FIELDS: usize = 4;

    fn visit<'de, A: SeqAccess<'de>>(seq: &mut A, budget: &mut usize) -> Result<Self, A::Error> {
        let seq_no = field(seq.next_element()?)?;
        let attempt = field(seq.next_element()?)?;
        let headers = field(seq.next_element_seed(HeadersSeed(budget))?)?;
        let len = field(seq.next_element()?)?;
        Ok(BatchDelivery {
            seq: seq_no,
            attempt,
            headers,
            len,
            payload: Bytes::new(),
        })
    }
}

fn field<T, E: serde::de::Error>(value: Option<T>) -> Result<T, E> {
    value.ok_or_else(|| E::custom("a batch entry is missing a field"))
}

/// The entries of a batch frame: at most [`MAX_BATCH_MESSAGES`], sharing
/// [`MAX_BATCH_HEADERS`] headers.
struct Entries<T>(PhantomData<T>);

impl<'de, T: Entry> Visitor<'de> for Entries<T> {
    type Value = Vec<T>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "at most {MAX_BATCH_MESSAGES} batch entries")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
        let too_many = || A::Error::custom(format!("more than {MAX_BATCH_MESSAGES} messages"));
        let announced = seq.size_hint().unwrap_or(0);
        if announced > MAX_BATCH_MESSAGES {
            return Err(too_many());
        }
        let mut budget = MAX_BATCH_HEADERS;
        let mut out = Vec::with_capacity(announced);
        while let Some(entry) = seq.next_element_seed(EntrySeed::<T>(&mut budget, PhantomData))? {
            if out.len() == MAX_BATCH_MESSAGES {
                return Err(too_many());
            }
            out.push(entry);
        }
        Ok(out)
    }
}

/// Decodes one entry with the frame's remaining header budget.
struct EntrySeed<'b, T>(&'b mut usize, PhantomData<T>);

impl<'de, T: Entry> DeserializeSeed<'de> for EntrySeed<'_, T> {
    type Value = T;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<T, D::Error> {
        d.deserialize_tuple(T::FIELDS, self)
    }
}

impl<'de, T: Entry> Visitor<'de> for EntrySeed<'_, T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a batch entry")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<T, A::Error> {
        T::visit(&mut seq, self.0)
    }
}

/// Decodes one message's headers: at most [`MAX_HEADERS_CEILING`], and at most what is left of
/// the frame's budget, which it then takes.
struct HeadersSeed<'b>(&'b mut usize);

impl<'de> DeserializeSeed<'de> for HeadersSeed<'_> {
    type Value = Headers;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Headers, D::Error> {
        let max = MAX_HEADERS_CEILING.min(*self.0);
        let headers: Headers = d.deserialize_seq(BoundedVec::new(max, "headers (in a batch)"))?;
        *self.0 -= headers.len();
        Ok(headers)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seqs_become_inclusive_ranges_of_consecutive_ones() {
        let mut seqs = vec![7, 3, 1, 2, 3, 9, 8];
        assert_eq!(seq_ranges(&mut seqs), vec![(1, 3), (7, 9)]);
        assert_eq!(seq_ranges(&mut Vec::new()), vec![]);
        assert_eq!(seq_ranges(&mut vec![u64::MAX]), vec![(u64::MAX, u64::MAX)]);
    }
}
