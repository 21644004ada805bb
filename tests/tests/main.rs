//! Weir's end-to-end tests: one test binary, one module per concern.

mod bad_input;
mod credit;
mod durability;
mod limits;
mod redelivery;
mod topic_full;
