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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::connection::{test_handle, test_limits};

    fn reply_to(cmd: Command, outcome: Result<u64, PublishError>) {
        match cmd {
            // The permit is dropped with the command, as the connection task drops it once
            // the broker has answered.
            Command::Publish { reply, .. } => {
                let _ = reply.send(outcome);
            }
            other => panic!("expected a publish, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn try_publish_fails_fast_at_the_window_and_recovers_on_confirm() {
        let (conn, mut rx) = test_handle(test_limits(), 16);
        let publisher = Publisher::new(conn, 2);
        let first = publisher.try_publish("t", "a").unwrap();
        let _second = publisher.try_publish("t", "b").unwrap();
        assert_eq!(publisher.in_flight(), 2);
        assert!(matches!(
            publisher.try_publish("t", "c"),
            Err(ClientError::WindowFull)
        ));

        reply_to(rx.recv().await.unwrap(), Ok(7));
        assert_eq!(first.await, Ok(7));
        assert_eq!(publisher.in_flight(), 1);
        assert!(publisher.try_publish("t", "c").is_ok());
        assert!(matches!(
            publisher.try_publish("t", "d"),
            Err(ClientError::WindowFull)
        ));
    }

    #[tokio::test]
    async fn publish_waits_for_a_slot() {
        let (conn, mut rx) = test_handle(test_limits(), 16);
        let publisher = Publisher::new(conn, 1);
        let _first = publisher.publish("t", "a").await.unwrap();
        let waiting = publisher.publish("t", "b");
        tokio::pin!(waiting);
        assert!(
            tokio::time::timeout(Duration::from_millis(20), &mut waiting)
                .await
                .is_err()
        );
        // A refusal frees the slot just as a confirm does.
        let refusal = PublishError::Rejected {
            reason: weir_protocol::RejectReason::TopicFull,
            limit: weir_protocol::Limit::new("max_messages", 1),
            retry_after_ms: Some(10),
        };
        reply_to(rx.recv().await.unwrap(), Err(refusal));
        let second = tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .unwrap()
            .unwrap();
        reply_to(rx.recv().await.unwrap(), Ok(2));
        assert_eq!(second.await, Ok(2));
    }

    #[tokio::test]
    async fn a_full_command_queue_is_window_full_for_try_publish() {
        let (conn, _rx) = test_handle(test_limits(), 1);
        let publisher = Publisher::new(conn, 4);
        let _a = publisher.try_publish("t", "a").unwrap();
        assert!(matches!(
            publisher.try_publish("t", "b"),
            Err(ClientError::WindowFull)
        ));
        assert_eq!(
            publisher.in_flight(),
            1,
            "the refused publish gave its slot back"
        );
    }

    #[tokio::test]
    async fn confirm_of_a_dropped_publish_is_connection_lost() {
        let (conn, mut rx) = test_handle(test_limits(), 4);
        let publisher = Publisher::new(conn, 4);
        let confirm = publisher.publish("t", "a").await.unwrap();
        drop(rx.recv().await.unwrap());
        assert_eq!(confirm.await, Err(PublishError::ConnectionLost));
        assert_eq!(publisher.in_flight(), 0);
        drop(rx);
        assert!(matches!(
            publisher.publish("t", "b").await,
            Err(ClientError::ConnectionLost)
        ));
    }
}
