//! Ack-based pacing of one subscription: [`AckPacer`] collects the app's acks and the credit
//! they free, and decides when the batch should be sent. Pure bookkeeping, no I/O.
//!
//! The invariant it keeps, with `window` the subscription's window:
//!
//! ```text
//! credit outstanding at the broker + messages buffered or held (unacked) at the client
//!   + acks/credit collected here and not yet sent                                  == window
//! ```
//!
//! Every `Deliver` moves one unit from the broker's credit to the client; every [`AckPacer::ack`]
//! or [`AckPacer::release`] moves it into this pacer; every [`AckPacer::take`] hands it back to the
//! broker as `Credit{n}` (after the matching `Ack{seqs}`). So the client never grants more than
//! `window` in total, and the broker never sends more than the client can buffer.

/// What the caller should do after recording an ack or a release.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Wake {
    /// Nothing: a flush is already due (or the pacer is closed).
    Nothing,
    /// The first unit of a new batch: arm the short flush timer.
    Soon,
    /// The batch reached its threshold: flush now.
    Now,
}

/// One flush: the seqs to ack, then the credit to return.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Batch {
    /// Sequence numbers acked by the app since the last flush (possibly empty, when only
    /// abandoned deliveries freed credit).
    pub acks: Vec<u64>,
    /// Credit to grant back: acked plus abandoned deliveries since the last flush.
    pub credit: u32,
}

/// Collects acks and freed credit of one subscription and paces their sending.
///
/// Bound: at most `window` acks are ever pending here, because each comes from a distinct
/// delivery the broker could only send against credit.
#[derive(Debug)]
pub(crate) struct AckPacer {
    threshold: u32,
    acks: Vec<u64>,
    credit: u32,
    closed: bool,
}

impl AckPacer {
    /// A pacer for a subscription of `window` messages; it asks for a flush when
    /// `max(1, window / 4)` units are pending.
    pub fn new(window: u32) -> Self {
        AckPacer {
            threshold: (window / 4).max(1),
            acks: Vec::new(),
            credit: 0,
            closed: false,
        }
    }

    /// The number of pending units at which [`Wake::Now`] is returned.
    #[cfg(test)]
    pub fn threshold(&self) -> u32 {
        self.threshold
    }

    /// Records that the app acked `seq`; its credit becomes returnable.
    pub fn ack(&mut self, seq: u64) -> Wake {
        if self.closed {
            return Wake::Nothing;
        }
        self.acks.push(seq);
        self.bump()
    }

    /// Records that the app dropped a delivery without acking it: the client no longer holds it,
    /// so its credit becomes returnable, but nothing is acked (the broker redelivers it after the
    /// group's ack timeout).
    pub fn release(&mut self) -> Wake {
        if self.closed {
            return Wake::Nothing;
        }
        self.bump()
    }

    fn bump(&mut self) -> Wake {
        self.credit += 1;
        if self.credit == self.threshold {
            Wake::Now
        } else if self.credit == 1 {
            Wake::Soon
        } else {
            Wake::Nothing
        }
    }

    /// Whether acks or credit are waiting to be sent.
    pub fn has_pending(&self) -> bool {
        self.credit > 0
    }

    /// Takes everything pending, or `None` when nothing is.
    pub fn take(&mut self) -> Option<Batch> {
        if self.credit == 0 {
            return None;
        }
        let credit = std::mem::take(&mut self.credit);
        Some(Batch {
            acks: std::mem::take(&mut self.acks),
            credit,
        })
    }

    /// Closes the pacer (the subscription is closing): later acks are ignored, because the broker
    /// returns every unacked message of a closed subscription to its group anyway.
    pub fn close(&mut self) {
        self.closed = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn threshold_is_a_quarter_of_the_window_at_least_one() {
        assert_eq!(AckPacer::new(100).threshold(), 25);
        assert_eq!(AckPacer::new(3).threshold(), 1);
        assert_eq!(AckPacer::new(1).threshold(), 1);
        assert_eq!(AckPacer::new(0).threshold(), 1);
    }

    #[test]
    fn first_ack_arms_timer_threshold_flushes() {
        let mut p = AckPacer::new(8);
        assert_eq!(p.ack(1), Wake::Soon);
        assert_eq!(p.ack(2), Wake::Now);
        assert_eq!(p.ack(3), Wake::Nothing, "already asked for a flush");
        assert_eq!(
            p.take(),
            Some(Batch {
                acks: vec![1, 2, 3],
                credit: 3
            })
        );
        assert_eq!(p.take(), None);
        assert!(!p.has_pending());
        assert_eq!(p.ack(4), Wake::Soon, "a new batch starts");
    }

    #[test]
    fn window_of_one_flushes_every_ack() {
        let mut p = AckPacer::new(1);
        assert_eq!(p.ack(7), Wake::Now);
        assert_eq!(
            p.take(),
            Some(Batch {
                acks: vec![7],
                credit: 1
            })
        );
        assert_eq!(p.release(), Wake::Now);
        assert_eq!(
            p.take(),
            Some(Batch {
                acks: vec![],
                credit: 1
            })
        );
    }

    #[test]
    fn released_deliveries_return_credit_without_acks() {
        let mut p = AckPacer::new(16);
        p.ack(10);
        p.release();
        p.ack(12);
        assert_eq!(
            p.take(),
            Some(Batch {
                acks: vec![10, 12],
                credit: 3
            })
        );
    }

    #[test]
    fn closed_pacer_ignores_acks() {
        let mut p = AckPacer::new(4);
        p.ack(1);
        p.close();
        assert_eq!(p.ack(2), Wake::Nothing);
        assert_eq!(p.release(), Wake::Nothing);
        assert_eq!(
            p.take(),
            Some(Batch {
                acks: vec![1],
                credit: 1
            })
        );
        assert_eq!(p.take(), None);
    }

    /// Simulates a broker that spends credit and a client that acks, and checks that the
    /// total never exceeds the window whatever the interleaving.
    #[test]
    fn credit_plus_held_never_exceeds_window() {
        let window = 10u32;
        let mut p = AckPacer::new(window);
        let mut broker_credit = window;
        let mut held: Vec<u64> = Vec::new();
        let mut next_seq = 0u64;
        // A fixed pseudo-random schedule of steps.
        let mut x: u32 = 12345;
        for _ in 0..10_000 {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
            match (x >> 16) % 4 {
                0 | 1 if broker_credit > 0 => {
                    broker_credit -= 1;
                    held.push(next_seq);
                    next_seq += 1;
                }
                2 if !held.is_empty() => {
                    let seq = held.remove(0);
                    if matches!((x >> 8) % 5, 0) {
                        p.release();
                    } else {
                        p.ack(seq);
                    }
                }
                _ => {
                    if let Some(b) = p.take() {
                        broker_credit += b.credit;
                    }
                }
            }
            let pending = p.credit;
            assert_eq!(broker_credit + held.len() as u32 + pending, window);
        }
    }
}
