//! What the handles ([`crate::Client`], [`crate::Publisher`], [`crate::Subscription`]) and the
//! connection task share: the bounded command queue ([`ConnHandle`], [`Command`]), the state
//! that outlives each socket ([`ConnShared`]), and each subscription's ([`SubShared`]).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot, watch, Notify, OwnedSemaphorePermit};
use weir_protocol::{
    CreateTopic, DeleteGroup, DeleteTopic, DescribeTopic, Frame, GroupSpec, Headers, ListTopics,
    ServerLimits, TopicSpec,
};

use crate::error::{ClientError, PublishError};
use crate::message::Message;
use crate::pacing::{AckPacer, Wake};
use crate::reconnect::ConnectionState;

/// Subscription ids start here, so they never collide with publish and request ids (which
/// count up from 1 on the same connection).
pub(crate) const FIRST_SUB_ID: u64 = 1 << 62;

/// Room in a subscription's channel beyond its window, for non-fatal errors about it.
pub(crate) const SUB_ERROR_SLOTS: usize = 4;

/// Of the [`SUB_ERROR_SLOTS`], how many gap notices may occupy at once.
pub(crate) const GAP_SLOTS: usize = 2;

/// State shared by the connection task and every handle of one client, across its reconnects.
#[derive(Debug)]
pub(crate) struct ConnShared {
    /// The limits the broker announced in the `HelloOk` of the live (or last) connection.
    limits: Mutex<ServerLimits>,
    /// Connected, reconnecting, disconnected (until needed) or closed.
    state: watch::Sender<ConnectionState>,
    /// Successful reconnects so far.
    reconnects: AtomicU64,
    /// Publishes the broker answered as duplicates so far.
    duplicates: AtomicU64,
    /// Why the connection ended for good; set once, by the task, before it stops taking
    /// commands. Never set by a loss the client reconnects after.
    terminal: OnceLock<ClientError>,
    /// Asks the task to send pending acks (nacks, terms, progress) and credit now.
    pub flush_now: Notify,
    /// Asks the task to send pending acks (nacks, terms, progress) and credit within
    /// the task's ack delay (5 ms).
    pub flush_soon: Notify,
    next_sub: AtomicU64,
}

impl ConnShared {
    /// The state of a connection just opened with `limits`.
    pub fn new(limits: ServerLimits) -> ConnShared {
        ConnShared {
            limits: Mutex::new(limits),
            state: watch::Sender::new(ConnectionState::Connected),
            reconnects: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
            terminal: OnceLock::new(),
            flush_now: Notify::new(),
            flush_soon: Notify::new(),
            next_sub: AtomicU64::new(FIRST_SUB_ID),
        }
    }

    /// The limits of the live connection (of the last one, while there is none).
    pub fn limits(&self) -> ServerLimits {
        self.limits
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Records the limits of a new connection.
    pub fn set_limits(&self, limits: ServerLimits) {
        *self.limits.lock().unwrap_or_else(|p| p.into_inner()) = limits;
    }

    /// The connection's state now.
    pub fn state(&self) -> ConnectionState {
        *self.state.borrow()
    }

    /// A receiver of every change of the state (it sees the latest, not each one).
    pub fn watch_state(&self) -> watch::Receiver<ConnectionState> {
        self.state.subscribe()
    }

    /// Sets the state (by the task).
    pub fn set_state(&self, state: ConnectionState) {
        self.state.send_replace(state);
    }

    /// Whether a socket is open now (past its handshake).
    pub fn is_connected(&self) -> bool {
        self.state() == ConnectionState::Connected
    }

    /// Successful reconnects so far.
    pub fn reconnects(&self) -> u64 {
        self.reconnects.load(Ordering::Relaxed)
    }

    /// Counts a successful reconnect.
    pub fn count_reconnect(&self) {
        self.reconnects.fetch_add(1, Ordering::Relaxed);
    }

    /// Publishes the broker answered as duplicates so far.
    pub fn duplicates(&self) -> u64 {
        self.duplicates.load(Ordering::Relaxed)
    }

    /// Counts a publish the broker answered as a duplicate.
    pub fn count_duplicate(&self) {
        self.duplicates.fetch_add(1, Ordering::Relaxed);
    }

    /// The error that ended the connection, or [`ClientError::ConnectionLost`] while unknown.
    pub fn error(&self) -> ClientError {
        self.terminal
            .get()
            .cloned()
            .unwrap_or(ClientError::ConnectionLost)
    }

    /// Ends the connection for good with `err` (the first such call wins).
    pub fn set_terminal(&self, err: ClientError) {
        let _ = self.terminal.set(err);
        self.set_state(ConnectionState::Closed);
    }

    /// Whether the connection has ended for good (a loss the client reconnects after does not
    /// count).
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
    /// `UpdateGroup`.
    UpdateGroup {
        topic: String,
        group: String,
        update: weir_protocol::GroupUpdate,
    },
    /// `UpdateTopic`.
    UpdateTopic {
        name: String,
        update: weir_protocol::TopicUpdate,
    },
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
    pub fn into_frame(self, req: u64) -> Frame {
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
            AdminRequest::UpdateGroup {
                topic,
                group,
                update,
            } => Frame::UpdateGroup(weir_protocol::UpdateGroup {
                req,
                topic,
                group,
                update,
            }),
            AdminRequest::UpdateTopic { name, update } => {
                Frame::UpdateTopic(weir_protocol::UpdateTopic { req, name, update })
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
    /// The subscription's epoch (its pacer's, see [`AckPacer::renew`]) on the connection it
    /// came from: once the client has reconnected, finishing it sends nothing.
    pub epoch: u64,
}

/// What a subscription's channel carries: deliveries, and non-fatal errors about it.
pub(crate) type SubItem = Result<RawDelivery, ClientError>;

/// State of one subscription shared by its handle, its deliveries and the task.
#[derive(Debug)]
pub(crate) struct SubShared {
    pub id: u64,
    pub pacer: Mutex<AckPacer>,
    /// The error that ended the subscription, set before its channel is closed.
    pub end: Mutex<Option<ClientError>>,
    pub conn: Arc<ConnShared>,
    /// Messages the broker evicted (`drop_oldest`) before this subscription's group got them.
    pub dropped: AtomicU64,
    /// Gap notices that found the stream's buffer full, merged into one range the stream
    /// yields on its next poll (so none is lost, and this holds one range at most).
    pub pending_gap: Mutex<Option<(u64, u64)>>,
    /// Gap notices in the stream's channel now: at most [`GAP_SLOTS`], so notices never take
    /// the room credit-bounded deliveries need.
    pub gaps_queued: AtomicUsize,
}

impl SubShared {
    /// The state of a new subscription `id` with a window of `window` on `conn`.
    pub fn new(id: u64, window: u32, conn: Arc<ConnShared>) -> SubShared {
        SubShared {
            id,
            pacer: Mutex::new(AckPacer::new(window)),
            end: Mutex::new(None),
            conn,
            dropped: AtomicU64::new(0),
            pending_gap: Mutex::new(None),
            gaps_queued: AtomicUsize::new(0),
        }
    }
}

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
