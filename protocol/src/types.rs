//! Value types shared by several frames: topic specifications and descriptions, refusal
//! reasons, error codes and the limits a broker announces.

use serde::{Deserialize, Serialize};

/// What a topic does when a publish would take it past one of its bounds. Whatever the
/// policy, a payload over `max_message_bytes` is refused with [`RejectReason::MessageTooLarge`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OverflowPolicy {
    /// Refuse the publish at once with [`RejectReason::TopicFull`] and a retry-after hint
    /// estimated from the topic's measured drain (ack) rate.
    Reject,
    /// Park the publish until acks free room, so its confirm is paced by the consumers. At most
    /// `max_blocked_publishes` are parked per topic and each for at most `max_block_ms`; past
    /// either bound the publish is refused as `Reject` would.
    Block,
    /// Accept the publish and evict the oldest stored messages (ready or in flight), counting
    /// them as dropped and telling lagging subscribers with [`crate::Frame::Gap`].
    DropOldest,
}

impl OverflowPolicy {
    /// The policy's name as written in configs and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            OverflowPolicy::Reject => "reject",
            OverflowPolicy::Block => "block",
            OverflowPolicy::DropOldest => "drop_oldest",
        }
    }
}

impl std::str::FromStr for OverflowPolicy {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "reject" => Ok(OverflowPolicy::Reject),
            "block" => Ok(OverflowPolicy::Block),
            "drop_oldest" => Ok(OverflowPolicy::DropOldest),
            other => Err(format!(
                "unknown overflow policy {other:?} (supported: reject, block, drop_oldest)"
            )),
        }
    }
}

/// When appended messages are forced to disk, and so when a publish is confirmed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FsyncPolicy {
    /// `fdatasync` after every group commit, before any publish in it is confirmed: acked means
    /// durable. The default.
    Batch,
    /// Confirm after the write; `fdatasync` at most once per this many milliseconds.
    IntervalMs(u32),
    /// Never `fdatasync`; the page cache decides. A confirmed publish may be lost on power loss.
    Never,
}

impl std::fmt::Display for FsyncPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FsyncPolicy::Batch => f.write_str("batch"),
            FsyncPolicy::IntervalMs(ms) => write!(f, "interval:{ms}"),
            FsyncPolicy::Never => f.write_str("never"),
        }
    }
}

impl std::str::FromStr for FsyncPolicy {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "batch" => Ok(FsyncPolicy::Batch),
            "never" => Ok(FsyncPolicy::Never),
            other => other
                .strip_prefix("interval:")
                .and_then(|ms| ms.parse().ok())
                .map(FsyncPolicy::IntervalMs)
                .ok_or_else(|| {
                    format!("unknown fsync policy {other:?} (batch, interval:<ms>, never)")
                }),
        }
    }
}

/// A request to create a topic. Bounds left `None` take the broker's configured defaults.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct TopicSpec {
    /// The topic's name: 1–255 bytes of `[A-Za-z0-9._-]`.
    pub name: String,
    /// Most messages stored at once (ready and in flight alike).
    pub max_messages: Option<u64>,
    /// Most payload bytes stored at once.
    pub max_bytes: Option<u64>,
    /// Largest single payload accepted.
    pub max_message_bytes: Option<u32>,
    /// What happens at the bound.
    pub overflow: Option<OverflowPolicy>,
    /// When appends are forced to disk.
    pub fsync: Option<FsyncPolicy>,
    /// `block` policy: most publishes parked at once.
    pub max_blocked_publishes: Option<u32>,
    /// `block` policy: longest a publish stays parked, in milliseconds.
    pub max_block_ms: Option<u64>,
    /// Oldest a stored message may be, in milliseconds since its commit: older ones are
    /// removed as `drop_oldest` evictions are (counted, `Gap` to groups that had not acked
    /// them). `None` or 0: no age bound. Since protocol v6.
    #[serde(default, with = "crate::since::v6")]
    pub max_age_ms: Option<u64>,
}

