//! Weir's end-to-end tests: one test binary, one module per concern.

mod bad_input;
mod client;
mod credit;
mod durability;
mod limits;
mod recovery;
mod redelivery;
mod topic_full;
