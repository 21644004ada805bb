//! [`Publisher`]: a bounded window of unconfirmed publishes, and [`PublishConfirm`], the future
//! of one publish's outcome.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::sync::{oneshot, Semaphore, TryAcquireError};

use crate::connection::{Command, ConnHandle};
use crate::error::{ClientError, PublishError};

/// Publishes messages through a bounded window of unconfirmed publishes.
///
/// Each publish takes one slot of the window when it is handed to the connection and gives it
/// back when the broker answers (`PublishOk`, `Rejected` or `Error`) or the connection ends —
/// whether or not anyone awaits its [`PublishConfirm`]. At the bound,
/// [`Publisher::publish`] waits for a slot (pressure reaches the app) and
/// [`Publisher::try_publish`] fails at once with [`ClientError::WindowFull`].
///
/// Clones share one window. Create independent windows with [`crate::Client::publisher`].
#[derive(Debug, Clone)]
pub struct Publisher {
    conn: ConnHandle,
    window: Arc<Semaphore>,
    size: usize,
}

impl Publisher {
    pub(crate) fn new(conn: ConnHandle, size: usize) -> Self {
        Publisher {
            conn,
            window: Arc::new(Semaphore::new(size)),
            size,
        }
    }

    /// The window: the most publishes of this publisher unconfirmed at once.
    pub fn window(&self) -> usize {
        self.size
    }

    /// Publishes sent (or being sent) and not yet answered by the broker.
    pub fn in_flight(&self) -> usize {
        self.size - self.window.available_permits()
    }

    /// Sends `payload` to `topic` once the window has a free slot, and returns the future of
    /// its confirm. Returns once the publish is queued for sending, not when it is confirmed.
    ///
    /// Waits while the window (or the connection's command queue) is full. Cancel-safe: if the
    /// returned future is dropped before it completes, nothing was sent. Fails with the
    /// connection's terminal error once the connection has ended.
    pub async fn publish(
        &self,
        topic: &str,
        payload: impl Into<Bytes>,
    ) -> Result<PublishConfirm, ClientError> {
        let payload = payload.into();
        let topic = topic.to_owned();
        let permit = match self.window.clone().acquire_owned().await {
            Ok(permit) => permit,
            Err(_) => return Err(self.conn.shared.error()),
        };
        let (reply, rx) = oneshot::channel();
        self.conn
            .send(Command::Publish {
                topic,
                payload,
                reply,
                permit,
            })
            .await?;
        Ok(PublishConfirm { rx })
    }

    /// Like [`Publisher::publish`], but never waits: fails with [`ClientError::WindowFull`] when
    /// the window has no free slot or the connection's command queue is full (nothing is sent
    /// then), and with the terminal error when the connection has ended.
    pub fn try_publish(
        &self,
        topic: &str,
        payload: impl Into<Bytes>,
    ) -> Result<PublishConfirm, ClientError> {
        let permit = match self.window.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(TryAcquireError::NoPermits) => return Err(ClientError::WindowFull),
            Err(TryAcquireError::Closed) => return Err(self.conn.shared.error()),
        };
        let (reply, rx) = oneshot::channel();
        let cmd = Command::Publish {
            topic: topic.to_owned(),
            payload: payload.into(),
            reply,
            permit,
        };
        match self.conn.tx.try_send(cmd) {
            Ok(()) => Ok(PublishConfirm { rx }),
            Err(tokio::sync::mpsc::error::TrySendError::Full(_)) => Err(ClientError::WindowFull),
            Err(tokio::sync::mpsc::error::TrySendError::Closed(_)) => Err(self.conn.shared.error()),
        }
    }

    /// Publishes and waits for the outcome: the message's sequence number once durable.
    ///
    /// A refusal comes back as [`ClientError::Publish`]; waiting for a window slot as in
    /// [`Publisher::publish`].
    pub async fn publish_and_wait(
        &self,
        topic: &str,
        payload: impl Into<Bytes>,
    ) -> Result<u64, ClientError> {
        Ok(self.publish(topic, payload).await?.await?)
    }
}

/// The outcome of one sent publish: a future resolving to the message's sequence number once the
/// broker confirms it durable, or to the [`PublishError`] that refused it.
///
/// Dropping it does not cancel the publish (it was sent) and does not hold the window slot (the
/// slot is freed when the broker answers).
#[derive(Debug)]
#[must_use = "a publish may be refused; await the confirm to find out"]
pub struct PublishConfirm {
    rx: oneshot::Receiver<Result<u64, PublishError>>,
}

impl Future for PublishConfirm {
    type Output = Result<u64, PublishError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match Pin::new(&mut self.rx).poll(cx) {
            Poll::Ready(Ok(outcome)) => Poll::Ready(outcome),
            Poll::Ready(Err(_)) => Poll::Ready(Err(PublishError::ConnectionLost)),
            Poll::Pending => Poll::Pending,
        }
    }
}
