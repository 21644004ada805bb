//! `GET /topics` and `GET /topics/{name}`: what `weir topic list` / `weir topic info` show, as
//! JSON, from the topics' in-memory state (no disk access).
//!
//! `GET /topics` answers `{"topics": [TOPIC, ...]}`, sorted by name; `GET /topics/{name}`
//! answers one `TOPIC`, or `404 {"error": "unknown topic NAME"}`. A `TOPIC` is:
//!
//! ```json
//! {
//!   "name": "orders", "depth": 2, "bytes": 24, "next_seq": 2,
//!   "bounds": { "max_messages": 100000, "max_bytes": 268435456, "max_message_bytes": 1048576,
//!               "max_blocked_publishes": 1024, "max_block_ms": 5000 },
//!   "overflow": "reject", "fsync": "batch",
//!   "drain_per_s": 0, "dropped": 0, "parked": 0, "rejected": 1,
//!   "refusing": { "reason": "TopicFull", "limit": { "name": "max_messages", "value": 2 },
//!                 "retry_after_ms": 5000, "age_ms": 3, "last_second": 1 },
//!   "storage": { "state": "healthy", "reason": null, "damaged_at": null },
//!   "groups": [ { "name": "billing", "members": 1, "credit": 9, "in_flight": 1, "pending": 0,
//!                 "oldest_unacked_ms": 12, "timed_out": 0, "dead_lettered": 0,
//!                 "dead_letter_held": 0,
//!                 "settings": { "ack_timeout_ms": 30000, "max_attempts": 5,
//!                               "dead_letter_topic": "orders.dlq" } } ]
//! }
//! ```
//!
//! `overflow` is `reject`, `block` or `drop_oldest`; `fsync` is `batch`, `interval:<ms>` or
//! `never` (as in the config); `refusing` is `null` unless a bound refused a publish in the last
//! two seconds; `oldest_unacked_ms` is `null` when nothing is in flight. `storage.state` is
//! `healthy`, `full` (disk full: publishes refused `StorageFull` until space returns),
//! `failed` (a write or fdatasync failed: refused until `weir topic repair` or a restart) or
//! `damaged` (a confirmed record is unreadable; `damaged_at` is its sequence: groups stop
//! there and publishes are refused until `weir topic repair`).
//!
//! Bounds: the list holds at most `max_topics` topics of at most `max_groups_per_topic` groups.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use weir_protocol::{ActiveRefusal, GroupConfig, GroupInfo, TopicInfo};

use crate::broker::Broker;

/// The answer of `GET /topics`.
#[derive(Debug, Serialize)]
pub struct TopicList {
    /// Every topic, sorted by name.
    pub topics: Vec<TopicView>,
}

/// One topic as the admin endpoint shows it.
#[derive(Debug, Serialize)]
pub struct TopicView {
    /// The topic's name.
    pub name: String,
    /// Messages stored now (not yet acked by every group).
    pub depth: u64,
    /// Payload bytes stored now.
    pub bytes: u64,
    /// The sequence number the next publish will get.
    pub next_seq: u64,
    /// The topic's bounds.
    pub bounds: Bounds,
    /// What a publish past `max_messages` or `max_bytes` meets: `reject`, `block` or
    /// `drop_oldest`.
    pub overflow: &'static str,
    /// When appends are forced to disk: `batch`, `interval:<ms>` or `never`.
    pub fsync: String,
    /// Messages leaving the topic per second, over the last few seconds.
    pub drain_per_s: u64,
    /// Messages evicted by `drop_oldest` since the broker started.
    pub dropped: u64,
    /// Publishes parked by `block` right now.
    pub parked: u64,
    /// Publishes to the topic refused since the broker started, any reason (its own bounds and
    /// admission before it: rates, overload, memory).
    pub rejected: u64,
    /// The bound refusing this topic's publishes right now (a refusal in the last two
    /// seconds), or `null`.
    pub refusing: Option<ActiveRefusal>,
    /// The state of the topic's storage.
    pub storage: StorageView,
    /// The topic's groups (durable subscriptions), sorted by name.
    pub groups: Vec<GroupView>,
}

/// The state of a topic's storage (see [`weir_protocol::TopicHealth`]).
#[derive(Debug, Serialize)]
pub struct StorageView {
    /// `healthy`, `full`, `failed` or `damaged`.
    pub state: &'static str,
    /// Why it is not healthy, or `null`.
    pub reason: Option<String>,
    /// The first unreadable sequence of a damaged topic, or `null`.
    pub damaged_at: Option<u64>,
}

/// A topic's bounds: what it stores at most, and how long `block` holds a publish.
#[derive(Debug, Serialize)]
pub struct Bounds {
    /// Most messages stored at once.
    pub max_messages: u64,
    /// Most payload bytes stored at once.
    pub max_bytes: u64,
    /// Largest payload accepted.
    pub max_message_bytes: u32,
    /// `block` only: most publishes parked at once.
    pub max_blocked_publishes: u32,
    /// `block` only: longest a publish stays parked, in milliseconds.
    pub max_block_ms: u64,
}

/// One group of a topic as the admin endpoint shows it.
#[derive(Debug, Serialize)]
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
}

impl From<TopicInfo> for TopicView {
    fn from(info: TopicInfo) -> TopicView {
        let c = info.config;
        TopicView {
            name: c.name,
            depth: info.depth,
            bytes: info.bytes,
            next_seq: info.next_seq,
            bounds: Bounds {
                max_messages: c.max_messages,
                max_bytes: c.max_bytes,
                max_message_bytes: c.max_message_bytes,
                max_blocked_publishes: c.max_blocked_publishes,
                max_block_ms: c.max_block_ms,
            },
            overflow: c.overflow.as_str(),
            fsync: c.fsync.to_string(),
            drain_per_s: info.drain_per_s,
            dropped: info.dropped,
            parked: info.parked,
            rejected: info.rejected,
            refusing: info.refusing,
            storage: StorageView {
                state: info.health.state(),
                reason: info.health.reason().map(str::to_owned),
                damaged_at: info.health.damaged_at(),
            },
            groups: info.groups.into_iter().map(GroupView::from).collect(),
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
        }
    }
}

/// `GET /topics`: every topic, sorted by name.
pub(super) async fn list(State(broker): State<Broker>) -> Json<TopicList> {
    let topics = broker
        .list_topics()
        .into_iter()
        .map(TopicView::from)
        .collect();
    Json(TopicList { topics })
}

/// `GET /topics/{name}`: one topic, or 404.
pub(super) async fn show(State(broker): State<Broker>, Path(name): Path<String>) -> Response {
    match broker.topic(&name) {
        Some(topic) => Json(TopicView::from(topic.info())).into_response(),
        None => unknown_topic(&name),
    }
}

/// `404 {"error": "unknown topic NAME"}`.
pub(super) fn unknown_topic(name: &str) -> Response {
    error_response(StatusCode::NOT_FOUND, format!("unknown topic {name}"))
}

/// An error the admin endpoint answers with: `status` and `{"error": message}`.
pub(super) fn error_response(status: StatusCode, message: String) -> Response {
    (status, Json(serde_json::json!({ "error": message }))).into_response()
}
