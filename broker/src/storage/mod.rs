//! Everything that touches disk (DESIGN.md §4).
//!
//! - [`log`]: per-topic segmented append-only logs holding message payloads.
//! - [`state`]: the sled-backed store of topic configurations and group state.
//! - [`disk`]: the disk budget (`storage.max_bytes`, `storage.min_free_bytes`).
//!
//! Nothing outside this module opens a file or names sled.

pub mod disk;
pub mod log;
pub mod state;
