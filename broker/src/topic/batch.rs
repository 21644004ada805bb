//! The publish path of a `PublishBatch` at the topic: every message passes the same admission
//! as a single publish ([`Topic::admit`]), in order, under one lock; consecutive queued
//! messages go to the writer as one run, stored by one commit and confirmed by one answer.
//!
//! Per message, as for single publishes: a refusal names its own reason, limit and retry
//! hint, and is counted; `block` parks (and once one message is parked, the rest of the batch
//! parks behind it, in order); `drop_oldest` queues. Only runs are coalesced.

use std::time::Instant;

use tokio::sync::oneshot;
use weir_protocol::{Limit, RejectReason};

use super::admit::Decision;
use super::dedup::DedupKey;
use super::parking::Parked;
use super::writer::{Append, RunOutcome};
use super::{lock, AppendError, Confirm, Topic, TopicState};
use crate::admission::budget::MemoryPermit;
use crate::storage::log::{self, Message};

/// The answer to a run of a batch's messages (see [`RunOutcome`]).
pub type RunConfirm = oneshot::Receiver<RunOutcome>;

/// What the topic did with the messages of a batch, in their order.
#[derive(Debug)]
pub enum BatchPart {
    /// `count` consecutive messages queued for one commit; `confirm` answers them together.
    Run {
        /// How many messages.
        count: usize,
        /// Their answer.
        confirm: RunConfirm,
    },
    /// One message parked by the `block` policy (answered as a single publish is).
    Parked(Confirm),
    /// One message refused (counted), or failed.
    Refused(AppendError),
    /// One message duplicating another (nothing stored): the original's sequence, as
    /// [`super::Admitted::Duplicate`] answers it.
    Duplicate(Confirm),
}

/// A run being gathered: its messages, their memory, their bytes.
struct Gathering {
    messages: Vec<Message>,
    permit: MemoryPermit,
    bytes: u64,
}

impl Topic {
    /// Takes a batch's messages in order: each `Ok` (a message with its memory) is admitted as
    /// [`Topic::publish`] admits one; each `Err` (refused before the topic) stays refused.
    /// Returns what became of each, consecutive queued ones as one [`BatchPart::Run`]. Waits
    /// only while the writer's queue (`append_queue`) is full.
    pub async fn publish_batch(
        &self,
        items: Vec<Result<(Message, MemoryPermit), AppendError>>,
    ) -> Vec<BatchPart> {
        let mut parts = Vec::with_capacity(1);
        let mut runs = Vec::new();
        // Counted once here: each further message it refuses is counted again.
        let damaged = self.storage_refusal();
        let mut damaged_first = damaged.clone();
        let now = Instant::now();
        {
            let mut st = lock(&self.state);
            let mut run: Option<Gathering> = None;
            for item in items {
                let item = match (&damaged, item) {
                    (_, Err(e)) => Err(BatchPart::Refused(e)),
                    (Some(e), Ok(_)) => Err(BatchPart::Refused(
                        damaged_first
                            .take()
                            .unwrap_or_else(|| self.counted_again(e)),
                    )),
                    (None, Ok(item)) => self.place(&mut st, item, now),
                };
                match item {
                    Ok((message, permit)) => match &mut run {
                        Some(r) => {
                            r.bytes += message.size();
                            r.messages.push(message);
                            // One connection's permits: all of one budget.
                            let _ = r.permit.merge(permit);
                        }
                        None => {
                            run = Some(Gathering {
                                bytes: message.size(),
                                messages: vec![message],
                                permit,
                            })
                        }
                    },
                    Err(part) => {
                        close_run(&mut run, &mut parts, &mut runs);
                        parts.push(part);
                    }
                }
            }
            close_run(&mut run, &mut parts, &mut runs);
        }
        for (gathered, reply) in runs {
            let (count, bytes) = (gathered.messages.len() as u64, gathered.bytes);
            let append = Append::Run {
                messages: gathered.messages,
                reply,
                permit: gathered.permit,
            };
            if let Err(e) = self.appends.send(append).await {
                self.release(count, bytes);
                let closed = AppendError::Storage("topic is closed".into());
                if let Append::Run {
                    reply, messages, ..
                } = e.0
                {
                    let mut st = lock(&self.state);
                    messages.iter().for_each(|m| st.forget_pending(m));
                    drop(st);
                    let _ = reply.send(RunOutcome {
                        first_seq: 0,
                        stored: 0,
                        refused: Some(closed),
                    });
                }
            }
        }
        parts
    }

    /// Admits one message of a batch under the lock: `Ok` to queue it (counted as pending),
    /// or the part it becomes — parked, or refused.
    fn place(
        &self,
        st: &mut TopicState,
        (message, permit): (Message, MemoryPermit),
        now: Instant,
    ) -> Result<(Message, MemoryPermit), BatchPart> {
        if let Some((bound, value)) = log::exceeded_header_bound(&message.headers) {
            let limit = Limit::new(bound, value);
            let refused = self.refusal(RejectReason::MessageTooLarge, limit, None);
            return Err(BatchPart::Refused(refused));
        }
        let key = DedupKey::of(&message);
        match self.deduplicate(st, key.as_ref()) {
            Ok(None) => {}
            Ok(Some(original)) => return Err(BatchPart::Duplicate(original)),
            Err(e) => return Err(BatchPart::Refused(e)),
        }
        let len = message.size();
        let decision = self.admit(st, len, 0, now);
        if let (Some(key), Ok(_)) = (&key, &decision) {
            st.dedup.pending(key, self.clock.now());
        }
        match decision {
            Ok(Decision::Queue) => Ok((message, permit)),
            Ok(Decision::Park) => {
                let (reply, confirm) = oneshot::channel();
                let parked = Parked {
                    message,
                    reply,
                    deadline: now + self.max_block(),
                    permit,
                };
                Err(match self.park(st, parked) {
                    Ok(()) => BatchPart::Parked(confirm),
                    Err(parked) => {
                        st.forget_pending(&parked.message);
                        BatchPart::Refused(self.parking_full(st, len, now))
                    }
                })
            }
            Err(e) => Err(BatchPart::Refused(e)),
        }
    }
}

/// Ends the run being gathered, if any: its part takes its place in the batch, and it waits
/// to be sent to the writer.
fn close_run(
    run: &mut Option<Gathering>,
    parts: &mut Vec<BatchPart>,
    runs: &mut Vec<(Gathering, oneshot::Sender<RunOutcome>)>,
) {
    if let Some(gathered) = run.take() {
        let (reply, confirm) = oneshot::channel();
        parts.push(BatchPart::Run {
            count: gathered.messages.len(),
            confirm,
        });
        runs.push((gathered, reply));
    }
}
