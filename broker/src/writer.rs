//! A connection's socket writer: drains the connection's two outbound queues (control frames
//! first), encodes many frames per socket write, and keeps each frame's memory charged until
//! its bytes have been written.
//!
//! Bounds and behaviour at them:
//! - at most [`FRAMES_PER_WRITE`] frames or [`WRITE_BATCH_BYTES`] (plus one frame) are encoded
//!   before writing;
//! - a socket that accepts no byte for `slow_consumer_timeout` while frames wait ends the writer
//!   with [`WriterEnd::SlowConsumer`]: the connection is closed, its unacked deliveries return
//!   to their groups, and the memory its queued frames held is given back;
//! - a frame that cannot be encoded (it would not fit in `max_frame_bytes`) is never dropped
//!   silently: it is logged, counted (`weir_replies_too_large_total`) and replaced by an
//!   `Error{FrameTooLarge}` answering the same request.
//! - on a v5 connection, consecutive deliveries to one subscription within one socket write
//!   are coalesced into one `DeliverBatch` of at most [`MAX_BATCH_MESSAGES`] deliveries,
//!   [`MAX_BATCH_HEADERS`] headers and `max_frame_bytes` (a lone delivery stays a `Deliver`).

use std::time::Duration;

use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Arc;

use bytes::BytesMut;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use weir_protocol::{
    BatchDelivery, Deliver, DeliverBatch, Error, ErrorCode, Frame, GoingAway, GoingAwayReason,
    WeirCodec, MAX_BATCH_HEADERS, MAX_BATCH_MESSAGES,
};

use crate::admission::{ConnectionMemory, MemoryPermit};
use crate::broker::Broker;
use crate::outbox::Outbound;

/// The write half of a connection: a TCP socket's, or a TLS stream's.
pub(crate) type WriteHalf = Box<dyn tokio::io::AsyncWrite + Send + Unpin>;

/// Most frames encoded per socket write.
const FRAMES_PER_WRITE: usize = 512;
/// Bytes encoded before the batch is written (a frame may take it past this once).
const WRITE_BATCH_BYTES: usize = 256 * 1024;
/// A write buffer larger than this after a batch is given back to the allocator.
const KEEP_BUFFER_BYTES: usize = 1024 * 1024;
/// A coalescing buffer with room for more deliveries than this is given back after its batch
/// (it holds at most [`FRAMES_PER_WRITE`] in one write).
const KEEP_COALESCING_ENTRIES: usize = 64;
/// How long a writer that gave up on a slow consumer tries to tell it why.
const GOING_AWAY_GRACE: Duration = Duration::from_millis(200);

/// How a writer ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WriterEnd {
    /// Both queues were closed and drained: the connection is done.
    Drained,
    /// The socket failed or the peer closed it.
    Closed,
    /// The socket accepted nothing for `slow_consumer_timeout` while frames waited.
    SlowConsumer,
}

/// The writer of one connection.
pub(crate) struct Writer {
    socket: WriteHalf,
    codec: WeirCodec,
    buf: BytesMut,
    /// The memory of the frames encoded into `buf`, given back once it is written.
    held: Vec<MemoryPermit>,
    broker: Broker,
    conn: u64,
    /// The connection's memory, to tell whether freeing some may unblock a dispatcher.
    memory: ConnectionMemory,
    slow_consumer_timeout: Duration,
    /// The protocol version agreed in `Hello`, set by the handshake: the layout frames are
    /// encoded in, and from v5 deliveries are coalesced into `DeliverBatch` frames.
    version: Arc<AtomicU16>,
    /// Deliveries being coalesced into one `DeliverBatch`.
    coalescing: Coalescing,
}

/// Deliveries to one subscription waiting to be encoded as one `DeliverBatch`.
#[derive(Default)]
struct Coalescing {
    sub: u64,
    deliveries: Vec<BatchDelivery>,
    /// An upper bound of their encoded size (see [`Deliver::max_body_bytes`]).
    bytes: usize,
    headers: usize,
}

/// Bytes a `DeliverBatch` header takes beyond its entries: the header length, the variant,
/// the subscription id and the entry count, each at its largest.
const BATCH_OVERHEAD: usize = 4 + 1 + 9 + 5;

