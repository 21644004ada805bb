//! The connection: the handshake, and the one background task that owns the socket.
//!
//! The task reads frames and routes each answer by its id to whoever waits for it, and writes
//! the frames the handles ask for. Handles ([`crate::Client`], [`crate::Publisher`],
//! [`crate::Subscription`]) talk to it through one bounded command queue
//! ([`crate::ClientOptions::command_queue`] commands); when the queue is full, senders wait.
//!
//! **Idle close.** A broker closes a connection that has no subscription and sends nothing for
//! its `idle_timeout` with `GoingAway{Idle}`. The task then stays alive, socketless: the next
//! command that needs the broker (anything but an unsubscribe) makes it connect again — to the
//! addresses resolved at [`open`], with the same [`ClientOptions`] — and carry on, so every
//! handle keeps working and exactly one reconnect happens however many handles are waiting
//! (they wait in the bounded queue meanwhile). A broker sends `GoingAway{Idle}` only with nothing
//! pending, after answering every frame it read, so whatever is unanswered when it arrives was
//! never read: it is resent on the new connection, first and in its original order. A failed
//! reconnect fails the command that asked for it and every command queued at that moment with
//! its error; the next command tries again. Any other end (a broker shutting down, a slow
//! consumer, an i/o or protocol error) is final, as [`ConnShared::error`] reports.
//!
//! Writes are batched: every frame is encoded straight into one write buffer, and the buffer is
//! written with one `write` per wake-up of the task, however many frames it holds. While the
//! buffer holds more than [`WRITE_HIGH_WATER`] bytes, the task takes no new commands, so the
//! queue fills and pressure reaches the callers. Reading never waits on writing: a broker that
//! has stopped reading (its unconfirmed-publish cap) still gets its confirms read.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::{FutureExt, StreamExt};
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{lookup_host, TcpStream, ToSocketAddrs};
use tokio::sync::{mpsc, oneshot, Notify, OwnedSemaphorePermit};
use tokio::time::Instant;
use tokio_util::codec::FramedRead;
use weir_protocol::{
    CodecError, CreateTopic, DeleteGroup, DeleteTopic, DescribeTopic, ErrorCode, Frame, GoingAway,
    GoingAwayReason, GroupSpec, Headers, Hello, ListTopics, Publish, ServerLimits, Subscribe,
    TopicSpec, Unsubscribe, WeirCodec, PROTOCOL_VERSION,
};

use crate::client::ClientOptions;
use crate::error::{ClientError, PublishError};
use crate::pacing::{AckPacer, Wake};
use crate::publisher::Message;

/// While the write buffer holds more than this many bytes (256 KiB), the connection task takes
/// no new commands. One frame may overshoot it, so the buffer is bounded by this plus one frame.
pub const WRITE_HIGH_WATER: usize = 256 * 1024;

/// Most commands the task takes per wake-up before it writes (and reads) again.
const COMMANDS_PER_WAKE: usize = 256;

/// How long a connection whose handles are all gone may take to write its last frames.
const GOODBYE_TIMEOUT: Duration = Duration::from_secs(5);

/// Most frames the task decodes from already-buffered input per wake-up.
const FRAMES_PER_WAKE: usize = 256;

/// How long an ack (or nack, term, progress) may wait to be batched with others before the
/// task sends it anyway.
pub const ACK_DELAY: Duration = Duration::from_millis(5);

/// Subscription ids start here, so they never collide with publish and request ids (which
/// count up from 1 on the same connection).
const FIRST_SUB_ID: u64 = 1 << 62;

/// State shared by the connection task and every handle of one connection (across the
/// reconnects that follow idle closes).
#[derive(Debug)]
pub(crate) struct ConnShared {
    /// The limits the broker announced in the `HelloOk` of the live (or last) connection.
    limits: Mutex<ServerLimits>,
    /// A socket is open and past the handshake (false between an idle close and the reconnect).
    connected: AtomicBool,
    /// Why the connection ended for good; set once, by the task, before it stops taking
    /// commands. Never set by an idle close.
    terminal: OnceLock<ClientError>,
    /// Asks the task to send pending acks (nacks, terms, progress) and credit now.
    pub flush_now: Notify,
    /// Asks the task to send pending acks (nacks, terms, progress) and credit within
    /// [`ACK_DELAY`].
    pub flush_soon: Notify,
    next_sub: AtomicU64,
}

impl ConnShared {
    /// The state of a connection just opened with `limits`.
    fn new(limits: ServerLimits) -> ConnShared {
        ConnShared {
            limits: Mutex::new(limits),
            connected: AtomicBool::new(true),
            terminal: OnceLock::new(),
            flush_now: Notify::new(),
            flush_soon: Notify::new(),
            next_sub: AtomicU64::new(FIRST_SUB_ID),
        }
    }

    /// The limits of the live connection (of the last one, between an idle close and the
    /// reconnect).
    pub fn limits(&self) -> ServerLimits {
        self.limits
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn set_limits(&self, limits: ServerLimits) {
        *self.limits.lock().unwrap_or_else(|p| p.into_inner()) = limits;
    }

    /// Whether a socket is open now (past its handshake).
    pub fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Acquire)
    }

    /// The error that ended the connection, or [`ClientError::ConnectionLost`] while unknown.
    pub fn error(&self) -> ClientError {
        self.terminal
            .get()
            .cloned()
            .unwrap_or(ClientError::ConnectionLost)
    }

    /// Whether the connection has ended for good (an idle close does not count: the next
    /// command reconnects).
    pub fn is_closed(&self) -> bool {
        self.terminal.get().is_some()
    }

    /// Passes a pacer's wake-up request on to the task.
    pub fn wake(&self, wake: Wake) {
        match wake {
            Wake::Now => self.flush_now.notify_one(),
            Wake::Soon => self.flush_soon.notify_one(),
            Wake::Nothing => {}
        }
    }

    /// A fresh subscription id.
    pub fn next_sub_id(&self) -> u64 {
        self.next_sub.fetch_add(1, Ordering::Relaxed)
    }
}

