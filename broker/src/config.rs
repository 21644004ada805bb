//! Broker configuration: every bound with its default, loaded from TOML and overridden by flags.
//!
//! Every field has a default, so `weir-broker` runs with no config file at all. A TOML file
//! (`--config weir.toml`) may set any subset of fields; unknown fields are an error so a typo
//! never silently leaves a bound at its default.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use weir_protocol::{
    FsyncPolicy, GroupConfig, GroupSpec, Limit, OverflowPolicy, TopicConfig, TopicSpec,
};

use crate::keys::{ApiKey, RateConfig};
use crate::permissions::{Anonymous, AnonymousConfig};

/// The largest `storage.seq_reservation` accepted (1 Mi seqs: a crash then costs a topic at
/// most 4 MiB of memory for the seqs it skips, until they are consumed past).
pub const MAX_SEQ_RESERVATION: u64 = 1 << 20;

/// The broker's whole configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address the protocol listener binds (default `127.0.0.1:7070`). The file may give a
    /// host name (`localhost:7070`) or leave the port out (7070); see [`parse_listen_addr`].
    #[serde(deserialize_with = "listen_addr::wire")]
    pub listen: SocketAddr,
    /// Directory holding topic logs (`topics/`) and broker state (`state/`); default `./weir-data`.
    pub data_dir: PathBuf,
    /// Connection-level bounds.
    pub limits: Limits,
    /// Bounds a topic gets when its creator leaves them unset (and on auto-create).
    pub topic_defaults: TopicDefaults,
    /// Settings a group gets when its first subscription leaves them unset.
    pub groups: GroupDefaults,
    /// The HTTP admin endpoint (metrics, health, topics, publish over HTTP).
    pub admin: AdminConfig,
    /// Storage tuning.
    pub storage: StorageConfig,
    /// Each topic's dedup window (idempotent publish).
    pub dedup: DedupConfig,
    /// Rate limits of keys that do not set their own, and of anonymous clients.
    pub default_rate: RateConfig,
    /// API keys (`[[keys]]`). None configured: anonymous clients, loopback only.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub keys: Vec<ApiKey>,
    /// `[tls]`: the certificate of both ports (and the client CA for mutual TLS). Unset (the
    /// default): plaintext on both ports. Set: both ports refuse plaintext.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<crate::tls::TlsConfig>,
    /// Who may connect without a token and what they may do (`[anonymous]`). Left out: with no
    /// keys, loopback clients may do everything; with keys, a token is required.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub anonymous: Option<AnonymousConfig>,
}

/// Connection- and broker-wide bounds, each with its behaviour at the bound.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Most open client connections. At the bound a new connection gets
    /// `Rejected{TooManyConnections}` and is closed. Default 1 024.
    pub max_connections: u32,
    /// Most open connections from one client IP address. Past it a new connection from that
    /// address gets `Rejected{TooManyConnections}` naming this limit. Default 256.
    pub max_connections_per_ip: u32,
    /// Largest frame accepted, in bytes. A larger frame gets `Error{FrameTooLarge}` and the
    /// connection is closed. Default 4 MiB.
    pub max_frame_bytes: u32,
    /// Most unconfirmed publishes read from one connection. At the bound the broker stops
    /// reading that socket (TCP backpressure) until confirms go out. Default 1 024.
    pub max_unconfirmed: u32,
    /// Most subscriptions open on one connection; past it `Subscribe` gets
    /// `Error{LimitExceeded}`. Default 16.
    pub max_subscriptions: u32,
    /// Most credit one subscription may have outstanding; a grant past it gets
    /// `Error{LimitExceeded}`. Default 1 024. A connection's outbound queue holds at most
    /// `max_subscriptions × max_credit` deliveries plus the confirms of `max_unconfirmed`
    /// publishes, so it can never overflow.
    pub max_credit: u32,
    /// Most topics. Creating one more gets `Error{LimitExceeded}` (or, when a publish would
    /// auto-create it, `Rejected{TooManyTopics}`). Default 1 024.
    pub max_topics: u32,
    /// Most groups per topic; a subscribe that would create one more gets
    /// `Error{LimitExceeded}`. Default 64.
    pub max_groups_per_topic: u32,
    /// Create a topic with the default bounds on first publish or subscribe. Default `true`.
    pub auto_create_topics: bool,
    /// Most delivered-but-unacked messages per group, across all its members. At the bound the
    /// group's delivery pauses until acks arrive. Default 1 024.
    pub max_in_flight: u32,
    /// The retry-after hint for a full topic whose messages are not draining at all, and the
    /// cap on every drain-based hint, in milliseconds. Default 5 000.
    pub max_retry_after_ms: u64,
    /// `drop_oldest` topics evicting more than this many messages per second log a warning
    /// (at most once a second per topic). Default 100.
    pub drop_warn_per_s: u64,
    /// A group at `max_in_flight`, or a subscriber with no credit while messages wait, for
    /// this long is reported (log line and metric), and again every such period. Default 30 000.
    pub stall_warn_ms: u64,
    /// One budget for every buffer the broker holds for clients, in two halves: *inbound*
    /// (read buffers, publishes until committed or while parked, tail caches) and *outbound*
    /// (deliveries until written). A publish that does not fit in the inbound half gets
    /// `Rejected{Overloaded}` naming it; deliveries wait in the log while the outbound half is
    /// full. At least two `max_frame_bytes`. Default 256 MiB.
    pub memory_budget_bytes: u64,
    /// Publishes get `Rejected{Overloaded}` while the p99 storage commit latency over the last
    /// `overload_window_ms` exceeds this. Default 1 000.
    pub overload_commit_p99_ms: u64,
    /// The window of commit latencies the overload check looks at (and the retry hint it
    /// gives). Default 1 000.
    pub overload_window_ms: u64,
    /// Publishes get `Rejected{Overloaded}` while this many appends, across all topics, wait
    /// for their commit. Default 65 536.
    pub overload_queued_appends: u64,
    /// How long a new connection may take to send `Hello`, in milliseconds; then it is closed.
    /// Default 10 000.
    pub hello_timeout_ms: u64,
    /// How long shutdown waits for in-progress commits before closing connections, in
    /// milliseconds. Default 5 000.
    pub shutdown_grace_ms: u64,
    /// Largest frame a connection may send before its `Hello` succeeds; a larger one closes it
    /// with `Error{FrameTooLarge}`. Default 64 KiB.
    pub max_unauthenticated_frame_bytes: u32,
    /// A frame whose bytes stop arriving for this long closes its connection (and gives back
    /// the bytes it held), in milliseconds. Default 10 000.
    pub frame_read_timeout_ms: u64,
    /// Most memory one connection holds: its read buffer, its unsent deliveries, and its
    /// publishes until they are committed (queued or parked). Over it, that connection stops
    /// being read while its own publishes commit, its publishes are refused
    /// `Rejected{Overloaded}` naming this limit, and no more deliveries are planned for it —
    /// its neighbours are not affected. At least two `max_frame_bytes`; a value over half of
    /// `memory_budget_bytes` is taken as that half. Default 32 MiB.
    pub max_connection_memory_bytes: u64,
    /// A connection whose socket accepts no bytes for this long while frames wait for it is
    /// closed with `GoingAway{SlowConsumer}`; its unacked deliveries return to their groups.
    /// In milliseconds. Default 30 000.
    pub slow_consumer_timeout_ms: u64,
    /// A connection with no subscription that sends no frame (a `Ping` counts) for this long
    /// is closed with `GoingAway{Idle}`. In milliseconds. Default 600 000 (10 min).
    pub idle_timeout_ms: u64,
    /// Most headers on one message; more is refused `Rejected{MessageTooLarge}` naming it. At
    /// most 1 024 (the wire's own ceiling). Default 64.
    pub max_headers: u32,
    /// Most bytes of header names and values on one message; more is refused
    /// `Rejected{MessageTooLarge}` naming it. Default 16 KiB.
    pub max_header_bytes: u32,
    /// Longest reason a client may attach to a `Term` (kept on the dead-lettered message as
    /// its `weir-reason` header); longer reasons are cut at this many bytes and counted.
    /// Default 1 024.
    pub max_reason_bytes: u32,
    /// The largest `max_bytes` a topic may be created with; a larger one is refused
    /// `Error{LimitExceeded}` naming this limit. Default 64 GiB.
    pub max_topic_bytes: u64,
    /// The largest `max_messages` a topic may be created with (each stored message costs the
    /// broker 4 bytes of memory for its size); a larger one is refused `Error{LimitExceeded}`.
    /// Default 10 000 000.
    pub max_topic_messages: u64,
    /// Failed authentications one client address may make per second; past it, that
    /// address's new connections are refused (`Rejected{RateLimited}`) before their `Hello` is
    /// read, until the second is over. Default 10.
    pub max_auth_failures_per_s: u32,
}

