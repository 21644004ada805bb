//! Ack-based pacing of one subscription: [`AckPacer`] collects how the app finished its
//! deliveries — acked, nacked, terminated or dropped — plus the deliveries it is still working
//! on, and decides when the batch should be sent. Pure bookkeeping, no I/O: [`Batch::into_frames`]
//! turns a batch into the frames the connection task writes.
//!
//! The invariant it keeps, with `window` the subscription's window:
//!
//! ```text
//! credit outstanding at the broker + messages buffered or held (unfinished) at the client
//!   + finished deliveries collected here and not yet sent                        == window
//! ```
//!
//! Every `Deliver` moves one unit from the broker's credit to the client; every
//! [`AckPacer::ack`], [`AckPacer::nack`], [`AckPacer::term`] or [`AckPacer::release`] moves it
//! into this pacer; every [`AckPacer::take`] hands it back to the broker as `Credit{n}` (after the
//! matching `Ack`/`Nack`/`Term` frames). So the client never grants more than `window` in total,
//! and the broker never sends more than the client can buffer. [`AckPacer::progress`] takes no
//! unit: the delivery stays with the app.
//!
//! However many deliveries a batch finishes, it costs one frame per kind (one `Nack` per distinct
//! delay, one `Term` per distinct reason) plus one `Credit`, each frame carrying up to
//! [`MAX_SEQS_PER_FRAME`] sequence numbers.

use std::collections::{BTreeMap, BTreeSet};

use weir_protocol::{seq_ranges, Ack, Credit, Frame, Nack, Progress, Settle, Settlement, Term};

/// Most sequence numbers sent in one `Ack`, `Nack`, `Term` or `Progress` frame (a larger batch
/// is split), keeping the frame far below any frame-size limit.
pub(crate) const MAX_SEQS_PER_FRAME: usize = 16 * 1024;

/// Longest `Term` reason sent, in bytes; a longer one is cut at a character boundary, so one
/// reason can never make a frame too large for the broker.
pub(crate) const MAX_TERM_REASON_BYTES: usize = 1024;

/// What the caller should do after recording something.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Wake {
    /// Nothing: a flush is already due (or the pacer is closed).
    Nothing,
    /// The first item of a new batch: arm the short flush timer.
    Soon,
    /// The batch reached its threshold: flush now.
    Now,
}

/// One flush: what the app did with its deliveries since the last one, and the credit that
/// frees.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Batch {
    /// Deliveries whose ack deadline should restart; sent first, so a progress never arrives
    /// after the same delivery's ack.
    pub progress: BTreeSet<u64>,
    /// Deliveries acked.
    pub acks: Vec<u64>,
    /// Deliveries nacked, by redelivery delay in milliseconds.
    pub nacks: BTreeMap<u64, Vec<u64>>,
    /// Deliveries terminated (to be dead-lettered), by reason.
    pub terms: BTreeMap<String, Vec<u64>>,
    /// Credit to grant back: one per delivery acked, nacked, terminated or dropped.
    pub credit: u32,
}

impl Batch {
    fn is_empty(&self) -> bool {
        self.credit == 0 && self.progress.is_empty()
    }

    /// The frames of this batch for subscription `sub`, in sending order: `Progress`, `Ack`,
    /// `Nack` (one per delay), `Term` (one per reason), each split at [`MAX_SEQS_PER_FRAME`]
    /// sequence numbers — or, with `ranges` (protocol v5), one `Settle` of ranges of
    /// consecutive sequences each — then one `Credit` if any credit is returned.
    pub fn into_frames(self, sub: u64, ranges: bool) -> Vec<Frame> {
        if ranges {
            return self.into_settles(sub);
        }
        let mut frames = Vec::new();
        let progress = self.progress.into_iter().collect();
        for seqs in split(progress) {
            frames.push(Frame::Progress(Progress { sub, seqs }));
        }
        for seqs in split(self.acks) {
            frames.push(Frame::Ack(Ack { sub, seqs }));
        }
        for (delay_ms, seqs) in self.nacks {
            for seqs in split(seqs) {
                frames.push(Frame::Nack(Nack {
                    sub,
                    seqs,
                    delay_ms,
                }));
            }
        }
        for (reason, seqs) in self.terms {
            for seqs in split(seqs) {
                frames.push(Frame::Term(Term {
                    sub,
                    seqs,
                    reason: reason.clone(),
                }));
            }
        }
        if self.credit > 0 {
            frames.push(Frame::Credit(Credit {
                sub,
                n: self.credit,
            }));
        }
        frames
    }
}