/// A handle to the connection task: its command queue and the shared state.
#[derive(Debug, Clone)]
pub(crate) struct ConnHandle {
    pub tx: mpsc::Sender<Command>,
    pub shared: Arc<ConnShared>,
}

impl ConnHandle {
    /// Queues a command, waiting while the queue is full. Fails with the connection's terminal
    /// error once it has ended.
    pub async fn send(&self, cmd: Command) -> Result<(), ClientError> {
        self.tx.send(cmd).await.map_err(|_| self.shared.error())
    }
}

/// An admin request answered by one frame.
#[derive(Debug, Clone)]
pub(crate) enum AdminRequest {
    CreateTopic(TopicSpec),
    /// One page of topics, after the named one.
    ListTopics {
        after: Option<String>,
    },
    DescribeTopic(String),
    /// `RepairTopic`.
    RepairTopic(String),
    DeleteTopic {
        name: String,
        force: bool,
    },
    DeleteGroup {
        topic: String,
        group: String,
        force: bool,
    },
}

impl AdminRequest {
    /// The request's frame, with request id `req`.
    fn into_frame(self, req: u64) -> Frame {
        match self {
            AdminRequest::CreateTopic(spec) => Frame::CreateTopic(CreateTopic { req, spec }),
            AdminRequest::ListTopics { after } => Frame::ListTopics(ListTopics {
                req,
                after,
                limit: 0,
            }),
            AdminRequest::DescribeTopic(name) => Frame::DescribeTopic(DescribeTopic { req, name }),
            AdminRequest::DeleteTopic { name, force } => {
                Frame::DeleteTopic(DeleteTopic { req, name, force })
            }
            AdminRequest::RepairTopic(name) => {
                Frame::RepairTopic(weir_protocol::RepairTopic { req, name })
            }
            AdminRequest::DeleteGroup {
                topic,
                group,
                force,
            } => Frame::DeleteGroup(DeleteGroup {
                req,
                topic,
                group,
                force,
            }),
        }
    }
}

/// One delivery as routed by the task, before the subscription wraps it.
#[derive(Debug)]
pub(crate) struct RawDelivery {
    pub seq: u64,
    pub attempt: u32,
    pub headers: Headers,
    pub payload: Bytes,
}

/// What a subscription's channel carries: deliveries, and non-fatal errors about it.
pub(crate) type SubItem = Result<RawDelivery, ClientError>;

/// Room in a subscription's channel beyond its window, for non-fatal errors about it.
pub(crate) const SUB_ERROR_SLOTS: usize = 4;

/// State of one subscription shared by its handle, its deliveries and the task.
#[derive(Debug)]
pub(crate) struct SubShared {
    pub id: u64,
    pub pacer: Mutex<AckPacer>,
    /// The error that ended the subscription, set before its channel is closed.
    pub end: Mutex<Option<ClientError>>,
    pub conn: Arc<ConnShared>,
    /// Messages the broker evicted (`drop_oldest`) before this subscription's group got them.
    pub dropped: std::sync::atomic::AtomicU64,
    /// Gap notices that found the stream's buffer full, merged into one range the stream
    /// yields on its next poll (so none is lost, and this holds one range at most).
    pub pending_gap: Mutex<Option<(u64, u64)>>,
    /// Gap notices in the stream's channel now: at most [`GAP_SLOTS`], so notices never take
    /// the room credit-bounded deliveries need.
    pub gaps_queued: std::sync::atomic::AtomicUsize,
}

/// Of the [`SUB_ERROR_SLOTS`], how many gap notices may occupy at once.
pub(crate) const GAP_SLOTS: usize = 2;

/// A request to the connection task.
#[derive(Debug)]
pub(crate) enum Command {
    Publish {
        message: Message,
        reply: oneshot::Sender<Result<u64, PublishError>>,
        /// The publish window slot, held until the broker answers.
        permit: OwnedSemaphorePermit,
    },
    Request {
        request: AdminRequest,
        reply: oneshot::Sender<Result<Frame, ClientError>>,
    },
    Subscribe {
        shared: Arc<SubShared>,
        topic: String,
        group: String,
        credit: u32,
        group_spec: GroupSpec,
        tx: mpsc::Sender<SubItem>,
        reply: oneshot::Sender<Result<(), ClientError>>,
    },
    Unsubscribe {
        sub: u64,
        reply: Option<oneshot::Sender<Result<(), ClientError>>>,
    },
    Ping {
        reply: oneshot::Sender<Result<Duration, ClientError>>,
    },
}

/// Resolves `addr`, connects, performs the handshake and spawns the connection task, which
/// reconnects to the same resolved addresses after an idle close.
pub(crate) async fn open(
    addr: impl ToSocketAddrs,
    opts: &ClientOptions,
) -> Result<ConnHandle, ClientError> {
    let addrs: Vec<SocketAddr> = tokio::time::timeout(opts.connect_timeout, lookup_host(addr))
        .await
        .map_err(|_| connect_timed_out())??
        .collect();
    let session = connect(&addrs, opts).await?;
    let shared = Arc::new(ConnShared::new(session.limits.clone()));
    let (tx, rx) = mpsc::channel(opts.command_queue.max(1));
    let task = ConnTask {
        io: Some(session.io),
        wbuf: BytesMut::new(),
        codec: session.codec,
        cmd_rx: rx,
        commands_open: true,
        replay: VecDeque::new(),
        addrs,
        opts: opts.clone(),
        shared: shared.clone(),
        next_id: 1,
        publishes: HashMap::new(),
        requests: HashMap::new(),
        subs: HashMap::new(),
        pings: HashMap::new(),
        flush_deadline: None,
        going_away: None,
    };
    tokio::spawn(task.run());
    Ok(ConnHandle { tx, shared })
}