/// Default bounds of a topic (DESIGN.md §1: all required, no "unlimited").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TopicDefaults {
    /// Most stored messages (ready and in flight). Default 100 000.
    pub max_messages: u64,
    /// Most stored payload bytes. Default 256 MiB.
    pub max_bytes: u64,
    /// Largest payload. Default 1 MiB.
    pub max_message_bytes: u32,
    /// Policy at the bound: `"reject"`.
    pub overflow: String,
    /// `"batch"` (default: confirm after fdatasync), `"interval:<ms>"` or `"never"`.
    pub fsync: String,
    /// `block` policy: most publishes parked at once per topic; further ones are refused.
    /// Default 1 024.
    pub max_blocked_publishes: u32,
    /// `block` policy: longest a publish stays parked before it is refused, in milliseconds.
    /// Default 5 000.
    pub max_block_ms: u64,
    /// Oldest a stored message may be, in milliseconds since its commit, for topics created
    /// without one: older messages are removed (counted as dropped, `Gap` to groups that had
    /// not acked them). 0 (the default): no age bound. At most [`MAX_AGE_MS_CEILING`].
    pub max_age_ms: u64,
}

/// The largest `max_age` a topic may have, in milliseconds: ten (365-day) years. Larger
/// values are refused rather than silently meaning "forever".
pub const MAX_AGE_MS_CEILING: u64 = 10 * 365 * 24 * 60 * 60 * 1000;

/// The HTTP admin endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminConfig {
    /// Serve it at all. Default true.
    pub enabled: bool,
    /// Where it listens. Default 127.0.0.1:7071 (loopback: put a proxy in front to expose it).
    /// A host name or a missing port (7071) are taken as for `listen`.
    #[serde(deserialize_with = "listen_addr::admin")]
    pub listen: SocketAddr,
    /// Most open HTTP connections; accepting waits for one to close. Default 64.
    pub max_connections: u32,
    /// Most requests handled at once; past it a request gets `503` with `Retry-After: 1`.
    /// Default 32.
    pub max_concurrent_requests: u32,
    /// A request whose headers have not all arrived this long after its first byte (or, on a
    /// new connection, after the connection opened) closes its connection, in milliseconds.
    /// Default 5 000.
    pub header_read_timeout_ms: u64,
    /// A request body that has not all arrived this long after the headers is answered
    /// `408 Request Timeout`, in milliseconds. Default 30 000.
    pub body_read_timeout_ms: u64,
    /// A kept-alive connection with no request for this long is closed, in milliseconds.
    /// Default 60 000.
    pub idle_timeout_ms: u64,
    /// With `[[keys]]` configured, every route but `/healthz` and `/readyz` needs a key;
    /// `true` opens `/metrics` to anyone (for a scraper without a token). Default false.
    pub public_metrics: bool,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            enabled: true,
            listen: SocketAddr::from(([127, 0, 0, 1], DEFAULT_ADMIN_PORT)),
            max_connections: 64,
            max_concurrent_requests: 32,
            header_read_timeout_ms: 5_000,
            body_read_timeout_ms: 30_000,
            idle_timeout_ms: 60_000,
            public_metrics: false,
        }
    }
}

/// Group settings (ack deadlines, attempts, dead letters) and their bounds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GroupDefaults {
    /// How long a delivery may stay unacked (without `Progress`) before it returns to the group
    /// and is redelivered. Default 30 000.
    pub ack_timeout_ms: u64,
    /// Deliveries of one message before the next timeout or nack dead-letters it. Default 5.
    pub max_attempts: u32,
    /// The longest `Nack` delay honoured; longer ones are cut to it. Default 900 000 (15 min).
    pub max_nack_delay_ms: u64,
    /// Most messages moved to dead-letter topics per round of the mover; the rest wait for the
    /// next round (they keep their group slots meanwhile). Default 256.
    pub dead_letter_batch: u32,
    /// Most messages one key-ordered group (`ordering = "key"`) lets wait because a message
    /// with the same `weir-key` is in flight, so messages of other keys can pass them. At the
    /// bound the group reads no further until a blocked key frees (counted in
    /// `weir_key_lookahead_full_total`). Default 4 096.
    pub key_lookahead: u32,
}