impl Batch {
    /// [`Batch::into_frames`] with ranges: `Settle` frames in the same order.
    fn into_settles(self, sub: u64) -> Vec<Frame> {
        let mut frames = Vec::new();
        let mut settle = |mut seqs: Vec<u64>, how: Settlement| {
            let ranges = seq_ranges(&mut seqs);
            for ranges in ranges.chunks(MAX_SEQS_PER_FRAME) {
                frames.push(Frame::Settle(Settle {
                    sub,
                    ranges: ranges.to_vec(),
                    how: how.clone(),
                }));
            }
        };
        settle(self.progress.into_iter().collect(), Settlement::Progress);
        settle(self.acks, Settlement::Ack);
        for (delay_ms, seqs) in self.nacks {
            settle(seqs, Settlement::Nack { delay_ms });
        }
        for (reason, seqs) in self.terms {
            settle(seqs, Settlement::Term { reason });
        }
        if self.credit > 0 {
            frames.push(Frame::Credit(Credit {
                sub,
                n: self.credit,
            }));
        }
        frames
    }
}

/// `seqs` in pieces of at most [`MAX_SEQS_PER_FRAME`] (none when empty).
fn split(seqs: Vec<u64>) -> Vec<Vec<u64>> {
    if seqs.len() <= MAX_SEQS_PER_FRAME {
        return if seqs.is_empty() { vec![] } else { vec![seqs] };
    }
    seqs.chunks(MAX_SEQS_PER_FRAME)
        .map(<[u64]>::to_vec)
        .collect()
}

/// `reason` cut to at most [`MAX_TERM_REASON_BYTES`] bytes, at a character boundary.
fn bounded_reason(mut reason: String) -> String {
    if reason.len() > MAX_TERM_REASON_BYTES {
        let mut end = MAX_TERM_REASON_BYTES;
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        reason.truncate(end);
    }
    reason
}

/// Collects how the app finished the deliveries of one subscription, and the credit that frees,
/// and paces their sending.
///
/// Bound: at most `window` finished deliveries are ever pending here, because each comes from a
/// distinct delivery the broker could only send against credit; the progress set holds each
/// sequence once, and only of deliveries held or finished since the last flush, so at most
/// `window` too.
#[derive(Debug)]
pub(crate) struct AckPacer {
    threshold: u32,
    pending: Batch,
    closed: bool,
    /// The connection this subscription's deliveries come from, counted from 0: each reconnect
    /// starts a new epoch, and deliveries of an older one can no longer be acked.
    epoch: u64,
}

impl AckPacer {
    /// A pacer for a subscription of `window` messages; it asks for a flush when
    /// `max(1, window / 4)` deliveries are finished and unsent.
    pub fn new(window: u32) -> Self {
        AckPacer {
            threshold: (window / 4).max(1),
            pending: Batch::default(),
            closed: false,
            epoch: 0,
        }
    }

    /// The epoch of the live connection (see [`AckPacer::renew`]).
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The subscription moves to a new connection: starts a new epoch and takes what was
    /// pending. Its acks, nacks, terms and progress concern the old connection, where the
    /// broker has already returned those deliveries to the group, so they are dropped; its
    /// credit is kept and returned: the subscription opens on the new connection with it.
    /// Returns the new epoch and that credit.
    pub fn renew(&mut self) -> (u64, u32) {
        self.epoch += 1;
        let credit = std::mem::take(&mut self.pending).credit;
        (self.epoch, credit)
    }