impl Writer {
    /// A writer of connection `conn` (whose memory is `memory`) to `socket`, encoding with
    /// `codec`.
    pub(crate) fn new(
        socket: WriteHalf,
        codec: WeirCodec,
        broker: Broker,
        (conn, memory): (u64, ConnectionMemory),
    ) -> Writer {
        let timeout = Duration::from_millis(broker.config().limits.slow_consumer_timeout_ms);
        Writer {
            socket,
            codec,
            buf: BytesMut::new(),
            held: Vec::new(),
            broker,
            conn,
            memory,
            slow_consumer_timeout: timeout,
            version: Arc::new(AtomicU16::new(weir_protocol::MIN_PROTOCOL_VERSION)),
            coalescing: Coalescing::default(),
        }
    }

    /// Encodes frames in the protocol version `version` holds (set by the handshake), and
    /// coalesces deliveries into `DeliverBatch` frames from v5.
    pub(crate) fn speaking(mut self, version: Arc<AtomicU16>) -> Writer {
        self.version = version;
        self
    }

    /// Writes queued frames until both queues are closed and drained, the socket fails, or the
    /// peer stops reading (see the module docs). Half-closes the socket when done.
    pub(crate) async fn run(
        mut self,
        mut control: mpsc::Receiver<Outbound>,
        mut deliveries: mpsc::Receiver<Outbound>,
    ) -> WriterEnd {
        let end = loop {
            let first = tokio::select! {
                biased;
                Some(frame) = control.recv() => frame,
                Some(frame) = deliveries.recv() => frame,
                else => break WriterEnd::Drained,
            };
            self.encode(first);
            for _ in 1..FRAMES_PER_WRITE {
                if self.buf.len() >= WRITE_BATCH_BYTES {
                    break;
                }
                let Ok(next) = control.try_recv().or_else(|_| deliveries.try_recv()) else {
                    break;
                };
                self.encode(next);
            }
            self.encode_coalesced();
            if let Err(end) = self.flush().await {
                break end;
            }
        };
        match end {
            WriterEnd::Drained => {
                let _ = self.socket.shutdown().await;
            }
            WriterEnd::SlowConsumer => self.give_up_on_slow_consumer().await,
            WriterEnd::Closed => {}
        }
        // Frames still queued hold memory: give it back now, not when the connection ends.
        control.close();
        deliveries.close();
        while control.try_recv().is_ok() || deliveries.try_recv().is_ok() {}
        self.broker.admission().delivery_room().freed();
        end
    }

    /// Encodes `out` into the batch, keeping its memory until written (a delivery to a v5
    /// client joins the deliveries being coalesced instead). A frame too large to encode is
    /// answered with an error frame instead (see the module docs).
    fn encode(&mut self, out: Outbound) {
        if let Some(memory) = out.memory {
            self.held.push(memory);
        }
        let version = self.version.load(Ordering::Relaxed);
        if version != self.codec.version() {
            self.encode_coalesced();
            self.codec.set_version(version);
        }
        let frame = match out.frame {
            Frame::Deliver(d) if version >= 5 => {
                return self.coalesce(d);
            }
            frame => frame,
        };
        self.encode_coalesced();
        self.encode_frame(frame);
    }

    /// Adds a delivery to those being coalesced, encoding them first when it is to another
    /// subscription or would take them past a bound.
    fn coalesce(&mut self, d: Deliver) {
        let size = Deliver::max_body_bytes(&d.headers, d.payload.len());
        let c = &self.coalescing;
        let fits = c.deliveries.len() < MAX_BATCH_MESSAGES
            && c.headers + d.headers.len() <= MAX_BATCH_HEADERS
            && BATCH_OVERHEAD + c.bytes + size <= self.codec.max_frame_bytes();
        if !c.deliveries.is_empty() && (c.sub != d.sub || !fits) {
            self.encode_coalesced();
        }
        let c = &mut self.coalescing;
        c.sub = d.sub;
        c.bytes += size;
        c.headers += d.headers.len();
        c.deliveries
            .push(BatchDelivery::new(d.seq, d.attempt, d.headers, d.payload));
    }

