//! Where every confirmed message ended up: delivered, still stored, evicted by `drop_oldest`, or
//! lost. Pure: the scenario passes what it tracked and what the broker said at the end.
//!
//! - *confirmed*: the sequence numbers of `PublishOk`s the producer received (a [`SeqSet`]).
//! - *delivered*: the sequence numbers the consumer received (any attempt).
//! - *stored*: the range `[next_seq − depth, next_seq)` from the topic's final description. With
//!   one consumer acking in order (as the scenarios do) the stored messages are exactly that
//!   tail; after a full drain (the default) it is empty and the accounting is exact.
//! - *evicted*: the sequence numbers the consumer was told `drop_oldest` evicted before it could
//!   deliver them (gap notices, `ClientError::MessagesDropped`): exact.
//! - *dropped*: the broker's count of messages `drop_oldest` evicted from the topic. Should the
//!   consumer have missed gap notices (it ended early), confirmed messages neither delivered,
//!   stored nor notified are attributed to the evictions not notified, up to that count; only
//!   the rest are lost. (That count also includes evictions of messages already delivered, so
//!   in that fallback `lost` is a lower bound. With the consumer running to the end, and for
//!   `reject` and `block`, where nothing is ever evicted, `lost` is exact.)

use std::ops::Range;

use serde::Serialize;

use super::common::SeqSet;

/// Most lost sequence numbers listed in a report.
const LOST_SAMPLE: usize = 10;

/// The fate of the confirmed messages of one run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Accounting {
    /// Messages confirmed to the producer.
    pub confirmed: u64,
    /// Confirmed and delivered to the consumer.
    pub delivered: u64,
    /// Confirmed, not delivered, and still stored in the topic at the end.
    pub stored: u64,
    /// Confirmed, not delivered, not stored, and named in a gap notice.
    pub evicted_notified: u64,
    /// Confirmed, neither delivered, stored nor notified as evicted.
    pub unaccounted: u64,
    /// The broker's count of messages evicted by `drop_oldest`.
    pub dropped_reported: u64,
    /// Unaccounted messages explained by evictions the consumer was not told about (at most
    /// `dropped_reported − evicted_notified`).
    pub attributed_to_drops: u64,
    /// Unaccounted messages no eviction explains: confirmed, then gone. Must be 0.
    pub lost: u64,
    /// The first lost sequence numbers, for investigation.
    pub lost_sample: Vec<u64>,
    /// Delivered sequence numbers that were never confirmed (publishes whose outcome did not
    /// arrive, or a broker bug).
    pub delivered_not_confirmed: u64,
    /// The stored range used, `[from, to)`.
    pub stored_range: [u64; 2],
    /// False when some sequence numbers could not be tracked (see `SeqSet`), making the
    /// numbers above incomplete.
    pub complete: bool,
}

/// Accounts for every confirmed sequence number; see the module documentation.
pub fn account(
    confirmed: &SeqSet,
    delivered: &SeqSet,
    evicted: &SeqSet,
    stored: Range<u64>,
    dropped_reported: u64,
) -> Accounting {
    let (mut n_delivered, mut n_stored, mut n_evicted, mut unaccounted) = (0u64, 0u64, 0u64, 0u64);
    let mut lost_candidates = Vec::new();
    for seq in confirmed.iter() {
        if delivered.contains(seq) {
            n_delivered += 1;
        } else if stored.contains(&seq) {
            n_stored += 1;
        } else if evicted.contains(seq) {
            n_evicted += 1;
        } else {
            unaccounted += 1;
            if lost_candidates.len() < LOST_SAMPLE {
                lost_candidates.push(seq);
            }
        }
    }
    let attributed = unaccounted.min(dropped_reported.saturating_sub(n_evicted));
    let lost = unaccounted - attributed;
    let delivered_not_confirmed = delivered.iter().filter(|s| !confirmed.contains(*s)).count();
    Accounting {
        confirmed: confirmed.len(),
        delivered: n_delivered,
        stored: n_stored,
        evicted_notified: n_evicted,
        unaccounted,
        dropped_reported,
        attributed_to_drops: attributed,
        lost,
        lost_sample: if lost > 0 {
            lost_candidates
        } else {
            Vec::new()
        },
        delivered_not_confirmed: delivered_not_confirmed as u64,
        stored_range: [stored.start, stored.end],
        complete: confirmed.untracked() == 0
            && delivered.untracked() == 0
            && evicted.untracked() == 0,
    }
}

