//! The `block` overflow policy: publishes that do not fit wait in the topic's bounded parking
//! queue until acks free room, so their confirms are paced by the consumers.
//!
//! Bounds: at most `max_blocked_publishes` parked (a publish past it is refused with
//! `TopicFull` naming that limit), each for at most `max_block_ms` (then refused with
//! `TopicFull` naming `max_block_ms` and a drain-based retry hint). Parking is FIFO: while any
//! publish is parked, new ones park behind it even if they would fit. Parked publishes do not
//! count against their connection's `max_unconfirmed`, so a blocked topic never stops the
//! connection's other topics.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};
use weir_protocol::{Limit, RejectReason};

use super::writer::Append;
use super::{lock, AppendError, Refusal, Topic, TopicState};
use crate::admission::budget::MemoryPermit;

/// A publish waiting for room.
pub(super) struct Parked {
    pub(super) payload: Bytes,
    pub(super) reply: oneshot::Sender<Result<u64, AppendError>>,
    pub(super) deadline: Instant,
    /// The payload's share of the memory budget: parked payloads are held memory too.
    pub(super) permit: MemoryPermit,
}

/// A bounded FIFO of parked items: the parked publishes of one topic, oldest first, at most
/// `capacity` (`max_blocked_publishes`). Every item leaves exactly once — unparked, expired or
/// drained. Not synchronised itself: it lives under its topic's lock (and under a loom mutex in
/// the model tests).
#[derive(Debug)]
pub(crate) struct ParkingQueue<T> {
    items: VecDeque<T>,
    capacity: usize,
}

impl<T> ParkingQueue<T> {
    /// An empty queue holding at most `capacity` items.
    pub(crate) fn new(capacity: usize) -> ParkingQueue<T> {
        ParkingQueue {
            items: VecDeque::new(),
            capacity,
        }
    }

    /// Parks `item` at the back; returns it when the queue is full. `Ok(true)` when the queue
    /// was empty before (its earliest deadline changed).
    pub(crate) fn park(&mut self, item: T) -> Result<bool, T> {
        if self.items.len() >= self.capacity {
            return Err(item);
        }
        self.items.push_back(item);
        Ok(self.items.len() == 1)
    }

    /// The oldest item.
    pub(crate) fn front(&self) -> Option<&T> {
        self.items.front()
    }

    /// Takes the oldest item if `ready` says so.
    pub(crate) fn pop_front_if(&mut self, ready: impl FnOnce(&T) -> bool) -> Option<T> {
        if ready(self.items.front()?) {
            return self.items.pop_front();
        }
        None
    }

    /// Puts back, first, an item just taken that could not be handed on (never grows the queue
    /// past what it held before the take).
    pub(crate) fn requeue_front(&mut self, item: T) {
        self.items.push_front(item);
    }

    /// Takes every item, oldest first.
    pub(crate) fn drain(&mut self) -> Vec<T> {
        self.items.drain(..).collect()
    }

    /// Items parked now.
    pub(crate) fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether nothing is parked.
    pub(crate) fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
}

impl Topic {
    /// Parks a publish that does not fit now. Returns it back when the parking queue is full
    /// (or the broker is shutting down).
    pub(super) fn park(&self, st: &mut TopicState, parked: Parked) -> Result<(), Parked> {
        if self.closing.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(parked);
        }
        let was_empty = st.parked.park(parked)?;
        self.metrics.parked.add(1);
        if was_empty {
            // The writer times parked publishes out; it must learn the new earliest deadline.
            self.wake_writer.notify_one();
        }
        Ok(())
    }

    /// The refusal for a publish the parking queue cannot take.
    pub(super) fn parking_full(&self, st: &TopicState, len: u64, now: Instant) -> AppendError {
        let limit = Limit::new(
            "max_blocked_publishes",
            u64::from(self.config.max_blocked_publishes),
        );
        self.refusal(
            RejectReason::TopicFull,
            limit,
            Some(self.retry_after(st, len, now)),
        )
    }

    /// Moves parked publishes that now fit into the writer's queue, oldest first, stopping at
    /// the first that does not fit (FIFO) or when the writer's queue is full (the next commit
    /// calls this again).
    pub(super) fn unpark(&self, st: &mut TopicState, appends: &mpsc::Sender<Append>) {
        while let Some(front) = st.parked.front() {
            let len = front.payload.len() as u64;
            if self.limit_exceeded(st, len).is_some() {
                return;
            }
            let Some(p) = st.parked.pop_front_if(|_| true) else {
                return;
            };
            match appends.try_send(Append {
                payload: p.payload,
                reply: p.reply,
                permit: p.permit,
            }) {
                Ok(()) => {
                    st.pending_count += 1;
                    st.pending_bytes += len;
                    self.admission.queued(1);
                }
                Err(e) => {
                    let Append {
                        payload,
                        reply,
                        permit,
                    } = e.into_inner();
                    st.parked.requeue_front(Parked {
                        payload,
                        reply,
                        permit,
                        deadline: p.deadline,
                    });
                    return;
                }
            }
        }
    }

    /// Refuses every parked publish whose `max_block_ms` has passed.
    pub(super) fn expire_parked(&self, now: Instant) {
        let mut st = lock(&self.state);
        while let Some(p) = st.parked.pop_front_if(|p| p.deadline <= now) {
            let limit = Limit::new("max_block_ms", self.config.max_block_ms);
            let retry = self.retry_after(&st, p.payload.len() as u64, now);
            let _ = p.reply.send(Err(self.refusal(
                RejectReason::TopicFull,
                limit,
                Some(retry),
            )));
        }
    }

    /// Refuses every parked publish with `reason` (the broker is shutting down); publishes
    /// that would park from now on are refused the same way.
    pub fn refuse_parked(&self, reason: RejectReason) {
        self.closing
            .store(true, std::sync::atomic::Ordering::Relaxed);
        let parked: Vec<Parked> = lock(&self.state).parked.drain();
        for p in parked {
            let limit = Limit::new("max_block_ms", self.config.max_block_ms);
            let _ = p.reply.send(Err(self.refusal(reason, limit, Some(1_000))));
        }
    }

    /// The earliest parked deadline, if any publish is parked.
    pub(super) fn next_park_deadline(&self) -> Option<Instant> {
        lock(&self.state).parked.front().map(|p| p.deadline)
    }

    /// How long a publish may stay parked.
    pub(super) fn max_block(&self) -> Duration {
        Duration::from_millis(self.config.max_block_ms)
    }

    /// A refusal, counted for the topic and the broker.
    pub(super) fn refusal(
        &self,
        reason: RejectReason,
        limit: Limit,
        retry_after_ms: Option<u64>,
    ) -> AppendError {
        self.counters.rejected.add(1);
        self.metrics.refused(reason);
        let refusal = Refusal {
            reason,
            limit,
            retry_after_ms,
        };
        self.admission.log_refusal(&self.config.name, &refusal);
        AppendError::Refused(refusal)
    }
}

#[cfg(all(test, not(weir_loom)))]
mod tests {
    use super::ParkingQueue;

    #[test]
    fn bounded_fifo_where_every_item_leaves_once() {
        let mut q = ParkingQueue::new(2);
        assert_eq!(q.park(1), Ok(true));
        assert_eq!(q.park(2), Ok(false));
        assert_eq!(q.park(3), Err(3));
        assert_eq!(q.pop_front_if(|i| *i > 1), None);
        assert_eq!(q.pop_front_if(|_| true), Some(1));
        q.requeue_front(1);
        assert_eq!(q.drain(), vec![1, 2]);
        assert!(q.is_empty());
    }
}
