//! The [`Frame`] enum: every message of the protocol, one struct each.
//!
//! Requests that expect an answer carry an id chosen by the client (`req`, or `id` for
//! publishes, or `sub` for subscriptions); the answer — success, [`Rejected`] or [`Error`] —
//! echoes it. Ids are scoped to one connection.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::types::{
    DroppedMessage, ErrorCode, GoingAwayReason, GroupSpec, Headers, Limit, RejectReason,
    ServerLimits, TopicConfig, TopicInfo, TopicSpec,
};

/// One protocol message. Only [`Frame::Publish`] and [`Frame::Deliver`] carry a payload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Frame {
    /// Client → broker, first frame of every connection.
    Hello(Hello),
    /// Broker → client: the connection is open; here are the broker's limits.
    HelloOk(HelloOk),
    /// Client → broker: create a topic (idempotent for an identical configuration).
    CreateTopic(CreateTopic),
    /// Broker → client: the topic exists with this configuration.
    TopicCreated(TopicCreated),
    /// Client → broker: describe every topic.
    ListTopics(ListTopics),
    /// Broker → client: the answer to [`ListTopics`].
    TopicList(TopicList),
    /// Client → broker: append a message to a topic.
    Publish(Publish),
    /// Broker → client: the publish is durable under the topic's fsync policy.
    PublishOk(PublishOk),
    /// Broker → client: the publish (or the connection) was refused at a bound.
    Rejected(Rejected),
    /// Client → broker: join a group of a topic with an initial credit.
    Subscribe(Subscribe),
    /// Broker → client: the subscription is open; deliveries may follow.
    Subscribed(Subscribed),
    /// Client → broker: leave a subscription; its unacked messages return to the group.
    Unsubscribe(Unsubscribe),
    /// Broker → client: the subscription is closed; no more deliveries for it.
    Unsubscribed(Unsubscribed),
    /// Client → broker: grant a subscription `n` more messages.
    Credit(Credit),
    /// Broker → client: one message for a subscription; consumes one credit.
    Deliver(Deliver),
    /// Client → broker: these delivered messages are processed.
    Ack(Ack),
    /// Either direction: a typed error, answering request `req` (0 for the connection itself).
    Error(Error),
    /// Either direction: liveness probe; answered with [`Frame::Pong`] carrying the same nonce.
    Ping(u64),
    /// Either direction: the answer to [`Frame::Ping`].
    Pong(u64),
    /// Broker → client: the broker is shutting down; the connection closes after this frame.
    GoingAway(GoingAway),
    /// Broker → client: messages `from..=to` were evicted (`drop_oldest`) before this
    /// subscription's group received them; they will never be delivered.
    Gap(Gap),
    /// Client → broker: describe one topic, with its sample of recent drops.
    DescribeTopic(DescribeTopic),
    /// Broker → client: the answer to [`DescribeTopic`].
    TopicDescription(Box<TopicDescription>),
    /// Client → broker: these delivered messages failed; redeliver them after a delay.
    Nack(Nack),
    /// Client → broker: these delivered messages can never be processed; dead-letter them now.
    Term(Term),
    /// Client → broker: still working on these; restart their ack deadlines.
    Progress(Progress),
    /// Client → broker: delete a topic, its messages and its groups.
    DeleteTopic(DeleteTopic),
    /// Broker → client: the topic is deleted.
    TopicDeleted(TopicDeleted),
    /// Client → broker: delete a group of a topic (its cursor and unacked messages).
    DeleteGroup(DeleteGroup),
    /// Broker → client: the group is deleted.
    GroupDeleted(GroupDeleted),
    /// Client → broker: repair a damaged or failed topic.
    RepairTopic(RepairTopic),
    /// Broker → client: the answer to [`RepairTopic`].
    TopicRepaired(TopicRepaired),
    /// Client → broker: change a live topic's bounds and policies.
    UpdateTopic(UpdateTopic),
    /// Broker → client: the answer to [`UpdateTopic`].
    TopicUpdated(TopicUpdated),
    /// Client → broker: change a live group's settings.
    UpdateGroup(UpdateGroup),
    /// Broker → client: the answer to [`UpdateGroup`].
    GroupUpdated(GroupUpdated),
    /// Client → broker (v5): publish many messages to one topic in one frame.
    PublishBatch(crate::PublishBatch),
    /// Broker → client (v5): a run of consecutive publishes is stored.
    Confirmed(crate::Confirmed),
    /// Broker → client (v5): deliveries to one subscription in one frame.
    DeliverBatch(crate::DeliverBatch),
    /// Client → broker (v5): ack, nack, term or progress ranges of sequences.
    Settle(crate::Settle),
}