impl Default for GroupDefaults {
    fn default() -> Self {
        GroupDefaults {
            ack_timeout_ms: 30_000,
            max_attempts: 5,
            max_nack_delay_ms: 900_000,
            dead_letter_batch: 256,
            key_lookahead: 4_096,
        }
    }
}

/// The bounds of each topic's dedup window: what a topic remembers of the producer
/// sequences and `weir-msg-id`s it stored, so a publish sent again is stored once (see
/// `topic/dedup.rs`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DedupConfig {
    /// How long a stored message (and a producer not heard from) is remembered; a duplicate
    /// sent after it is stored again. Default 120 000 (2 min).
    pub window_ms: u64,
    /// Most producers remembered per topic; past it the one heard from least recently is
    /// forgotten (counted in `weir_dedup_producers_evicted_total`). Default 10 000.
    pub max_producers: u32,
    /// Most explicit ids (`weir-msg-id`, HTTP `Idempotency-Key`) remembered per topic; past it
    /// the oldest is forgotten (counted in `weir_dedup_ids_evicted_total`). Default 100 000.
    pub max_ids: u32,
}

impl Default for DedupConfig {
    fn default() -> Self {
        DedupConfig {
            window_ms: 120_000,
            max_producers: 10_000,
            max_ids: 100_000,
        }
    }
}

/// Storage tuning.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StorageConfig {
    /// Size at which a topic's active log segment is sealed and a new one started. Default 64 MiB.
    pub segment_bytes: u64,
    /// Most messages in one group commit (one write + one fdatasync). Default 1 024.
    pub commit_max_batch: u32,
    /// Most appends queued for one topic's writer; publishers wait (bounded by their
    /// connection's `max_unconfirmed`) when it is full. Default 4 096.
    pub append_queue: u32,
    /// Bytes of recently committed payloads kept in memory per topic, so deliveries to
    /// subscribers that keep up do not touch disk. Oldest evicted first. Default 4 MiB.
    pub tail_cache_bytes: u64,
    /// The sled state store's cache bound (sled's own default is 1 GiB). Default 64 MiB.
    pub state_cache_bytes: u64,
    /// How often changed group state (cursors, unacked sets) is written to the state store, in
    /// milliseconds. A crash loses at most this much ack progress, which means redeliveries,
    /// never lost messages. Default 100.
    pub state_flush_ms: u64,
    /// Longest time, in milliseconds, between two records of a topic's durable high-water mark
    /// (how far its log was synced): recovery treats a log that ends below the mark as damaged,
    /// never as a torn tail. At most one extra fdatasync per topic per interval, never one per
    /// commit; a disk that loses only the last interval of confirmed records is not detected.
    /// Default 100.
    pub high_water_interval_ms: u64,
    /// Seqs a topic's log reserves at a time in its durable high-water mark: no seq is
    /// confirmed before a reservation covering it is on disk (one extra fdatasync per this many
    /// messages), and after a crash the log numbers on from the reservation, so a seq that may
    /// have been confirmed is never handed out again — leaving a hole of at most this many
    /// never-delivered seqs. A clean stop reserves nothing past the end (no hole). Default 4096,
    /// at most [`MAX_SEQ_RESERVATION`] (each skipped seq takes 4 bytes of the topic's memory
    /// until its groups have consumed past it).
    pub seq_reservation: u64,
    /// Most bytes of message data (log segments, all topics) the broker stores; a publish that
    /// would pass it is refused `Rejected{StorageFull}` naming `storage.max_bytes`. Unset: 90 %
    /// of the filesystem's free space plus what the data directory already holds, taken at
    /// start (`--print-config` shows the value taken).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_bytes: Option<u64>,
    /// Free space the broker leaves on the data directory's filesystem; a publish that would
    /// take it below this is refused `Rejected{StorageFull}` naming `storage.min_free_bytes`,
    /// so message data never drives the disk to ENOSPC. Default 1 GiB.
    pub min_free_bytes: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], DEFAULT_WIRE_PORT)),
            data_dir: PathBuf::from("./weir-data"),
            limits: Limits::default(),
            topic_defaults: TopicDefaults::default(),
            groups: GroupDefaults::default(),
            admin: AdminConfig::default(),
            storage: StorageConfig::default(),
            dedup: DedupConfig::default(),
            default_rate: RateConfig::default(),
            keys: Vec::new(),
            tls: None,
            anonymous: None,
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 1024,
            max_connections_per_ip: 256,
            max_frame_bytes: 4 * 1024 * 1024,
            max_unconfirmed: 1024,
            max_subscriptions: 16,
            max_credit: 1024,
            max_topics: 1024,
            max_groups_per_topic: 64,
            auto_create_topics: true,
            max_in_flight: 1024,
            max_retry_after_ms: 5_000,
            drop_warn_per_s: 100,
            stall_warn_ms: 30_000,
            memory_budget_bytes: 256 * 1024 * 1024,
            overload_commit_p99_ms: 1_000,
            overload_window_ms: 1_000,
            overload_queued_appends: 65_536,
            hello_timeout_ms: 10_000,
            shutdown_grace_ms: 5_000,
            max_unauthenticated_frame_bytes: 64 * 1024,
            frame_read_timeout_ms: 10_000,
            max_connection_memory_bytes: 32 * 1024 * 1024,
            slow_consumer_timeout_ms: 30_000,
            idle_timeout_ms: 600_000,
            max_headers: 64,
            max_header_bytes: 16 * 1024,
            max_reason_bytes: 1024,
            max_topic_bytes: 64 * 1024 * 1024 * 1024,
            max_topic_messages: 10_000_000,
            max_auth_failures_per_s: 10,
        }
    }
}

