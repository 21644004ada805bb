//! [`PublishConfirm`]: the future of one publish's outcome.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::sync::oneshot;

use crate::error::PublishError;

/// The outcome of one sent publish: a future resolving to the message's sequence number once the
/// broker confirms it durable, or to the [`PublishError`] that refused it.
///
/// Dropping it does not cancel the publish (it was sent) and does not hold the window slot (the
/// slot is freed when the broker answers). With [`crate::Publisher::with_retry`], it resolves to
/// the outcome of the last attempt, and dropping it does not stop the retries either.
#[derive(Debug)]
#[must_use = "a publish may be refused; await the confirm to find out"]
pub struct PublishConfirm {
    inner: Inner,
}

impl PublishConfirm {
    /// The confirm of one publish, answered by the connection task through `rx`.
    pub(crate) fn direct(rx: oneshot::Receiver<Result<u64, PublishError>>) -> Self {
        PublishConfirm {
            inner: Inner::Direct(rx),
        }
    }

    /// The confirm of a publish that a task retries.
    pub(crate) fn retrying(task: tokio::task::JoinHandle<Result<u64, PublishError>>) -> Self {
        PublishConfirm {
            inner: Inner::Retrying(task),
        }
    }
}

/// Where a confirm comes from.
#[derive(Debug)]
enum Inner {
    /// The broker's answer to the one publish.
    Direct(oneshot::Receiver<Result<u64, PublishError>>),
    /// A task retrying the publish (see [`crate::Publisher::with_retry`]).
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
