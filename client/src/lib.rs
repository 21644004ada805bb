//! Weir client (being written).