    /// The number of pending units at which [`Wake::Now`] is returned.
    #[cfg(test)]
    pub fn threshold(&self) -> u32 {
        self.threshold
    }

    /// Records that the app acked `seq`; its credit becomes returnable.
    pub fn ack(&mut self, seq: u64) -> Wake {
        self.finish(|b| b.acks.push(seq))
    }

    /// Records that the app nacked `seq`, to be redelivered after `delay_ms`; its credit becomes
    /// returnable.
    pub fn nack(&mut self, seq: u64, delay_ms: u64) -> Wake {
        self.finish(|b| b.nacks.entry(delay_ms).or_default().push(seq))
    }

    /// Records that the app terminated `seq` (dead-letter it now) for `reason`, cut to
    /// [`MAX_TERM_REASON_BYTES`]; its credit becomes returnable.
    pub fn term(&mut self, seq: u64, reason: String) -> Wake {
        let reason = bounded_reason(reason);
        self.finish(|b| b.terms.entry(reason).or_default().push(seq))
    }

    /// Records that the app dropped a delivery without finishing it: the client no longer holds
    /// it, so its credit becomes returnable, but nothing is acked (the broker redelivers it after
    /// the group's ack timeout).
    pub fn release(&mut self) -> Wake {
        self.finish(|_| {})
    }

    /// Records that the app is still working on `seq`: its ack deadline should restart. Takes no
    /// credit (the delivery stays with the app) and never asks for an immediate flush; repeated
    /// calls before the flush send `seq` once.
    pub fn progress(&mut self, seq: u64) -> Wake {
        if self.closed {
            return Wake::Nothing;
        }
        let was_empty = self.pending.is_empty();
        self.pending.progress.insert(seq);
        if was_empty {
            Wake::Soon
        } else {
            Wake::Nothing
        }
    }

    /// Records one delivery finished (`record` says how) and its credit.
    fn finish(&mut self, record: impl FnOnce(&mut Batch)) -> Wake {
        if self.closed {
            return Wake::Nothing;
        }
        let was_empty = self.pending.is_empty();
        record(&mut self.pending);
        self.pending.credit += 1;
        if self.pending.credit == self.threshold {
            Wake::Now
        } else if was_empty {
            Wake::Soon
        } else {
            Wake::Nothing
        }
    }

    /// Whether anything is waiting to be sent.
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Takes everything pending, or `None` when nothing is.
    pub fn take(&mut self) -> Option<Batch> {
        if self.pending.is_empty() {
            return None;
        }
        Some(std::mem::take(&mut self.pending))
    }

    /// Closes the pacer (the subscription is closing): later acks, nacks, terms and progress are
    /// ignored, because the broker returns every unacked message of a closed subscription to
    /// its group anyway.
    pub fn close(&mut self) {
        self.closed = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acked(acks: Vec<u64>, credit: u32) -> Batch {
        Batch {
            acks,
            credit,
            ..Batch::default()
        }
    }

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
        assert_eq!(p.take(), Some(acked(vec![1, 2, 3], 3)));
        assert_eq!(p.take(), None);
        assert!(!p.has_pending());
        assert_eq!(p.ack(4), Wake::Soon, "a new batch starts");
    }

    #[test]
    fn renewing_keeps_the_credit_drops_the_rest_and_starts_a_new_epoch() {
        let mut p = AckPacer::new(8);
        p.ack(1);
        p.nack(2, 10);
        p.term(3, "bad".into());
        p.progress(4);
        p.release();
        assert_eq!(p.epoch(), 0);
        assert_eq!(
            p.renew(),
            (1, 4),
            "ack, nack, term and release each held one unit"
        );
        assert!(!p.has_pending(), "nothing of the old connection is sent");
        assert_eq!(p.take(), None);
        assert_eq!(p.renew(), (2, 0));
        assert_eq!(p.ack(5), Wake::Soon, "a new batch starts in the new epoch");
    }