/// A topic's effective configuration: every bound resolved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicConfig {
    /// The topic's name.
    pub name: String,
    /// Most messages stored at once (ready and in flight alike).
    pub max_messages: u64,
    /// Most payload bytes stored at once.
    pub max_bytes: u64,
    /// Largest single payload accepted.
    pub max_message_bytes: u32,
    /// What happens at the bound.
    pub overflow: OverflowPolicy,
    /// When appends are forced to disk.
    pub fsync: FsyncPolicy,
    /// `block` policy: most publishes parked at once (further ones are refused).
    pub max_blocked_publishes: u32,
    /// `block` policy: longest a publish stays parked before it is refused, in milliseconds.
    pub max_block_ms: u64,
    /// Oldest a stored message may be, in milliseconds since the broker committed it; older
    /// ones are removed, counted as dropped, and groups that had not acked them get a `Gap`.
    /// `None`: no age bound. Since protocol v6.
    #[serde(default, with = "crate::since::v6")]
    pub max_age_ms: Option<u64>,
}

impl TopicConfig {
    /// Each setting where `asked` differs from this configuration, as `field is X (asked Y)`,
    /// in declaration order; empty when they are equal. The name is not compared.
    pub fn differences(&self, asked: &TopicConfig) -> Vec<String> {
        fn field<T: PartialEq + std::fmt::Display>(
            out: &mut Vec<String>,
            name: &str,
            is: T,
            asked: T,
        ) {
            if is != asked {
                out.push(format!("{name} is {is} (asked {asked})"));
            }
        }
        let mut out = Vec::new();
        field(
            &mut out,
            "max_messages",
            self.max_messages,
            asked.max_messages,
        );
        field(&mut out, "max_bytes", self.max_bytes, asked.max_bytes);
        field(
            &mut out,
            "max_message_bytes",
            self.max_message_bytes,
            asked.max_message_bytes,
        );
        field(
            &mut out,
            "overflow",
            self.overflow.as_str(),
            asked.overflow.as_str(),
        );
        field(&mut out, "fsync", self.fsync, asked.fsync);
        field(
            &mut out,
            "max_blocked_publishes",
            self.max_blocked_publishes,
            asked.max_blocked_publishes,
        );
        field(
            &mut out,
            "max_block_ms",
            self.max_block_ms,
            asked.max_block_ms,
        );
        field(
            &mut out,
            "max_age",
            Age(self.max_age_ms),
            Age(asked.max_age_ms),
        );
        out
    }
}

/// A topic's age bound as [`TopicConfig::differences`] prints it: `none` or milliseconds.
#[derive(PartialEq)]
struct Age(Option<u64>);

impl std::fmt::Display for Age {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            None => f.write_str("none"),
            Some(ms) => write!(f, "{ms}ms"),
        }
    }
}

/// Changes to a live topic's settings ([`crate::Frame::UpdateTopic`]); unset fields keep their
/// value. Lowering `max_messages` or `max_bytes` below what the topic holds refuses (or, under
/// `drop_oldest`, evicts for) new publishes until it drains below the new bound; nothing stored
/// is removed by the update itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct TopicUpdate {
    /// New bound on messages stored at once.
    pub max_messages: Option<u64>,
    /// New bound on message bytes stored at once.
    pub max_bytes: Option<u64>,
    /// New largest accepted payload.
    pub max_message_bytes: Option<u32>,
    /// New overflow policy.
    pub overflow: Option<OverflowPolicy>,
    /// New fsync policy.
    pub fsync: Option<FsyncPolicy>,
    /// New bound on parked publishes (`block`).
    pub max_blocked_publishes: Option<u32>,
    /// New longest park, in milliseconds (`block`).
    pub max_block_ms: Option<u64>,
    /// New age bound in milliseconds; `Some(0)` removes the bound. Since protocol v6.
    #[serde(default, with = "crate::since::v6")]
    pub max_age_ms: Option<u64>,
}

