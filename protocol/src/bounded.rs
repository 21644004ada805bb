//! Bounded decoding of the lists a peer sends: a frame may announce any length, and bincode
//! would allocate for it before the elements arrive. These bounds make the cost of decoding a
//! frame proportional to its size *and* small per element, whatever the peer announces:
//! more than the bound is a malformed frame (the connection is closed), decided from the
//! announced length before anything is allocated.
//!
//! The broker applies its own, lower, configured bounds (`limits.max_headers`) after decoding
//! and answers those with a typed refusal; these are the ceilings no configuration may pass.

use std::fmt;
use std::marker::PhantomData;

use serde::de::{Error as _, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer};

use crate::types::Headers;

/// Most headers one message may carry on the wire (the configurable `limits.max_headers` is at
/// most this). A decoded header costs ~48 bytes of memory against 2 bytes on the wire, so
/// this caps that amplification at ~48 KiB per frame.
pub const MAX_HEADERS_CEILING: usize = 1024;

/// Most sequence numbers one `Ack`, `Nack`, `Term` or `Progress` frame may carry (clients
/// send at most 16 384). A decoded sequence costs 8 bytes against 1 on the wire.
pub const MAX_SEQS_PER_FRAME: usize = 65_536;

/// Deserializes message headers, refusing more than [`MAX_HEADERS_CEILING`].
pub(crate) fn headers<'de, D: Deserializer<'de>>(d: D) -> Result<Headers, D::Error> {
    d.deserialize_seq(BoundedVec::new(MAX_HEADERS_CEILING, "headers"))
}

/// Deserializes a list of sequence numbers, refusing more than [`MAX_SEQS_PER_FRAME`].
pub(crate) fn seqs<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u64>, D::Error> {
    d.deserialize_seq(BoundedVec::new(MAX_SEQS_PER_FRAME, "sequence numbers"))
}

/// A `Vec` visitor that refuses more than `max` elements, before allocating when the format
/// announces the length (bincode does), and while reading otherwise.
pub(crate) struct BoundedVec<T> {
    max: usize,
    what: &'static str,
    element: PhantomData<T>,
}

impl<T> BoundedVec<T> {
    pub(crate) fn new(max: usize, what: &'static str) -> Self {
        BoundedVec {
            max,
            what,
            element: PhantomData,
        }
    }
}

impl<'de, T: Deserialize<'de>> Visitor<'de> for BoundedVec<T> {
    type Value = Vec<T>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "at most {} {}", self.max, self.what)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
        let too_many = || A::Error::custom(format!("more than {} {}", self.max, self.what));
        let announced = seq.size_hint().unwrap_or(0);
        if announced > self.max {
            return Err(too_many());
        }
        let mut out = Vec::with_capacity(announced);
        while let Some(item) = seq.next_element()? {
            if out.len() == self.max {
                return Err(too_many());
            }
            out.push(item);
        }
        Ok(out)
    }
}
