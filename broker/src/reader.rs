//! A connection's frame reader whose buffers are charged to the connection's memory for exactly
//! what they have allocated, and allocate only as bytes arrive — never for what a length prefix
//! announces.
//!
//! - Small frames are read through a buffer of at most [`READ_BASE`] bytes that every
//!   connection is granted whatever its memory holds (charged all the same): acks, credit,
//!   pings and small publishes are always read, and they are what frees memory.
//! - A frame larger than that is assembled in a buffer of its own that grows, as its bytes
//!   arrive, by at most what has arrived (doubling, so each byte is copied about once as it
//!   grows, never past the frame's announced end) — and only if the connection's share
//!   (`max_connection_memory_bytes`) and the broker's inbound half of `memory_budget_bytes` have
//!   room. When they do not, a publish is **shed**: answered from its header
//!   (`Rejected{Overloaded}` naming the bound that had no room), its payload discarded as it
//!   arrives. Any other frame waits — this connection is paused — until memory frees up.
//! - A publish whose header is larger than any the broker accepts (`max_header_bytes`) is
//!   answered from its first bytes and skipped unbuffered.
//! - A frame whose bytes stop arriving for `frame_read_timeout` ends the connection
//!   ([`ReadError::Stalled`]); what it held is given back when the reader is dropped.
//! - Before `Hello` succeeds, frames are limited to `max_unauthenticated_frame_bytes`
//!   ([`FrameReader::authenticated`] lifts it to `max_frame_bytes`).

use std::time::Duration;

use bytes::{Buf, BufMut, BytesMut};
use tokio::io::AsyncReadExt;
use tokio::time::Instant;
use tokio_util::codec::Decoder;
use weir_protocol::{CodecError, Frame, WeirCodec};

use crate::admission::{MemoryBudget, MemoryFull, MemoryPermit};

/// The read half of a connection: a TCP socket's, or a TLS stream's.
pub(crate) type ReadHalf = Box<dyn tokio::io::AsyncRead + Send + Unpin>;

/// Buffer every connection may allocate whatever its memory holds (charged all the same); a
/// frame that does not fit in it is assembled in a buffer of its own.
pub(crate) const READ_BASE: usize = 64 * 1024;
/// Spare room below which the small-frame buffer grows before a socket read.
const READ_SPARE: usize = 1024;
/// The smallest growth of a buffer.
const READ_CHUNK: usize = 8 * 1024;
/// How often a reader paused for memory looks again.
const PAUSE_POLL: Duration = Duration::from_millis(5);

/// What the reader read.
#[derive(Debug)]
pub(crate) enum Read {
    /// A whole frame.
    Frame(Frame),
    /// A publish (or a batch of them) answered from its header alone, its payload discarded
    /// unread: `why`.
    Shed(Unread, Shed),
}

/// Publishes shed unread: what their frame's header said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Unread {
    /// The (first) publish id.
    pub(crate) first_id: u64,
    /// How many publishes (1, or a batch's messages).
    pub(crate) count: u64,
    /// The topic (empty when only the id was read).
    pub(crate) topic: String,
}

/// Why a publish was shed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Shed {
    /// Its payload would not fit in this level of memory.
    Memory(MemoryFull),
    /// Its header is larger than any publish header the broker accepts (only its id is known).
    HeaderTooLarge,
}

/// Why reading failed; each ends the connection.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ReadError {
    /// Bad or oversized input, or a failed socket.
    #[error(transparent)]
    Codec(#[from] CodecError),
    /// A frame stopped arriving part-way for `frame_read_timeout`.
    #[error("a frame stopped arriving: no byte of it for {0:?} ({1} bytes buffered)")]
    Stalled(Duration, usize),
}

/// The bounds a reader applies.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ReadLimits {
    /// Largest frame once the connection has authenticated.
    pub(crate) max_frame_bytes: usize,
    /// Largest frame before that.
    pub(crate) max_unauthenticated_frame_bytes: usize,
    /// Largest publish header accepted: a larger one is answered and skipped unbuffered.
    pub(crate) max_publish_header_bytes: usize,
    /// How long an incomplete frame may go without a byte.
    pub(crate) frame_read_timeout: Duration,
}

/// A frame larger than [`READ_BASE`], being assembled (length prefix included).
struct Large {
    data: Vec<u8>,
    /// Its whole length: the prefix and the body.
    total: usize,
}

/// Reads frames from one socket into buffers charged to the connection's memory.
pub(crate) struct FrameReader {
    read: ReadHalf,
    codec: WeirCodec,
    limits: ReadLimits,
    /// Small frames, and the first bytes of every frame.
    buf: BytesMut,
    /// The large frame in progress, if any.
    large: Option<Large>,
    /// Holds exactly what `buf` and `large` have allocated.
    memory: MemoryPermit,
    /// Bytes of the stream still to discard (a shed or skipped frame).
    skip: usize,
    /// A publish whose payload is being discarded, still to be answered.
    shedding: Option<(Unread, Shed)>,
    /// When the last byte of an incomplete frame arrived; `None` with no frame in progress.
    progress: Option<Instant>,
    eof: bool,
}