impl Default for TopicDefaults {
    fn default() -> Self {
        TopicDefaults {
            max_messages: 100_000,
            max_bytes: 256 * 1024 * 1024,
            max_message_bytes: 1024 * 1024,
            overflow: "reject".into(),
            fsync: "batch".into(),
            max_blocked_publishes: 1024,
            max_block_ms: 5_000,
            max_age_ms: 0,
        }
    }
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            segment_bytes: 64 * 1024 * 1024,
            commit_max_batch: 1024,
            append_queue: 4096,
            tail_cache_bytes: 4 * 1024 * 1024,
            state_cache_bytes: 64 * 1024 * 1024,
            state_flush_ms: 100,
            high_water_interval_ms: 100,
            seq_reservation: 4096,
            max_bytes: None,
            min_free_bytes: 1024 * 1024 * 1024,
        }
    }
}

/// A configuration that cannot be used, with the reason.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML for this schema.
    #[error("invalid config {path}: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// Why.
        source: Box<toml::de::Error>,
    },
    /// A value is out of range.
    #[error("invalid config: {0}")]
    Invalid(String),
}

impl Config {
    /// Takes the default `storage.max_bytes` if none is set: what the data directory's topic
    /// logs hold now plus 90 % of the free space on its filesystem (see
    /// the `storage::disk` module). Blocking (it measures the disk).
    pub fn resolve_storage_budget(&mut self) {
        if self.storage.max_bytes.is_some() {
            return;
        }
        let topics = self.data_dir.join("topics");
        let stored = if topics.exists() {
            dir_bytes(&topics)
        } else {
            0
        };
        let free = crate::storage::disk::available_space(&self.data_dir).unwrap_or(u64::MAX);
        self.storage.max_bytes = Some(crate::storage::disk::default_max_bytes(stored, free));
    }