impl TopicUpdate {
    /// Whether the update changes nothing.
    pub fn is_empty(&self) -> bool {
        *self == TopicUpdate::default()
    }

    /// `config` with this update applied (not yet checked against any bound).
    pub fn apply_to(&self, config: &TopicConfig) -> TopicConfig {
        TopicConfig {
            name: config.name.clone(),
            max_messages: self.max_messages.unwrap_or(config.max_messages),
            max_bytes: self.max_bytes.unwrap_or(config.max_bytes),
            max_message_bytes: self.max_message_bytes.unwrap_or(config.max_message_bytes),
            overflow: self.overflow.unwrap_or(config.overflow),
            fsync: self.fsync.unwrap_or(config.fsync),
            max_blocked_publishes: self
                .max_blocked_publishes
                .unwrap_or(config.max_blocked_publishes),
            max_block_ms: self.max_block_ms.unwrap_or(config.max_block_ms),
            max_age_ms: match self.max_age_ms {
                None => config.max_age_ms,
                Some(0) => None,
                Some(ms) => Some(ms),
            },
        }
    }
}

/// A snapshot of one topic, as listed by [`crate::Frame::TopicList`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicInfo {
    /// The topic's effective configuration.
    pub config: TopicConfig,
    /// Messages stored now (not yet acked by every group).
    pub depth: u64,
    /// Message bytes stored now: payloads and their headers (what `max_bytes` bounds).
    pub bytes: u64,
    /// The sequence number the next publish will get.
    pub next_seq: u64,
    /// Durable subscriptions (groups) on the topic.
    pub groups: Vec<GroupInfo>,
    /// Groups left out of `groups` so that the answer fits in one frame (0 normally).
    pub groups_omitted: u32,
    /// Messages evicted by `drop_oldest` since the broker started.
    pub dropped: u64,
    /// Publishes parked by the `block` policy right now.
    pub parked: u64,
    /// Publishes refused since the broker started, any reason.
    pub rejected: u64,
    /// Messages leaving the topic per second (acked by every group, or dead-lettered), over the
    /// last few seconds.
    pub drain_per_s: u64,
    /// The bound refusing publishes to this topic right now: the latest refusal, if it was
    /// less than two seconds ago.
    pub refusing: Option<ActiveRefusal>,
    /// Whether the topic's storage can take writes and serve reads, and if not, why.
    pub health: TopicHealth,
}

/// The state of a topic's storage, shown in [`TopicInfo::health`], `/topics` and
/// `weir_topic_damaged` / `weir_topic_storage_state`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum TopicHealth {
    /// Writes and reads work.
    #[default]
    Healthy,
    /// The disk is full (the filesystem answered ENOSPC, or the broker's storage budget is
    /// spent): publishes are refused with [`RejectReason::StorageFull`] and a retry hint, and
    /// the topic takes them again by itself as space returns. Nothing confirmed is affected.
    Full {
        /// What the filesystem or the budget said.
        reason: String,
    },
    /// A write or an fdatasync failed: the log's file is no longer trusted, publishes are
    /// refused with [`RejectReason::StorageDamaged`] until `weir topic repair` or a restart
    /// re-verifies the log. Deliveries of what was confirmed go on.
    Failed {
        /// The error the disk returned.
        reason: String,
    },
    /// A record the topic had confirmed cannot be read back (a CRC mismatch, a cut inside the
    /// confirmed range). Everything before `at_seq` is served; publishes are refused with
    /// [`RejectReason::StorageDamaged`] and groups stop at `at_seq` until `weir topic repair`
    /// quarantines the damaged files and skips the range with a `Gap`. The files are kept.
    Damaged {
        /// The first sequence that cannot be read.
        at_seq: u64,
        /// The segment file and offset, and what is wrong.
        reason: String,
    },
}

