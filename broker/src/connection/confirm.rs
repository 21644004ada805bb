//! Publishes their topic accepted, waiting for their commit: the futures of their answers.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use weir_protocol::{ErrorCode, Frame, PublishOk};

use super::answers::{error, rejected};
use crate::topic::{AppendError, Confirm, RunConfirm, RunOutcome};

/// Accepted publishes waiting for their commit: one publish, or a run of a batch.
pub(super) struct PendingConfirm {
    /// The (first) publish's request id.
    pub(super) id: u64,
    /// Its topic's answer.
    pub(super) waiting: Waiting,
    /// When its frame was read (for the publish→confirm histogram).
    pub(super) received: Instant,
}

/// What a [`PendingConfirm`] waits for.
pub(super) enum Waiting {
    /// One publish's sequence.
    One(Confirm),
    /// One duplicate publish's original's sequence (answered with `duplicate: true`).
    Duplicate(Confirm),
    /// A run of `count` consecutive publishes of a batch.
    Run { count: usize, confirm: RunConfirm },
}

impl PendingConfirm {
    /// How many publishes it answers.
    pub(super) fn count(&self) -> usize {
        match &self.waiting {
            Waiting::One(_) | Waiting::Duplicate(_) => 1,
            Waiting::Run { count, .. } => *count,
        }
    }
}

/// The answer of a [`PendingConfirm`].
pub(super) enum Answer {
    /// One publish's answer frame.
    One(Frame),
    /// A run's: the publishes from `first_id` on, `count` of them, and what became of them.
    Run {
        first_id: u64,
        count: usize,
        outcome: RunOutcome,
    },
}

impl Future for PendingConfirm {
    /// The answer, and when the publish was read.
    type Output = (Answer, Instant);

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<(Answer, Instant)> {
        let (id, received) = (self.id, self.received);
        let duplicate = matches!(self.waiting, Waiting::Duplicate(_));
        let answer = match &mut self.waiting {
            Waiting::One(confirm) | Waiting::Duplicate(confirm) => {
                Pin::new(confirm).poll(cx).map(|result| {
                    Answer::One(match result {
                        Ok(Ok(seq)) => Frame::PublishOk(PublishOk { duplicate, id, seq }),
                        Ok(Err(e)) => failure(id, e),
                        Err(_) => writer_stopped(id),
                    })
                })
            }
            Waiting::Run { count, confirm } => {
                let count = *count;
                Pin::new(confirm).poll(cx).map(|result| Answer::Run {
                    first_id: id,
                    count,
                    outcome: result.unwrap_or_else(|_| RunOutcome {
                        first_seq: 0,
                        stored: 0,
                        refused: Some(AppendError::Storage("topic writer stopped".into())),
                    }),
                })
            }
        };
        answer.map(|answer| (answer, received))
    }
}

/// The answer to publish `id` the topic did not store: refused, or failed.
pub(super) fn failure(id: u64, e: AppendError) -> Frame {
    match e {
        AppendError::Refused(r) => rejected(id, r),
        AppendError::Storage(message) => error(id, ErrorCode::Internal, message),
        e @ AppendError::StorageFailed(_) => error(id, ErrorCode::StorageFailed, e.to_string()),
    }
}

fn writer_stopped(id: u64) -> Frame {
    error(id, ErrorCode::Internal, "topic writer stopped")
}