    /// Reads a TOML file; fields it leaves out keep their defaults.
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let config: Config = toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            source: Box::new(e),
        })?;
        config.validate()?;
        Ok(config)
    }

    /// The configuration as TOML, every bound included (`--print-config`): a file `--config`
    /// takes back unchanged. Secrets are masked: each clear `token` is shown as its
    /// `token_sha256`, which authenticates the same clients.
    pub fn to_toml(&self) -> String {
        let mut shown = self.clone();
        shown.keys = self.keys.iter().map(ApiKey::masked).collect();
        toml::to_string_pretty(&shown).unwrap_or_else(|e| format!("# cannot render config: {e}\n"))
    }

    /// Checks every bound is usable: no zero bounds, frame size within the codec ceiling, a
    /// memory budget of at least two frames, the default message bound fitting in a frame, and
    /// parsable policies.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let l = &self.limits;
        let nonzero = [
            ("limits.max_connections", u64::from(l.max_connections)),
            (
                "limits.max_connections_per_ip",
                u64::from(l.max_connections_per_ip),
            ),
            ("limits.max_unconfirmed", u64::from(l.max_unconfirmed)),
            ("limits.max_subscriptions", u64::from(l.max_subscriptions)),
            ("limits.max_credit", u64::from(l.max_credit)),
            ("limits.max_topics", u64::from(l.max_topics)),
            (
                "limits.max_groups_per_topic",
                u64::from(l.max_groups_per_topic),
            ),
            ("limits.max_in_flight", u64::from(l.max_in_flight)),
            (
                "storage.commit_max_batch",
                u64::from(self.storage.commit_max_batch),
            ),
            ("storage.append_queue", u64::from(self.storage.append_queue)),
            ("storage.segment_bytes", self.storage.segment_bytes),
            ("storage.state_flush_ms", self.storage.state_flush_ms),
            (
                "storage.high_water_interval_ms",
                self.storage.high_water_interval_ms,
            ),
            ("storage.seq_reservation", self.storage.seq_reservation),
            ("limits.max_retry_after_ms", l.max_retry_after_ms),
            ("limits.stall_warn_ms", l.stall_warn_ms),
            ("dedup.window_ms", self.dedup.window_ms),
            ("dedup.max_producers", u64::from(self.dedup.max_producers)),
            ("dedup.max_ids", u64::from(self.dedup.max_ids)),
            ("limits.memory_budget_bytes", l.memory_budget_bytes),
            ("limits.overload_commit_p99_ms", l.overload_commit_p99_ms),
            ("limits.overload_window_ms", l.overload_window_ms),
            ("limits.overload_queued_appends", l.overload_queued_appends),
            ("limits.frame_read_timeout_ms", l.frame_read_timeout_ms),
            (
                "limits.slow_consumer_timeout_ms",
                l.slow_consumer_timeout_ms,
            ),
            ("limits.idle_timeout_ms", l.idle_timeout_ms),
            ("limits.max_header_bytes", u64::from(l.max_header_bytes)),
            ("limits.max_reason_bytes", u64::from(l.max_reason_bytes)),
            ("limits.max_topic_bytes", l.max_topic_bytes),
            ("limits.max_topic_messages", l.max_topic_messages),
            (
                "limits.max_auth_failures_per_s",
                u64::from(l.max_auth_failures_per_s),
            ),
            (
                "admin.header_read_timeout_ms",
                self.admin.header_read_timeout_ms,
            ),
            (
                "admin.body_read_timeout_ms",
                self.admin.body_read_timeout_ms,
            ),
            ("admin.idle_timeout_ms", self.admin.idle_timeout_ms),
            ("groups.ack_timeout_ms", self.groups.ack_timeout_ms),
            ("groups.max_attempts", u64::from(self.groups.max_attempts)),
            (
                "groups.dead_letter_batch",
                u64::from(self.groups.dead_letter_batch),
            ),
            ("groups.key_lookahead", u64::from(self.groups.key_lookahead)),
        ];
        if let Some((name, _)) = nonzero.iter().find(|(_, v)| *v == 0) {
            return Err(ConfigError::Invalid(format!("{name} must be at least 1")));
        }
        if self.storage.seq_reservation > MAX_SEQ_RESERVATION {
            return Err(ConfigError::Invalid(format!(
                "storage.seq_reservation must be at most {MAX_SEQ_RESERVATION}: the seqs a crash \
                 skips each take 4 bytes of the topic's memory until consumed past"
            )));
        }
        if l.max_frame_bytes as usize > weir_protocol::MAX_FRAME_BYTES_CEILING
            || l.max_frame_bytes < 1024
        {
            return Err(ConfigError::Invalid(format!(
                "limits.max_frame_bytes must be between 1024 and {}",
                weir_protocol::MAX_FRAME_BYTES_CEILING
            )));
        }
        if l.memory_budget_bytes < 2 * u64::from(l.max_frame_bytes) {
            return Err(ConfigError::Invalid(format!(
                "limits.memory_budget_bytes ({}) must hold at least two frames of limits.max_frame_bytes ({}): a publish is read, then admitted",
                l.memory_budget_bytes, l.max_frame_bytes
            )));
        }
        if l.max_connection_memory_bytes < 2 * u64::from(l.max_frame_bytes) {
            return Err(ConfigError::Invalid(format!(
                "limits.max_connection_memory_bytes ({}) must hold two frames of limits.max_frame_bytes ({})",
                l.max_connection_memory_bytes, l.max_frame_bytes
            )));
        }
        if l.max_unauthenticated_frame_bytes < 1024
            || l.max_unauthenticated_frame_bytes > l.max_frame_bytes
        {
            return Err(ConfigError::Invalid(format!(
                "limits.max_unauthenticated_frame_bytes must be between 1024 and limits.max_frame_bytes ({})",
                l.max_frame_bytes
            )));
        }
        if l.max_header_bytes > MAX_HEADER_BYTES_CEILING {
            return Err(ConfigError::Invalid(format!(
                "limits.max_header_bytes must be at most {MAX_HEADER_BYTES_CEILING}"
            )));
        }
        if l.max_headers as usize > weir_protocol::MAX_HEADERS_CEILING {
            return Err(ConfigError::Invalid(format!(
                "limits.max_headers must be at most {}",
                weir_protocol::MAX_HEADERS_CEILING
            )));
        }
        self.default_rate
            .validate("default_rate")
            .map_err(ConfigError::Invalid)?;
        let mut digests = std::collections::HashSet::new();
        for key in &self.keys {
            let digest = key.digest().map_err(ConfigError::Invalid)?;
            if !digests.insert(digest) {
                return Err(ConfigError::Invalid(format!(
                    "key {:?}: tokens must be unique",
                    key.name
                )));
            }
            if let Some(rate) = &key.rate {
                rate.validate(&format!("key {:?}", key.name))
                    .map_err(ConfigError::Invalid)?;
            }
            key.grants().map_err(ConfigError::Invalid)?;
        }
        if let Some(anonymous) = &self.anonymous {
            Anonymous::compile(anonymous).map_err(ConfigError::Invalid)?;
        }
        let defaults = self
            .resolve_topic(TopicSpec {
                name: "check".into(),
                ..TopicSpec::default()
            })
            .map_err(|e| ConfigError::Invalid(format!("topic_defaults: {e}")))?;
        match self.topic_ceiling_exceeded(&defaults) {
            Some(limit) => Err(ConfigError::Invalid(format!(
                "topic_defaults exceed limits.{} ({})",
                limit.name, limit.value
            ))),
            None => Ok(()),
        }
    }

    /// Resolves a group's settings against the defaults for a group of `topic` and checks them:
    /// a nonzero ack timeout and attempts, and a valid dead-letter topic name other than
    /// `topic` itself (default [`default_dead_letter_topic`]).
    pub fn resolve_group(&self, topic: &str, spec: &GroupSpec) -> Result<GroupConfig, String> {
        let d = &self.groups;
        let config = GroupConfig {
            ordering: spec.ordering.unwrap_or_default(),
            ack_timeout_ms: spec.ack_timeout_ms.unwrap_or(d.ack_timeout_ms),
            max_attempts: spec.max_attempts.unwrap_or(d.max_attempts),
            dead_letter_topic: spec
                .dead_letter_topic
                .clone()
                .unwrap_or_else(|| default_dead_letter_topic(topic)),
        };
        if config.ack_timeout_ms == 0 || config.max_attempts == 0 {
            return Err("ack_timeout_ms and max_attempts must be at least 1".into());
        }
        validate_topic_name(&config.dead_letter_topic)
            .map_err(|e| format!("dead-letter topic: {e}"))?;
        if config.dead_letter_topic == topic {
            return Err("a topic cannot be its own dead-letter topic".into());
        }
        Ok(config)
    }

    /// Resolves a topic spec against the defaults and checks it: a valid name, nonzero bounds,
    /// and a message bound that fits in a frame (with room for the frame's header).
    pub fn resolve_topic(&self, spec: TopicSpec) -> Result<TopicConfig, String> {
        validate_topic_name(&spec.name)?;
        let d = &self.topic_defaults;
        let overflow = match spec.overflow {
            Some(p) => p,
            None => d.overflow.parse::<OverflowPolicy>()?,
        };
        let fsync = match spec.fsync {
            Some(p) => p,
            None => d.fsync.parse::<FsyncPolicy>()?,
        };
        let config = TopicConfig {
            // Not given: the default; 0 (given or default): no age bound.
            max_age_ms: Some(spec.max_age_ms.unwrap_or(d.max_age_ms)).filter(|&ms| ms > 0),
            name: spec.name,
            max_messages: spec.max_messages.unwrap_or(d.max_messages),
            max_bytes: spec.max_bytes.unwrap_or(d.max_bytes),
            max_message_bytes: spec.max_message_bytes.unwrap_or(d.max_message_bytes),
            overflow,
            fsync,
            max_blocked_publishes: spec
                .max_blocked_publishes
                .unwrap_or(d.max_blocked_publishes),
            max_block_ms: spec.max_block_ms.unwrap_or(d.max_block_ms),
        };
        self.check_topic(config)
    }

    /// Checks a topic's effective settings (as made by [`Config::resolve_topic`], or changed by
    /// `weir topic update`): every bound at least 1, a `max_age` of at most
    /// [`MAX_AGE_MS_CEILING`], a message that fits `max_bytes` and a frame. The broker-wide ceilings are [`Config::topic_ceiling_exceeded`].
    pub fn check_topic(&self, config: TopicConfig) -> Result<TopicConfig, String> {
        let bounds = [
            config.max_messages,
            config.max_bytes,
            u64::from(config.max_message_bytes),
            u64::from(config.max_blocked_publishes),
            config.max_block_ms,
        ];
        if bounds.contains(&0) {
            return Err("topic bounds max_messages, max_bytes, max_message_bytes, \
                 max_blocked_publishes and max_block_ms must be at least 1"
                .into());
        }
        if config.max_age_ms.is_some_and(|ms| ms > MAX_AGE_MS_CEILING) {
            return Err(format!(
                "max_age_ms {} exceeds {MAX_AGE_MS_CEILING} (ten years); 0 means no age bound",
                config.max_age_ms.unwrap_or_default()
            ));
        }
        if u64::from(config.max_message_bytes) > config.max_bytes {
            return Err(format!(
                "max_message_bytes {} exceeds max_bytes {}: such a message could never be stored",
                config.max_message_bytes, config.max_bytes
            ));
        }
        let ceiling = max_message_bytes_ceiling(&self.limits);
        if config.max_message_bytes > ceiling {
            return Err(format!(
                "max_message_bytes {} does not fit in a frame (limits.max_frame_bytes {} leaves {} for a message, with room for a dead-letter copy's origin headers)",
                config.max_message_bytes, self.limits.max_frame_bytes, ceiling
            ));
        }
        Ok(config)
    }

    /// The broker-wide ceiling a topic's bounds pass, if any: `limits.max_topic_bytes` for its
    /// `max_bytes`, `limits.max_topic_messages` for its `max_messages` (a create asking for more
    /// is refused with `LimitExceeded` naming it).
    pub fn topic_ceiling_exceeded(&self, config: &TopicConfig) -> Option<Limit> {
        let l = &self.limits;
        if config.max_bytes > l.max_topic_bytes {
            return Some(Limit::new("max_topic_bytes", l.max_topic_bytes));
        }
        if config.max_messages > l.max_topic_messages {
            return Some(Limit::new("max_topic_messages", l.max_topic_messages));
        }
        None
    }
}