impl FrameReader {
    /// A reader of `read` under `limits`, charging its buffers to `memory` (the connection's
    /// inbound memory). Until [`FrameReader::authenticated`], frames are limited to
    /// `max_unauthenticated_frame_bytes`.
    pub(crate) fn new(read: ReadHalf, limits: ReadLimits, memory: &MemoryBudget) -> Self {
        FrameReader {
            read,
            codec: WeirCodec::new(limits.max_unauthenticated_frame_bytes),
            limits,
            buf: BytesMut::new(),
            large: None,
            memory: memory.empty_permit(),
            skip: 0,
            shedding: None,
            progress: None,
            eof: false,
        }
    }

    /// The connection has authenticated in protocol `version`: frames up to `max_frame_bytes`,
    /// laid out as that version, are read from now on.
    pub(crate) fn authenticated(&mut self, version: u16) {
        self.codec.set_max_frame_bytes(self.limits.max_frame_bytes);
        self.codec.set_version(version);
    }

    /// The next frame, or a shed publish (see the module docs); `None` once the peer has closed
    /// cleanly. Cancel-safe: whatever was read stays buffered for the next call.
    pub(crate) async fn next(&mut self) -> Option<Result<Read, ReadError>> {
        if self.eof {
            return None;
        }
        loop {
            self.discard();
            if self.skip == 0 {
                if let Some((publish, why)) = self.shedding.take() {
                    return Some(Ok(Read::Shed(publish, why)));
                }
                match self.decode() {
                    Some(read) => {
                        self.account();
                        let partial = !self.buf.is_empty() || self.large.is_some();
                        self.progress = partial.then(Instant::now);
                        return Some(read);
                    }
                    None if self.shedding.is_some() => continue,
                    None => {}
                }
            }
            match self.make_room() {
                Ok(()) => {}
                Err(full) => match self.shed(full) {
                    Ok(true) => continue,
                    Ok(false) => {
                        // Not a publish we can answer from its header: wait for memory. The
                        // time paused is ours, not the peer's: it does not count as a stall.
                        tokio::time::sleep(PAUSE_POLL).await;
                        self.progress = self.progress.map(|_| Instant::now());
                        continue;
                    }
                    Err(e) => return Some(Err(e.into())),
                },
            }
            match self.read_some().await {
                Ok(0) => {
                    self.eof = true;
                    let buffered = self.buf.len()
                        + self.skip
                        + self.large.as_ref().map_or(0, |l| l.data.len());
                    if buffered == 0 {
                        return None;
                    }
                    let last = self.codec.decode_eof(&mut self.buf);
                    self.account();
                    return Some(match last {
                        Ok(Some(frame)) if self.large.is_none() => Ok(Read::Frame(frame)),
                        Err(e) => Err(e.into()),
                        _ => Err(CodecError::Truncated { buffered }.into()),
                    });
                }
                Ok(_) => self.progress = Some(Instant::now()),
                Err(e) => return Some(Err(e)),
            }
        }
    }

    /// The socket, for lingering after the connection is done.
    pub(crate) fn into_inner(self) -> ReadHalf {
        self.read
    }

    /// Reads what the socket has (into the large frame when one is in progress, never past its
    /// end); fails when a frame in progress has had no byte for `frame_read_timeout`.
    async fn read_some(&mut self) -> Result<usize, ReadError> {
        let read = async {
            match &mut self.large {
                Some(large) => {
                    let left = large.total - large.data.len();
                    self.read.read_buf(&mut (&mut large.data).limit(left)).await
                }
                None => self.read.read_buf(&mut self.buf).await,
            }
        };
        let Some(last) = self.progress else {
            return read.await.map_err(|e| CodecError::Io(e).into());
        };
        let timeout = self.limits.frame_read_timeout;
        match tokio::time::timeout_at(last + timeout, read).await {
            Ok(read) => read.map_err(|e| CodecError::Io(e).into()),
            Err(_) => {
                let buffered = self.buf.len() + self.large.as_ref().map_or(0, |l| l.data.len());
                Err(ReadError::Stalled(timeout, buffered + self.skip))
            }
        }
    }

    /// Drops buffered bytes of a frame being discarded.
    fn discard(&mut self) {
        let n = self.skip.min(self.buf.len());
        self.buf.advance(n);
        self.skip -= n;
    }