    /// Encodes the deliveries being coalesced: one `DeliverBatch`, or a `Deliver` when there
    /// is one.
    fn encode_coalesced(&mut self) {
        let c = &mut self.coalescing;
        let sub = c.sub;
        let frame = match c.deliveries.len() {
            0 => return,
            1 => {
                let d = c.deliveries.pop().expect("one delivery");
                Frame::Deliver(Deliver {
                    sub,
                    seq: d.seq,
                    attempt: d.attempt,
                    headers: d.headers,
                    payload: d.payload,
                })
            }
            _ => {
                self.broker.metrics().deliver_batches.add(1);
                Frame::DeliverBatch(DeliverBatch {
                    sub,
                    messages: std::mem::take(&mut c.deliveries),
                })
            }
        };
        c.bytes = 0;
        c.headers = 0;
        let frame = self.encode_frame(frame);
        // Keep the entries' allocation for the next batch, unless a burst made it large
        // (an idle connection should not hold one).
        if let Frame::DeliverBatch(mut batch) = frame {
            if batch.messages.capacity() <= KEEP_COALESCING_ENTRIES {
                batch.messages.clear();
                self.coalescing.deliveries = batch.messages;
            }
        }
    }

    /// Encodes one frame, or the error frame that replaces one too large; returns the frame.
    fn encode_frame(&mut self, frame: Frame) -> Frame {
        if let Err(e) = self.codec.encode_frame(&frame, &mut self.buf) {
            let (name, req) = (frame.name(), frame.request_id());
            self.broker.metrics().replies_too_large.add(1);
            tracing::warn!(conn = self.conn, frame = name, req, error = %e, "a frame does not fit the frame limit; answering with an error instead");
            let error = Frame::Error(Error {
                req,
                code: ErrorCode::FrameTooLarge,
                message: format!("the {name} answer cannot be sent: {e}"),
                denied: None,
            });
            // An error frame of a short message always fits.
            let _ = self.codec.encode_frame(&error, &mut self.buf);
        }
        frame
    }

    /// Writes the batch; a write that makes no progress for `slow_consumer_timeout` fails it.
    async fn flush(&mut self) -> Result<(), WriterEnd> {
        while !self.buf.is_empty() {
            let write = self.socket.write_buf(&mut self.buf);
            match tokio::time::timeout(self.slow_consumer_timeout, write).await {
                Ok(Ok(0) | Err(_)) => return Err(WriterEnd::Closed),
                Ok(Ok(_)) => {}
                Err(_) => return Err(WriterEnd::SlowConsumer),
            }
        }
        // A TLS stream may keep records it could not write yet (a TCP socket keeps nothing).
        match tokio::time::timeout(self.slow_consumer_timeout, self.socket.flush()).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return Err(WriterEnd::Closed),
            Err(_) => return Err(WriterEnd::SlowConsumer),
        }
        if !self.held.is_empty() {
            // Dispatchers wait for room only when this connection's share or the outbound half
            // could not take a frame: wake them only then.
            let max_frame = u64::from(self.broker.config().limits.max_frame_bytes);
            let admission = self.broker.admission();
            let tight =
                self.memory.room() < max_frame || admission.outbound().available() < max_frame;
            self.held.clear();
            if tight {
                admission.delivery_room().freed();
            }
        }
        if self.buf.capacity() > KEEP_BUFFER_BYTES {
            self.buf = BytesMut::new();
        }
        Ok(())
    }

    /// Counts and logs a peer that stopped reading, and tries briefly to tell it why (after
    /// the rest of the frame it was in the middle of).
    async fn give_up_on_slow_consumer(&mut self) {
        self.broker.metrics().slow_consumers_closed.add(1);
        tracing::warn!(
            conn = self.conn,
            timeout_ms = self.slow_consumer_timeout.as_millis() as u64,
            unwritten_bytes = self.buf.len(),
            "closing a connection that stopped reading: its unacked deliveries return to their groups"
        );
        let going_away = Frame::GoingAway(GoingAway {
            reason: GoingAwayReason::SlowConsumer,
            message: format!(
                "the connection accepted no bytes for {} ms while frames waited",
                self.slow_consumer_timeout.as_millis()
            ),
        });
        if self.codec.encode_frame(&going_away, &mut self.buf).is_ok() {
            let _ = tokio::time::timeout(GOING_AWAY_GRACE, async {
                self.socket.write_all_buf(&mut self.buf).await?;
                self.socket.flush().await
            })
            .await;
        }
        self.held.clear();
    }
}
