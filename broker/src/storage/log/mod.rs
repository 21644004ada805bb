//! Segmented append-only log (being written).