/// A bound that is refusing work right now (see [`TopicInfo::refusing`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActiveRefusal {
    /// Why publishes are refused.
    pub reason: RejectReason,
    /// The bound that fired.
    pub limit: Limit,
    /// The retry hint of the latest refusal.
    pub retry_after_ms: Option<u64>,
    /// How long ago the latest refusal was, in milliseconds.
    pub age_ms: u64,
    /// Refusals of this topic in the last second.
    pub last_second: u64,
}

/// One message evicted by `drop_oldest`, as kept in a topic's bounded sample of recent drops.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DroppedMessage {
    /// Its sequence number.
    pub seq: u64,
    /// Its payload size in bytes.
    pub bytes: u32,
    /// The first bytes of its payload (at most 64), when they were still in memory.
    pub head: Option<bytes::Bytes>,
    /// Why it was dropped (`overflow`).
    pub reason: String,
    /// When it was dropped, in milliseconds since the Unix epoch.
    pub dropped_at_ms: u64,
}

/// A snapshot of one group of a topic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct GroupInfo {
    /// The group's name.
    pub name: String,
    /// Messages delivered to the group and not yet acked.
    pub in_flight: u64,
    /// Messages stored and not yet delivered to the group (including ones waiting redelivery).
    pub pending: u64,
    /// Connected members.
    pub members: u32,
    /// Credit the members have granted and the broker has not yet used.
    pub credit: u64,
    /// The group's settings.
    pub config: GroupConfig,
    /// Deliveries past their ack deadline so far (since the broker started).
    pub timed_out: u64,
    /// Messages moved to the dead-letter topic so far (since the broker started).
    pub dead_lettered: u64,
    /// Messages due for dead-lettering but held in flight because the dead-letter topic
    /// refused them (full); retried until it takes them.
    pub dead_letter_held: u64,
    /// Age of the oldest delivered-but-unacked message, in milliseconds.
    pub oldest_unacked_ms: Option<u64>,
    /// Whether the group is ephemeral (see [`GroupSpec::ephemeral`]): deleted when its last
    /// subscription leaves, never persisted.
    pub ephemeral: bool,
}

/// Message headers: `(name, value)` pairs, in order, names may repeat. Stored with the
/// message and delivered with it; bounded by the frame size.
pub type Headers = Vec<(String, String)>;

/// Where a group that does not exist yet starts reading, set by its first subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum StartPosition {
    /// The oldest message still stored (the default).
    #[default]
    Earliest,
    /// Only messages published after the group is created.
    Latest,
    /// From this sequence (or the oldest stored, if it is gone already).
    Seq(u64),
}

/// A group's settings, fixed when its first subscription creates it. Unset fields take the
/// broker's defaults; a later subscription's settings are ignored (the group's stay).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct GroupSpec {
    /// Where a new group starts.
    pub start: StartPosition,
    /// How long a delivery may stay unacked before it is redelivered.
    pub ack_timeout_ms: Option<u64>,
    /// Deliveries of one message before it is dead-lettered.
    pub max_attempts: Option<u32>,
    /// The dead-letter topic (default `<topic>.dlq`).
    pub dead_letter_topic: Option<String>,
    /// An ephemeral group (`weir sub` without `--group`): it is deleted, with its cursor and
    /// unacked messages, when its last subscription leaves (unsubscribe, or the connection
    /// closes), so it holds nothing afterwards, and it is never written to the state store (a
    /// restart forgets it). Ignored when the group exists already: a subscription to an
    /// existing durable group joins it durable, and a durable (`ephemeral: false`)
    /// subscription to an existing ephemeral group joins it ephemeral. Ephemeral groups count
    /// toward `max_groups_per_topic` like durable ones.
    pub ephemeral: bool,
    /// How a new group hands messages to its members (default [`GroupOrdering::Shared`]).
    /// Since protocol v6.
    #[serde(default, with = "crate::since::v6")]
    pub ordering: Option<GroupOrdering>,
}

