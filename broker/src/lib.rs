//! The Weir broker: bounded, persisted topics with credit-paced delivery.
//!
//! Entry point: [`server::run`] takes a bound listener, a [`Config`] and a shutdown future;
//! the `weir-broker` binary is a thin wrapper around it, and tests call it directly.
//!
//! # Layout
//!
//! Public (what the `weir-broker` daemon, the end-to-end tests and the benches use):
//! - [`config`] — every bound with its default; TOML file and flags.
//! - [`server`] — accept loop, graceful shutdown; [`server::run`] opens the broker and serves.
//! - [`admin`] — the HTTP admin endpoint: health, readiness, metrics, topics, HTTP publish.
//! - [`storage`] — the segmented message log, the sled state store, the file layer (and its
//!   fault-injecting twin for tests) — all disk access.
//! - [`tls`] — `[tls]`: the rustls configuration of both ports, its reload on SIGHUP, and
//!   the accept step that refuses plaintext.
//! - [`clock`] — [`Clock`]: the one time the broker's deadlines, delays and rate windows
//!   read; real time in the daemon, paused and advanced by tests.
//! - [`Broker`], [`OpenError`], [`Config`], [`ApiKey`], [`RateConfig`], [`Clock`],
//!   [`Permission`], [`Action`], [`AnonymousConfig`] at the crate root.
//!
//! The crate's own, in the order one message meets them (publish → store → deliver → ack):
//! - `slots` — connection slots: `max_connections` and `max_connections_per_ip`.
//! - `connection/` — one task per connection: the read loop and its backpressure
//!   (`mod.rs`), one file per command (`handshake.rs`, `publish.rs`, `subscribe.rs`,
//!   `settle.rs`, `manage.rs`), a publish waiting for its commit (`confirm.rs`).
//! - `reader` — a connection's frame reader, its buffer charged to the connection's memory
//!   as bytes arrive.
//! - `auth_limit` — failed authentications limited per client address.
//! - `keys` — API keys, `Hello` authentication, per-key rate settings.
//! - `permissions` — which actions a key (or anonymous) may take on which topics; where
//!   anonymous clients may come from.
//! - `publish` — the checks one publish passes, shared by the wire and HTTP publish paths.
//! - `admission/` — overload, memory budget and per-key rate limits, before any topic.
//! - `refusal` — the refusal every refused request carries back (reason, bound, retry).
//! - `broker/` — the shared handle: topic registry, creation, deletion (`mod.rs`); opening
//!   it and the tasks it starts (`open.rs`).
//! - `topic/` — one topic: the publish path, the group-commit writer, the dispatcher, its
//!   groups' members and operations, storage health, repair (see its Layout).
//! - `group/` — cursor, in-flight table with ack deadlines, nacks, redelivery, dead letters
//!   and credit of one group.
//! - `outbox` — frames queued for a connection's writer, with the memory they hold.
//! - `writer` — a connection's socket writer: batches frames, gives up on a peer that stops
//!   reading, never drops an answer silently.
//! - `dead_letter/` — moves messages due for a dead-letter topic there, durably; the origin
//!   headers they carry (`origin.rs`).
//! - `replies` — listings and descriptions cut to fit in one frame.
//! - `metrics` — counters.

// The public surface: what the `weir-broker` daemon, the end-to-end tests and the benches use.
// Everything else is the crate's own.
pub mod admin;
pub mod clock;
pub mod config;
pub mod server;
pub mod storage;
pub mod tls;

pub use broker::{Broker, OpenError};
pub use clock::Clock;
pub use config::Config;
pub use keys::{ApiKey, RateConfig};
pub use permissions::{Action, AnonymousConfig, Permission};

pub(crate) mod admission;
pub(crate) mod auth_limit;
pub(crate) mod broker;
pub(crate) mod connection;
pub mod data_dir_lock;
pub(crate) mod dead_letter;
pub(crate) mod group;
pub(crate) mod keys;
pub(crate) mod metrics;
pub(crate) mod names;
pub(crate) mod outbox;
pub(crate) mod permissions;
pub(crate) mod publish;
pub(crate) mod reader;
pub(crate) mod refusal;
pub(crate) mod refusal_log;
pub(crate) mod replies;
pub(crate) mod slots;
pub(crate) mod topic;
pub(crate) mod work;
pub(crate) mod writer;

mod loom;
