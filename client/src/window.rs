//! [`Window`]: a bounded window of unconfirmed publishes on one connection — the slots, and
//! handing a publish to the connection once it holds one. What a [`crate::Publisher`] and its
//! retries both send through.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot, Semaphore, TryAcquireError};

use crate::confirm::PublishConfirm;
use crate::connection::{Command, ConnHandle};
use crate::error::ClientError;
use crate::message::Message;

/// `size` slots; each publish holds one from when it is handed to the connection until the
/// broker answers it (or the connection ends). Clones share the slots.
#[derive(Debug, Clone)]
pub(crate) struct Window {
    conn: ConnHandle,
    slots: Arc<Semaphore>,
    size: usize,
}

impl Window {
    /// A window of `size` slots on `conn`.
    pub fn new(conn: ConnHandle, size: usize) -> Window {
        Window {
            conn,
            slots: Arc::new(Semaphore::new(size)),
            size,
        }
    }

    /// The number of slots.
    pub fn size(&self) -> usize {
        self.size
    }

    /// Slots held now: publishes sent (or being sent) and not yet answered.
    pub fn in_flight(&self) -> usize {
        self.size - self.slots.available_permits()
    }

    /// Hands `message` to the connection once a slot is free (waiting for it, and for room in
    /// the command queue). Fails with the connection's terminal error once it has ended.
    pub async fn send(&self, message: Message) -> Result<PublishConfirm, ClientError> {
        let permit = match self.slots.clone().acquire_owned().await {
            Ok(permit) => permit,
            Err(_) => return Err(self.conn.shared.error()),
        };
        let (reply, rx) = oneshot::channel();
        self.conn
            .send(Command::Publish {
                message,
                reply,
                permit,
            })
            .await?;
        Ok(PublishConfirm::direct(rx))
    }

    /// [`Window::send`] without waiting: fails with [`ClientError::WindowFull`] when no slot is
    /// free or the command queue is full (nothing is sent then, and the slot is given back).
    pub fn try_send(&self, message: Message) -> Result<PublishConfirm, ClientError> {
        let permit = match self.slots.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(TryAcquireError::NoPermits) => return Err(ClientError::WindowFull),
            Err(TryAcquireError::Closed) => return Err(self.conn.shared.error()),
        };
        let (reply, rx) = oneshot::channel();
        let cmd = Command::Publish {
            message,
            reply,
            permit,
        };
        match self.conn.tx.try_send(cmd) {
            Ok(()) => Ok(PublishConfirm::direct(rx)),
            Err(mpsc::error::TrySendError::Full(_)) => Err(ClientError::WindowFull),
            Err(mpsc::error::TrySendError::Closed(_)) => Err(self.conn.shared.error()),
        }
    }
}