/// How a group hands its messages to its members.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum GroupOrdering {
    /// Any member with credit takes the next message: members process in parallel, so the
    /// order in which messages finish is not kept. The default.
    #[default]
    Shared,
    /// Messages with the same `weir-key` header go to one member at a time, in order: the
    /// next message of a key is delivered only after the previous one is acked or
    /// dead-lettered. Keys are spread over the members. Messages without the header are
    /// delivered as under `shared`.
    Key,
}

impl GroupOrdering {
    /// The ordering's name as configs and the command line spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            GroupOrdering::Shared => "shared",
            GroupOrdering::Key => "key",
        }
    }
}

impl std::str::FromStr for GroupOrdering {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "shared" => Ok(GroupOrdering::Shared),
            "key" => Ok(GroupOrdering::Key),
            other => Err(format!(
                "unknown group ordering {other:?} (supported: shared, key)"
            )),
        }
    }
}

/// The header whose value orders a [`GroupOrdering::Key`] group's deliveries.
pub const KEY_HEADER: &str = "weir-key";

/// The header carrying a message's own idempotency id: a second publish to the same topic
/// with the same id, within the topic's dedup window, is answered with the first one's
/// sequence and stores nothing.
pub const MSG_ID_HEADER: &str = "weir-msg-id";

/// A group's effective settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct GroupConfig {
    /// How long a delivery may stay unacked (without `Progress`) before it is redelivered.
    pub ack_timeout_ms: u64,
    /// Deliveries of one message before it is dead-lettered.
    pub max_attempts: u32,
    /// Where dead-lettered messages go.
    pub dead_letter_topic: String,
    /// How the group hands messages to its members. Since protocol v6.
    #[serde(default, with = "crate::since::v6")]
    pub ordering: GroupOrdering,
}

/// Changes to a live group's settings ([`crate::Frame::UpdateGroup`]); unset fields keep their
/// value. A new `ack_timeout_ms` applies to deliveries from now on (those in flight keep their
/// deadline); a new `max_attempts` decides at each message's next failure (one already past it
/// is dead-lettered then); a new dead-letter topic receives what is dead-lettered from now on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct GroupUpdate {
    /// New ack timeout.
    pub ack_timeout_ms: Option<u64>,
    /// New deliveries of one message before it is dead-lettered.
    pub max_attempts: Option<u32>,
    /// New dead-letter topic.
    pub dead_letter_topic: Option<String>,
}

impl GroupUpdate {
    /// Whether the update changes nothing.
    pub fn is_empty(&self) -> bool {
        *self == GroupUpdate::default()
    }

    /// `config` with this update applied (not yet checked).
    pub fn apply_to(&self, config: &GroupConfig) -> GroupConfig {
        GroupConfig {
            ack_timeout_ms: self.ack_timeout_ms.unwrap_or(config.ack_timeout_ms),
            max_attempts: self.max_attempts.unwrap_or(config.max_attempts),
            dead_letter_topic: self
                .dead_letter_topic
                .clone()
                .unwrap_or_else(|| config.dead_letter_topic.clone()),
            ordering: config.ordering,
        }
    }
}

impl TopicHealth {
    /// The state's name: `healthy`, `full`, `failed` or `damaged`.
    pub fn state(&self) -> &'static str {
        match self {
            TopicHealth::Healthy => "healthy",
            TopicHealth::Full { .. } => "full",
            TopicHealth::Failed { .. } => "failed",
            TopicHealth::Damaged { .. } => "damaged",
        }
    }

    /// Why the topic is not healthy (`None` when it is).
    pub fn reason(&self) -> Option<&str> {
        match self {
            TopicHealth::Healthy => None,
            TopicHealth::Full { reason }
            | TopicHealth::Failed { reason }
            | TopicHealth::Damaged { reason, .. } => Some(reason),
        }
    }

    /// The first sequence that cannot be read, when the topic is damaged.
    pub fn damaged_at(&self) -> Option<u64> {
        match self {
            TopicHealth::Damaged { at_seq, .. } => Some(*at_seq),
            _ => None,
        }
    }
}