/// Opens a connection. Answered by [`HelloOk`], or by [`Error`] (version, token) and a close.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// The protocol version the client speaks; see [`crate::PROTOCOL_VERSION`].
    pub version: u16,
    /// The client's API key, when the broker requires one.
    pub token: Option<String>,
}

/// Accepts a connection and announces the broker's limits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HelloOk {
    /// The protocol version the broker will speak on this connection.
    pub version: u16,
    /// The bounds the client should respect.
    pub limits: ServerLimits,
}

/// Creates a topic with explicit bounds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateTopic {
    /// Request id echoed by the answer.
    pub req: u64,
    /// The topic to create; unset bounds take the broker's defaults.
    pub spec: TopicSpec,
}

/// The answer to [`CreateTopic`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicCreated {
    /// The request id of the [`CreateTopic`].
    pub req: u64,
    /// `false` when an identical topic already existed.
    pub created: bool,
    /// The topic's effective configuration.
    pub config: TopicConfig,
}

/// Asks for one page of topic descriptions, in name order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListTopics {
    /// Request id echoed by the answer.
    pub req: u64,
    /// Start after this topic name (`None`: from the first topic). Pass the previous page's
    /// [`TopicList::next`] to continue.
    pub after: Option<String>,
    /// Most topics in the page; 0 means as many as fit in one frame.
    pub limit: u32,
}

/// The answer to [`ListTopics`]: one page, never larger than the broker's frame limit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicList {
    /// The request id of the [`ListTopics`].
    pub req: u64,
    /// One entry per topic, sorted by name.
    pub topics: Vec<TopicInfo>,
    /// `Some(last name in this page)` when more topics follow (the page was cut by its
    /// `limit` or by the frame limit); ask again with `after` set to it. `None`: the list is
    /// complete.
    pub next: Option<String>,
}

/// Appends one message to a topic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Publish {
    /// Publish id echoed by [`PublishOk`], [`Rejected`] or [`Error`].
    pub id: u64,
    /// The target topic.
    pub topic: String,
    /// The message's headers, stored and delivered with it. At most
    /// [`crate::MAX_HEADERS_CEILING`] on the wire (more is a malformed frame).
    #[serde(deserialize_with = "crate::bounded::headers")]
    pub headers: Headers,
    /// The message body; carried after the header, not inside it.
    #[serde(skip)]
    pub payload: Bytes,
    /// The producer and its number for this message, so a retried publish is stored once
    /// (see [`ProducerStamp`]). Since protocol v6.
    #[serde(default, with = "crate::since::v6")]
    pub producer: Option<ProducerStamp>,
}

/// Who published a message and its number in that producer's sequence: a publish with a stamp
/// the topic's dedup window already holds is answered with the stored message's sequence
/// (`PublishOk::duplicate`) and stores nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ProducerStamp {
    /// The producer's id: random per `Publisher`, or set by the user for a producer that
    /// restarts.
    pub id: u128,
    /// The message's number in the producer's sequence; increasing, not necessarily without
    /// holes (a refused message leaves one that its retry fills).
    pub seq: u64,
}

/// Confirms a publish: the message is stored as `seq` and durable under the topic's policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishOk {
    /// The publish id.
    pub id: u64,
    /// The message's sequence number in its topic.
    pub seq: u64,
    /// Whether this publish was a duplicate (same producer stamp or `weir-msg-id` as a message
    /// the dedup window holds): nothing was stored, and `seq` is the original's. Since protocol
    /// v6; a v4 or v5 client sees only the original's `seq`.
    #[serde(default, with = "crate::since::v6")]
    pub duplicate: bool,
}

/// Refuses a publish (or, with id 0 and [`RejectReason::TooManyConnections`], a connection).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rejected {
    /// The publish id (0 when refusing the connection).
    pub id: u64,
    /// Why.
    pub reason: RejectReason,
    /// The bound that fired.
    pub limit: Limit,
    /// When retrying may succeed; `None` when retrying the same request cannot help.
    pub retry_after_ms: Option<u64>,
    /// For `TopicFull`: the group holding the topic's oldest unacked message (the one furthest
    /// behind, whose acks would free room first); `None` when no group holds any (a topic with
    /// no groups keeps messages until its bound) or for other reasons.
    pub held_by: Option<String>,
}