/// The largest `max_message_bytes` a topic may have under `limits`: what is left of a frame of
/// `max_frame_bytes` after the frame's own fields and the origin headers a dead-letter copy
/// adds — so every stored message can be delivered, and delivered again as a dead letter.
pub fn max_message_bytes_ceiling(limits: &Limits) -> u32 {
    let room = u64::from(FRAME_HEADER_ROOM)
        + crate::dead_letter::origin::origin_room(limits.max_reason_bytes);
    u64::from(limits.max_frame_bytes).saturating_sub(room) as u32
}

/// Bytes of a frame reserved for everything but the payload (header, topic name, ids).
const FRAME_HEADER_ROOM: u32 = 512;

/// The largest publish frame header the broker reads: `max_header_bytes` of names and values,
/// their length fields (at most 10 bytes per header), and room for the topic name and ids. A
/// publish with a larger header is refused from its first bytes, unbuffered.
pub fn max_publish_header_bytes(limits: &Limits) -> usize {
    limits.max_header_bytes as usize + 10 * limits.max_headers as usize + 1024
}

/// Total bytes of the files under `dir`, recursively (unreadable entries count as 0).
fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir).map_or(0, |entries| {
        entries
            .filter_map(Result::ok)
            .filter_map(|e| Some((e.path(), e.metadata().ok()?)))
            .map(|(path, meta)| {
                if meta.is_dir() {
                    dir_bytes(&path)
                } else {
                    meta.len()
                }
            })
            .sum()
    })
}

/// The largest `limits.max_header_bytes`: a publish header must fit in the part of a read buffer
/// every connection is granted (see the `reader` module).
const MAX_HEADER_BYTES_CEILING: u32 = 32 * 1024;

/// The wire port a listen address without one takes.
pub const DEFAULT_WIRE_PORT: u16 = 7070;
/// The admin port a listen address without one takes.
pub const DEFAULT_ADMIN_PORT: u16 = 7071;

/// Parses a listen address: `IP:PORT`, `[IPv6]:PORT`, `HOST:PORT`, or any of them without the
/// port (then `default_port`). A host name is resolved now, and its first IPv4 address taken
/// (else its first address). The error says what was given and what is expected.
pub fn parse_listen_addr(text: &str, default_port: u16) -> Result<SocketAddr, String> {
    use std::net::{IpAddr, ToSocketAddrs};
    let text = text.trim();
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok(addr);
    }
    let bare = text.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = bare.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, default_port));
    }
    let (host, port) = match text.rsplit_once(':') {
        Some((host, port)) => {
            let port = port.parse::<u16>().map_err(|_| {
                format!("invalid listen address {text:?}: the port must be a number 0-65535")
            })?;
            (host, port)
        }
        None => (text, default_port),
    };
    if host.is_empty() {
        return Err(format!(
            "invalid listen address {text:?}: expected HOST:PORT, e.g. 127.0.0.1:{default_port}"
        ));
    }
    let addrs: Vec<SocketAddr> = (host, port)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve listen address {text:?}: {e}"))?
        .collect();
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or(addrs.first())
        .copied()
        .ok_or_else(|| format!("listen address {text:?} resolves to no address"))
}

/// Serde readers of listen addresses in the config file (see [`parse_listen_addr`]).
mod listen_addr {
    use std::net::SocketAddr;

    use serde::{Deserialize, Deserializer};

    fn read<'de, D: Deserializer<'de>>(d: D, port: u16) -> Result<SocketAddr, D::Error> {
        let text = String::deserialize(d)?;
        super::parse_listen_addr(&text, port).map_err(serde::de::Error::custom)
    }

    /// `listen`: the wire port by default.
    pub(super) fn wire<'de, D: Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
        read(d, super::DEFAULT_WIRE_PORT)
    }

    /// `admin.listen`: the admin port by default.
    pub(super) fn admin<'de, D: Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
        read(d, super::DEFAULT_ADMIN_PORT)
    }
}

pub use crate::names::MAX_NAME_BYTES;

/// The dead-letter topic a group of `topic` gets when its settings name none: `<topic>.dlq`, or
/// for a name too long to take the suffix, the name cut short plus `-` and 8 hex digits of its
/// CRC-32C, then `.dlq` — a valid name of [`MAX_NAME_BYTES`] for every valid topic name.
pub fn default_dead_letter_topic(topic: &str) -> String {
    const SUFFIX: &str = ".dlq";
    if topic.len() + SUFFIX.len() <= MAX_NAME_BYTES {
        return format!("{topic}{SUFFIX}");
    }
    // Topic names are ASCII (validate_topic_name), so any byte is a character boundary.
    let keep = MAX_NAME_BYTES - SUFFIX.len() - 9;
    let cut = topic.get(..keep).unwrap_or(topic);
    format!("{cut}-{:08x}{SUFFIX}", crc32c::crc32c(topic.as_bytes()))
}