/// The range of sequence numbers a topic stores, from its depth and next sequence number.
pub fn stored_range(depth: u64, next_seq: u64) -> Range<u64> {
    next_seq.saturating_sub(depth)..next_seq
}

#[cfg(test)]
mod tests {
    use super::*;

    fn none() -> SeqSet {
        SeqSet::new(0)
    }

    fn set(base: u64, seqs: impl IntoIterator<Item = u64>) -> SeqSet {
        let mut s = SeqSet::new(base);
        for q in seqs {
            s.insert(q);
        }
        s
    }

    #[test]
    fn everything_delivered_or_stored_is_not_lost() {
        // Confirmed 0..100; delivered 0..60; the topic still stores 60..100 (depth 40).
        let confirmed = set(0, 0..100);
        let delivered = set(0, 0..60);
        let a = account(&confirmed, &delivered, &none(), stored_range(40, 100), 0);
        assert_eq!(
            (a.confirmed, a.delivered, a.stored, a.unaccounted, a.lost),
            (100, 60, 40, 0, 0)
        );
        assert!(a.complete);
        assert_eq!(a.stored_range, [60, 100]);
    }

    #[test]
    fn a_hole_is_lost_and_sampled() {
        let confirmed = set(0, 0..100);
        let delivered = set(0, (0..50).chain(53..60));
        let a = account(&confirmed, &delivered, &none(), stored_range(40, 100), 0);
        assert_eq!(a.lost, 3);
        assert_eq!(a.lost_sample, vec![50, 51, 52]);
    }

    #[test]
    fn evictions_explain_missing_messages_up_to_their_count() {
        // drop_oldest evicted 0..30 before the consumer saw them.
        let confirmed = set(0, 0..100);
        let delivered = set(0, 30..70);
        let a = account(&confirmed, &delivered, &none(), stored_range(30, 100), 30);
        assert_eq!((a.unaccounted, a.attributed_to_drops, a.lost), (30, 30, 0));
        assert!(a.lost_sample.is_empty());
        // Only 20 evictions reported: 10 are lost.
        let a = account(&confirmed, &delivered, &none(), stored_range(30, 100), 20);
        assert_eq!((a.attributed_to_drops, a.lost), (20, 10));
    }

    #[test]
    fn gap_notices_account_exactly() {
        // Evicted 0..30 and notified; the broker's count says 32 (two were delivered in flight).
        let confirmed = set(0, 0..100);
        let delivered = set(0, 30..70);
        let gaps = set(0, 0..30);
        let a = account(&confirmed, &delivered, &gaps, stored_range(30, 100), 32);
        assert_eq!(
            (
                a.evicted_notified,
                a.unaccounted,
                a.attributed_to_drops,
                a.lost
            ),
            (30, 0, 0, 0)
        );
        // A hole the notices do not cover is lost, beyond the two spare evictions.
        let gaps = set(0, 0..25);
        let a = account(&confirmed, &delivered, &gaps, stored_range(30, 100), 27);
        assert_eq!(
            (
                a.evicted_notified,
                a.unaccounted,
                a.attributed_to_drops,
                a.lost
            ),
            (25, 5, 2, 3)
        );
    }

    #[test]
    fn refused_publishes_are_not_counted_and_phantoms_are() {
        // Seqs 5 and 6 were confirmed; 7 was delivered but never confirmed.
        let confirmed = set(5, [5, 6]);
        let delivered = set(5, [5, 6, 7]);
        let a = account(&confirmed, &delivered, &none(), stored_range(0, 8), 0);
        assert_eq!((a.confirmed, a.delivered, a.lost), (2, 2, 0));
        assert_eq!(a.delivered_not_confirmed, 1);
    }

    #[test]
    fn untracked_sequence_numbers_make_it_incomplete() {
        let mut confirmed = SeqSet::with_limit(0, 10);
        confirmed.insert(3);
        confirmed.insert(50);
        let a = account(&confirmed, &none(), &none(), stored_range(0, 51), 0);
        assert!(!a.complete);
        assert_eq!(stored_range(5, 3), 0..3);
    }
}