fn connect_timed_out() -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out")
}

/// A socket's two halves.
struct Io {
    reader: FramedRead<OwnedReadHalf, WeirCodec>,
    writer: OwnedWriteHalf,
}

/// One socket past its handshake.
struct Session {
    io: Io,
    /// Encodes with the broker's `max_frame_bytes`.
    codec: WeirCodec,
    limits: ServerLimits,
}

/// Connects to the first of `addrs` that accepts and performs the `Hello` handshake.
async fn connect(addrs: &[SocketAddr], opts: &ClientOptions) -> Result<Session, ClientError> {
    let stream = tokio::time::timeout(opts.connect_timeout, TcpStream::connect(addrs))
        .await
        .map_err(|_| connect_timed_out())??;
    stream.set_nodelay(true)?;
    let (read, mut write) = stream.into_split();
    let mut reader = FramedRead::new(read, WeirCodec::new(opts.max_frame_bytes));
    let mut wbuf = BytesMut::new();
    WeirCodec::default().encode_frame(
        &Frame::Hello(Hello {
            version: PROTOCOL_VERSION,
            token: opts.token.clone(),
        }),
        &mut wbuf,
    )?;
    write.write_all(&wbuf).await?;

    let answer = tokio::time::timeout(opts.handshake_timeout, reader.next())
        .await
        .map_err(|_| {
            ClientError::Handshake(format!(
                "no answer to Hello within {:?}",
                opts.handshake_timeout
            ))
        })?;
    let limits = match answer {
        None => {
            return Err(ClientError::Handshake(
                "broker closed the connection during the handshake".into(),
            ))
        }
        Some(Err(e)) => return Err(e.into()),
        Some(Ok(Frame::HelloOk(ok))) => {
            if ok.version != PROTOCOL_VERSION {
                return Err(ClientError::UnsupportedVersion(format!(
                    "broker answered with protocol version {}, this client speaks {PROTOCOL_VERSION}",
                    ok.version
                )));
            }
            ok.limits
        }
        Some(Ok(Frame::Error(e))) => {
            return Err(match e.code {
                ErrorCode::Unauthorized => ClientError::Unauthorized(e.message),
                ErrorCode::UnsupportedVersion => ClientError::UnsupportedVersion(e.message),
                code => ClientError::Broker {
                    code,
                    message: e.message,
                },
            })
        }
        Some(Ok(Frame::Rejected(r))) => {
            return Err(ClientError::ConnectionRejected {
                reason: r.reason,
                limit: r.limit,
                retry_after_ms: r.retry_after_ms,
            })
        }
        Some(Ok(Frame::GoingAway(g))) => return Err(going_away(g)),
        Some(Ok(other)) => {
            return Err(ClientError::Handshake(format!(
                "expected HelloOk, got {}",
                other.name()
            )))
        }
    };

    let read_max = opts.max_frame_bytes.max(limits.max_frame_bytes as usize);
    *reader.decoder_mut() = WeirCodec::new(read_max);
    Ok(Session {
        io: Io {
            reader,
            writer: write,
        },
        codec: WeirCodec::new(limits.max_frame_bytes as usize),
        limits,
    })
}

/// A publish sent and not yet answered.
struct PendingPublish {
    /// Kept until the answer, to be resent if an idle close comes first.
    message: Message,
    reply: oneshot::Sender<Result<u64, PublishError>>,
    permit: OwnedSemaphorePermit,
}

/// An admin request sent and not yet answered.
struct PendingRequest {
    /// Kept until the answer, to be resent if an idle close comes first.
    request: AdminRequest,
    reply: oneshot::Sender<Result<Frame, ClientError>>,
}

