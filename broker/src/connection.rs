//! One task per client connection: read frames, apply them, write answers and deliveries.
//!
//! Two bounded queues feed the connection's writer task: *control* (answers, confirms,
//! refusals, errors) which the reader waits on when full, and *deliveries* which the topic
//! dispatchers fill with `try_send` and which holds `max_subscriptions × max_credit` frames —
//! exactly what credit allows, so a delivery never waits and never overflows. `Gap` notices
//! (`drop_oldest`) go on the control queue, with `try_send`: one that does not fit stays merged
//! in its group for the next round, so they can never take a delivery's room.
//!
//! Bounds and behaviour at them:
//! - `max_unconfirmed` publishes awaiting their commit: at the bound the reader stops reading
//!   the socket (TCP backpressure) until confirms go out. Refusals are answered at once and do
//!   not count, so a fast "no" never queues behind a slow "yes".
//! - `max_subscriptions` per connection and `max_credit` per subscription: refused with
//!   `Error{LimitExceeded}`.
//! - `max_frame_bytes`: `Error{FrameTooLarge}`, then this connection (only) is closed.
//! - malformed frames: `Error{MalformedFrame}`, then this connection (only) is closed.
//! - the memory budget: queued deliveries hold their payload's share until written; the read
//!   buffer draws from it too and stops growing while the budget is over (see `reader`).

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures::stream::FuturesUnordered;
use futures::StreamExt;
use tokio::io::AsyncReadExt;
use tokio::net::tcp::OwnedReadHalf;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};
use weir_protocol::*;

use crate::admission::{ConnectionMemory, KeyLimits, Work};
use crate::broker::{Broker, CreateError, DeleteTopicError};
use crate::config::Limits;
use crate::group::{GrantError, MemberId};
use crate::keys::Identity;
use crate::outbox::{Outbound, Outbox};
use crate::reader::{FrameReader, Read, ReadError, ReadLimits, Shed};
use crate::refusal::Refusal;
use crate::topic::{Admitted, AppendError, Confirm, DeleteGroupError, Detached, JoinError, Topic};
use crate::writer::{Writer, WriterEnd};

/// Control frames queued for the writer beyond which the reader waits.
const CONTROL_QUEUE: usize = 256;
/// How long a closing connection keeps draining unread input so the peer receives our last
/// frames instead of a reset.
const LINGER: Duration = Duration::from_secs(1);

/// How a connection's main loop ended.
enum End {
    /// The client closed the connection, or our writer ended (failed, or gave up on a peer
    /// that stopped reading).
    Closed,
    /// The broker is shutting down.
    Shutdown,
    /// The client broke the protocol; the error frame has been queued.
    ProtocolError,
    /// No subscription and no frame for `idle_timeout`.
    Idle,
}

impl End {
    /// The `GoingAway` the client is sent, if any.
    fn going_away(&self) -> Option<(GoingAwayReason, String)> {
        match self {
            End::Shutdown => Some((GoingAwayReason::ShuttingDown, "broker shutting down".into())),
            End::Idle => Some((
                GoingAwayReason::Idle,
                "no subscription and no frame for the broker's idle_timeout".into(),
            )),
            End::Closed | End::ProtocolError => None,
        }
    }

    /// For the log line.
    fn name(&self) -> &'static str {
        match self {
            End::Closed => "closed",
            End::Shutdown => "shutdown",
            End::ProtocolError => "protocol_error",
            End::Idle => "idle",
        }
    }
}

/// An open subscription of this connection.
struct Subscription {
    topic: Arc<Topic>,
    group: String,
}

/// A publish accepted by its topic, waiting for its commit.
struct PendingConfirm {
    id: u64,
    confirm: Confirm,
    /// When its `Publish` frame was read (for the publish→confirm histogram).
    received: Instant,
}

impl Future for PendingConfirm {
    /// The answer, and when the publish was read.
    type Output = (Frame, Instant);

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<(Frame, Instant)> {
        let (id, received) = (self.id, self.received);
        let answer = Pin::new(&mut self.confirm)
            .poll(cx)
            .map(|result| match result {
                Ok(Ok(seq)) => Frame::PublishOk(PublishOk { id, seq }),
                Ok(Err(AppendError::Refused(r))) => rejected(id, r),
                Ok(Err(AppendError::Storage(message))) => Frame::Error(Error {
                    req: id,
                    code: ErrorCode::Internal,
                    message,
                }),
                Ok(Err(e @ AppendError::StorageFailed(_))) => Frame::Error(Error {
                    req: id,
                    code: ErrorCode::StorageFailed,
                    message: e.to_string(),
                }),
                Err(_) => Frame::Error(Error {
                    req: id,
                    code: ErrorCode::Internal,
                    message: "topic writer stopped".into(),
                }),
            });
        answer.map(|frame| (frame, received))
    }
}

