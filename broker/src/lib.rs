//! The Weir broker: bounded, persisted topics with credit-paced delivery.
//!
//! Entry point: [`server::run`] takes a bound listener, a [`Config`] and a shutdown future;
//! the `weir-broker` binary is a thin wrapper around it, and tests call it directly.
//!
//! # Layout
//!
//! - [`config`] — every bound with its default; TOML file and flags.
//! - [`server`] — accept loop, graceful shutdown.
//! - [`slots`] — connection slots: `max_connections` and `max_connections_per_ip`.
//! - [`connection`] — one task per connection: read frames, apply them, write answers.
//! - `reader` — a connection's frame reader, its buffer charged to the connection's memory
//!   as bytes arrive.
//! - `writer` — a connection's socket writer: batches frames, gives up on a peer that stops
//!   reading, never drops an answer silently.
//! - [`auth_limit`] — failed authentications limited per client address.
//! - [`admin`] — the HTTP admin endpoint: health, readiness, metrics, topics, HTTP publish.
//! - [`admission`] — overload, memory budget and per-key rate limits, before any topic.
//! - `publish` — the checks one publish passes, shared by the wire and HTTP publish paths.
//! - `replies` — listings and descriptions cut to fit in one frame.
//! - [`broker`] — the shared handle: topic registry, creation, state persistence.
//! - [`topic`] — bounds and admission; the group-commit writer; the dispatcher.
//! - [`keys`] — API keys, `Hello` authentication, per-key rate settings.
//! - [`group`] — cursor, in-flight table with ack deadlines, nacks, redelivery, dead letters
//!   and credit of one group.
//! - `dead_letter` — moves messages due for a dead-letter topic there, durably.
//! - [`storage`] — the segmented message log and the sled state store — all disk access.
//! - [`outbox`] — frames queued for a connection's writer, with the memory they hold.
//! - [`metrics`] — counters.

// The public surface: what the `weir-broker` daemon, the end-to-end tests and the benches use.
// Everything else is the crate's own.
pub mod admin;
pub mod config;
pub mod server;
pub mod storage;

pub use broker::{Broker, OpenError};
pub use config::Config;
pub use keys::{ApiKey, RateConfig};

pub(crate) mod admission;
pub(crate) mod auth_limit;
pub(crate) mod broker;
pub(crate) mod connection;
pub(crate) mod dead_letter;
pub(crate) mod group;
pub(crate) mod keys;
pub(crate) mod metrics;
pub(crate) mod outbox;
pub(crate) mod publish;
pub(crate) mod reader;
pub(crate) mod refusal;
pub(crate) mod replies;
pub(crate) mod slots;
pub(crate) mod topic;
pub(crate) mod writer;

mod loom;
