//! A publish its topic accepted, waiting for its commit: the future of its answer.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use weir_protocol::{Frame, PublishOk};

use super::answers::{error, rejected};
use crate::topic::{AppendError, Confirm};
use weir_protocol::ErrorCode;

/// A publish accepted by its topic, waiting for its commit.
pub(super) struct PendingConfirm {
    /// The publish's request id.
    pub(super) id: u64,
    /// Its topic's answer.
    pub(super) confirm: Confirm,
    /// When its `Publish` frame was read (for the publish→confirm histogram).
    pub(super) received: Instant,
}

impl Future for PendingConfirm {
    /// The answer, and when the publish was read.
    type Output = (Frame, Instant);

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<(Frame, Instant)> {
        let (id, received) = (self.id, self.received);
        let answer = Pin::new(&mut self.confirm)
            .poll(cx)
            .map(|result| match result {
                Ok(Ok(seq)) => Frame::PublishOk(PublishOk { id, seq }),
                Ok(Err(AppendError::Refused(r))) => rejected(id, r),
                Ok(Err(AppendError::Storage(message))) => error(id, ErrorCode::Internal, message),
                Ok(Err(e @ AppendError::StorageFailed(_))) => {
                    error(id, ErrorCode::StorageFailed, e.to_string())
                }
                Err(_) => error(id, ErrorCode::Internal, "topic writer stopped"),
            });
        answer.map(|frame| (frame, received))
    }
}