    #[test]
    fn window_of_one_flushes_every_ack() {
        let mut p = AckPacer::new(1);
        assert_eq!(p.ack(7), Wake::Now);
        assert_eq!(p.take(), Some(acked(vec![7], 1)));
        assert_eq!(p.release(), Wake::Now);
        assert_eq!(p.take(), Some(acked(vec![], 1)));
    }

    #[test]
    fn released_deliveries_return_credit_without_acks() {
        let mut p = AckPacer::new(16);
        p.ack(10);
        p.release();
        p.ack(12);
        assert_eq!(p.take(), Some(acked(vec![10, 12], 3)));
    }

    #[test]
    fn nacks_and_terms_return_credit_exactly_like_acks() {
        let mut p = AckPacer::new(12);
        assert_eq!(p.nack(1, 500), Wake::Soon);
        assert_eq!(p.term(2, "bad input".into()), Wake::Nothing);
        assert_eq!(p.ack(3), Wake::Now, "the threshold counts every finish");
        let batch = p.take().unwrap();
        assert_eq!(batch.credit, 3);
        assert_eq!(batch.acks, vec![3]);
        assert_eq!(batch.nacks, BTreeMap::from([(500, vec![1])]));
        assert_eq!(
            batch.terms,
            BTreeMap::from([("bad input".to_owned(), vec![2])])
        );
    }

    #[test]
    fn with_ranges_a_batch_settles_runs_of_consecutive_seqs_in_the_same_order() {
        let mut p = AckPacer::new(100);
        for seq in [3, 1, 2, 7] {
            p.ack(seq);
        }
        p.nack(9, 50);
        p.term(11, "bad".into());
        p.progress(20);
        let frames = p.take().unwrap().into_frames(4, true);
        let settle = |ranges: Vec<(u64, u64)>, how| {
            Frame::Settle(Settle {
                sub: 4,
                ranges,
                how,
            })
        };
        assert_eq!(
            frames,
            vec![
                settle(vec![(20, 20)], Settlement::Progress),
                settle(vec![(1, 3), (7, 7)], Settlement::Ack),
                settle(vec![(9, 9)], Settlement::Nack { delay_ms: 50 }),
                settle(
                    vec![(11, 11)],
                    Settlement::Term {
                        reason: "bad".into()
                    }
                ),
                Frame::Credit(Credit { sub: 4, n: 6 }),
            ]
        );
    }

    #[test]
    fn progress_takes_no_credit_is_sent_once_and_never_forces_a_flush() {
        let mut p = AckPacer::new(1);
        assert_eq!(p.progress(5), Wake::Soon);
        assert_eq!(p.progress(5), Wake::Nothing);
        assert_eq!(p.progress(4), Wake::Nothing);
        assert!(p.has_pending());
        let batch = p.take().unwrap();
        assert_eq!(batch.credit, 0);
        assert_eq!(batch.progress, BTreeSet::from([4, 5]));
        assert_eq!(
            batch.into_frames(9, false),
            vec![Frame::Progress(Progress {
                sub: 9,
                seqs: vec![4, 5]
            })],
            "no Credit frame when nothing returns credit"
        );
        assert_eq!(p.progress(5), Wake::Soon);
        assert_eq!(
            p.ack(5),
            Wake::Now,
            "a finish still flushes at the threshold"
        );
    }

    /// A thousand finished deliveries cost six frames: what makes 100k acks/s affordable.
    #[test]
    fn a_batch_costs_one_frame_per_kind_delay_and_reason() {
        let mut p = AckPacer::new(1024);
        for seq in 0..1000u64 {
            match seq % 10 {
                0..=5 => p.ack(seq),
                6 => p.nack(seq, 100),
                7 => p.nack(seq, 2000),
                8 => p.term(seq, "poison".into()),
                _ => p.progress(seq),
            };
        }
        let frames = p.take().unwrap().into_frames(3, false);
        let names: Vec<&str> = frames.iter().map(Frame::name).collect();
        assert_eq!(
            names,
            ["Progress", "Ack", "Nack", "Nack", "Term", "Credit"],
            "progress first, credit last"
        );
        match (&frames[2], &frames[3], &frames[4], &frames[5]) {
            (Frame::Nack(a), Frame::Nack(b), Frame::Term(t), Frame::Credit(c)) => {
                assert_eq!((a.delay_ms, a.seqs.len()), (100, 100));
                assert_eq!((b.delay_ms, b.seqs.len()), (2000, 100));
                assert_eq!((t.reason.as_str(), t.seqs.len()), ("poison", 100));
                assert_eq!((c.sub, c.n), (3, 900), "every finish returns one credit");
            }
            other => panic!("unexpected frames {other:?}"),
        }
    }