/// What a `Subscribe` said, kept until `Subscribed` to be resent if an idle close comes first.
struct SubscribeArgs {
    topic: String,
    group: String,
    group_spec: GroupSpec,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SubState {
    /// `Subscribe` sent, `Subscribed` not yet received.
    Opening,
    /// Open: deliveries flow.
    Open,
    /// `Unsubscribe` sent; deliveries still arriving are dropped (the broker redelivers them).
    Closing,
}

struct SubEntry {
    shared: Arc<SubShared>,
    /// Where its `Subscribe` came among the frames sent (an id of the publish/request counter).
    order: u64,
    /// `Some` while `Opening`.
    args: Option<SubscribeArgs>,
    /// `None` once the subscription is closing or has failed.
    tx: Option<mpsc::Sender<SubItem>>,
    state: SubState,
    /// Credit the broker has and has not used yet, as this client counts it.
    broker_credit: u32,
    open_reply: Option<oneshot::Sender<Result<(), ClientError>>>,
    close_reply: Option<oneshot::Sender<Result<(), ClientError>>>,
}

impl SubEntry {
    /// Ends the subscription for its handle with `err` (after what is buffered).
    fn end_with(&mut self, err: ClientError) {
        if let Ok(mut end) = self.shared.end.lock() {
            end.get_or_insert(err.clone());
        }
        if let Ok(mut pacer) = self.shared.pacer.lock() {
            pacer.close();
        }
        self.tx = None;
        if let Some(reply) = self.open_reply.take() {
            let _ = reply.send(Err(err.clone()));
        }
        if let Some(reply) = self.close_reply.take() {
            let _ = reply.send(Err(err));
        }
    }
}

struct ConnTask {
    /// The live socket; `None` from an idle close until the reconnect.
    io: Option<Io>,
    wbuf: BytesMut,
    codec: WeirCodec,
    cmd_rx: mpsc::Receiver<Command>,
    /// Some handle may still send commands (`cmd_rx` has not returned `None`).
    commands_open: bool,
    /// Commands the broker never read before an idle close, to be sent again before any new
    /// one; at most the window of each publisher plus the requests that were waiting.
    replay: VecDeque<Command>,
    /// Where to reconnect after an idle close: what the address given to [`open`] resolved to.
    addrs: Vec<SocketAddr>,
    opts: ClientOptions,
    shared: Arc<ConnShared>,
    /// The next publish / request / ping id (one counter for all three).
    next_id: u64,
    publishes: HashMap<u64, PendingPublish>,
    requests: HashMap<u64, PendingRequest>,
    subs: HashMap<u64, SubEntry>,
    pings: HashMap<u64, (Instant, oneshot::Sender<Result<Duration, ClientError>>)>,
    flush_deadline: Option<Instant>,
    going_away: Option<GoingAway>,
}

fn protocol(msg: impl Into<String>) -> ClientError {
    ClientError::Protocol(msg.into())
}

/// Whether `e` is the end of a connection the broker closed as idle, which the task heals.
fn is_idle_close(e: &ClientError) -> bool {
    matches!(
        e,
        ClientError::GoingAway {
            reason: GoingAwayReason::Idle,
            ..
        }
    )
}

/// Answers a command that will not be sent: its caller gets `err`, a publish's confirm gets
/// `publish_err`, and an unsubscribe succeeds (nothing is subscribed).
fn refuse(cmd: Command, err: &ClientError, publish_err: PublishError) {
    match cmd {
        Command::Publish { reply, .. } => {
            let _ = reply.send(Err(publish_err));
        }
        Command::Request { reply, .. } => {
            let _ = reply.send(Err(err.clone()));
        }
        Command::Subscribe { reply, .. } => {
            let _ = reply.send(Err(err.clone()));
        }
        Command::Unsubscribe { reply, .. } => {
            if let Some(reply) = reply {
                let _ = reply.send(Ok(()));
            }
        }
        Command::Ping { reply } => {
            let _ = reply.send(Err(err.clone()));
        }
    }
}

impl ConnTask {
    async fn run(mut self) {
        let err = loop {
            let end = match self.run_loop().await {
                Ok(()) => break ClientError::ConnectionLost,
                Err(e) => e,
            };
            if !is_idle_close(&end) {
                break end;
            }
            tracing::debug!("weir connection closed idle by the broker; reconnecting when needed");
            if !self.heal(&end).await {
                break end;
            }
        };
        match &err {
            ClientError::ConnectionLost => tracing::debug!("weir connection closed"),
            e => tracing::debug!(error = %e, "weir connection ended"),
        }
        self.shared.connected.store(false, Ordering::Release);
        let _ = self.shared.terminal.set(err.clone());
        self.cmd_rx.close();
        self.fail_all(&err);
        // Commands still queued are dropped; their reply senders close, and the waiting handles
        // read the terminal error set above.
        while self.cmd_rx.try_recv().is_ok() {}
    }

    /// After an idle close: takes back what the broker never read, then connects again as soon
    /// as something needs the broker — at once when something was left unanswered, otherwise
    /// for the next command that needs it (an unsubscribe does not: nothing is subscribed, so it
    /// is answered here). Handles wait in the bounded command queue meanwhile.
    ///
    /// A failed attempt fails what it was for and every command queued by then with its error
    /// (the callers waited for this attempt; a publish's confirm gets
    /// [`PublishError::NotSent`]), and the next command tries again.
    ///
    /// Returns `true` once connected again, `false` when every handle is gone with nothing
    /// left to send.
    async fn heal(&mut self, idle: &ClientError) -> bool {
        self.shared.connected.store(false, Ordering::Release);
        self.io = None;
        self.flush_deadline = None;
        self.take_unanswered(idle);
        loop {
            if self.replay.is_empty() {
                let cmd = match self.commands_open {
                    true => self.cmd_rx.recv().await,
                    false => None,
                };
                match cmd {
                    None => {
                        self.commands_open = false;
                        return false;
                    }
                    Some(Command::Unsubscribe { reply, .. }) => {
                        if let Some(reply) = reply {
                            let _ = reply.send(Ok(()));
                        }
                        continue;
                    }
                    Some(cmd) => self.replay.push_back(cmd),
                }
            }
            match connect(&self.addrs, &self.opts).await {
                Ok(session) => {
                    tracing::debug!("weir connection reopened after an idle close");
                    self.io = Some(session.io);
                    self.codec = session.codec;
                    self.wbuf.clear();
                    self.going_away = None;
                    self.shared.set_limits(session.limits);
                    self.shared.connected.store(true, Ordering::Release);
                    return true;
                }
                Err(e) => {
                    tracing::debug!(error = %e, "weir reconnect failed");
                    let not_sent = PublishError::NotSent(Arc::new(e.clone()));
                    for cmd in self.replay.drain(..) {
                        refuse(cmd, &e, not_sent.clone());
                    }
                    // Only those queued now: a caller that keeps sending cannot hold the task here.
                    for _ in 0..self.cmd_rx.len() {
                        match self.cmd_rx.try_recv() {
                            Ok(cmd) => refuse(cmd, &e, not_sent.clone()),
                            Err(_) => break,
                        }
                    }
                }
            }
        }
    }