/// Joins `group` of `topic` as subscription `sub` with `credit` messages of initial demand.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subscribe {
    /// Subscription id chosen by the client, unique on the connection.
    pub sub: u64,
    /// The topic.
    pub topic: String,
    /// The group (durable subscription) to join; created on first use.
    pub group: String,
    /// Initial credit: the broker sends at most this many messages before more credit or acks.
    pub credit: u32,
    /// The group's settings if this subscription creates it (ignored otherwise).
    pub group_spec: GroupSpec,
}

/// The answer to [`Subscribe`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subscribed {
    /// The subscription id.
    pub sub: u64,
}

/// Leaves a subscription.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unsubscribe {
    /// The subscription id.
    pub sub: u64,
}

/// The answer to [`Unsubscribe`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unsubscribed {
    /// The subscription id.
    pub sub: u64,
}

/// Grants a subscription more demand. Outstanding credit may not exceed the broker's
/// `max_credit`; a grant past it is refused with [`ErrorCode::LimitExceeded`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Credit {
    /// The subscription id.
    pub sub: u64,
    /// How many more messages the subscriber will accept.
    pub n: u32,
}

/// Delivers one message to a subscription.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deliver {
    /// The subscription id.
    pub sub: u64,
    /// The message's sequence number in its topic.
    pub seq: u64,
    /// 1 for the first delivery to the group, +1 for each redelivery.
    pub attempt: u32,
    /// The headers the message was published with.
    #[serde(deserialize_with = "crate::bounded::headers")]
    pub headers: Headers,
    /// The message body; carried after the header, not inside it.
    #[serde(skip)]
    pub payload: Bytes,
}

impl Deliver {
    /// An upper bound of the encoded size (without the 4-byte length prefix) of a delivery of
    /// a message with `headers` and a payload of `payload_len` bytes, for any subscription,
    /// sequence and attempt. A broker refuses a publish whose delivery could not fit in its
    /// frame limit, so it never stores a message it cannot deliver.
    pub fn max_body_bytes(headers: &[(String, String)], payload_len: usize) -> usize {
        // header length field, variant, then sub, seq and attempt as varints at their largest.
        const FIXED: usize = 4 + 1 + 9 + 9 + 5;
        let strings: usize = headers
            .iter()
            .map(|(k, v)| varint_len(k.len()) + k.len() + varint_len(v.len()) + v.len())
            .sum();
        FIXED + varint_len(headers.len()) + strings + payload_len
    }
}

/// Bytes of bincode's standard varint encoding of a length.
fn varint_len(n: usize) -> usize {
    match n as u64 {
        0..=250 => 1,
        251..=0xFFFF => 3,
        0x1_0000..=0xFFFF_FFFF => 5,
        _ => 9,
    }
}

/// Acknowledges delivered messages of a subscription by sequence number.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ack {
    /// The subscription id.
    pub sub: u64,
    /// The acknowledged sequence numbers; at most [`crate::MAX_SEQS_PER_FRAME`].
    #[serde(deserialize_with = "crate::bounded::seqs")]
    pub seqs: Vec<u64>,
}

/// Returns delivered messages for redelivery after `delay_ms` (capped by the broker's
/// `max_nack_delay_ms`). A message nacked on its `max_attempts`-th delivery is dead-lettered.
/// Sequences not in flight to this subscription are ignored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Nack {
    /// The subscription id.
    pub sub: u64,
    /// The sequence numbers; at most [`crate::MAX_SEQS_PER_FRAME`].
    #[serde(deserialize_with = "crate::bounded::seqs")]
    pub seqs: Vec<u64>,
    /// Wait at least this long before redelivering them.
    pub delay_ms: u64,
}

/// Sends delivered messages straight to the group's dead-letter topic, whatever their attempt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Term {
    /// The subscription id.
    pub sub: u64,
    /// The sequence numbers; at most [`crate::MAX_SEQS_PER_FRAME`].
    #[serde(deserialize_with = "crate::bounded::seqs")]
    pub seqs: Vec<u64>,
    /// Why, kept on the dead-lettered message as its `weir-reason` header.
    pub reason: String,
}