    #[test]
    fn large_batches_are_split_into_bounded_frames() {
        let batch = Batch {
            acks: (0..MAX_SEQS_PER_FRAME as u64 * 2 + 1).collect(),
            nacks: BTreeMap::from([(7, (0..MAX_SEQS_PER_FRAME as u64 + 1).collect())]),
            credit: 5,
            ..Batch::default()
        };
        let sizes: Vec<(&str, usize)> = batch
            .into_frames(1, false)
            .iter()
            .map(|f| match f {
                Frame::Ack(a) => ("Ack", a.seqs.len()),
                Frame::Nack(n) => ("Nack", n.seqs.len()),
                other => (other.name(), 0),
            })
            .collect();
        assert_eq!(
            sizes,
            [
                ("Ack", MAX_SEQS_PER_FRAME),
                ("Ack", MAX_SEQS_PER_FRAME),
                ("Ack", 1),
                ("Nack", MAX_SEQS_PER_FRAME),
                ("Nack", 1),
                ("Credit", 0),
            ]
        );
    }

    #[test]
    fn term_reasons_are_cut_at_a_character_boundary() {
        let mut p = AckPacer::new(4);
        // 'é' is two bytes: 1023 bytes of 'a' then 'é' straddles the bound.
        let long = format!("{}é tail", "a".repeat(MAX_TERM_REASON_BYTES - 1));
        p.term(1, long);
        let reason = p.take().unwrap().terms.into_keys().next().unwrap();
        assert_eq!(reason, "a".repeat(MAX_TERM_REASON_BYTES - 1));
        assert_eq!(bounded_reason("short".into()), "short");
    }

    #[test]
    fn closed_pacer_ignores_everything_new() {
        let mut p = AckPacer::new(4);
        p.ack(1);
        p.close();
        assert_eq!(p.ack(2), Wake::Nothing);
        assert_eq!(p.nack(3, 10), Wake::Nothing);
        assert_eq!(p.term(4, "x".into()), Wake::Nothing);
        assert_eq!(p.progress(5), Wake::Nothing);
        assert_eq!(p.release(), Wake::Nothing);
        assert_eq!(p.take(), Some(acked(vec![1], 1)));
        assert_eq!(p.take(), None);
    }

    /// Simulates a broker that spends credit and a client that acks, nacks, terminates, drops
    /// and reports progress, and checks that the total never exceeds the window whatever the
    /// interleaving.
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
                    let seq = held[0];
                    match (x >> 8) % 6 {
                        0 => p.release(),
                        1 => p.nack(seq, u64::from(x % 3)),
                        2 => p.term(seq, format!("r{}", x % 2)),
                        3 => p.progress(seq),
                        _ => p.ack(seq),
                    };
                    if (x >> 8) % 6 != 3 {
                        held.remove(0);
                    }
                }
                _ => {
                    if let Some(b) = p.take() {
                        let finished = b.acks.len()
                            + b.nacks.values().map(Vec::len).sum::<usize>()
                            + b.terms.values().map(Vec::len).sum::<usize>();
                        assert!(finished as u32 <= b.credit, "credit covers every finish");
                        broker_credit += b.credit;
                    }
                }
            }
            assert_eq!(broker_credit + held.len() as u32 + p.pending.credit, window);
            assert!(p.pending.progress.len() <= window as usize);
        }
    }
}
