//! [`Schedule`]: sequences ordered by an instant — the ack deadlines of a group's deliveries,
//! and the times its nacked messages become due again.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

/// Sequences, each at most once and with a value, ordered by the instant they are due. No
/// timer per message: the dispatcher sleeps until [`Schedule::next`] and then pops what is
/// due. Bounded by the group's `max_in_flight` (only in-flight or nacked messages are
/// scheduled).
#[derive(Debug)]
pub(crate) struct Schedule<T> {
    by_time: BTreeSet<(Instant, u64)>,
    due_at: BTreeMap<u64, (Instant, T)>,
}

impl<T> Default for Schedule<T> {
    fn default() -> Self {
        Schedule {
            by_time: BTreeSet::new(),
            due_at: BTreeMap::new(),
        }
    }
}

impl<T> Schedule<T> {
    /// Schedules `seq` (with `value`) at `at`, replacing any earlier schedule of it.
    pub(crate) fn insert(&mut self, seq: u64, at: Instant, value: T) {
        if let Some((old, _)) = self.due_at.insert(seq, (at, value)) {
            self.by_time.remove(&(old, seq));
        }
        self.by_time.insert((at, seq));
    }

    /// Unschedules `seq`, returning when it was due and its value.
    pub(crate) fn remove(&mut self, seq: u64) -> Option<(Instant, T)> {
        let (at, value) = self.due_at.remove(&seq)?;
        self.by_time.remove(&(at, seq));
        Some((at, value))
    }

    /// Takes the earliest sequence due at or before `now`, with its value.
    pub(crate) fn pop_due(&mut self, now: Instant) -> Option<(u64, T)> {
        let &(at, seq) = self.by_time.first()?;
        if at > now {
            return None;
        }
        self.by_time.pop_first();
        self.due_at.remove(&seq).map(|(_, value)| (seq, value))
    }

    /// The earliest instant anything is due.
    pub(crate) fn next(&self) -> Option<Instant> {
        self.by_time.first().map(|(at, _)| *at)
    }

    /// The lowest scheduled sequence.
    pub(crate) fn lowest(&self) -> Option<u64> {
        self.due_at.keys().next().copied()
    }

    /// Whether `seq` is scheduled.
    pub(crate) fn contains(&self, seq: u64) -> bool {
        self.due_at.contains_key(&seq)
    }

    /// How many sequences are scheduled.
    pub(crate) fn len(&self) -> usize {
        self.due_at.len()
    }

    /// Every scheduled `(seq, due, value)`, by sequence.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (u64, Instant, &T)> + '_ {
        self.due_at.iter().map(|(s, (at, v))| (*s, *at, v))
    }

    /// Unschedules every sequence below `seq`.
    pub(crate) fn remove_below(&mut self, seq: u64) {
        let keep = self.due_at.split_off(&seq);
        for (s, (at, _)) in std::mem::replace(&mut self.due_at, keep) {
            self.by_time.remove(&(at, s));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn pops_in_time_order_and_rescheduling_replaces() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut s = Schedule::default();
        s.insert(1, t0 + ms(30), 'a');
        s.insert(2, t0 + ms(10), 'b');
        s.insert(3, t0 + ms(20), 'c');
        s.insert(2, t0 + ms(40), 'd');
        assert_eq!(
            (s.len(), s.next(), s.lowest()),
            (3, Some(t0 + ms(20)), Some(1))
        );
        assert_eq!(s.pop_due(t0 + ms(25)), Some((3, 'c')));
        assert_eq!(s.pop_due(t0 + ms(25)), None);
        assert_eq!(s.remove(1), Some((t0 + ms(30), 'a')));
        assert_eq!(s.pop_due(t0 + ms(100)), Some((2, 'd')));
        assert_eq!((s.len(), s.next()), (0, None));
    }

    #[test]
    fn remove_below_drops_only_lower_sequences() {
        let t0 = Instant::now();
        let mut s = Schedule::default();
        for seq in 1..=5 {
            s.insert(seq, t0, ());
        }
        s.remove_below(4);
        assert_eq!(s.iter().map(|(q, _, _)| q).collect::<Vec<_>>(), vec![4, 5]);
        assert_eq!(s.pop_due(t0), Some((4, ())));
    }
}
