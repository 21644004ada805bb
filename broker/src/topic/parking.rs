//! The `block` overflow policy: publishes that do not fit wait in the topic's bounded parking
//! queue until acks free room, so their confirms are paced by the consumers.
//!
//! Bounds: at most `max_blocked_publishes` parked (a publish past it is refused with
//! `TopicFull` naming that limit), each for at most `max_block_ms` (then refused with
//! `TopicFull` naming `max_block_ms` and a drain-based retry hint). Parking is FIFO: while any
//! publish is parked, new ones park behind it even if they would fit. Parked publishes do not
//! count against their connection's `max_unconfirmed`, so a blocked topic never stops the
//! connection's other topics.

use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};
use weir_protocol::{Limit, RejectReason};

use super::writer::Append;
use super::{lock, AppendError, Topic, TopicState};
use crate::admission::budget::MemoryPermit;
use crate::admission::parking::ParkingLot;
use crate::refusal::Refusal;
use crate::storage::log::Message;

/// A publish waiting for room.
pub(super) struct Parked {
    /// Its headers and payload.
    pub(super) message: Message,
    pub(super) reply: oneshot::Sender<Result<u64, AppendError>>,
    pub(super) deadline: Instant,
    /// The payload's share of the memory budget: parked payloads are held memory too.
    pub(super) permit: MemoryPermit,
}

/// The parked publishes of one topic: a [`ParkingLot`] bounded by `max_blocked_publishes`.
pub(super) type ParkingQueue = ParkingLot<Parked>;

impl Topic {
    /// Parks a publish that does not fit now. Returns it back when the parking queue is full
    /// (or the broker is shutting down).
    #[allow(clippy::result_large_err)] // `Err` hands the publish back to its caller, unmoved.
    pub(super) fn park(&self, st: &mut TopicState, parked: Parked) -> Result<(), Parked> {
        if self.closing.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(parked);
        }
        let deadline = parked.deadline;
        let ticket = st.parked.park(parked, deadline).map_err(|full| full.0)?;
        self.metrics.parked.add(1);
        if ticket.is_earliest() {
            // The writer times parked publishes out; it must learn the new earliest deadline.
            self.wake_writer.notify_one();
        }
        Ok(())
    }

    /// The refusal for a publish the parking queue cannot take.
    pub(super) fn parking_full(&self, st: &mut TopicState, len: u64, now: Instant) -> AppendError {
        let limit = Limit::new(
            "max_blocked_publishes",
            u64::from(self.settings().max_blocked_publishes),
        );
        let retry = self.retry_after(st, len, now);
        self.full(st, limit, retry)
    }

    /// Moves parked publishes that now fit into the writer's queue, oldest first, stopping at
    /// the first that does not fit (FIFO) or when the writer's queue is full (the next commit
    /// calls this again).
    #[allow(clippy::result_large_err)] // the closure's `Err` hands the publish back, unmoved.
    pub(super) fn unpark(&self, st: &mut TopicState, appends: &mpsc::Sender<Append>) {
        loop {
            let view: &TopicState = st;
            // Hand the oldest to the writer if it fits; otherwise it stays first, deadline kept.
            let handed = view.parked.unpark_next_with(|p| {
                let len = p.message.size();
                if self.limit_exceeded(view, len).is_some() {
                    return Err(p);
                }
                let deadline = p.deadline;
                let append = Append::One {
                    message: p.message,
                    reply: p.reply,
                    permit: p.permit,
                };
                appends.try_send(append).map(|()| len).map_err(|e| {
                    let Append::One {
                        message,
                        reply,
                        permit,
                    } = e.into_inner()
                    else {
                        unreachable!("an unparked publish is handed over alone")
                    };
                    Parked {
                        message,
                        reply,
                        permit,
                        deadline,
                    }
                })
            });
            let Some(len) = handed else { return };
            st.pending_count += 1;
            st.pending_bytes += len;
            self.admission.queued(1);
        }
    }

    /// Refuses every parked publish whose `max_block_ms` has passed.
    pub(super) fn expire_parked(&self, now: Instant) {
        let mut st = lock(&self.state);
        let expired = st.parked.expire(now);
        for p in expired {
            st.forget_pending(&p.message);
            let limit = Limit::new("max_block_ms", self.settings().max_block_ms);
            let retry = self.retry_after(&mut st, p.message.size(), now);
            let _ = p.reply.send(Err(self.full(&st, limit, retry)));
        }
    }

    /// Refuses every parked publish with `reason` (the broker is shutting down); publishes
    /// that would park from now on are refused the same way.
    pub fn refuse_parked(&self, reason: RejectReason) {
        self.closing
            .store(true, std::sync::atomic::Ordering::Relaxed);
        let parked: Vec<Parked> = {
            let mut st = lock(&self.state);
            let parked = st.parked.drain();
            parked.iter().for_each(|p| st.forget_pending(&p.message));
            parked
        };
        for p in parked {
            let limit = Limit::new("max_block_ms", self.settings().max_block_ms);
            let _ = p.reply.send(Err(self.refusal(reason, limit, Some(1_000))));
        }
    }

    /// The earliest parked deadline, if any publish is parked.
    pub(super) fn next_park_deadline(&self) -> Option<Instant> {
        lock(&self.state).parked.next_deadline()
    }

    /// How long a publish may stay parked.
    pub(super) fn max_block(&self) -> Duration {
        Duration::from_millis(self.settings().max_block_ms)
    }

    /// A `TopicFull` refusal at `limit`, worth retrying after `retry_after_ms`, naming the
    /// group that holds the topic's oldest unacked message (if one does); counted.
    pub(super) fn full(&self, st: &TopicState, limit: Limit, retry_after_ms: u64) -> AppendError {
        let mut refusal = Refusal::new(RejectReason::TopicFull, limit, Some(retry_after_ms));
        refusal.held_by = st.holder();
        self.refused(refusal)
    }

    /// A refusal, counted for the topic and the broker.
    pub(super) fn refusal(
        &self,
        reason: RejectReason,
        limit: Limit,
        retry_after_ms: Option<u64>,
    ) -> AppendError {
        self.refused(Refusal::new(reason, limit, retry_after_ms))
    }

    /// The same refusal of `n` messages (the rest of a batch), counted once per message.
    pub(super) fn refusal_of(
        &self,
        n: u64,
        reason: RejectReason,
        limit: Limit,
        retry_after_ms: Option<u64>,
    ) -> AppendError {
        let refused = self.refusal(reason, limit, retry_after_ms);
        for _ in 1..n {
            self.counted_again(&refused);
        }
        refused
    }

    /// `e` once more, counted again when it is a refusal (the same refusal of another message).
    pub(super) fn counted_again(&self, e: &AppendError) -> AppendError {
        if let AppendError::Refused(r) = e {
            self.counters.rejected.add(1);
            self.metrics.refused(r.reason);
        }
        e.clone()
    }

    fn refused(&self, refusal: Refusal) -> AppendError {
        self.counters.rejected.add(1);
        self.metrics.refused(refusal.reason);
        self.admission.log_refusal(&self.name, &refusal);
        self.note_recent(&refusal);
        AppendError::Refused(refusal)
    }
}