/// Why a publish (or a connection) was refused. The refusal is always accompanied by the
/// [`Limit`] that fired and, where waiting can help, a retry-after hint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RejectReason {
    /// The topic is at `max_messages` or `max_bytes` and its policy is `reject`.
    TopicFull,
    /// The payload is larger than the topic's `max_message_bytes`. Retrying cannot help.
    MessageTooLarge,
    /// The broker is at `max_connections`; the connection is closed after this frame.
    TooManyConnections,
    /// Publishing would auto-create a topic, and the broker is at `max_topics`.
    TooManyTopics,
    /// The broker is shutting down and accepts no new publishes.
    ShuttingDown,
    /// The API key's token bucket (messages/s or bytes/s), or an operation's rate limit, is
    /// exhausted; `retry_after_ms` is the bucket's refill time.
    RateLimited,
    /// The broker as a whole is overloaded (its memory budget is spent, or storage commits are
    /// slower than the configured threshold; other clients get the same answer), or this
    /// connection holds its whole share of memory (`max_connection_memory_bytes`; only it is
    /// refused).
    Overloaded,
    /// Storing the message would take the broker's message data past `storage.max_bytes`, or
    /// the filesystem's free space below `storage.min_free_bytes`. Nothing was stored.
    StorageFull,
    /// The topic's storage is damaged or failed a write (see [`TopicHealth`]); it takes no
    /// publishes until `weir topic repair` (or a restart, after a failed write). Nothing was
    /// stored. Other topics are unaffected.
    StorageDamaged,
    /// The producer sequence is older than anything the topic's dedup window remembers of that
    /// producer, so the broker cannot tell a duplicate from a late retry; nothing was stored.
    /// Retrying the same message cannot help. Only sent on v6 connections (only they send
    /// producer sequences).
    SequenceTooOld,
    /// A publish with the same producer sequence or `weir-msg-id` was being stored when this
    /// one arrived (this one waited for it), and then was not stored after all (refused, or
    /// its commit failed): send this one again after the hint and it is stored. Nothing was
    /// stored.
    DuplicatePending,
}

/// Why the broker closes a connection with [`crate::Frame::GoingAway`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GoingAwayReason {
    /// The broker is shutting down.
    ShuttingDown,
    /// The connection had no subscription and sent no frame for the broker's `idle_timeout`.
    /// Nothing was lost; a client reconnects when it next needs the connection.
    ///
    /// The broker sends it only with nothing pending (no publish awaiting its commit), after
    /// answering every frame it read, and reads nothing more: a request the client has had no
    /// answer to when this arrives was never read, and may be sent again on a new connection.
    Idle,
    /// The connection's socket accepted no bytes for `slow_consumer_timeout` while frames
    /// waited for it; its unacked deliveries returned to their groups.
    SlowConsumer,
}

/// The bound that made the broker refuse: its configuration name and its value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limit {
    /// The configuration name of the bound, e.g. `max_messages`.
    pub name: String,
    /// The bound's value.
    pub value: u64,
}

impl Limit {
    /// A limit with the given name and value.
    pub fn new(name: impl Into<String>, value: u64) -> Self {
        Limit {
            name: name.into(),
            value,
        }
    }
}

/// What a key may be allowed to do to a topic; an [`ErrorCode::Forbidden`] error names the
/// one refused (in [`Denied`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Publish to the topic; a publish that auto-creates the topic needs only this.
    Publish,
    /// Subscribe to the topic, and grant credit, ack, nack, term, progress and unsubscribe on
    /// that subscription.
    Subscribe,
    /// Create, update, delete and repair the topic; update and delete its groups.
    Manage,
    /// See the topic: list, describe, stats, the admin GET routes and `/metrics`.
    Monitor,
}

