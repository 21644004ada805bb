//! The Weir wire protocol: every frame a client and the broker exchange, and the
//! length-delimited codec that carries them over a byte stream.
//!
//! This crate is a pure codec: no I/O, no async runtime, no broker logic. Wire types live here;
//! the broker and the client convert to their own domain types at the boundary.
//!
//! # Frame layout
//!
//! ```text
//! +-------------+-----------------+----------------------------+---------------------+
//! | len: u32 BE | hdr_len: u32 BE | header: bincode 2 (serde)  | payload: raw bytes  |
//! +-------------+-----------------+----------------------------+---------------------+
//!               |<------------------------- len bytes ---------------------------->|
//! ```
//!
//! `len` counts everything after itself and is checked against the codec's maximum frame size
//! *before* any byte of the body is buffered, so an oversized frame is refused without reading it.
//! Only [`Frame::Publish`] and [`Frame::Deliver`] carry a payload; their payload is sliced out of
//! the read buffer as a [`bytes::Bytes`] without a copy. Every other frame must end at its header.
//!
//! # Layout
//!
//! - [`frame`] — the [`Frame`] enum and the structs it carries, one per message.
//! - [`types`] — value types shared by several frames (topic specs, reasons, codes, limits).
//! - [`codec`] — [`WeirCodec`], the tokio-util `Decoder`/`Encoder`, and [`wire_options`].
//! - [`error`] — [`CodecError`], what the codec reports for bad input.
//!
//! # Versioning
//!
//! Every connection opens with [`Hello`] carrying [`PROTOCOL_VERSION`]; the broker answers a
//! version it does not speak with [`ErrorCode::UnsupportedVersion`] and closes the connection.
//! Frame variants and fields are only ever appended, and a change of layout bumps the version.
//!
//! - v6: fields appended to structs older versions send, marked `since::v6` and laid out only
//!   on v6 connections ([`WeirCodec::set_version`]): idempotent publish
//!   ([`Publish::producer`], [`PublishBatch::producer`], [`PublishOk::duplicate`],
//!   `RejectReason::SequenceTooOld` / `DuplicatePending`), message age
//!   ([`TopicConfig::max_age_ms`] and in [`TopicSpec`], [`TopicUpdate`]) and key-ordered
//!   groups ([`GroupConfig::ordering`], [`GroupSpec::ordering`]). A v4 or v5 connection reads
//!   and writes exactly the layouts it always did.
//! - v5: batches ([`PublishBatch`] answered by [`Confirmed`] runs and per-message `Rejected`,
//!   [`DeliverBatch`], [`Settle`] ranges). Negotiated: a client sends the highest version it
//!   speaks, the broker answers the highest both speak (at least [`MIN_PROTOCOL_VERSION`]); a
//!   v4 client keeps working and is never sent a v5 frame.
//! - v4: [`UpdateTopic`] / [`TopicUpdated`] ([`TopicUpdate`]); [`UpdateGroup`] /
//!   [`GroupUpdated`] ([`GroupUpdate`]); `GroupSpec::ephemeral`; `ErrorCode::Forbidden` and
//!   `Error::denied` ([`Denied`]: the [`Action`] and topic a key may not use).
//! - v3: `GoingAway` carries a typed [`GoingAwayReason`]; `ListTopics` pages (`after`, `limit`,
//!   answered with `next`); `TopicInfo.groups_omitted`; `RejectReason::StorageFull`;
//!   `ServerLimits` announces the header bounds and the idle timeout; header and sequence
//!   lists are bounded on decode ([`MAX_HEADERS_CEILING`], [`MAX_SEQS_PER_FRAME`]);
//!   storage faults: [`TopicInfo::health`], `RejectReason::StorageDamaged`,
//!   `ErrorCode::StorageFailed` / `StorageDamaged`, [`RepairTopic`] / [`TopicRepaired`].
//! - v2: message headers, group settings, `Nack`/`Term`/`Progress`, deletes.

mod batch;
mod bounded;
pub mod codec;
pub mod error;
pub mod frame;
pub mod json;
mod since;
pub mod types;

pub use batch::{
    seq_ranges, BatchDelivery, BatchMessage, Confirmed, DeliverBatch, PublishBatch, Settle,
    Settlement, MAX_BATCH_HEADERS, MAX_BATCH_MESSAGES,
};
pub use bounded::{MAX_HEADERS_CEILING, MAX_SEQS_PER_FRAME};
pub use codec::{
    encoded_len, wire_options, FramePrefix, HeaderOnly, WeirCodec, DEFAULT_MAX_FRAME_BYTES,
    MAX_FRAME_BYTES_CEILING,
};
pub use error::CodecError;
pub use frame::*;
pub use types::*;

/// The protocol version this crate speaks, sent in [`Hello`] and echoed in [`HelloOk`].
pub const PROTOCOL_VERSION: u16 = 6;

/// The oldest protocol version a broker still speaks: a v4 client is answered in v4 and never
/// sent a v5 frame or a v6 field.
pub const MIN_PROTOCOL_VERSION: u16 = 4;
