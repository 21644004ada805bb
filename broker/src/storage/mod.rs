//! Everything that touches disk (DESIGN.md §4).
//!
//! - [`log`]: per-topic segmented append-only logs holding message payloads.
//! - [`state`]: the sled-backed store of topic configurations and group state.
//! - [`disk`]: the disk budget (`storage.max_bytes`, `storage.min_free_bytes`).
//! - [`fault`]: a file layer that fails on command (fault-injection tests of a running broker).
//! - [`fs`]: the file layer every file operation of the log goes through (fault injection and
//!   crash simulation in tests).
//! - [`records`]: storage's own versioned formats (state records, topic manifests).
//! - [`manifest`]: topic directories' manifests and delete tombstones.
//! - [`reconcile`]: start-up reconciliation of topic directories with the state store.
//! - `sim` (tests only): an in-memory file layer that knows what was synced, for crash
//!   simulation and fault injection.
//!
//! Nothing outside this module opens a file or names sled; inside it, only [`fs::OsFs`] calls
//! `std::fs` (sled manages the state store's files).

#[cfg(test)]
mod delete_crash_tests;
pub(crate) mod disk;
pub mod fault;
pub mod fs;
pub mod log;
pub(crate) mod manifest;
pub(crate) mod reconcile;
pub(crate) mod records;
#[cfg(test)]
pub(crate) mod sim;
pub mod state;

/// A small topic configuration for storage's unit tests.
#[cfg(test)]
pub(crate) fn test_topic_config(name: &str) -> weir_protocol::TopicConfig {
    weir_protocol::TopicConfig {
        name: name.into(),
        max_messages: 10,
        max_bytes: 100,
        max_message_bytes: 10,
        overflow: weir_protocol::OverflowPolicy::Reject,
        fsync: weir_protocol::FsyncPolicy::Batch,
        max_blocked_publishes: 8,
        max_block_ms: 1000,
    }
}
