//! The JSON shape of topics and groups, defined once: `weir topic list --json`, `weir topic
//! info --json`, `weir group list|info --json`, `GET /topics` and `GET /topics/{name}` all
//! print these views, so a script reads every one of them the same way.
//!
//! Conventions: sizes and counts are plain numbers (bytes, messages), durations are
//! milliseconds with `_ms` in the name, enums are snake_case strings (`reject`,
//! `drop_oldest`, `topic_full`), `fsync` is `batch`, `interval:<ms>` or `never` (as in the
//! config), and a value that does not apply is `null`.
//!
//! ```json
//! {
//!   "name": "orders", "depth": 2, "bytes": 24, "next_seq": 2,
//!   "bounds": { "max_messages": 100000, "max_bytes": 268435456, "max_message_bytes": 1048576,
//!               "max_blocked_publishes": 1024, "max_block_ms": 5000, "max_age_ms": null },
//!   "overflow": "reject", "fsync": "batch",
//!   "drain_per_s": 0, "dropped": 0, "parked": 0, "rejected": 1,
//!   "refusing": { "reason": "topic_full", "limit": { "name": "max_messages", "value": 2 },
//!                 "retry_after_ms": 5000, "age_ms": 3, "last_second": 1 },
//!   "storage": { "state": "healthy", "reason": null, "damaged_at": null },
//!   "groups": [ { "name": "billing", "members": 1, "credit": 9, "in_flight": 1, "pending": 0,
//!                 "oldest_unacked_ms": 12, "timed_out": 0, "dead_lettered": 0,
//!                 "dead_letter_held": 0,
//!                 "settings": { "ack_timeout_ms": 30000, "max_attempts": 5,
//!                               "dead_letter_topic": "orders.dlq" },
//!                 "ephemeral": false } ],
//!   "groups_omitted": 0,
//!   "recent_drops": [ { "seq": 1, "bytes": 5, "head": "hello", "head_hex": "68656c6c6f",
//!                       "reason": "overflow", "dropped_at_ms": 1764000000000 } ]
//! }
//! ```
//!
//! `recent_drops` is present only where a topic is described one at a time (`topic info`,
//! `GET /topics/{name}`): the bounded sample of messages dropped last — evicted by
//! `drop_oldest` (`overflow`), past the topic's `max_age` (`max_age`), or skipped by a repair
//! (`damaged`).

use serde::{Deserialize, Serialize};

use crate::frame::TopicDescription;
use crate::types::{ActiveRefusal, DroppedMessage, GroupConfig, GroupInfo, TopicHealth, TopicInfo};

/// `GET /topics` and `weir topic list --json`: every topic, sorted by name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicListView {
    /// The topics.
    pub topics: Vec<TopicView>,
}

/// One topic: its bounds and policy, what it holds now, and its groups.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicView {
    /// The topic's name.
    pub name: String,
    /// Messages stored now (not yet acked by every group).
    pub depth: u64,
    /// Message bytes stored now: payloads and headers (what `max_bytes` bounds).
    pub bytes: u64,
    /// The sequence number the next publish will get.
    pub next_seq: u64,
    /// The topic's bounds.
    pub bounds: BoundsView,
    /// What a publish past `max_messages` or `max_bytes` meets: `reject`, `block` or
    /// `drop_oldest`.
    pub overflow: String,
    /// When appends are forced to disk: `batch`, `interval:<ms>` or `never`.
    pub fsync: String,
    /// Messages leaving the topic per second, over the last few seconds.
    pub drain_per_s: u64,
    /// Messages dropped (evicted by `drop_oldest`, past `max_age`, or skipped as damaged by a
    /// repair) since start.
    pub dropped: u64,
    /// Publishes parked by `block` right now.
    pub parked: u64,
    /// Publishes to the topic refused since the broker started, any reason.
    pub rejected: u64,
    /// The bound refusing this topic's publishes right now (a refusal in the last two
    /// seconds), or `null`.
    pub refusing: Option<ActiveRefusal>,
    /// The state of the topic's storage.
    pub storage: StorageView,
    /// The topic's groups (durable subscriptions).
    pub groups: Vec<GroupView>,
    /// Groups left out of `groups` to fit the broker's answer in one frame (0 normally).
    pub groups_omitted: u32,
    /// The recent drops (`drop_oldest`, `max_age`, repairs); only in a description of one
    /// topic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recent_drops: Option<Vec<DroppedView>>,
}

/// A topic's bounds: what it stores at most, and how long `block` holds a publish.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BoundsView {
    /// Most messages stored at once.
    pub max_messages: u64,
    /// Most message bytes stored at once.
    pub max_bytes: u64,
    /// Largest payload accepted.
    pub max_message_bytes: u32,
    /// `block` only: most publishes parked at once.
    pub max_blocked_publishes: u32,
    /// `block` only: longest a publish stays parked, in milliseconds.
    pub max_block_ms: u64,
    /// Oldest a stored message may be, in milliseconds since its commit; `null`: no age
    /// bound. Read as `null` when absent (older brokers).
    #[serde(default)]
    pub max_age_ms: Option<u64>,
}

