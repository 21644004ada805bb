//! A connection's frame reader whose buffer draws from the broker's memory budget.
//!
//! The buffer is charged for exactly what it has allocated. Small frames — acks, credit,
//! pings, small publishes — are always read: they are at most [`READ_BASE`] bytes, and they
//! are what frees memory. A larger frame arriving while the budget is over its capacity is
//! **shed**: its header is decoded, its payload discarded as it arrives without being
//! buffered, and the connection answers it (`Rejected{Overloaded}` for a publish). So no
//! connection buffers a large frame while the budget is over, and a refused publisher hears why
//! at once instead of stalling. Bounded by `max_frame_bytes` per connection.

use bytes::{Buf, BytesMut};
use tokio::io::AsyncReadExt;
use tokio::net::tcp::OwnedReadHalf;
use tokio_util::codec::Decoder;
use weir_protocol::{CodecError, Frame, WeirCodec};

use crate::admission::{MemoryBudget, MemoryPermit};

/// Frames up to this size (with the next length prefix) are read whatever the budget holds.
pub(crate) const READ_BASE: u64 = 64 * 1024;
/// Spare room below which the buffer grows before a socket read.
const READ_SPARE: usize = 1024;
/// How much the buffer grows by for a socket read.
const READ_CHUNK: usize = 8 * 1024;

/// What the reader read.
#[derive(Debug)]
pub(crate) enum Read {
    /// A whole frame.
    Frame(Frame),
    /// A frame shed because the memory budget was over: its header only (empty payload). Its
    /// payload is being discarded unread.
    Shed(Frame),
}

/// Reads frames from one socket into a budget-accounted buffer.
pub(crate) struct FrameReader {
    read: OwnedReadHalf,
    codec: WeirCodec,
    buf: BytesMut,
    /// Holds exactly `buf.capacity()` bytes.
    memory: MemoryPermit,
    budget: MemoryBudget,
    /// Payload bytes of a shed frame still to discard.
    skip: usize,
    eof: bool,
}

impl FrameReader {
    /// A reader of `read` with `codec`'s frame limit, charging its buffer to `budget`.
    pub(crate) fn new(read: OwnedReadHalf, codec: WeirCodec, budget: &MemoryBudget) -> Self {
        FrameReader {
            read,
            codec,
            buf: BytesMut::new(),
            memory: budget.empty_permit(),
            budget: budget.clone(),
            skip: 0,
            eof: false,
        }
    }

    /// The next frame, or a shed one (see the module docs); `None` once the peer has closed
    /// cleanly. Cancel-safe: whatever was read stays buffered for the next call.
    pub(crate) async fn next(&mut self) -> Option<Result<Read, CodecError>> {
        if self.eof {
            return None;
        }
        loop {
            let discard = self.skip.min(self.buf.len());
            self.buf.advance(discard);
            self.skip -= discard;
            if self.skip == 0 {
                if let Some(read) = self.decode() {
                    self.account();
                    return Some(read);
                }
            }
            if self.buf.capacity() - self.buf.len() < READ_SPARE {
                self.buf.reserve(READ_CHUNK);
            }
            self.account();
            match self.read.read_buf(&mut self.buf).await {
                Ok(0) if self.skip > 0 => {
                    self.eof = true;
                    return Some(Err(CodecError::Truncated {
                        buffered: self.buf.len(),
                    }));
                }
                Ok(0) => {
                    self.eof = true;
                    let last = self.codec.decode_eof(&mut self.buf).transpose();
                    self.account();
                    return last.map(|r| r.map(Read::Frame));
                }
                Ok(_) => {}
                Err(e) => return Some(Err(CodecError::Io(e))),
            }
        }
    }

    /// The socket, for lingering after the connection is done.
    pub(crate) fn into_inner(self) -> OwnedReadHalf {
        self.read
    }

    /// Decodes what the buffer holds: a whole frame, a shed header, or `None` for more bytes.
    fn decode(&mut self) -> Option<Result<Read, CodecError>> {
        let large = self.codec.bytes_needed(&self.buf) as u64 > READ_BASE;
        if large && self.budget.is_over() {
            let head = match self.codec.decode_header(&self.buf)? {
                Ok(head) => head,
                Err(e) => return Some(Err(e)),
            };
            self.buf.advance(head.header_bytes);
            self.skip = head.payload_bytes;
            return Some(Ok(Read::Shed(head.frame)));
        }
        self.codec
            .decode(&mut self.buf)
            .map(|f| f.map(Read::Frame))
            .transpose()
    }

    /// Makes the permit hold exactly what the buffer has allocated.
    fn account(&mut self) {
        let capacity = self.buf.capacity() as u64;
        let held = self.memory.bytes();
        if capacity > held {
            self.memory.charge(capacity - held);
        } else {
            self.memory.shrink(held - capacity);
        }
    }
}
