//! Weir's end-to-end tests: one test binary, one module per concern.

mod admission;
mod bad_input;
mod budget;
mod cli;
mod client;
mod client_retry;
mod consumer_lost;
mod crash;
mod credit;
mod delivery;
mod durability;
mod headers;
mod http;
mod isolation;
mod isolation_admin;
mod kill_loop;
mod limits;
mod memory;
mod metrics;
mod policies;
mod recovery;
mod redelivery;
mod shutdown;
mod state_recovery;
mod storage_faults;
mod topic_full;