/// Restarts the ack deadline of delivered messages the subscriber is still working on (like
/// NATS `+WPI`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    /// The subscription id.
    pub sub: u64,
    /// The sequence numbers; at most [`crate::MAX_SEQS_PER_FRAME`].
    #[serde(deserialize_with = "crate::bounded::seqs")]
    pub seqs: Vec<u64>,
}

/// Deletes a topic. Refused with [`ErrorCode::InUse`] while subscribers are attached unless
/// `force` (which detaches them: each gets [`Unsubscribed`] and its subscription ends).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeleteTopic {
    /// Request id echoed by the answer.
    pub req: u64,
    /// The topic.
    pub name: String,
    /// Delete even with subscribers attached.
    pub force: bool,
}

/// The answer to [`DeleteTopic`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicDeleted {
    /// The request id of the [`DeleteTopic`].
    pub req: u64,
}

/// Deletes a group: its cursor, in-flight and redelivery state. Refused with
/// [`ErrorCode::InUse`] while members are attached unless `force`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeleteGroup {
    /// Request id echoed by the answer.
    pub req: u64,
    /// The topic.
    pub topic: String,
    /// The group.
    pub group: String,
    /// Delete even with members attached.
    pub force: bool,
}

/// The answer to [`DeleteGroup`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupDeleted {
    /// The request id of the [`DeleteGroup`].
    pub req: u64,
}

/// A typed error.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Error {
    /// The id of the request this answers (publish id, request id or subscription id), or 0 for
    /// an error about the connection itself.
    pub req: u64,
    /// What kind of error.
    pub code: ErrorCode,
    /// A human-readable explanation.
    pub message: String,
    /// For [`ErrorCode::Forbidden`]: the action and topic refused; `None` for every other
    /// code. (Appended in protocol v4.)
    pub denied: Option<crate::Denied>,
}

/// The broker is closing this connection; the connection closes after this frame.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GoingAway {
    /// Why, for programs (a client reconnects on [`GoingAwayReason::Idle`] when it next needs
    /// the connection).
    pub reason: GoingAwayReason,
    /// Why, for people.
    pub message: String,
}

/// Messages a subscription's group will never receive because `drop_oldest` evicted them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Gap {
    /// The subscription id.
    pub sub: u64,
    /// First evicted sequence.
    pub from: u64,
    /// Last evicted sequence (inclusive).
    pub to: u64,
}

/// Asks for one topic's description.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DescribeTopic {
    /// Request id echoed by the answer.
    pub req: u64,
    /// The topic.
    pub name: String,
}

/// The answer to [`DescribeTopic`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicDescription {
    /// The request id of the [`DescribeTopic`].
    pub req: u64,
    /// The topic's snapshot.
    pub info: TopicInfo,
    /// The most recent messages `drop_oldest` evicted, oldest first (at most 100).
    pub recent_drops: Vec<DroppedMessage>,
}

/// Asks the broker to repair a topic whose storage is damaged or failed a write (see
/// [`crate::TopicHealth`]): damaged segment files are moved to the topic's `quarantine/`
/// directory, the range they held is skipped (a `Gap` to every group, counted as dropped),
/// and the topic takes publishes again. Repairing a healthy topic changes nothing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepairTopic {
    /// Request id echoed by the answer.
    pub req: u64,
    /// The topic.
    pub name: String,
}

/// The answer to [`RepairTopic`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicRepaired {
    /// The request id of the [`RepairTopic`].
    pub req: u64,
    /// The sequences skipped (`from..=to`), if any were.
    pub skipped: Option<(u64, u64)>,
    /// The files moved to quarantine, relative to the topic's directory.
    pub quarantined: Vec<String>,
    /// The topic's health after the repair.
    pub health: crate::TopicHealth,
}

/// Changes a topic's settings live (`weir topic update`); see [`crate::TopicUpdate`] for
/// what a lowered bound does. Answered by [`TopicUpdated`], or `Error` (`UnknownTopic`,
/// `InvalidArgument`, `LimitExceeded` past a broker ceiling).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateTopic {
    /// Request id echoed by the answer.
    pub req: u64,
    /// The topic.
    pub name: String,
    /// What to change.
    pub update: crate::TopicUpdate,
}

/// The answer to [`UpdateTopic`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicUpdated {
    /// The request id of the [`UpdateTopic`].
    pub req: u64,
    /// The topic's configuration now.
    pub config: TopicConfig,
}