/// Checks a topic or group name: 1–200 bytes of `[A-Za-z0-9._-]`, not `.` or `..`.
pub fn validate_topic_name(name: &str) -> Result<(), String> {
    let ok_chars = name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if name.is_empty() || name.len() > MAX_NAME_BYTES || !ok_chars || name == "." || name == ".." {
        return Err(format!(
            "invalid name {name:?}: use 1-200 characters of [A-Za-z0-9._-]"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::permissions::Action;

    #[test]
    fn defaults_are_valid_and_round_trip_through_toml() {
        let config = Config::default();
        config.validate().unwrap();
        let back: Config = toml::from_str(&config.to_toml()).unwrap();
        assert_eq!(back, config);
    }

    #[test]
    fn the_sample_config_in_deploy_is_valid_and_says_the_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/weir.toml");
        let sample = Config::from_file(&path).unwrap_or_else(|e| panic!("{e}"));
        let defaults = Config::default();
        assert_eq!(sample.dedup, defaults.dedup);
        assert_eq!(sample.groups, defaults.groups);
        assert_eq!(sample.storage.segment_bytes, defaults.storage.segment_bytes);
    }

    #[test]
    fn printed_config_with_keys_reads_back_unchanged_and_shows_no_token() {
        let config = Config {
            keys: vec![
                ApiKey::with_token("billing", "s3cret-billing", None),
                ApiKey::with_token("ops", "s3cret-ops", Some(RateConfig::default())),
            ],
            listen: parse_listen_addr("0.0.0.0", DEFAULT_WIRE_PORT).unwrap(),
            ..Config::default()
        };
        let printed = config.to_toml();
        assert!(!printed.contains("s3cret"), "{printed}");
        let back: Config = toml::from_str(&printed).unwrap();
        back.validate().unwrap();
        assert_eq!(back.to_toml(), printed, "printing is a fixed point");
        let masked: Vec<ApiKey> = config.keys.iter().map(ApiKey::masked).collect();
        assert_eq!(back.keys, masked);
        let with_clear = Config {
            keys: config.keys.clone(),
            ..back
        };
        assert_eq!(with_clear, config);
        // No keys: no `keys = []` line that a pasted `[[keys]]` table would collide with.
        let plain = Config::default().to_toml();
        assert!(!plain.contains("keys"), "{plain}");
        let appended = format!("{plain}\n[[keys]]\nname = \"a\"\ntoken = \"t\"\n");
        assert_eq!(toml::from_str::<Config>(&appended).unwrap().keys.len(), 1);
    }

    #[test]
    fn listen_addresses_take_host_names_and_default_ports() {
        let wire = |t| parse_listen_addr(t, DEFAULT_WIRE_PORT);
        assert_eq!(
            wire("127.0.0.1:9000").unwrap(),
            "127.0.0.1:9000".parse().unwrap()
        );
        assert_eq!(wire("0.0.0.0").unwrap(), "0.0.0.0:7070".parse().unwrap());
        assert_eq!(wire("[::1]").unwrap(), "[::1]:7070".parse().unwrap());
        assert_eq!(wire("::1").unwrap(), "[::1]:7070".parse().unwrap());
        let local = wire("localhost:7080").unwrap();
        assert!(local.ip().is_loopback() && local.port() == 7080, "{local}");
        assert!(wire("localhost").unwrap().ip().is_loopback());
        assert!(wire("localhost:http").unwrap_err().contains("port"));
        assert!(wire(":7070").unwrap_err().contains("HOST:PORT"));
        let file: Config =
            toml::from_str("listen = \"localhost\"\n[admin]\nlisten = \"127.0.0.1\"\n").unwrap();
        assert_eq!(file.listen.port(), DEFAULT_WIRE_PORT);
        assert_eq!(file.admin.listen, "127.0.0.1:7071".parse().unwrap());
    }

    #[test]
    fn a_partial_file_keeps_the_other_defaults() {
        let config: Config = toml::from_str("[limits]\nmax_connections = 3\n").unwrap();
        assert_eq!(config.limits.max_connections, 3);
        assert_eq!(config.limits.max_credit, Limits::default().max_credit);
    }

    #[test]
    fn permissions_and_anonymous_parse_round_trip_and_bad_entries_are_named() {
        let text = r#"
[[keys]]
name = "billing"
token = "t1"
permissions = [{ topics = "orders.*", allow = ["publish", "subscribe"] }, { topics = "*", allow = ["monitor"] }]

[[keys]]
name = "ops"
token = "t2"

[anonymous]
allow_from = ["127.0.0.0/8", "10.1.0.0/16"]
permissions = [{ topics = "public", allow = ["subscribe"] }]
"#;
        let config: Config = toml::from_str(text).unwrap();
        config.validate().unwrap();
        let perms = config.keys[0].permissions.as_ref().unwrap();
        assert_eq!(perms[0].allow, vec![Action::Publish, Action::Subscribe]);
        assert_eq!(config.keys[1].permissions, None, "no field: every action");
        let back: Config = toml::from_str(&config.to_toml()).unwrap();
        assert_eq!(back.keys[0].permissions, config.keys[0].permissions);
        assert_eq!(back.anonymous, config.anonymous);
        assert_eq!(back.keys[1].permissions, None);
        // Without the section: none printed, none read back.
        assert!(!Config::default().to_toml().contains("anonymous"));

        let invalid = |text: &str| match toml::from_str::<Config>(text) {
            Ok(config) => config.validate().unwrap_err().to_string(),
            Err(e) => e.to_string(),
        };
        let bad_pattern = invalid(
            "[[keys]]\nname = \"billing\"\ntoken = \"t\"\npermissions = [{ topics = \"or*ders\", allow = [\"publish\"] }]\n",
        );
        assert!(
            bad_pattern.contains("billing") && bad_pattern.contains("permissions[0]"),
            "{bad_pattern}"
        );
        let bad_action = invalid(
            "[[keys]]\nname = \"billing\"\ntoken = \"t\"\npermissions = [{ topics = \"a\", allow = [\"delete\"] }]\n",
        );
        assert!(bad_action.contains("delete"), "{bad_action}");
        let bad_cidr = invalid("[anonymous]\nallow_from = [\"127.0.0.1/8\", \"10.0.0.0/40\"]\n");
        assert!(
            bad_cidr.contains("anonymous.allow_from[1]") && bad_cidr.contains("10.0.0.0/40"),
            "{bad_cidr}"
        );
        let bad_anon = invalid("[anonymous]\npermissions = [{ topics = \"\", allow = [] }]\n");
        assert!(bad_anon.contains("anonymous.permissions[0]"), "{bad_anon}");
    }

    #[test]
    fn keys_parse_and_duplicate_tokens_are_refused() {
        let text = "[[keys]]\nname = \"a\"\ntoken = \"t1\"\n[keys.rate]\nmessages_per_s = 5\n\n[[keys]]\nname = \"b\"\ntoken = \"t2\"\n";
        let config: Config = toml::from_str(text).unwrap();
        config.validate().unwrap();
        assert_eq!(config.keys[0].rate.map(|r| r.messages_per_s), Some(5));
        assert_eq!(config.keys[1].rate, None);
        let back: Config = toml::from_str(&config.to_toml()).unwrap();
        let digests = |c: &Config| {
            c.keys
                .iter()
                .map(|k| k.digest().unwrap())
                .collect::<Vec<_>>()
        };
        assert_eq!(digests(&back), digests(&config));
        // The same token once in clear and once hashed is a duplicate too.
        let hashed = Config {
            keys: vec![config.keys[0].masked(), config.keys[0].clone()],
            ..back
        };
        assert!(hashed
            .validate()
            .unwrap_err()
            .to_string()
            .contains("unique"));
        let dup: Config = toml::from_str(&text.replace("t2", "t1")).unwrap();
        assert!(dup.validate().is_err());
    }

    #[test]
    fn unknown_fields_and_zero_bounds_are_refused() {
        assert!(toml::from_str::<Config>("[limits]\nmax_conections = 3\n").is_err());
        let mut config = Config::default();
        config.limits.max_in_flight = 0;
        assert!(config.validate().is_err());
        let mut config = Config::default();
        config.groups.key_lookahead = 0;
        let err = config.validate().unwrap_err().to_string();
        assert!(err.contains("groups.key_lookahead"), "{err}");
        let config: Config = toml::from_str("[groups]\nkey_lookahead = 16\n").unwrap();
        assert_eq!(config.groups.key_lookahead, 16);
        let mut config = Config::default();
        config.limits.memory_budget_bytes = 2 * u64::from(config.limits.max_frame_bytes) - 1;
        let err = config.validate().unwrap_err().to_string();
        assert!(err.contains("memory_budget_bytes"), "{err}");
        for reservation in [0, MAX_SEQ_RESERVATION + 1] {
            let mut config = Config::default();
            config.storage.seq_reservation = reservation;
            let err = config.validate().unwrap_err().to_string();
            assert!(err.contains("seq_reservation"), "{err}");
        }
    }

    #[test]
    fn max_age_takes_the_default_zero_means_none_and_the_ceiling_holds() {
        let spec = |max_age_ms| TopicSpec {
            name: "aged".into(),
            max_age_ms,
            ..TopicSpec::default()
        };
        let plain = Config::default();
        assert_eq!(plain.resolve_topic(spec(None)).unwrap().max_age_ms, None);
        assert_eq!(
            plain.resolve_topic(spec(Some(600_000))).unwrap().max_age_ms,
            Some(600_000)
        );
        let mut aged = Config::default();
        aged.topic_defaults.max_age_ms = 60_000;
        aged.validate().unwrap();
        assert_eq!(
            aged.resolve_topic(spec(None)).unwrap().max_age_ms,
            Some(60_000)
        );
        assert_eq!(
            aged.resolve_topic(spec(Some(0))).unwrap().max_age_ms,
            None,
            "0 asks for no age bound over the default"
        );
        let too_old = plain.resolve_topic(spec(Some(MAX_AGE_MS_CEILING + 1)));
        assert!(too_old.unwrap_err().contains("max_age_ms"));
        aged.topic_defaults.max_age_ms = MAX_AGE_MS_CEILING + 1;
        assert!(
            aged.validate().is_err(),
            "a default past the ceiling is refused"
        );
    }

    #[test]
    fn topic_names_are_checked() {
        for bad in ["", ".", "..", "a/b", "a b", &"x".repeat(201)] {
            assert!(validate_topic_name(bad).is_err(), "{bad:?} accepted");
        }
        validate_topic_name("orders.eu-1_v2").unwrap();
    }

    #[test]
    fn every_valid_topic_name_has_a_valid_default_dead_letter_topic() {
        let config = Config::default();
        assert_eq!(default_dead_letter_topic("orders"), "orders.dlq");
        let mut seen = std::collections::HashSet::new();
        let names = (1..=MAX_NAME_BYTES)
            .flat_map(|len| {
                [
                    "x".repeat(len),
                    format!("{}.dlq", "y".repeat(len.saturating_sub(4))),
                ]
            })
            .filter(|name| validate_topic_name(name).is_ok())
            .collect::<std::collections::BTreeSet<_>>();
        assert!(names.len() > 390);
        for name in names {
            let group = config
                .resolve_group(&name, &GroupSpec::default())
                .unwrap_or_else(|e| panic!("{}: {e}", name.len()));
            assert_ne!(group.dead_letter_topic, name);
            assert!(
                seen.insert(group.dead_letter_topic),
                "{}: two topics share a DLQ",
                name.len()
            );
        }
        // Long names that differ only past the cut keep distinct dead-letter topics.
        let a = format!("{}a", "z".repeat(199));
        let b = format!("{}b", "z".repeat(199));
        assert_ne!(default_dead_letter_topic(&a), default_dead_letter_topic(&b));
    }

    #[test]
    fn a_message_bound_larger_than_a_frame_is_refused() {
        let config = Config::default();
        let spec = TopicSpec {
            name: "t".into(),
            max_message_bytes: Some(8 * 1024 * 1024),
            ..Default::default()
        };
        assert!(config.resolve_topic(spec).is_err());
    }
}
