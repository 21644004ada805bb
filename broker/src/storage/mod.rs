//! Everything that touches disk (DESIGN.md §4).
//!
//! - [`log`]: per-topic segmented append-only logs holding message payloads.
//! - [`state`]: the sled-backed store of topic configurations and group state.
//!
//! Nothing outside this module opens a file or names sled.

pub mod log;
pub mod state;
