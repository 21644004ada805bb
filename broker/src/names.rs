//! The bound on names every part of the broker checks: its own module, so the permission
//! patterns and the configuration take it without depending on each other.

/// Longest topic or group name, in bytes.
pub const MAX_NAME_BYTES: usize = 200;