    /// Moves everything sent and unanswered at an idle close to the front of [`ConnTask::replay`],
    /// in the order it was sent. The broker closes a connection as idle only with nothing
    /// pending, after answering every frame it read (and its answers came before its
    /// `GoingAway`), so none of it was read: resending cannot duplicate anything.
    ///
    /// A subscription unsubscribed before its `Subscribe` was read never existed at the broker:
    /// its close succeeds. An open subscription cannot be there (the broker would not have been
    /// idle); should one be, it ends with the idle close's error.
    fn take_unanswered(&mut self, idle: &ClientError) {
        let mut unanswered: Vec<(u64, Command)> = Vec::new();
        for (id, p) in self.publishes.drain() {
            let cmd = Command::Publish {
                message: p.message,
                reply: p.reply,
                permit: p.permit,
            };
            unanswered.push((id, cmd));
        }
        for (id, r) in self.requests.drain() {
            let cmd = Command::Request {
                request: r.request,
                reply: r.reply,
            };
            unanswered.push((id, cmd));
        }
        for (id, (_, reply)) in self.pings.drain() {
            unanswered.push((id, Command::Ping { reply }));
        }
        for (_, mut entry) in self.subs.drain() {
            match entry.state {
                SubState::Opening => {
                    let (Some(args), Some(tx), Some(reply)) =
                        (entry.args.take(), entry.tx.take(), entry.open_reply.take())
                    else {
                        continue;
                    };
                    let cmd = Command::Subscribe {
                        shared: entry.shared,
                        topic: args.topic,
                        group: args.group,
                        credit: entry.broker_credit,
                        group_spec: args.group_spec,
                        tx,
                        reply,
                    };
                    unanswered.push((entry.order, cmd));
                }
                SubState::Closing => {
                    if let Some(reply) = entry.close_reply.take() {
                        let _ = reply.send(Ok(()));
                    }
                }
                SubState::Open => {
                    tracing::warn!(
                        sub = entry.shared.id,
                        "weir broker closed a connection with an open subscription as idle"
                    );
                    entry.end_with(idle.clone());
                }
            }
        }
        unanswered.sort_unstable_by_key(|(order, _)| *order);
        for (_, cmd) in unanswered.into_iter().rev() {
            self.replay.push_front(cmd);
        }
    }

    fn fail_all(&mut self, err: &ClientError) {
        for (_, p) in self.publishes.drain() {
            let _ = p.reply.send(Err(PublishError::ConnectionLost));
        }
        for (_, r) in self.requests.drain() {
            let _ = r.reply.send(Err(err.clone()));
        }
        for (_, mut s) in self.subs.drain() {
            s.end_with(err.clone());
        }
        for (_, (_, r)) in self.pings.drain() {
            let _ = r.send(Err(err.clone()));
        }
        // Taken back after an idle close and not sent again: the broker never read them.
        let not_sent = PublishError::NotSent(Arc::new(err.clone()));
        for cmd in self.replay.drain(..) {
            refuse(cmd, err, not_sent.clone());
        }
    }

    /// Nothing is waiting on the broker.
    fn idle(&self) -> bool {
        self.publishes.is_empty()
            && self.requests.is_empty()
            && self.pings.is_empty()
            && self.replay.is_empty()
    }

    /// The broker said it closes this connection as idle: take no new command (the close is
    /// healed once the socket ends).
    fn closing_idle(&self) -> bool {
        matches!(&self.going_away, Some(g) if g.reason == GoingAwayReason::Idle)
    }

    async fn run_loop(&mut self) -> Result<(), ClientError> {
        loop {
            // What an idle close left unanswered goes first, before any new command.
            while !self.closing_idle() && self.wbuf.len() < WRITE_HIGH_WATER {
                let Some(cmd) = self.replay.pop_front() else {
                    break;
                };
                self.on_command(cmd)?;
            }
            let finished = !self.commands_open && self.idle();
            let accept = self.commands_open
                && self.replay.is_empty()
                && !self.closing_idle()
                && self.wbuf.len() < WRITE_HIGH_WATER;
            let Some(io) = self.io.as_mut() else {
                return Err(ClientError::ConnectionLost);
            };
            if finished {
                // Every handle is gone and nothing waits for an answer: send what is left
                // (unsubscribes, final acks) and close, without waiting forever on a broker that
                // does not read.
                let goodbye = async {
                    io.writer.write_all(&self.wbuf).await?;
                    io.writer.shutdown().await
                };
                let _ = tokio::time::timeout(GOODBYE_TIMEOUT, goodbye).await;
                return Ok(());
            }
            let deadline = self.flush_deadline;
            tokio::select! {
                biased;
                written = io.writer.write_buf(&mut self.wbuf), if !self.wbuf.is_empty() => {
                    match written {
                        Ok(0) => return Err(self.explain(std::io::ErrorKind::WriteZero.into())),
                        Ok(_) => {}
                        Err(e) => return Err(self.explain(e)),
                    }
                }
                frame = io.reader.next() => {
                    self.on_read(frame)?;
                    for _ in 0..FRAMES_PER_WAKE {
                        match self.next_buffered() {
                            Some(frame) => self.on_read(frame)?,
                            None => break,
                        }
                    }
                }
                cmd = self.cmd_rx.recv(), if accept => match cmd {
                    Some(cmd) => {
                        self.on_command(cmd)?;
                        for _ in 0..COMMANDS_PER_WAKE {
                            if self.wbuf.len() >= WRITE_HIGH_WATER || self.closing_idle() {
                                break;
                            }
                            match self.cmd_rx.try_recv() {
                                Ok(cmd) => self.on_command(cmd)?,
                                Err(_) => break,
                            }
                        }
                    }
                    None => self.commands_open = false,
                },
                _ = self.shared.flush_now.notified() => self.flush_acks()?,
                _ = self.shared.flush_soon.notified(), if deadline.is_none() => {
                    self.flush_deadline = Some(Instant::now() + ACK_DELAY);
                }
                _ = tokio::time::sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() => {
                    self.flush_acks()?;
                }
            }
        }
    }

