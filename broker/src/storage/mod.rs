//! Everything that touches disk (DESIGN.md §4).
//!
//! Public (the daemon, the end-to-end tests and the benches use them):
//! - [`fs`]: the file layer every file operation of the broker's data goes through (fault
//!   injection and crash simulation in tests).
//! - [`fault`]: a file layer that fails on command (fault-injection tests of a running broker).
//! - [`log`]: per-topic segmented append-only logs holding message payloads.
//! - [`state`]: the sled-backed store of topic configurations and group state, and
//!   [`state::set_aside`] for `weir-broker --rebuild-state`.
//!
//! The crate's own:
//! - `disk`: the disk budget (`storage.max_bytes`, `storage.min_free_bytes`).
//! - `records`: storage's own versioned formats (state and group records, topic manifests).
//! - `manifest`: topic directories' manifests and delete tombstones.
//! - `reconcile`: start-up reconciliation of topic directories with the state store.
//! - `sim` (tests only): an in-memory file layer that knows what was synced, for crash
//!   simulation and fault injection.
//!
//! Who touches the disk, as it stands:
//! - Topic directories, logs and manifests are created, written and removed only through the
//!   file layer ([`fs::StorageFs`]), whose one real implementation, [`fs::OsFs`], calls
//!   `std::fs`. Code outside this module drives that too: the broker creates the `topics`
//!   directory and creates or deletes a topic's directory through `manifest` (`broker/`), and
//!   the dead-letter mover reads messages back through its topics' logs.
//! - sled opens and writes the state store's files itself (`state`), and `state` checks
//!   sled's lock on its `db` file with `std::fs` directly.
//! - `disk` asks the file system for its free space; [`fault::FaultyFs`] reads file metadata
//!   (inode numbers) with `std::fs`.
//! - Outside this module, `config.rs` reads the configuration file and, to size the default
//!   `storage.max_bytes`, walks the data directory with `std::fs`. Nothing else outside
//!   `storage` opens a file or names sled.

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
        max_age_ms: None,
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