impl Action {
    /// Every action, in the order they are documented.
    pub const ALL: [Action; 4] = [
        Action::Publish,
        Action::Subscribe,
        Action::Manage,
        Action::Monitor,
    ];

    /// The action's name as configs, metrics and refusals spell it (`publish`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Action::Publish => "publish",
            Action::Subscribe => "subscribe",
            Action::Manage => "manage",
            Action::Monitor => "monitor",
        }
    }
}

impl std::fmt::Display for Action {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// What an [`ErrorCode::Forbidden`] error refused: the action and the topic (the error's
/// message names the key too).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Denied {
    /// The action the key may not take.
    pub action: Action,
    /// The topic it may not take it on (`*` for a request about every topic).
    pub topic: String,
}

/// The kind of a protocol-level error, carried by [`crate::Frame::Error`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The bytes received are not a valid frame; the connection is closed.
    MalformedFrame,
    /// A frame exceeded the maximum frame size; the connection is closed.
    FrameTooLarge,
    /// The client's protocol version is not spoken here; the connection is closed.
    UnsupportedVersion,
    /// The token in `Hello` was missing or wrong; the connection is closed.
    Unauthorized,
    /// A frame other than `Hello` arrived before `Hello`; the connection is closed.
    HelloRequired,
    /// The named topic does not exist (and auto-create is off or does not apply).
    UnknownTopic,
    /// A topic of that name exists with a different configuration.
    TopicExists,
    /// A name or value in the request is invalid (bad topic name, zero bound, ...).
    InvalidArgument,
    /// A per-connection or per-broker count would exceed its bound (subscriptions, credit,
    /// topics).
    LimitExceeded,
    /// The subscription id is not open on this connection.
    UnknownSubscription,
    /// The subscription id is already open on this connection.
    SubscriptionExists,
    /// The broker failed internally (for example a storage error); details are in its log.
    Internal,
    /// The topic or group has subscribers attached; delete with `force` to detach them.
    InUse,
    /// The named group does not exist on that topic.
    UnknownGroup,
    /// A frame stopped arriving part-way (no byte of it for the broker's
    /// `frame_read_timeout`); the connection is closed.
    FrameTimeout,
    /// A write or fdatasync failed while this publish was being stored: **the outcome is
    /// unknown** (the message may or may not be stored; it was not confirmed). The topic takes
    /// no more publishes until repaired or restarted (see [`TopicHealth::Failed`]).
    StorageFailed,
    /// Sent to a subscription (request id = its id) whose topic's log is damaged: its group gets
    /// nothing past the damaged record until `weir topic repair` (see [`TopicHealth::Damaged`]).
    /// The subscription stays open.
    StorageDamaged,
    /// The key (or anonymous) may not take this action on this topic; the message names the
    /// key, the action and the topic (`forbidden: key billing may not publish to orders`).
    /// Nothing was done; the connection stays open.
    Forbidden,
}

/// The bounds a broker announces in [`crate::Frame::HelloOk`], so clients can size their
/// windows and never send what would be refused anyway.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerLimits {
    /// Largest frame the broker accepts, in bytes.
    pub max_frame_bytes: u32,
    /// Most unconfirmed publishes the broker reads from one connection before it stops reading
    /// that socket until confirms go out.
    pub max_unconfirmed: u32,
    /// Most credit one subscription may have outstanding.
    pub max_credit: u32,
    /// Most subscriptions open at once on one connection.
    pub max_subscriptions: u32,
    /// Most headers on one message.
    pub max_headers: u32,
    /// Most bytes of header names and values on one message.
    pub max_header_bytes: u32,
    /// A connection with no subscription that sends no frame (a `Ping` counts) for this long is
    /// closed with [`GoingAwayReason::Idle`].
    pub idle_timeout_ms: u64,
}