    /// The error to report for a failed write: the broker usually said why it closed the
    /// connection (`Error`, `GoingAway`) just before, so frames already received are read first.
    fn explain(&mut self, e: std::io::Error) -> ClientError {
        for _ in 0..FRAMES_PER_WAKE {
            match self.next_buffered() {
                Some(Some(Ok(frame))) => {
                    if let Err(why) = self.on_frame(frame) {
                        return why;
                    }
                }
                _ => break,
            }
        }
        match self.going_away.take() {
            Some(g) => going_away(g),
            None => e.into(),
        }
    }

    /// The next frame if it is already buffered (or the end of the socket, if it has ended).
    fn next_buffered(&mut self) -> Option<Option<Result<Frame, CodecError>>> {
        self.io.as_mut()?.reader.next().now_or_never()
    }

    fn on_read(&mut self, frame: Option<Result<Frame, CodecError>>) -> Result<(), ClientError> {
        match frame {
            Some(Ok(frame)) => self.on_frame(frame),
            // The broker said why it closes; a reset after that is the same end.
            Some(Err(CodecError::Io(e))) => Err(match self.going_away.take() {
                Some(g) => going_away(g),
                None => e.into(),
            }),
            Some(Err(e)) => Err(e.into()),
            None => Err(match self.going_away.take() {
                Some(g) => going_away(g),
                None => ClientError::ConnectionLost,
            }),
        }
    }

    fn next_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    /// Encodes one frame into the write buffer.
    fn send_frame(&mut self, frame: &Frame) -> Result<(), ClientError> {
        if tracing::enabled!(tracing::Level::TRACE) {
            tracing::trace!(frame = ?TraceFrame(frame), "weir frame sent");
        }
        self.codec.encode_frame(frame, &mut self.wbuf)?;
        Ok(())
    }

