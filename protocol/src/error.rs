//! What the codec reports for input it cannot turn into a frame.

use std::io;

/// A failure to decode or encode one frame.
///
/// Every variant except [`CodecError::Io`] means the byte stream can no longer be trusted: the
/// receiver answers with a typed error frame (where it can) and closes that one connection.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// The length prefix announced a frame larger than the codec's maximum. Nothing of the body
    /// was buffered.
    #[error("frame of {len} bytes exceeds the maximum of {max} bytes")]
    FrameTooLarge {
        /// The announced (or, when encoding, the produced) frame length.
        len: usize,
        /// The codec's maximum frame length.
        max: usize,
    },
    /// The frame body is not a valid Weir frame: bad lengths, an unknown frame kind, a header that
    /// does not decode, or trailing bytes after a frame that carries no payload.
    #[error("malformed frame: {0}")]
    Malformed(String),
    /// The stream ended in the middle of a frame.
    #[error("stream ended inside a frame ({buffered} bytes buffered)")]
    Truncated {
        /// How many bytes of the unfinished frame were buffered when the stream ended.
        buffered: usize,
    },
    /// The underlying transport failed.
    #[error("i/o error: {0}")]
    Io(#[from] io::Error),
}