    /// Decodes a whole buffered frame, answers a publish whose header is too large, or starts
    /// assembling a large frame; `None` when more bytes are needed.
    fn decode(&mut self) -> Option<Result<Read, ReadError>> {
        if let Some(large) = &mut self.large {
            if large.data.len() < large.total {
                return None;
            }
            // The frame keeps the buffer it was assembled in: no copy.
            let data = bytes::Bytes::from(std::mem::take(&mut large.data));
            let mut whole = data
                .try_into_mut()
                .unwrap_or_else(|shared| BytesMut::from(&shared[..]));
            self.large = None;
            let decoded = self.codec.decode(&mut whole).transpose()?;
            return Some(decoded.map(Read::Frame).map_err(ReadError::from));
        }
        if let Some(prefix) = self.codec.peek_prefix(&self.buf) {
            let too_large = prefix.header_len > self.limits.max_publish_header_bytes
                && prefix.len <= self.codec.max_frame_bytes();
            if let (Some(id), true) = (prefix.publish_id, too_large) {
                self.skip = 4 + prefix.len;
                self.shedding = Some((bare_publish(id), Shed::HeaderTooLarge));
                self.discard();
                return None;
            }
        }
        if self.codec.frame_ready(&self.buf) {
            let decoded = self.codec.decode(&mut self.buf).transpose()?;
            return Some(decoded.map(Read::Frame).map_err(ReadError::from));
        }
        None
    }

    /// Makes sure the buffer the next socket read goes into has spare room: the small-frame
    /// buffer, up to [`READ_BASE`]; else a large frame's own buffer, growing by what has
    /// arrived (at most to the frame's end) if the memory allows.
    fn make_room(&mut self) -> Result<(), MemoryFull> {
        if self.large.is_none() {
            if self.buf.capacity() - self.buf.len() >= READ_SPARE {
                return Ok(());
            }
            let grow = READ_CHUNK.max(self.buf.capacity());
            let total = self.frame_total();
            let fits = total.is_none_or(|t| t <= READ_BASE);
            if fits && self.buf.capacity() + grow <= READ_BASE {
                // BytesMut grows geometrically: take room for doubling before asking it to.
                self.take(grow)?;
                self.buf.reserve(READ_CHUNK);
                self.account();
                return Ok(());
            }
            // This frame does not fit in the small buffer: assemble it in its own.
            let total = total.unwrap_or(READ_BASE + 1);
            let data = self.buf.split().to_vec();
            self.buf = BytesMut::new();
            self.large = Some(Large { data, total });
            self.account();
        }
        let Some(large) = &self.large else {
            return Ok(());
        };
        if large.data.capacity() > large.data.len() {
            return Ok(());
        }
        let (arrived, left) = (large.data.len(), large.total - large.data.len());
        let grow = READ_CHUNK.max(arrived).min(left);
        self.take(grow)?;
        if let Some(large) = &mut self.large {
            large.data.reserve_exact(grow);
        }
        self.account();
        Ok(())
    }

    /// The whole length of the frame at the front of the small buffer, once its prefix is in.
    fn frame_total(&self) -> Option<usize> {
        let prefix = self.buf.first_chunk::<4>()?;
        Some(4 + u32::from_be_bytes(*prefix) as usize)
    }

    /// Takes `bytes` more for a buffer about to grow: granted within [`READ_BASE`] in all, and
    /// past it only if the connection's memory has room.
    fn take(&mut self, bytes: usize) -> Result<(), MemoryFull> {
        let granted = (READ_BASE as u64).saturating_sub(self.memory.bytes());
        let bytes = bytes as u64;
        if bytes <= granted {
            self.memory.charge(bytes);
            return Ok(());
        }
        self.memory.try_grow_named(bytes - granted)?;
        self.memory.charge(granted);
        Ok(())
    }

    /// The memory has no room to read further: if the frame in progress is a publish whose
    /// header is buffered, starts discarding its payload and answers it from the header.
    /// Returns whether it did.
    fn shed(&mut self, full: MemoryFull) -> Result<bool, CodecError> {
        let Some(large) = &self.large else {
            return Ok(false);
        };
        let head = match self.codec.decode_header(&large.data) {
            Some(head) => head?,
            None => return Ok(false),
        };
        let publish = match head.frame {
            Frame::Publish(p) => Unread {
                first_id: p.id,
                count: 1,
                topic: p.topic,
            },
            Frame::PublishBatch(b) => Unread {
                first_id: b.first_id,
                count: b.messages.len() as u64,
                topic: b.topic,
            },
            _ => return Ok(false),
        };
        self.skip = large.total - large.data.len();
        self.large = None;
        self.shedding = Some((publish, Shed::Memory(full)));
        self.account();
        Ok(true)
    }

    /// Makes the permit hold exactly what the buffers have allocated.
    fn account(&mut self) {
        let allocated = self.buf.capacity() + self.large.as_ref().map_or(0, |l| l.data.capacity());
        let (allocated, held) = (allocated as u64, self.memory.bytes());
        if allocated > held {
            self.memory.charge(allocated - held);
        } else {
            self.memory.shrink(held - allocated);
        }
    }
}

/// A publish known only by its id (its header was never buffered).
fn bare_publish(id: u64) -> Unread {
    Unread {
        first_id: id,
        count: 1,
        topic: String::new(),
    }
}
