//! [`Publisher`]: a bounded window of unconfirmed publishes, and [`PublishConfirm`], the future
//! of one publish's outcome.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use tokio::sync::{oneshot, Semaphore, TryAcquireError};

use crate::connection::{Command, ConnHandle};
use crate::error::{ClientError, PublishError};
use crate::retry::{
    full_jitter, retryable, BreakerState, CircuitBreaker, RetryBudget, RetryPolicy,
};

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
    /// Set by [`Publisher::with_retry`].
    retry: Option<Arc<Retrier>>,
}

/// The retry state a publisher's clones share.
#[derive(Debug)]
struct Retrier {
    policy: RetryPolicy,
    state: Mutex<(RetryBudget, CircuitBreaker)>,
    retries: AtomicU64,
}

impl Retrier {
    fn lock(&self) -> std::sync::MutexGuard<'_, (RetryBudget, CircuitBreaker)> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Publisher {
    pub(crate) fn new(conn: ConnHandle, size: usize) -> Self {
        Publisher {
            conn,
            window: Arc::new(Semaphore::new(size)),
            size,
            retry: None,
        }
    }

    /// This publisher (sharing its window) with retries of refused publishes per `policy`:
    /// refusals that waiting can fix are retried after a full-jitter backoff that never comes
    /// before the broker's `retry_after_ms`, within the retry budget and while the circuit
    /// breaker is closed; everything else, and a refusal past the budget, surfaces in the
    /// confirm. Each retry takes a window slot like any publish, so retries never exceed the
    /// window. While the breaker is open, publishing fails at once with
    /// [`ClientError::CircuitOpen`].
    pub fn with_retry(mut self, policy: RetryPolicy) -> Publisher {
        let now = Instant::now();
        let state = (
            RetryBudget::new(&policy, now),
            CircuitBreaker::new(policy.breaker.clone()),
        );
        self.retry = Some(Arc::new(Retrier {
            policy,
            state: Mutex::new(state),
            retries: AtomicU64::new(0),
        }));
        self
    }

    /// How many retries this publisher (and its clones) has sent.
    pub fn retries(&self) -> u64 {
        self.retry
            .as_ref()
            .map_or(0, |r| r.retries.load(Ordering::Relaxed))
    }

    /// The circuit breaker's state, when retrying is on.
    pub fn breaker_state(&self) -> Option<BreakerState> {
        self.retry
            .as_ref()
            .map(|r| r.lock().1.state(Instant::now()))
    }

    /// With retry on: refuses at once while the breaker is open, and counts the publish for
    /// the retry budget.
    fn before_publish(&self) -> Result<(), ClientError> {
        let Some(r) = &self.retry else { return Ok(()) };
        let now = Instant::now();
        let mut state = r.lock();
        state
            .1
            .allow(now)
            .map_err(|retry_after| ClientError::CircuitOpen { retry_after })?;
        state.0.record_publish(now);
        Ok(())
    }

    /// With retry on, hands the confirm to a task that retries it; otherwise returns it.
    fn retrying(&self, topic: &str, payload: Bytes, confirm: PublishConfirm) -> PublishConfirm {
        let Some(retrier) = self.retry.clone() else {
            return confirm;
        };
        let plain = Publisher {
            retry: None,
            ..self.clone()
        };
        let topic = topic.to_owned();
        let task = tokio::spawn(retry_loop(plain, retrier, topic, payload, confirm));
        PublishConfirm {
            inner: Inner::Retrying(task),
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
        self.before_publish()?;
        let confirm = self.send(topic, payload.clone()).await?;
        Ok(self.retrying(topic, payload, confirm))
    }

    /// Sends one publish once the window has a slot.
    async fn send(&self, topic: &str, payload: Bytes) -> Result<PublishConfirm, ClientError> {
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
        Ok(PublishConfirm {
            inner: Inner::Direct(rx),
        })
    }

    /// Like [`Publisher::publish`], but never waits: fails with [`ClientError::WindowFull`] when
    /// the window has no free slot or the connection's command queue is full (nothing is sent
    /// then), and with the terminal error when the connection has ended.
    pub fn try_publish(
        &self,
        topic: &str,
        payload: impl Into<Bytes>,
    ) -> Result<PublishConfirm, ClientError> {
        let payload = payload.into();
        self.before_publish()?;
        let permit = match self.window.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(TryAcquireError::NoPermits) => return Err(ClientError::WindowFull),
            Err(TryAcquireError::Closed) => return Err(self.conn.shared.error()),
        };
        let (reply, rx) = oneshot::channel();
        let cmd = Command::Publish {
            topic: topic.to_owned(),
            payload: payload.clone(),
            reply,
            permit,
        };
        match self.conn.tx.try_send(cmd) {
            Ok(()) => Ok(self.retrying(
                topic,
                payload,
                PublishConfirm {
                    inner: Inner::Direct(rx),
                },
            )),
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
    inner: Inner,
}

/// Where a confirm comes from.
#[derive(Debug)]
enum Inner {
    /// The broker's answer to the one publish.
    Direct(oneshot::Receiver<Result<u64, PublishError>>),
    /// A task retrying the publish (see [`Publisher::with_retry`]).
    Retrying(tokio::task::JoinHandle<Result<u64, PublishError>>),
}

impl Future for PublishConfirm {
    type Output = Result<u64, PublishError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut self.inner {
            Inner::Direct(rx) => Pin::new(rx)
                .poll(cx)
                .map(|r| r.unwrap_or(Err(PublishError::ConnectionLost))),
            Inner::Retrying(task) => Pin::new(task)
                .poll(cx)
                .map(|r| r.unwrap_or(Err(PublishError::ConnectionLost))),
        }
    }
}

/// Awaits a publish's outcome and retries it while the policy, the budget and the breaker
/// allow; returns the final outcome.
async fn retry_loop(
    publisher: Publisher,
    retrier: Arc<Retrier>,
    topic: String,
    payload: Bytes,
    first: PublishConfirm,
) -> Result<u64, PublishError> {
    let mut outcome = first.await;
    let mut attempt = 0;
    loop {
        let error = match outcome {
            Ok(seq) => {
                retrier.lock().1.success();
                return Ok(seq);
            }
            Err(e) => e,
        };
        let now = Instant::now();
        if !retryable(&error) {
            if matches!(error, PublishError::ConnectionLost) {
                retrier.lock().1.failure(now);
            }
            return Err(error);
        }
        {
            let mut state = retrier.lock();
            state.1.failure(now);
            let allowed = attempt < retrier.policy.max_retries && state.1.allow(now).is_ok();
            if !allowed || !state.0.try_begin_retry(now) {
                return Err(error);
            }
        }
        let retry_after = error.retry_after().unwrap_or_default();
        let p = &retrier.policy;
        let delay = full_jitter(p.base, p.cap, attempt, retry_after, &mut rand::rng());
        tokio::time::sleep(delay).await;
        attempt += 1;
        retrier.retries.fetch_add(1, Ordering::Relaxed);
        let sent = publisher.send(&topic, payload.clone()).await;
        outcome = match sent {
            Ok(confirm) => confirm.await,
            Err(_) => Err(PublishError::ConnectionLost),
        };
        retrier.lock().0.end_retry();
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