/// The state of a topic's storage (see [`TopicHealth`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StorageView {
    /// `healthy`, `full`, `failed` or `damaged`.
    pub state: String,
    /// Why it is not healthy, or `null`.
    pub reason: Option<String>,
    /// The first unreadable sequence of a damaged topic, or `null`.
    pub damaged_at: Option<u64>,
}

/// One group of a topic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupView {
    /// The group's name.
    pub name: String,
    /// Connected members.
    pub members: u32,
    /// Credit the members granted that the broker has not used yet.
    pub credit: u64,
    /// Messages delivered and not yet acked (at most `max_in_flight`).
    pub in_flight: u64,
    /// Messages stored and not yet delivered to the group.
    pub pending: u64,
    /// Age of the oldest unacked delivery in milliseconds, `null` when none is in flight.
    pub oldest_unacked_ms: Option<u64>,
    /// Deliveries that passed their ack deadline since the broker started.
    pub timed_out: u64,
    /// Messages moved to the dead-letter topic since the broker started.
    pub dead_lettered: u64,
    /// Messages due for the dead-letter topic, held in flight because it refused them (full).
    pub dead_letter_held: u64,
    /// The group's settings: `ack_timeout_ms`, `max_attempts`, `dead_letter_topic`.
    pub settings: GroupConfig,
    /// Whether the group is ephemeral: deleted when its last subscription leaves, never
    /// persisted (`weir sub` without `--group`). Read as `false` when absent (older brokers).
    #[serde(default)]
    pub ephemeral: bool,
}

/// One message `drop_oldest` evicted, its head as text and as exact hex.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DroppedView {
    /// Its sequence number.
    pub seq: u64,
    /// Its payload size in bytes.
    pub bytes: u32,
    /// Its first bytes (at most 64) as lossy UTF-8, or `null` when they were not in memory.
    pub head: Option<String>,
    /// The same bytes in hex, or `null`.
    pub head_hex: Option<String>,
    /// Why it was dropped (`overflow`, `max_age`, `damaged`).
    pub reason: String,
    /// When, in milliseconds since the Unix epoch.
    pub dropped_at_ms: u64,
}

impl From<TopicInfo> for TopicView {
    fn from(info: TopicInfo) -> TopicView {
        let c = info.config;
        TopicView {
            name: c.name,
            depth: info.depth,
            bytes: info.bytes,
            next_seq: info.next_seq,
            bounds: BoundsView {
                max_messages: c.max_messages,
                max_bytes: c.max_bytes,
                max_message_bytes: c.max_message_bytes,
                max_blocked_publishes: c.max_blocked_publishes,
                max_block_ms: c.max_block_ms,
                max_age_ms: c.max_age_ms,
            },
            overflow: c.overflow.as_str().into(),
            fsync: c.fsync.to_string(),
            drain_per_s: info.drain_per_s,
            dropped: info.dropped,
            parked: info.parked,
            rejected: info.rejected,
            refusing: info.refusing,
            storage: StorageView::from(&info.health),
            groups: info.groups.into_iter().map(GroupView::from).collect(),
            groups_omitted: info.groups_omitted,
            recent_drops: None,
        }
    }
}

impl From<TopicDescription> for TopicView {
    fn from(d: TopicDescription) -> TopicView {
        TopicView {
            recent_drops: Some(d.recent_drops.iter().map(DroppedView::from).collect()),
            ..TopicView::from(d.info)
        }
    }
}

impl From<&TopicHealth> for StorageView {
    fn from(health: &TopicHealth) -> StorageView {
        StorageView {
            state: health.state().into(),
            reason: health.reason().map(str::to_owned),
            damaged_at: health.damaged_at(),
        }
    }
}

impl From<GroupInfo> for GroupView {
    fn from(g: GroupInfo) -> GroupView {
        GroupView {
            name: g.name,
            members: g.members,
            credit: g.credit,
            in_flight: g.in_flight,
            pending: g.pending,
            oldest_unacked_ms: g.oldest_unacked_ms,
            timed_out: g.timed_out,
            dead_lettered: g.dead_lettered,
            dead_letter_held: g.dead_letter_held,
            settings: g.config,
            ephemeral: g.ephemeral,
        }
    }
}

impl From<&DroppedMessage> for DroppedView {
    fn from(m: &DroppedMessage) -> DroppedView {
        DroppedView {
            seq: m.seq,
            bytes: m.bytes,
            head: m
                .head
                .as_deref()
                .map(|h| String::from_utf8_lossy(h).into_owned()),
            head_hex: m
                .head
                .as_deref()
                .map(|h| h.iter().map(|b| format!("{b:02x}")).collect()),
            reason: m.reason.clone(),
            dropped_at_ms: m.dropped_at_ms,
        }
    }
}
