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
//!
//! # Layout
//!
//! This file keeps the connection's life: the read loop, its backpressure, the dispatch of
//! each frame to its command, and the drain at shutdown. One file per command:
//!
//! - `handshake.rs` — `Hello`: the protocol version and the key, before any other frame.
//! - `publish.rs` — `Publish`, and publishes the reader shed unread.
//! - `confirm.rs` — a publish waiting for its commit, as the future of its answer.
//! - `subscribe.rs` — `Subscribe`, `Unsubscribe`, `Credit`; leaving at the end.
//! - `settle.rs` — `Ack`, `Nack`, `Term`, `Progress`.
//! - `manage.rs` — creating, listing, describing, deleting and repairing topics; deleting groups.
//! - `answers.rs` — the `Rejected` and `Error` frames the commands share.

mod answers;
mod confirm;
mod handshake;
mod manage;
mod publish;
mod settle;
mod subscribe;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::stream::FuturesUnordered;
use futures::StreamExt;
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};
use weir_protocol::*;

use crate::admission::{ConnectionMemory, KeyLimits, Work};
use crate::broker::{Broker, CreateError};
use crate::config::Limits;
use crate::group::MemberId;
use crate::keys::Identity;
use crate::outbox::{Outbound, Outbox};
use crate::permissions::Action;
use crate::reader::{FrameReader, Read, ReadError, ReadHalf, ReadLimits};
use crate::refusal::Refusal;
use crate::topic::Topic;
use crate::writer::{WriteHalf, Writer, WriterEnd};
use answers::{error, rejected};
use confirm::{failure, Answer, PendingConfirm};

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

