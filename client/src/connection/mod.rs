//! The connection: one background task per client owns the socket; the handles
//! ([`crate::Client`], [`crate::Publisher`], [`crate::Subscription`]) talk to it through one
//! bounded command queue ([`crate::ClientOptions::command_queue`] commands; when it is full,
//! senders wait). One job per file:
//!
//! - `shared`: what handles and task share — the command queue's [`Command`]s, the state that
//!   outlives each socket (limits, connection state, reconnect count, terminal error), each
//!   subscription's shared state.
//! - `handshake`: resolve, connect, `Hello`/`HelloOk` and its typed refusals.
//! - `outbox`: the write buffer frames are encoded into.
//! - `routing`: what waits for an answer, by id, and where each frame from the broker goes;
//!   what must go again after a loss.
//! - `subscriptions`: one subscription's state on the wire, its credit, its deliveries, and how
//!   it moves to a new connection.
//! - `task`: the task — batched writes, reads, and reconnecting per the
//!   [`crate::ReconnectPolicy`].

mod handshake;
mod outbox;
mod routing;
mod shared;
mod subscriptions;
mod task;

use std::sync::Arc;

use tokio::sync::mpsc;

#[cfg(test)]
pub(crate) use shared::{test_handle, test_limits, RawDelivery};
pub(crate) use shared::{
    AdminRequest, Command, ConnHandle, ConnShared, SubItem, SubShared, SUB_ERROR_SLOTS,
};

use crate::error::ClientError;
use crate::options::ClientOptions;

/// Connects to `addr` (`host:port`) and performs the handshake — once: the first connection is
/// not retried, its error is the caller's — then spawns the connection task, which reconnects
/// to the same address per `opts.reconnect`.
pub(crate) async fn open(addr: String, opts: &ClientOptions) -> Result<ConnHandle, ClientError> {
    let session = handshake::connect(&addr, opts).await?;
    let shared = Arc::new(ConnShared::new(session.limits.clone()));
    let (tx, rx) = mpsc::channel(opts.command_queue.max(1));
    let task = task::ConnTask::new(session, addr, opts.clone(), shared.clone(), rx);
    tokio::spawn(task.run());
    Ok(ConnHandle { tx, shared })
}