    fn on_command(&mut self, cmd: Command) -> Result<(), ClientError> {
        if let Some(g) = &self.going_away {
            refuse(cmd, &going_away(g.clone()), PublishError::ConnectionLost);
            return Ok(());
        }
        match cmd {
            Command::Publish {
                message,
                reply,
                permit,
            } => {
                let id = self.next_id();
                let frame = Frame::Publish(Publish {
                    id,
                    topic: message.topic.clone(),
                    headers: message.headers.clone(),
                    payload: message.payload.clone(),
                });
                match self.codec.encode_frame(&frame, &mut self.wbuf) {
                    Ok(()) => {
                        let pending = PendingPublish {
                            message,
                            reply,
                            permit,
                        };
                        self.publishes.insert(id, pending);
                    }
                    Err(CodecError::FrameTooLarge { len, max }) => {
                        let _ = reply.send(Err(PublishError::TooLarge { len, max }));
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            Command::Request { request, reply } => {
                let req = self.next_id();
                self.send_frame(&request.clone().into_frame(req))?;
                self.requests.insert(req, PendingRequest { request, reply });
            }
            Command::Subscribe {
                shared,
                topic,
                group,
                credit,
                group_spec,
                tx,
                reply,
            } => {
                let sub = shared.id;
                let order = self.next_id();
                self.send_frame(&Frame::Subscribe(Subscribe {
                    sub,
                    topic: topic.clone(),
                    group: group.clone(),
                    credit,
                    group_spec: group_spec.clone(),
                }))?;
                let args = SubscribeArgs {
                    topic,
                    group,
                    group_spec,
                };
                self.subs.insert(
                    sub,
                    SubEntry {
                        shared,
                        order,
                        args: Some(args),
                        tx: Some(tx),
                        state: SubState::Opening,
                        broker_credit: credit,
                        open_reply: Some(reply),
                        close_reply: None,
                    },
                );
            }
            Command::Unsubscribe { sub, reply } => {
                let Some(state) = self.subs.get(&sub).map(|s| s.state) else {
                    // Already gone (it failed, or the broker dropped it).
                    if let Some(reply) = reply {
                        let _ = reply.send(Ok(()));
                    }
                    return Ok(());
                };
                if state == SubState::Closing {
                    if let Some(reply) = reply {
                        let _ = reply.send(Ok(()));
                    }
                    return Ok(());
                }
                // Acks the app made before closing go out first, so those messages are not
                // redelivered.
                self.flush_sub(sub)?;
                self.send_frame(&Frame::Unsubscribe(Unsubscribe { sub }))?;
                if let Some(entry) = self.subs.get_mut(&sub) {
                    if let Ok(mut pacer) = entry.shared.pacer.lock() {
                        pacer.close();
                    }
                    entry.tx = None;
                    entry.state = SubState::Closing;
                    entry.close_reply = reply;
                    if let Some(open) = entry.open_reply.take() {
                        let _ = open.send(Err(ClientError::InvalidArgument(
                            "subscription closed while opening".into(),
                        )));
                    }
                }
            }
            Command::Ping { reply } => {
                let nonce = self.next_id();
                self.send_frame(&Frame::Ping(nonce))?;
                self.pings.insert(nonce, (Instant::now(), reply));
            }
        }
        Ok(())
    }

    /// Sends the pending acks (nacks, terms, progress) and credit of every subscription.
    fn flush_acks(&mut self) -> Result<(), ClientError> {
        self.flush_deadline = None;
        let ids: Vec<u64> = self
            .subs
            .iter()
            .filter(|(_, s)| s.state != SubState::Closing && s.tx.is_some())
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            self.flush_sub(id)?;
        }
        Ok(())
    }

    /// Sends one subscription's pending batch: progress, acks, nacks and terms, then the credit
    /// they free (see [`crate::pacing::Batch::into_frames`]).
    fn flush_sub(&mut self, sub: u64) -> Result<(), ClientError> {
        let Some(entry) = self.subs.get_mut(&sub) else {
            return Ok(());
        };
        let batch = match entry.shared.pacer.lock() {
            Ok(mut pacer) => pacer.take(),
            Err(_) => None,
        };
        let Some(batch) = batch else { return Ok(()) };
        entry.broker_credit += batch.credit;
        for frame in batch.into_frames(sub) {
            self.send_frame(&frame)?;
        }
        Ok(())
    }

    fn on_frame(&mut self, frame: Frame) -> Result<(), ClientError> {
        if tracing::enabled!(tracing::Level::TRACE) {
            tracing::trace!(frame = ?TraceFrame(&frame), "weir frame received");
        }
        match frame {
            Frame::PublishOk(ok) => {
                let p = self.publishes.remove(&ok.id).ok_or_else(|| {
                    protocol(format!("PublishOk for unknown publish id {}", ok.id))
                })?;
                let _ = p.reply.send(Ok(ok.seq));
            }
            Frame::Rejected(r) => {
                if let Some(p) = self.publishes.remove(&r.id) {
                    let _ = p.reply.send(Err(PublishError::Rejected {
                        reason: r.reason,
                        limit: r.limit,
                        retry_after_ms: r.retry_after_ms,
                    }));
                } else if let Some(pending) = self.requests.remove(&r.id) {
                    let _ = pending.reply.send(Err(ClientError::Rejected {
                        reason: r.reason,
                        limit: r.limit,
                        retry_after_ms: r.retry_after_ms,
                    }));
                } else if let Some(entry) = self.subs.get_mut(&r.id) {
                    let err = ClientError::Rejected {
                        reason: r.reason,
                        limit: r.limit,
                        retry_after_ms: r.retry_after_ms,
                    };
                    if entry.state == SubState::Open {
                        deliver_error(entry, err);
                    } else {
                        let mut entry = self.subs.remove(&r.id).expect("present");
                        entry.end_with(err);
                    }
                } else if r.id == 0 {
                    return Err(ClientError::ConnectionRejected {
                        reason: r.reason,
                        limit: r.limit,
                        retry_after_ms: r.retry_after_ms,
                    });
                } else {
                    return Err(protocol(format!("Rejected for unknown id {}", r.id)));
                }
            }
            Frame::Error(e) => self.on_error(e)?,
            Frame::TopicCreated(ref t) => self.answer(t.req, frame)?,
            Frame::TopicList(ref t) => self.answer(t.req, frame)?,
            Frame::TopicDescription(ref t) => self.answer(t.req, frame)?,
            Frame::TopicDeleted(ref t) => self.answer(t.req, frame)?,
            Frame::TopicRepaired(ref t) => self.answer(t.req, frame)?,
            Frame::GroupDeleted(ref g) => self.answer(g.req, frame)?,
            Frame::Subscribed(s) => {
                let entry = self.subs.get_mut(&s.sub).ok_or_else(|| {
                    protocol(format!("Subscribed for unknown subscription {}", s.sub))
                })?;
                match entry.state {
                    SubState::Opening => {
                        entry.state = SubState::Open;
                        entry.args = None;
                        if let Some(reply) = entry.open_reply.take() {
                            let _ = reply.send(Ok(()));
                        }
                    }
                    SubState::Closing => {}
                    SubState::Open => {
                        return Err(protocol(format!(
                            "second Subscribed for subscription {}",
                            s.sub
                        )))
                    }
                }
            }
            Frame::Unsubscribed(u) => {
                let mut entry = self.subs.remove(&u.sub).ok_or_else(|| {
                    protocol(format!("Unsubscribed for unknown subscription {}", u.sub))
                })?;
                if let Some(reply) = entry.close_reply.take() {
                    let _ = reply.send(Ok(()));
                }
                if entry.state != SubState::Closing {
                    // The broker closed it on its own: end the stream cleanly.
                    entry.tx = None;
                }
            }
            Frame::Deliver(d) => {
                let entry = self.subs.get_mut(&d.sub).ok_or_else(|| {
                    protocol(format!("Deliver for unknown subscription {}", d.sub))
                })?;
                if entry.state == SubState::Closing || entry.tx.is_none() {
                    // Unacked: the broker returns it to the group once the unsubscribe lands.
                    return Ok(());
                }
                if entry.broker_credit == 0 {
                    entry.end_with(protocol(format!(
                        "broker delivered seq {} to subscription {} without credit",
                        d.seq, d.sub
                    )));
                    self.send_frame(&Frame::Unsubscribe(Unsubscribe { sub: d.sub }))?;
                    if let Some(entry) = self.subs.get_mut(&d.sub) {
                        entry.state = SubState::Closing;
                    }
                    return Ok(());
                }
                entry.broker_credit -= 1;
                let item = RawDelivery {
                    seq: d.seq,
                    attempt: d.attempt,
                    headers: d.headers,
                    payload: d.payload,
                };
                if let Some(tx) = &entry.tx {
                    match tx.try_send(Ok(item)) {
                        Ok(()) => {}
                        // The handle is gone; its Unsubscribe is on its way.
                        Err(mpsc::error::TrySendError::Closed(_)) => {}
                        Err(mpsc::error::TrySendError::Full(_)) => {
                            // Cannot happen while the credit count above holds; treat as a
                            // violation rather than block the connection.
                            entry.end_with(protocol(format!(
                                "subscription {} buffer overflow: more deliveries than its window",
                                d.sub
                            )));
                        }
                    }
                }
            }
            Frame::Gap(g) => {
                // A gap for a subscription already gone concerns nobody.
                let Some(entry) = self.subs.get_mut(&g.sub) else {
                    return Ok(());
                };
                let count = g.to.saturating_sub(g.from) + 1;
                entry
                    .shared
                    .dropped
                    .fetch_add(count, std::sync::atomic::Ordering::Relaxed);
                tracing::warn!(
                    sub = g.sub,
                    from = g.from,
                    to = g.to,
                    "the broker dropped messages before delivery"
                );
                if let Some(tx) = &entry.tx {
                    let notice = Err(ClientError::MessagesDropped {
                        from: g.from,
                        to: g.to,
                    });
                    use std::sync::atomic::Ordering::Relaxed;
                    let room = entry.shared.gaps_queued.load(Relaxed) < GAP_SLOTS;
                    if room && tx.try_send(notice).is_ok() {
                        entry.shared.gaps_queued.fetch_add(1, Relaxed);
                    } else {
                        // Notices queued already (or the channel is full): the app has unread
                        // items and will poll again, so merge for then.
                        if let Ok(mut pending) = entry.shared.pending_gap.lock() {
                            let (from, to) = pending
                                .map_or((g.from, g.to), |(f, t)| (f.min(g.from), t.max(g.to)));
                            *pending = Some((from, to));
                        }
                    }
                }
            }
            Frame::Ping(n) => self.send_frame(&Frame::Pong(n))?,
            Frame::Pong(n) => {
                if let Some((sent, reply)) = self.pings.remove(&n) {
                    let _ = reply.send(Ok(sent.elapsed()));
                }
            }
            Frame::GoingAway(g) => {
                tracing::info!(reason = ?g.reason, message = %g.message, "weir broker going away");
                self.going_away = Some(g);
            }
            other => {
                return Err(protocol(format!(
                    "unexpected {} frame from the broker",
                    other.name()
                )))
            }
        }
        Ok(())
    }

    /// Routes an admin answer to its request.
    fn answer(&mut self, req: u64, frame: Frame) -> Result<(), ClientError> {
        let pending = self
            .requests
            .remove(&req)
            .ok_or_else(|| protocol(format!("{} for unknown request id {req}", frame.name())))?;
        let _ = pending.reply.send(Ok(frame));
        Ok(())
    }

    fn on_error(&mut self, e: weir_protocol::Error) -> Result<(), ClientError> {
        let err = ClientError::Broker {
            code: e.code,
            message: e.message.clone(),
        };
        if e.req == 0 {
            return Err(err);
        }
        if let Some(p) = self.publishes.remove(&e.req) {
            let _ = p.reply.send(Err(PublishError::Broker {
                code: e.code,
                message: e.message,
            }));
        } else if let Some(pending) = self.requests.remove(&e.req) {
            let _ = pending.reply.send(Err(err));
        } else if let Some(entry) = self.subs.get_mut(&e.req) {
            match entry.state {
                // A refused subscribe, or a closing subscription the broker no longer knows:
                // either way it is gone.
                SubState::Opening | SubState::Closing => {
                    let mut entry = self.subs.remove(&e.req).expect("present");
                    if entry.state == SubState::Closing {
                        if let Some(reply) = entry.close_reply.take() {
                            let _ = reply.send(Ok(()));
                        }
                    }
                    entry.end_with(err);
                }
                SubState::Open if e.code == ErrorCode::UnknownSubscription => {
                    let mut entry = self.subs.remove(&e.req).expect("present");
                    entry.end_with(err);
                }
                // An ack or credit problem: the subscription stays open; the app hears of it.
                SubState::Open => deliver_error(entry, err),
            }
        } else if e.req >= FIRST_SUB_ID {
            // About a subscription already forgotten here, e.g. the answer to the Unsubscribe
            // of a subscription whose Subscribe was refused: nothing waits for it.
            tracing::debug!(sub = e.req, code = ?e.code, message = %e.message, "weir error for a closed subscription");
        } else {
            return Err(protocol(format!(
                "Error {:?} for unknown id {}: {}",
                e.code, e.req, e.message
            )));
        }
        Ok(())
    }
}

/// A frame for trace logs: payloads and headers shown by length only.
struct TraceFrame<'a>(&'a Frame);

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

/// Hands a non-fatal error to a subscription's stream, if there is room for it.
/// The error of a connection the broker closed with `GoingAway`.
fn going_away(g: GoingAway) -> ClientError {
    ClientError::GoingAway {
        reason: g.reason,
        message: g.message,
    }
}

fn deliver_error(entry: &mut SubEntry, err: ClientError) {
    if let Some(tx) = &entry.tx {
        if tx.try_send(Err(err.clone())).is_err() {
            tracing::warn!(sub = entry.shared.id, error = %err, "weir subscription error dropped: its buffer is full");
        }
    }
}

/// A connection handle without a socket, whose commands the test reads itself.
#[cfg(test)]
pub(crate) fn test_handle(
    limits: ServerLimits,
    queue: usize,
) -> (ConnHandle, mpsc::Receiver<Command>) {
    let shared = Arc::new(ConnShared::new(limits));
    let (tx, rx) = mpsc::channel(queue);
    (ConnHandle { tx, shared }, rx)
}

/// Limits for tests.
#[cfg(test)]
pub(crate) fn test_limits() -> ServerLimits {
    ServerLimits {
        max_frame_bytes: 4 << 20,
        max_unconfirmed: 8,
        max_credit: 64,
        max_subscriptions: 4,
        max_headers: 64,
        max_header_bytes: 16 * 1024,
        idle_timeout_ms: 600_000,
    }
}