/// What woke a connection's loop.
enum Wake {
    /// A pending publish's answer, and when the publish was read; `true` when it counted
    /// against `max_unconfirmed` (not parked).
    Answer((Answer, Instant), bool),
    /// What the reader produced: a frame, a failure, or the end of input.
    Read(Option<Result<Read, ReadError>>),
    /// Outbound memory was freed (the connection may be back under its share).
    Room,
    /// The connection has been idle for `idle_timeout`.
    Idle,
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
/// reading, or the server stops it (see [`Stop`]). `socket` is a plain TCP socket's halves or,
/// on a TLS port, a TLS stream's; `cert_names` are the DNS names of the client certificate the
/// TLS handshake verified (mutual TLS; empty otherwise), which may name the client's key.
pub(crate) async fn serve(
    broker: Broker,
    socket: (ReadHalf, WriteHalf),
    peer: SocketAddr,
    cert_names: Vec<String>,
    stop: Stop,
) {
    let id = broker.next_connection_id();
    let limits = broker.config().limits.clone();
    let codec = WeirCodec::new(limits.max_frame_bytes as usize);
    let (read, write) = socket;
    let memory = broker.admission().connection_memory();
    let mut frames = FrameReader::new(read, read_limits(&limits), memory.inbound());
    let (control, control_rx) = mpsc::channel(CONTROL_QUEUE);
    // Every credit of every subscription (Gap notices go on the control queue).
    let delivery_capacity = (limits.max_subscriptions as usize) * (limits.max_credit as usize);
    let (deliveries, deliveries_rx) = mpsc::channel(delivery_capacity.max(1));
    let writer_done = CancellationToken::new();
    let version = Arc::new(std::sync::atomic::AtomicU16::new(MIN_PROTOCOL_VERSION));
    let mut writer = tokio::spawn({
        let writer = Writer::new(write, codec, broker.clone(), (id, memory.clone()))
            .speaking(version.clone());
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
        cert_names,
        identity: None,
        key: None,
        memory,
        control,
        deliveries,
        subs: HashMap::new(),
        pending: FuturesUnordered::new(),
        unconfirmed: 0,
        version: MIN_PROTOCOL_VERSION,
        spoken: version,
        parked: FuturesUnordered::new(),
        read_at: Instant::now(),
        publish_decision: None,
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
async fn linger(mut read: ReadHalf) {
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
    /// The DNS names of the client certificate TLS verified (mutual TLS), capped; may name
    /// the key when `Hello` has no token.
    cert_names: Vec<String>,
    /// What this connection holds: its share of the memory budget.
    memory: ConnectionMemory,
    /// Who the client authenticated as (set by the handshake).
    identity: Option<Identity>,
    /// That identity's rate limits (set by the handshake).
    key: Option<Arc<KeyLimits>>,
    control: Outbox,
    deliveries: Outbox,
    subs: HashMap<u64, Subscription>,
    /// Publishes awaiting their commit (one, or a run of a batch); reading pauses while they
    /// hold `max_unconfirmed` publishes.
    pending: FuturesUnordered<PendingConfirm>,
    /// Publishes `pending` holds.
    unconfirmed: usize,
    /// The protocol version agreed in `Hello` (v5 speaks batches).
    version: u16,
    /// Tells the writer the version agreed (its frames' layout, and `DeliverBatch` from v5),
    /// set by the handshake.
    spoken: Arc<std::sync::atomic::AtomicU16>,
    /// Publishes parked by `block` topics; bounded by each topic's `max_blocked_publishes`,
    /// and not counted against `max_unconfirmed`, so a blocked topic never stops this
    /// connection's other topics.
    parked: FuturesUnordered<PendingConfirm>,
    /// When the frame being applied was read.
    read_at: Instant,
    /// The last publish permission decided on this connection (topic, allowed): a connection
    /// publishing to one topic checks its key's rules once (its permissions cannot change).
    publish_decision: Option<(String, bool)>,
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
            let can_read = self.unconfirmed < max_unconfirmed && !over_share;
            if was_reading && !can_read {
                metrics.read_pauses.add(1);
            }
            was_reading = can_read;
            let idle = self.subs.is_empty() && self.pending.is_empty() && self.parked.is_empty();
            work.waiting();
            let wake = tokio::select! {
                biased;
                () = shutdown.cancelled() => return End::Shutdown,
                Some(answer) = self.pending.next(), if !self.pending.is_empty() => Wake::Answer(answer, true),
                Some(answer) = self.parked.next(), if !self.parked.is_empty() => Wake::Answer(answer, false),
                read = frames.next(), if can_read => Wake::Read(read),
                () = room.delivery_room().freed_since(epoch), if over_share => Wake::Room,
                () = tokio::time::sleep_until(last_frame + idle_timeout), if idle => Wake::Idle,
            };
            let woke = work.working();
            let step = match wake {
                Wake::Answer(answer, counted) => self.answer(answer, counted).await,
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

    /// Queues a pending publish's answer (a run's: one `Confirmed` for what is stored, one
    /// answer per publish that is not) and records each publish's publish→confirm time.
    /// `counted`: the publishes counted against `max_unconfirmed`, which they leave now.
    async fn answer(
        &mut self,
        (answer, received): (Answer, Instant),
        counted: bool,
    ) -> Result<(), End> {
        let elapsed = received.elapsed();
        let metrics = self.broker.metrics().clone();
        let count = match answer {
            Answer::One(frame) => {
                self.send(frame).await?;
                1
            }
            Answer::Run {
                first_id,
                count,
                outcome,
            } => {
                if outcome.stored > 0 {
                    let confirmed = Frame::Confirmed(Confirmed {
                        first_id,
                        count: outcome.stored as u32,
                        first_seq: outcome.first_seq,
                    });
                    self.send(confirmed).await?;
                }
                if let Some(e) = outcome.refused {
                    for id in first_id + outcome.stored as u64..first_id + count as u64 {
                        self.send(failure(id, e.clone())).await?;
                    }
                }
                count
            }
        };
        if counted {
            self.unconfirmed = self.unconfirmed.saturating_sub(count);
        }
        for _ in 0..count {
            metrics.observe_publish_confirm(elapsed);
        }
        Ok(())
    }

    /// Whether this connection speaks protocol v5 (batches).
    fn batches(&self) -> bool {
        self.version >= 5
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
            Frame::PublishBatch(b) if self.batches() => self.publish_batch(b).await,
            Frame::Settle(s) if self.batches() => self.settle(s).await,
            Frame::CreateTopic(c) => self.create_topic(c).await,
            Frame::ListTopics(l) => self.list_topics(l).await,
            Frame::DescribeTopic(d) => self.describe_topic(d).await,
            Frame::Subscribe(s) => self.subscribe(s).await,
            Frame::Unsubscribe(u) => self.unsubscribe(u.sub).await,
            Frame::Credit(c) => self.credit(c).await,
            Frame::Ack(a) => self.ack(a).await,
            Frame::Nack(n) => self.nack(n).await,
            Frame::Term(t) => self.term(t).await,
            Frame::Progress(p) => self.progress(p).await,
            Frame::DeleteTopic(d) => self.delete_topic(d).await,
            Frame::RepairTopic(r) => self.repair_topic(r).await,
            Frame::UpdateTopic(u) => self.update_topic(u).await,
            Frame::UpdateGroup(u) => self.update_group(u).await,
            Frame::DeleteGroup(d) => self.delete_group(d).await,
            Frame::Ping(nonce) => self.send(Frame::Pong(nonce)).await,
            Frame::Pong(_) => Ok(()),
            other @ (Frame::PublishBatch(_) | Frame::Settle(_)) => {
                let msg = format!(
                    "{} needs protocol v5; this connection speaks v{}",
                    other.name(),
                    self.version
                );
                self.send(error(0, ErrorCode::InvalidArgument, msg)).await
            }
            other => {
                let msg = format!("{} is not a frame a client sends", other.name());
                self.send(error(0, ErrorCode::InvalidArgument, msg)).await
            }
        }
    }

    /// Whether this connection's key may take `action` on `topic` (see [`crate::permissions`]).
    /// When not, the refusal is counted and logged (at most once a second per key) and request
    /// `req` is answered `Error{Forbidden}` naming the key, action and topic (in its message,
    /// and the action and topic as its `denied`); `Ok(false)`.
    /// A key's permissions are fixed for the broker's life, so what a subscription was allowed
    /// at `Subscribe` covers its credit, acks, nacks, terms, progress and unsubscribe.
    async fn permit(&mut self, req: u64, action: Action, topic: &str) -> Result<bool, End> {
        match self.permission(action, topic)? {
            None => Ok(true),
            Some(refused) => {
                self.send(answers::forbidden(req, &refused)).await?;
                Ok(false)
            }
        }
    }

    /// Whether this connection's key may take `action` on `topic`: `None` when it may, else
    /// the refusal (counted and logged), for the caller to answer (see [`Connection::permit`]).
    fn permission(
        &mut self,
        action: Action,
        topic: &str,
    ) -> Result<Option<crate::permissions::Forbidden>, End> {
        let Some(identity) = &self.identity else {
            return Err(End::ProtocolError);
        };
        let grants = identity.access.grants();
        let allowed = match &mut self.publish_decision {
            _ if action != Action::Publish => grants.allows(action, topic),
            Some((last, allowed)) if last == topic => *allowed,
            decision => {
                let allowed = grants.allows(action, topic);
                *decision = Some((topic.to_owned(), allowed));
                allowed
            }
        };
        if allowed {
            return Ok(None);
        }
        Ok(Some(identity.access.refuse(
            action,
            topic,
            self.broker.clock().now(),
        )))
    }

    /// Looks up (or auto-creates) a topic, answering request `req` with the failure. Creating
    /// it pays an `ops_per_s` token when `pay` (a publish; a subscribe has paid its own).
    async fn topic(&self, req: u64, name: &str, pay: bool) -> Result<Option<Arc<Topic>>, End> {
        match self.lookup(name, pay).await {
            Ok(topic) => Ok(Some(topic)),
            Err(failure) => self.send(failure(req)).await.map(|()| None),
        }
    }

    /// Looks up (or auto-creates, paying when `pay`) a topic; on failure, the answer to give
    /// each request it fails.
    async fn lookup(
        &self,
        name: &str,
        pay: bool,
    ) -> Result<Arc<Topic>, Box<dyn Fn(u64) -> Frame + Send>> {
        let key = self.key.as_deref().filter(|_| pay);
        let e = match self.broker.topic_or_create(name, key).await {
            Ok(topic) => return Ok(topic),
            Err(e) => e,
        };
        let name = name.to_owned();
        Err(match e {
            CreateError::Refused(r) => Box::new(move |req| rejected(req, r.clone())),
            CreateError::Unknown(_) => Box::new(move |req| {
                error(
                    req,
                    ErrorCode::UnknownTopic,
                    format!("unknown topic {name}"),
                )
            }),
            CreateError::TooMany(max) => {
                let r = crate::publish::too_many_topics(&self.broker, max);
                Box::new(move |req| rejected(req, r.clone()))
            }
            CreateError::Invalid(msg) => {
                Box::new(move |req| error(req, ErrorCode::InvalidArgument, msg.clone()))
            }
            e => {
                let msg = e.to_string();
                Box::new(move |req| error(req, ErrorCode::Internal, msg.clone()))
            }
        })
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

    fn member(&self, sub: u64) -> MemberId {
        MemberId { conn: self.id, sub }
    }

    /// Waits (at most `grace`) for publishes being committed (and parked ones, which the
    /// broker refuses with `ShuttingDown` as it stops) and sends their answers, and for the
    /// client to settle the deliveries it holds. Meanwhile it still reads the client's frames
    /// and applies its acks, nacks, terms and progress (the broker dispatches nothing more by
    /// now, so they only settle what the client holds) and answers its publishes and batches
    /// (each message refused `ShuttingDown`); any other frame is ignored. It ends as soon as nothing is pending and
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
                        if self.answer(answer, true).await.is_err() {
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
                            | Frame::Settle(_)
                            | Frame::Publish(_)
                            | Frame::PublishBatch(_)),
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
}