/// Changes a group's settings live (`weir group update`); see [`crate::GroupUpdate`] for what
/// each change does to deliveries in flight. Answered by [`GroupUpdated`], or `Error`
/// (`UnknownTopic`, `UnknownGroup`, `InvalidArgument`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateGroup {
    /// Request id echoed by the answer.
    pub req: u64,
    /// The topic.
    pub topic: String,
    /// The group.
    pub group: String,
    /// What to change.
    pub update: crate::GroupUpdate,
}

/// The answer to [`UpdateGroup`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupUpdated {
    /// The request id of the [`UpdateGroup`].
    pub req: u64,
    /// The group's settings now.
    pub config: crate::GroupConfig,
}

impl Frame {
    /// A short name of the frame kind, for logs and errors.
    pub fn name(&self) -> &'static str {
        match self {
            Frame::Hello(_) => "Hello",
            Frame::HelloOk(_) => "HelloOk",
            Frame::CreateTopic(_) => "CreateTopic",
            Frame::TopicCreated(_) => "TopicCreated",
            Frame::ListTopics(_) => "ListTopics",
            Frame::TopicList(_) => "TopicList",
            Frame::Publish(_) => "Publish",
            Frame::PublishOk(_) => "PublishOk",
            Frame::Rejected(_) => "Rejected",
            Frame::Subscribe(_) => "Subscribe",
            Frame::Subscribed(_) => "Subscribed",
            Frame::Unsubscribe(_) => "Unsubscribe",
            Frame::Unsubscribed(_) => "Unsubscribed",
            Frame::Credit(_) => "Credit",
            Frame::Deliver(_) => "Deliver",
            Frame::Ack(_) => "Ack",
            Frame::Error(_) => "Error",
            Frame::Ping(_) => "Ping",
            Frame::Pong(_) => "Pong",
            Frame::GoingAway(_) => "GoingAway",
            Frame::Gap(_) => "Gap",
            Frame::DescribeTopic(_) => "DescribeTopic",
            Frame::TopicDescription(_) => "TopicDescription",
            Frame::Nack(_) => "Nack",
            Frame::Term(_) => "Term",
            Frame::Progress(_) => "Progress",
            Frame::DeleteTopic(_) => "DeleteTopic",
            Frame::TopicDeleted(_) => "TopicDeleted",
            Frame::DeleteGroup(_) => "DeleteGroup",
            Frame::GroupDeleted(_) => "GroupDeleted",
            Frame::RepairTopic(_) => "RepairTopic",
            Frame::TopicRepaired(_) => "TopicRepaired",
            Frame::UpdateTopic(_) => "UpdateTopic",
            Frame::TopicUpdated(_) => "TopicUpdated",
            Frame::UpdateGroup(_) => "UpdateGroup",
            Frame::GroupUpdated(_) => "GroupUpdated",
            Frame::PublishBatch(_) => "PublishBatch",
            Frame::Confirmed(_) => "Confirmed",
            Frame::DeliverBatch(_) => "DeliverBatch",
            Frame::Settle(_) => "Settle",
        }
    }

    /// The payloads this frame carries after its header, in order: one for `Publish` and
    /// `Deliver`, one per message for the batches, none for the other kinds.
    pub fn payloads(&self) -> Payloads<'_> {
        match self {
            Frame::Publish(p) => Payloads::One(Some(&p.payload)),
            Frame::Deliver(d) => Payloads::One(Some(&d.payload)),
            Frame::PublishBatch(b) => Payloads::Publish(b.messages.iter()),
            Frame::DeliverBatch(b) => Payloads::Deliver(b.messages.iter()),
            _ => Payloads::One(None),
        }
    }

    /// Whether this kind of frame carries payload after its header (`Publish`, `Deliver`
    /// and the batches).
    pub fn carries_payload(&self) -> bool {
        matches!(
            self,
            Frame::Publish(_) | Frame::Deliver(_) | Frame::PublishBatch(_) | Frame::DeliverBatch(_)
        )
    }

    /// Whether each payload of a batch frame is as long as its entry announces (true for every
    /// other frame): the encoder refuses a batch that would decode differently.
    pub(crate) fn lengths_match(&self) -> bool {
        match self {
            Frame::PublishBatch(b) => b.messages.iter().all(|m| m.payload.len() == m.len as usize),
            Frame::DeliverBatch(b) => b.messages.iter().all(|m| m.payload.len() == m.len as usize),
            _ => true,
        }
    }

    /// Attaches the payload bytes read after the header, slicing a batch's among its entries
    /// by their lengths (no copy). Returns `false` (and drops nothing the frame owns) when this
    /// kind carries no payload and `payload` is not empty, or a batch's lengths do not add up
    /// to it.
    pub(crate) fn attach_payload(&mut self, mut payload: Bytes) -> bool {
        fn split(payload: &mut Bytes, len: u32) -> Option<Bytes> {
            let len = len as usize;
            (len <= payload.len()).then(|| payload.split_to(len))
        }
        match self {
            Frame::Publish(p) => p.payload = payload,
            Frame::Deliver(d) => d.payload = payload,
            Frame::PublishBatch(b) => {
                for m in &mut b.messages {
                    let Some(body) = split(&mut payload, m.len) else {
                        return false;
                    };
                    m.payload = body;
                }
                return payload.is_empty();
            }
            Frame::DeliverBatch(b) => {
                for m in &mut b.messages {
                    let Some(body) = split(&mut payload, m.len) else {
                        return false;
                    };
                    m.payload = body;
                }
                return payload.is_empty();
            }
            _ => return payload.is_empty(),
        }
        true
    }

    /// The id of the request a frame answers or concerns (`req`, a publish `id`, or a
    /// subscription id), or 0 for frames about the connection itself. An answer that cannot be
    /// sent (it would not fit in a frame) is replaced by an error carrying this id.
    pub fn request_id(&self) -> u64 {
        match self {
            Frame::CreateTopic(f) => f.req,
            Frame::TopicCreated(f) => f.req,
            Frame::ListTopics(f) => f.req,
            Frame::TopicList(f) => f.req,
            Frame::Publish(f) => f.id,
            Frame::PublishOk(f) => f.id,
            Frame::Rejected(f) => f.id,
            Frame::Subscribe(f) => f.sub,
            Frame::Subscribed(f) => f.sub,
            Frame::Unsubscribe(f) => f.sub,
            Frame::Unsubscribed(f) => f.sub,
            Frame::Credit(f) => f.sub,
            Frame::Deliver(f) => f.sub,
            Frame::Ack(f) => f.sub,
            Frame::Error(f) => f.req,
            Frame::Gap(f) => f.sub,
            Frame::DescribeTopic(f) => f.req,
            Frame::TopicDescription(f) => f.req,
            Frame::Nack(f) => f.sub,
            Frame::Term(f) => f.sub,
            Frame::Progress(f) => f.sub,
            Frame::DeleteTopic(f) => f.req,
            Frame::TopicDeleted(f) => f.req,
            Frame::DeleteGroup(f) => f.req,
            Frame::GroupDeleted(f) => f.req,
            Frame::RepairTopic(f) => f.req,
            Frame::TopicRepaired(f) => f.req,
            Frame::UpdateTopic(f) => f.req,
            Frame::TopicUpdated(f) => f.req,
            Frame::UpdateGroup(f) => f.req,
            Frame::GroupUpdated(f) => f.req,
            Frame::PublishBatch(f) => f.first_id,
            Frame::Confirmed(f) => f.first_id,
            Frame::DeliverBatch(f) => f.sub,
            Frame::Settle(f) => f.sub,
            Frame::Hello(_)
            | Frame::HelloOk(_)
            | Frame::Ping(_)
            | Frame::Pong(_)
            | Frame::GoingAway(_) => 0,
        }
    }

    /// A connection-level error frame (request id 0).
    pub fn error(code: ErrorCode, message: impl Into<String>) -> Frame {
        Frame::Error(Error {
            req: 0,
            code,
            message: message.into(),
            denied: None,
        })
    }
}

/// The payloads of one frame, in wire order (see [`Frame::payloads`]).
#[derive(Debug, Clone)]
pub enum Payloads<'a> {
    /// A single publish or delivery's payload, or nothing.
    One(Option<&'a Bytes>),
    /// A publish batch's, one per message.
    Publish(std::slice::Iter<'a, crate::BatchMessage>),
    /// A delivery batch's, one per delivery.
    Deliver(std::slice::Iter<'a, crate::BatchDelivery>),
}

impl<'a> Iterator for Payloads<'a> {
    type Item = &'a Bytes;

    fn next(&mut self) -> Option<&'a Bytes> {
        match self {
            Payloads::One(one) => one.take(),
            Payloads::Publish(messages) => messages.next().map(|m| &m.payload),
            Payloads::Deliver(messages) => messages.next().map(|m| &m.payload),
        }
    }
}
