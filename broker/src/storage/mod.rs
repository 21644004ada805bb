//! Everything that touches disk.
pub mod log;
