//! Weir broker library (work in progress).
pub mod storage;
