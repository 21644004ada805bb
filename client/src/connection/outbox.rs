//! [`Outbox`]: the write buffer every outgoing frame is encoded into, with the broker's frame
//! limit; the task writes it to the socket in as few writes as it can. And [`TraceFrame`], how
//! frames appear in trace logs.

use bytes::BytesMut;
use weir_protocol::{CodecError, Frame, WeirCodec};

use crate::error::ClientError;

/// Encoded frames waiting to be written. Bounded by the task: it takes no new command while
/// this holds more than its high-water mark (one frame may overshoot it).
pub(crate) struct Outbox {
    pub buf: BytesMut,
    codec: WeirCodec,
}

impl Outbox {
    /// An empty outbox encoding with `codec` (the broker's `max_frame_bytes`).
    pub fn new(codec: WeirCodec) -> Outbox {
        Outbox {
            buf: BytesMut::new(),
            codec,
        }
    }

    /// A new connection: what was not written is dropped (the caller has taken back what it
    /// must resend), and frames are encoded with the new broker's limit.
    pub fn reset(&mut self, codec: WeirCodec) {
        self.buf.clear();
        self.codec = codec;
    }

    /// Bytes waiting to be written.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// Encodes one frame.
    pub fn send(&mut self, frame: &Frame) -> Result<(), ClientError> {
        self.encode(frame)?;
        Ok(())
    }

    /// Encodes one frame, keeping the codec's error (a publish over the frame limit is refused
    /// alone, not the connection).
    pub fn encode(&mut self, frame: &Frame) -> Result<(), CodecError> {
        if tracing::enabled!(tracing::Level::TRACE) {
            tracing::trace!(frame = ?TraceFrame(frame), "weir frame sent");
        }
        self.codec.encode_frame(frame, &mut self.buf)
    }
}

/// A frame for trace logs: payloads and headers shown by length only.
pub(crate) struct TraceFrame<'a>(pub &'a Frame);

impl std::fmt::Debug for TraceFrame<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Frame::Publish(p) => write!(
                f,
                "Publish{{id: {}, topic: {:?}, {} headers, {} bytes}}",
                p.id,
                p.topic,
                p.headers.len(),
                p.payload.len()
            ),
            Frame::Deliver(d) => write!(
                f,
                "Deliver{{sub: {}, seq: {}, attempt: {}, {} headers, {} bytes}}",
                d.sub,
                d.seq,
                d.attempt,
                d.headers.len(),
                d.payload.len()
            ),
            other => write!(f, "{other:?}"),
        }
    }
}