/// What woke a connection's loop.
enum Wake {
    /// A pending publish's answer, and when the publish was read.
    Answer((Frame, Instant)),
    /// What the reader produced: a frame, a failure, or the end of input.
    Read(Option<Result<Read, ReadError>>),
    /// Outbound memory was freed (the connection may be back under its share).
    Room,
    /// The connection has been idle for `idle_timeout`.
    Idle,
}

fn rejected(id: u64, r: Refusal) -> Frame {
    Frame::Rejected(Rejected {
        id,
        reason: r.reason,
        limit: r.limit,
        retry_after_ms: r.retry_after_ms,
    })
}

fn error(req: u64, code: ErrorCode, message: impl Into<String>) -> Frame {
    Frame::Error(Error {
        req,
        code,
        message: message.into(),
    })
}

/// The broker's limits as announced to clients.
pub(crate) fn server_limits(broker: &Broker) -> ServerLimits {
    let l = &broker.config().limits;
    ServerLimits {
        max_frame_bytes: l.max_frame_bytes,
        max_unconfirmed: l.max_unconfirmed,
        max_credit: l.max_credit,
        max_subscriptions: l.max_subscriptions,
        max_headers: l.max_headers,
        max_header_bytes: l.max_header_bytes,
        idle_timeout_ms: l.idle_timeout_ms,
    }
}

/// The two ways the server stops a connection.
#[derive(Clone, Default)]
pub(crate) struct Stop {
    /// Graceful: stop reading, confirm what is being committed, send `GoingAway`, close.
    pub(crate) graceful: CancellationToken,
    /// Hard: abandon whatever the connection is waiting on (a peer that never reads, a stuck
    /// commit) and close now. Cancelled by the server once the shutdown grace has passed.
    pub(crate) hard: CancellationToken,
}

/// Serves one accepted connection until the client leaves, breaks the protocol, idles, stops
/// reading, or the server stops it (see [`Stop`]).
pub(crate) async fn serve(broker: Broker, socket: TcpStream, peer: SocketAddr, stop: Stop) {
    let _ = socket.set_nodelay(true);
    let id = broker.next_connection_id();
    let limits = broker.config().limits.clone();
    let codec = WeirCodec::new(limits.max_frame_bytes as usize);
    let (read, write) = socket.into_split();
    let memory = broker.admission().connection_memory();
    let mut frames = FrameReader::new(read, read_limits(&limits), memory.inbound());
    let (control, control_rx) = mpsc::channel(CONTROL_QUEUE);
    // Every credit of every subscription (Gap notices go on the control queue).
    let delivery_capacity = (limits.max_subscriptions as usize) * (limits.max_credit as usize);
    let (deliveries, deliveries_rx) = mpsc::channel(delivery_capacity.max(1));
    let writer_done = CancellationToken::new();
    let mut writer = tokio::spawn({
        let writer = Writer::new(write, codec, broker.clone(), (id, memory.clone()));
        let done = writer_done.clone();
        async move {
            let end = writer.run(control_rx, deliveries_rx).await;
            done.cancel();
            end
        }
    });

    broker.metrics().connections.inc();
    info!(conn = id, %peer, "connection opened");
    let mut conn = Connection {
        broker: broker.clone(),
        id,
        peer,
        identity: None,
        key: None,
        memory,
        control,
        deliveries,
        subs: HashMap::new(),
        pending: FuturesUnordered::new(),
        parked: FuturesUnordered::new(),
        read_at: Instant::now(),
    };
    let session = async {
        let end = match conn.handshake(&mut frames, &stop.graceful).await {
            Ok(()) => conn.run(&mut frames, &stop.graceful).await,
            Err(end) => end,
        };
        if matches!(end, End::Shutdown) {
            conn.finish_confirms(&mut frames, Duration::from_millis(limits.shutdown_grace_ms))
                .await;
        }
        if let Some((reason, message)) = end.going_away() {
            let frame = Frame::GoingAway(GoingAway { reason, message });
            let _ = conn.control.send(frame.into()).await;
        }
        end
    };
    let end = tokio::select! {
        end = session => end,
        () = writer_done.cancelled() => End::Closed,
        () = stop.hard.cancelled() => End::Shutdown,
    };
    if matches!(end, End::ProtocolError) {
        broker.metrics().protocol_errors.add(1);
    }
    conn.leave_all();
    drop(conn);
    // The writer ends once both queues are closed and drained, then half-closes the socket.
    let written = tokio::select! {
        end = &mut writer => end.unwrap_or(WriterEnd::Closed),
        () = stop.hard.cancelled() => {
            writer.abort();
            WriterEnd::Closed
        }
    };
    linger(frames.into_inner()).await;
    broker.metrics().connections.dec();
    info!(conn = id, %peer, end = end.name(), writer = ?written, "connection closed");
}

/// The reader's bounds from the broker's limits.
fn read_limits(limits: &Limits) -> ReadLimits {
    ReadLimits {
        max_frame_bytes: limits.max_frame_bytes as usize,
        max_unauthenticated_frame_bytes: limits.max_unauthenticated_frame_bytes as usize,
        max_publish_header_bytes: crate::config::max_publish_header_bytes(limits),
        frame_read_timeout: Duration::from_millis(limits.frame_read_timeout_ms),
    }
}

/// Reads and discards what the peer still sends, until it closes or [`LINGER`] passes, so
/// closing with unread input does not reset the connection before our last frames arrive.
async fn linger(mut read: OwnedReadHalf) {
    let mut scratch = [0u8; 8192];
    let _ = tokio::time::timeout(LINGER, async {
        while let Ok(n) = read.read(&mut scratch).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
}

struct Connection {
    broker: Broker,
    id: u64,
    peer: SocketAddr,
    /// What this connection holds: its share of the memory budget.
    memory: ConnectionMemory,
    /// Who the client authenticated as (set by the handshake).
    identity: Option<Identity>,
    /// That identity's rate limits (set by the handshake).
    key: Option<Arc<KeyLimits>>,
    control: Outbox,
    deliveries: Outbox,
    subs: HashMap<u64, Subscription>,
    /// Publishes awaiting their commit; at most `max_unconfirmed` (then reading pauses).
    pending: FuturesUnordered<PendingConfirm>,
    /// Publishes parked by `block` topics; bounded by each topic's `max_blocked_publishes`,
    /// and not counted against `max_unconfirmed`, so a blocked topic never stops this
    /// connection's other topics.
    parked: FuturesUnordered<PendingConfirm>,
    /// When the frame being applied was read.
    read_at: Instant,
}

impl Connection {
    /// Queues a control frame; `Err` when the writer is gone.
    async fn send(&self, frame: Frame) -> Result<(), End> {
        self.control
            .send(frame.into())
            .await
            .map_err(|_| End::Closed)
    }

    /// Queues an answer whose size grows with what the broker holds (a topic listing or
    /// description), its encoded bytes charged to this connection's outbound memory until
    /// written: a client that asks and never reads holds its own share, then is paused.
    async fn send_charged(&self, frame: Frame) -> Result<(), End> {
        let memory = self.memory.outbound().charge(encoded_len(&frame) as u64);
        let outbound = Outbound {
            frame,
            memory: Some(memory),
        };
        self.control.send(outbound).await.map_err(|_| End::Closed)
    }

    async fn handshake(
        &mut self,
        frames: &mut FrameReader,
        shutdown: &CancellationToken,
    ) -> Result<(), End> {
        let timeout = Duration::from_millis(self.broker.config().limits.hello_timeout_ms);
        let first = tokio::select! {
            first = tokio::time::timeout(timeout, frames.next()) => match first {
                Ok(first) => first,
                Err(_) => {
                    debug!(conn = self.id, "no Hello in time");
                    return Err(End::Closed);
                }
            },
            () = shutdown.cancelled() => return Err(End::Closed),
        };
        // A shed publish is still not a Hello.
        let first = first.map(|read| {
            read.map(|r| match r {
                Read::Frame(frame) => frame,
                Read::Shed(publish, _) => Frame::Publish(publish),
            })
        });
        match first {
            Some(Ok(Frame::Hello(hello))) if hello.version == PROTOCOL_VERSION => {
                match self
                    .broker
                    .keys()
                    .authenticate(hello.token.as_deref(), self.peer.ip())
                {
                    Ok(identity) => {
                        debug!(conn = self.id, key = %identity.name, "authenticated");
                        frames.authenticated();
                        self.key = Some(self.broker.admission().limits_for(&identity));
                        self.identity = Some(identity);
                        let limits = server_limits(&self.broker);
                        self.send(Frame::HelloOk(HelloOk {
                            version: PROTOCOL_VERSION,
                            limits,
                        }))
                        .await
                    }
                    Err(e) => {
                        self.broker.auth_failed(self.peer.ip(), &e);
                        self.send(error(0, ErrorCode::Unauthorized, e.to_string()))
                            .await?;
                        Err(End::ProtocolError)
                    }
                }
            }
            Some(Ok(Frame::Hello(hello))) => {
                warn!(
                    conn = self.id,
                    version = hello.version,
                    "unsupported protocol version"
                );
                let msg = format!(
                    "protocol version {} is not supported (this broker speaks {PROTOCOL_VERSION})",
                    hello.version
                );
                self.send(error(0, ErrorCode::UnsupportedVersion, msg))
                    .await?;
                Err(End::ProtocolError)
            }
            Some(Ok(other)) => {
                self.send(error(
                    0,
                    ErrorCode::HelloRequired,
                    format!("expected Hello, got {}", other.name()),
                ))
                .await?;
                Err(End::ProtocolError)
            }
            Some(Err(e)) => Err(self.read_error(e).await),
            None => Err(End::Closed),
        }
    }

    /// Reads and applies frames and sends publishes' answers until the connection ends. Its
    /// time waiting in the `select!` (which includes decoding frames already buffered) counts as
    /// idle, the rest — applying a frame, queueing an answer — as busy
    /// (`weir_worker_*_seconds_total{worker="connection"}`).
    ///
    /// Reading pauses (TCP backpressure on this connection only) while `max_unconfirmed`
    /// publishes await their commit, while this connection holds more than its memory share,
    /// and while its own pending publishes leave less than one frame of its share free (they
    /// free it as they commit). A connection with no subscription and nothing pending that
    /// sends no frame for `idle_timeout` ends with [`End::Idle`].
    async fn run(&mut self, frames: &mut FrameReader, shutdown: &CancellationToken) -> End {
        let limits = &self.broker.config().limits;
        let max_unconfirmed = limits.max_unconfirmed as usize;
        let max_frame = u64::from(limits.max_frame_bytes);
        let idle_timeout = Duration::from_millis(limits.idle_timeout_ms);
        let metrics = self.broker.metrics().clone();
        let room = self.broker.admission().clone();
        let mut work = metrics.workers.connection.clock();
        let mut was_reading = true;
        let mut last_frame = tokio::time::Instant::now();
        loop {
            metrics
                .unconfirmed_high_water
                .observe(self.pending.len() as u64);
            let epoch = room.delivery_room().epoch();
            let over_share = self.memory.share().is_over()
                || (!self.pending.is_empty() && self.memory.room() < max_frame);
            let can_read = self.pending.len() < max_unconfirmed && !over_share;
            if was_reading && !can_read {
                metrics.read_pauses.add(1);
            }
            was_reading = can_read;
            let idle = self.subs.is_empty() && self.pending.is_empty() && self.parked.is_empty();
            work.waiting();
            let wake = tokio::select! {
                biased;
                () = shutdown.cancelled() => return End::Shutdown,
                Some(answer) = self.pending.next(), if !self.pending.is_empty() => Wake::Answer(answer),
                Some(answer) = self.parked.next(), if !self.parked.is_empty() => Wake::Answer(answer),
                read = frames.next(), if can_read => Wake::Read(read),
                () = room.delivery_room().freed_since(epoch), if over_share => Wake::Room,
                () = tokio::time::sleep_until(last_frame + idle_timeout), if idle => Wake::Idle,
            };
            let woke = work.working();
            let step = match wake {
                Wake::Answer(answer) => self.answer(answer).await,
                Wake::Read(read) => {
                    self.read_at = woke;
                    last_frame = woke.into();
                    self.read(read).await
                }
                Wake::Room => Ok(()),
                Wake::Idle => {
                    metrics.idle_closed.add(1);
                    debug!(
                        conn = self.id,
                        idle_ms = idle_timeout.as_millis() as u64,
                        "closing an idle connection"
                    );
                    Err(End::Idle)
                }
            };
            if let Err(end) = step {
                return end;
            }
        }
    }

    /// Queues a pending publish's answer and records its publish→confirm time.
    async fn answer(&self, (frame, received): (Frame, Instant)) -> Result<(), End> {
        self.send(frame).await?;
        self.broker
            .metrics()
            .observe_publish_confirm(received.elapsed());
        Ok(())
    }

    /// Applies what the reader produced. A publish answered at once — refused, or failed, so
    /// that it left no confirm pending — has its publish→confirm time recorded here; the others
    /// when their confirm is answered ([`Connection::answer`]).
    async fn read(&mut self, read: Option<Result<Read, ReadError>>) -> Result<(), End> {
        let publish = matches!(
            read,
            Some(Ok(Read::Frame(Frame::Publish(_)) | Read::Shed(..)))
        );
        let unanswered = self.pending.len() + self.parked.len();
        match read {
            Some(Ok(Read::Frame(frame))) => self.apply(frame).await,
            Some(Ok(Read::Shed(publish, why))) => self.shed(publish, why).await,
            Some(Err(e)) => Err(self.read_error(e).await),
            None => Err(End::Closed),
        }?;
        if publish && self.pending.len() + self.parked.len() == unanswered {
            let elapsed = self.read_at.elapsed();
            self.broker.metrics().observe_publish_confirm(elapsed);
        }
        Ok(())
    }

    /// Answers a read failure: a typed error for bad input or a stalled frame, nothing for a
    /// failed transport.
    async fn read_error(&self, e: ReadError) -> End {
        let code = match &e {
            ReadError::Codec(CodecError::FrameTooLarge { .. }) => ErrorCode::FrameTooLarge,
            ReadError::Codec(CodecError::Malformed(_) | CodecError::Truncated { .. }) => {
                ErrorCode::MalformedFrame
            }
            ReadError::Stalled(..) => {
                self.broker.metrics().frame_read_timeouts.add(1);
                ErrorCode::FrameTimeout
            }
            ReadError::Codec(CodecError::Io(io)) => {
                debug!(conn = self.id, error = %io, "connection read failed");
                return End::Closed;
            }
        };
        warn!(conn = self.id, peer = %self.peer, error = %e, "closing connection after a bad frame");
        let _ = self.send(error(0, code, e.to_string())).await;
        End::ProtocolError
    }

    async fn apply(&mut self, frame: Frame) -> Result<(), End> {
        match frame {
            Frame::Publish(p) => self.publish(p).await,
            Frame::CreateTopic(c) => self.create_topic(c).await,
            Frame::ListTopics(l) => {
                let max = self.broker.config().limits.max_frame_bytes as usize;
                let page = self.broker.list_topics_page(l, max);
                self.send_charged(Frame::TopicList(page)).await
            }
            Frame::DescribeTopic(d) => {
                let answer = match self.broker.topic(&d.name) {
                    Some(topic) => {
                        let (info, recent_drops) = topic.describe();
                        let max = self.broker.config().limits.max_frame_bytes as usize;
                        let answer = crate::replies::description(d.req, info, recent_drops, max);
                        Frame::TopicDescription(answer)
                    }
                    None => error(
                        d.req,
                        ErrorCode::UnknownTopic,
                        format!("unknown topic {}", d.name),
                    ),
                };
                self.send_charged(answer).await
            }
            Frame::Subscribe(s) => self.subscribe(s).await,
            Frame::Unsubscribe(u) => self.unsubscribe(u.sub).await,
            Frame::Credit(c) => self.credit(c).await,
            Frame::Ack(a) => self.ack(a).await,
            Frame::Nack(n) => {
                let delay = n.delay_ms;
                self.on_sub(n.sub, |t, g, m| t.nack(g, m, &n.seqs, delay))
                    .await
            }
            Frame::Term(t) => {
                let reason = self.capped_reason(t.reason);
                self.on_sub(t.sub, |topic, g, m| topic.term(g, m, &t.seqs, &reason))
                    .await
            }
            Frame::Progress(p) => {
                self.on_sub(p.sub, |t, g, m| t.progress(g, m, &p.seqs))
                    .await
            }
            Frame::DeleteTopic(d) => self.delete_topic(d).await,
            Frame::RepairTopic(r) => self.repair_topic(r).await,
            Frame::DeleteGroup(d) => self.delete_group(d).await,
            Frame::Ping(nonce) => self.send(Frame::Pong(nonce)).await,
            Frame::Pong(_) => Ok(()),
            other => {
                let msg = format!("{} is not a frame a client sends", other.name());
                self.send(error(0, ErrorCode::InvalidArgument, msg)).await
            }
        }
    }

    /// A `Term` reason cut to `max_reason_bytes` (at a character boundary), counted when cut:
    /// every client string the broker keeps has a byte cap.
    fn capped_reason(&self, mut reason: String) -> String {
        let max = self.broker.config().limits.max_reason_bytes as usize;
        if reason.len() > max {
            let cut = (0..=max)
                .rev()
                .find(|&i| reason.is_char_boundary(i))
                .unwrap_or(0);
            reason.truncate(cut);
            self.broker.metrics().reasons_truncated.add(1);
        }
        reason
    }

    /// Looks up (or auto-creates) a topic, answering request `req` with the failure. Creating
    /// it pays an `ops_per_s` token when `pay` (a publish; a subscribe has paid its own).
    async fn topic(&self, req: u64, name: &str, pay: bool) -> Result<Option<Arc<Topic>>, End> {
        let key = self.key.as_deref().filter(|_| pay);
        let failure = match self.broker.topic_or_create(name, key).await {
            Ok(topic) => return Ok(Some(topic)),
            Err(CreateError::Refused(r)) => rejected(req, r),
            Err(CreateError::Unknown(_)) => error(
                req,
                ErrorCode::UnknownTopic,
                format!("unknown topic {name}"),
            ),
            Err(CreateError::TooMany(max)) => {
                rejected(req, crate::publish::too_many_topics(&self.broker, max))
            }
            Err(CreateError::Invalid(msg)) => error(req, ErrorCode::InvalidArgument, msg),
            Err(e) => error(req, ErrorCode::Internal, e.to_string()),
        };
        self.send(failure).await.map(|()| None)
    }

    /// Publishes `p` through the checks every publish passes ([`crate::publish::publish`]): a
    /// refusal is answered at once, an accepted publish waits for its commit in `pending`
    /// (counted against `max_unconfirmed`) or, parked by a `block` topic, in `parked`.
    async fn publish(&mut self, p: Publish) -> Result<(), End> {
        let Some(topic) = self.topic(p.id, &p.topic, true).await? else {
            return Ok(());
        };
        let key = self.key.clone().ok_or(End::ProtocolError)?;
        let memory = self.memory.inbound();
        let published =
            crate::publish::publish(&self.broker, &key, memory, &topic, p.headers, p.payload).await;
        match published {
            Ok(Admitted::Queued(confirm)) => {
                self.pending.push(PendingConfirm {
                    id: p.id,
                    confirm,
                    received: self.read_at,
                });
                Ok(())
            }
            Ok(Admitted::Parked(confirm)) => {
                self.parked.push(PendingConfirm {
                    id: p.id,
                    confirm,
                    received: self.read_at,
                });
                Ok(())
            }
            Err(AppendError::Refused(r)) => {
                debug!(conn = self.id, topic = %p.topic, reason = ?r.reason, "publish refused");
                self.send(rejected(p.id, r)).await
            }
            Err(AppendError::Storage(message)) => {
                self.send(error(p.id, ErrorCode::Internal, message)).await
            }
            Err(e @ AppendError::StorageFailed(_)) => {
                self.send(error(p.id, ErrorCode::StorageFailed, e.to_string()))
                    .await
            }
        }
    }

    /// Answers a publish the reader shed unread: its payload did not fit in this connection's
    /// memory (refused as admission would refuse it, naming the level that had no room), or its
    /// header was larger than any accepted (`MessageTooLarge` naming `max_header_bytes`).
    async fn shed(&mut self, p: Publish, why: Shed) -> Result<(), End> {
        self.broker.metrics().frames_shed.add(1);
        let r = match why {
            Shed::Memory(full) => self.broker.admission().memory_refusal(full, Instant::now()),
            Shed::HeaderTooLarge => crate::publish::header_too_large(&self.broker),
        };
        let topic = self.broker.topic(&p.topic);
        crate::publish::count_refusal(&self.broker, &p.topic, topic.as_deref(), &r);
        self.send(rejected(p.id, r)).await
    }

    /// Admits one expensive operation under the key's `ops_per_s`; a refusal is counted and
    /// logged under `op`, and the caller answers it.
    fn admit_op(&self, op: Work, target: &str) -> Result<(), Refusal> {
        let Some(key) = &self.key else { return Ok(()) };
        self.broker.admit_op(key, op, target)
    }

    /// Gives back the token of an operation that was refused after admission, having done
    /// nothing.
    fn give_back_op(&self) {
        if let Some(key) = &self.key {
            key.give_back_op();
        }
    }

    async fn create_topic(&mut self, c: CreateTopic) -> Result<(), End> {
        if let Err(r) = self.admit_op(Work::CreateTopic, &c.spec.name) {
            return self.send(rejected(c.req, r)).await;
        }
        let created = self.broker.create_topic(c.spec).await;
        if matches!(created, Err(_) | Ok((_, false))) {
            self.give_back_op();
        }
        let answer = match created {
            Ok((topic, created)) => Frame::TopicCreated(TopicCreated {
                req: c.req,
                created,
                config: topic.config().clone(),
            }),
            Err(CreateError::Invalid(msg)) => error(c.req, ErrorCode::InvalidArgument, msg),
            Err(e @ CreateError::Exists(_)) => error(c.req, ErrorCode::TopicExists, e.to_string()),
            Err(e @ (CreateError::TooMany(_) | CreateError::OverCeiling(_))) => {
                error(c.req, ErrorCode::LimitExceeded, e.to_string())
            }
            Err(e) => error(c.req, ErrorCode::Internal, e.to_string()),
        };
        self.send(answer).await
    }

    fn member(&self, sub: u64) -> MemberId {
        MemberId { conn: self.id, sub }
    }

    /// Subscribes: the request's own checks first (they cost no token), then the key's
    /// `ops_per_s` (which also pays for creating the topic), then the topic's group bound (a
    /// refusal there gives the token back).
    async fn subscribe(&mut self, s: Subscribe) -> Result<(), End> {
        self.forget_detached();
        let limits = &self.broker.config().limits;
        let refusal = if self.subs.contains_key(&s.sub) {
            Some((
                ErrorCode::SubscriptionExists,
                format!("subscription {} is already open", s.sub),
            ))
        } else if self.subs.len() >= limits.max_subscriptions as usize {
            Some((
                ErrorCode::LimitExceeded,
                format!(
                    "max_subscriptions ({}) reached on this connection",
                    limits.max_subscriptions
                ),
            ))
        } else if s.credit > limits.max_credit {
            Some((
                ErrorCode::LimitExceeded,
                format!(
                    "credit {} exceeds max_credit ({})",
                    s.credit, limits.max_credit
                ),
            ))
        } else if let Err(msg) = crate::config::validate_topic_name(&s.group) {
            Some((ErrorCode::InvalidArgument, format!("group: {msg}")))
        } else {
            None
        };
        if let Some((code, msg)) = refusal {
            return self.send(error(s.sub, code, msg)).await;
        }
        let group_config = match self.broker.config().resolve_group(&s.topic, &s.group_spec) {
            Ok(config) => config,
            Err(msg) => {
                return self
                    .send(error(s.sub, ErrorCode::InvalidArgument, msg))
                    .await
            }
        };
        if let Err(r) = self.admit_op(Work::Subscribe, &s.topic) {
            return self.send(rejected(s.sub, r)).await;
        }
        let Some(topic) = self.topic(s.sub, &s.topic, false).await? else {
            self.give_back_op();
            return Ok(());
        };
        let member = self.member(s.sub);
        if let Err(JoinError::TooManyGroups(max)) = topic.join(
            &s.group,
            (s.group_spec.start, group_config),
            member,
            (self.deliveries.clone(), self.control.clone()),
            self.memory.outbound().clone(),
        ) {
            self.give_back_op();
            let msg = format!("topic {} is at max_groups_per_topic ({max})", s.topic);
            return self.send(error(s.sub, ErrorCode::LimitExceeded, msg)).await;
        }
        self.subs.insert(
            s.sub,
            Subscription {
                topic: topic.clone(),
                group: s.group.clone(),
            },
        );
        debug!(conn = self.id, sub = s.sub, topic = %s.topic, group = %s.group, credit = s.credit, "subscribed");
        // Subscribed goes out before the credit that lets deliveries start.
        self.send(Frame::Subscribed(Subscribed { sub: s.sub }))
            .await?;
        if let Some(notice) = topic.damage_notice(s.sub) {
            self.send(notice).await?;
        }
        if s.credit > 0 {
            // Cannot fail: the member just joined and the credit was checked against max_credit.
            let _ = topic.grant(&s.group, member, s.credit);
        }
        Ok(())
    }

    async fn unsubscribe(&mut self, sub: u64) -> Result<(), End> {
        match self.subs.remove(&sub) {
            Some(s) => {
                s.topic.leave(&s.group, self.member(sub));
                self.send(Frame::Unsubscribed(Unsubscribed { sub })).await
            }
            None => self.send(unknown_sub(sub)).await,
        }
    }

    async fn credit(&mut self, c: Credit) -> Result<(), End> {
        let Some(s) = self.subs.get(&c.sub) else {
            return self.send(unknown_sub(c.sub)).await;
        };
        match s.topic.grant(&s.group, self.member(c.sub), c.n) {
            Ok(()) => Ok(()),
            Err(GrantError::UnknownMember) => self.send(unknown_sub(c.sub)).await,
            Err(GrantError::TooMuch { outstanding, max }) => {
                let msg = format!(
                    "credit {outstanding} + {} would exceed max_credit ({max})",
                    c.n
                );
                self.send(error(c.sub, ErrorCode::LimitExceeded, msg)).await
            }
        }
    }

    async fn ack(&mut self, a: Ack) -> Result<(), End> {
        self.on_sub(a.sub, |t, g, m| t.ack(g, m, &a.seqs)).await
    }

    /// Applies `op` to subscription `sub`'s topic, group and member id, or answers
    /// `UnknownSubscription`.
    async fn on_sub(
        &mut self,
        sub: u64,
        op: impl FnOnce(&Topic, &str, MemberId) -> usize,
    ) -> Result<(), End> {
        let Some(s) = self.subs.get(&sub) else {
            return self.send(unknown_sub(sub)).await;
        };
        op(&s.topic, &s.group, self.member(sub));
        Ok(())
    }

    /// Forgets subscriptions a forced group or topic delete detached (their subscribers were
    /// sent `Unsubscribed`), so their ids and slots can be reused.
    fn forget_detached(&mut self) {
        let conn = self.id;
        self.subs
            .retain(|&sub, s| s.topic.is_member(&s.group, MemberId { conn, sub }));
    }

    async fn delete_group(&mut self, d: DeleteGroup) -> Result<(), End> {
        if let Err(r) = self.admit_op(Work::DeleteGroup, &d.topic) {
            return self.send(rejected(d.req, r)).await;
        }
        let Some(topic) = self.broker.topic(&d.topic) else {
            let msg = format!("unknown topic {}", d.topic);
            return self.send(error(d.req, ErrorCode::UnknownTopic, msg)).await;
        };
        let answer = match topic.delete_group(&d.group, d.force) {
            Ok(detached) => {
                tell_detached(detached);
                Frame::GroupDeleted(GroupDeleted { req: d.req })
            }
            Err(DeleteGroupError::Unknown) => error(
                d.req,
                ErrorCode::UnknownGroup,
                format!("topic {} has no group {}", d.topic, d.group),
            ),
            Err(DeleteGroupError::InUse) => error(
                d.req,
                ErrorCode::InUse,
                format!(
                    "group {} has subscribers attached (delete with force to detach them)",
                    d.group
                ),
            ),
        };
        self.send(answer).await
    }

    async fn delete_topic(&mut self, d: DeleteTopic) -> Result<(), End> {
        if let Err(r) = self.admit_op(Work::DeleteTopic, &d.name) {
            return self.send(rejected(d.req, r)).await;
        }
        let answer = match self.broker.delete_topic(&d.name, d.force).await {
            Ok(detached) => {
                tell_detached(detached);
                Frame::TopicDeleted(TopicDeleted { req: d.req })
            }
            Err(DeleteTopicError::Unknown) => error(
                d.req,
                ErrorCode::UnknownTopic,
                format!("unknown topic {}", d.name),
            ),
            Err(DeleteTopicError::InUse(n)) => error(
                d.req,
                ErrorCode::InUse,
                format!(
                    "topic {} has {n} subscribers attached (delete with force to detach them)",
                    d.name
                ),
            ),
            Err(DeleteTopicError::Failed(msg)) => error(d.req, ErrorCode::Internal, msg),
        };
        self.send(answer).await
    }

    /// Repairs a topic's storage (`weir topic repair`): an expensive operation, admitted like a
    /// delete.
    async fn repair_topic(&mut self, r: RepairTopic) -> Result<(), End> {
        if let Err(refusal) = self.admit_op(Work::DeleteTopic, &r.name) {
            return self.send(rejected(r.req, refusal)).await;
        }
        let answer = match self.broker.repair_topic(&r.name).await {
            Ok(Some(done)) => Frame::TopicRepaired(TopicRepaired {
                req: r.req,
                skipped: done.skipped,
                quarantined: done.quarantined,
                health: done.health,
            }),
            Ok(None) => error(
                r.req,
                ErrorCode::UnknownTopic,
                format!("unknown topic {}", r.name),
            ),
            Err(msg) => error(r.req, ErrorCode::StorageDamaged, msg),
        };
        self.send(answer).await
    }

    /// Waits (at most `grace`) for publishes being committed (and parked ones, which the
    /// broker refuses with `ShuttingDown` as it stops) and sends their answers, and for the
    /// client to settle the deliveries it holds. Meanwhile it still reads the client's frames
    /// and applies its acks, nacks, terms and progress (the broker dispatches nothing more by
    /// now, so they only settle what the client holds) and answers its publishes (refused
    /// `ShuttingDown`); any other frame is ignored. It ends as soon as nothing is pending and
    /// nothing is held, or the client closes: an unacked delivery is redelivered after the
    /// restart.
    async fn finish_confirms(&mut self, frames: &mut FrameReader, grace: Duration) {
        let deadline = tokio::time::Instant::now() + grace;
        self.pending.extend(std::mem::take(&mut self.parked));
        let mut reading = true;
        loop {
            let holding = reading && self.holds_deliveries();
            if self.pending.is_empty() && !holding {
                return;
            }
            tokio::select! {
                answer = self.pending.next(), if !self.pending.is_empty() => {
                    if let Some(answer) = answer {
                        if self.answer(answer).await.is_err() {
                            return;
                        }
                    }
                }
                read = frames.next(), if reading => {
                    match read {
                        // A publish is answered (`ShuttingDown`, or as shed), never dropped
                        // unanswered.
                        Some(Ok(Read::Frame(
                            frame @ (Frame::Ack(_)
                            | Frame::Nack(_)
                            | Frame::Term(_)
                            | Frame::Progress(_)
                            | Frame::Publish(_)),
                        ))) => {
                            if self.apply(frame).await.is_err() {
                                return;
                            }
                        }
                        Some(Ok(Read::Shed(publish, why))) => {
                            if self.shed(publish, why).await.is_err() {
                                return;
                            }
                        }
                        Some(Ok(_)) => {}
                        Some(Err(_)) | None => reading = false,
                    }
                }
                () = tokio::time::sleep_until(deadline) => {
                    let unconfirmed = self.pending.len();
                    if unconfirmed > 0 {
                        warn!(conn = self.id, unconfirmed, "shutdown grace expired with commits pending");
                    }
                    if holding {
                        debug!(conn = self.id, "shutdown grace expired with deliveries unacked: they are redelivered after the restart");
                    }
                    return;
                }
            }
        }
    }

    /// Whether any subscription of this connection holds deliveries it has not settled.
    fn holds_deliveries(&self) -> bool {
        self.subs.iter().any(|(&sub, s)| {
            s.topic
                .holds_deliveries(&s.group, MemberId { conn: self.id, sub })
        })
    }

    /// Detaches every subscription; their unacked messages return to their groups.
    fn leave_all(&mut self) {
        for (sub, s) in self.subs.drain() {
            s.topic.leave(&s.group, MemberId { conn: self.id, sub });
        }
    }
}

/// Tells members a forced delete detached that their subscription is over (`Unsubscribed`).
/// A member whose control queue is full is not told (logged): its connection is not reading.
fn tell_detached(detached: Detached) {
    for (member, notices) in detached {
        let frame = Frame::Unsubscribed(Unsubscribed { sub: member.sub });
        if notices.try_send(frame.into()).is_err() {
            warn!(
                conn = member.conn,
                sub = member.sub,
                "cannot tell a detached subscriber: its queue is full"
            );
        }
    }
}

fn unknown_sub(sub: u64) -> Frame {
    error(
        sub,
        ErrorCode::UnknownSubscription,
        format!("subscription {sub} is not open on this connection"),
    )
}
