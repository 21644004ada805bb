//! The bounded parking lot behind the `block` overflow policy: publishes that do not fit wait
//! here, oldest first, until room frees or their `max_block` deadline passes.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use crate::loom::sync::Mutex;

/// A bounded FIFO of parked items, each with a deadline. Safe to share between threads (one
/// small mutex inside); every operation is O(log n).
///
/// Every parked item leaves exactly once — by [`unpark_next_with`](Self::unpark_next_with),
/// by [`expire`](Self::expire) or by [`drain`](Self::drain) (the tests also take items with
/// `unpark_next`, `unpark_next_if` and `cancel`) — never twice, and never lost while the lot
/// lives (dropping the lot drops what is still parked: `drain` it first at shutdown).
///
/// At its bound (`capacity` items parked) [`park`](Self::park) hands the item back as
/// [`Full`]. Deadlines need not be monotonic in FIFO order: `expire` finds every item past
/// its deadline wherever it sits.
#[derive(Debug)]
pub struct ParkingLot<T> {
    lot: Mutex<Lot<T>>,
}

#[derive(Debug)]
struct Lot<T> {
    /// The most items parked at once (changed by [`ParkingLot::set_capacity`]).
    capacity: usize,
    /// Parked items by ticket; tickets grow, so the first entry is the oldest.
    items: BTreeMap<u64, (Instant, T)>,
    /// (deadline, ticket) of every parked item.
    deadlines: BTreeSet<(Instant, u64)>,
    next_ticket: u64,
}

/// The receipt for a parked item: cancels it, and says whether it moved the lot's earliest
/// deadline (so whoever times items out must re-arm its timer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParkTicket {
    id: u64,
    earliest: bool,
}

impl ParkTicket {
    /// Whether this item's deadline was, when parked, the earliest in the lot (the lot was
    /// empty, or every other item's deadline was later).
    pub fn is_earliest(&self) -> bool {
        self.earliest
    }
}

/// The lot was full: the item, handed back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Full<T>(pub T);

impl<T> ParkingLot<T> {
    /// An empty lot holding at most `capacity` items.
    pub fn new(capacity: usize) -> ParkingLot<T> {
        ParkingLot {
            lot: Mutex::new(Lot {
                capacity,
                items: BTreeMap::new(),
                deadlines: BTreeSet::new(),
                next_ticket: 0,
            }),
        }
    }

    /// Parks `item` behind every item already parked, until `deadline`; hands it back as
    /// [`Full`] when `capacity` items are parked.
    pub fn park(&self, item: T, deadline: Instant) -> Result<ParkTicket, Full<T>> {
        let mut lot = self.lock();
        if lot.items.len() >= lot.capacity {
            return Err(Full(item));
        }
        let id = lot.next_ticket;
        lot.next_ticket += 1;
        let earliest = match lot.deadlines.first() {
            Some((first, _)) => deadline < *first,
            None => true,
        };
        lot.items.insert(id, (deadline, item));
        lot.deadlines.insert((deadline, id));
        Ok(ParkTicket { id, earliest })
    }

    /// Takes the oldest item, if any (as room frees).
    #[cfg(test)]
    pub fn unpark_next(&self) -> Option<T> {
        self.unpark_next_if(|_| true)
    }

    /// Takes the oldest item if `ready` says so (for example, if it fits now). `ready` runs
    /// under the lot's lock: it must be quick and must not touch the lot. Nothing behind the
    /// oldest item is looked at (FIFO: a small item never overtakes a large one).
    #[cfg(test)]
    pub fn unpark_next_if(&self, ready: impl FnOnce(&T) -> bool) -> Option<T> {
        let mut lot = self.lock();
        let entry = lot.items.first_entry()?;
        if !ready(&entry.get().1) {
            return None;
        }
        let (id, (deadline, item)) = entry.remove_entry();
        lot.deadlines.remove(&(deadline, id));
        Some(item)
    }

    /// Hands the oldest item to `hand_off` under the lot's lock: `Ok(r)` — it has left, and
    /// `Some(r)` is returned; `Err(item)` — it could not be handed on (say, the writer's queue
    /// is full) and stays first, with its deadline and ticket, and `None` is returned (as for an
    /// empty lot). Because the lock is held throughout, a put-back item never competes with
    /// concurrent parks for room. `hand_off` must be quick, must not block and must not touch
    /// the lot.
    pub fn unpark_next_with<R>(&self, hand_off: impl FnOnce(T) -> Result<R, T>) -> Option<R> {
        let mut lot = self.lock();
        let (id, (deadline, item)) = lot.items.pop_first()?;
        match hand_off(item) {
            Ok(r) => {
                lot.deadlines.remove(&(deadline, id));
                Some(r)
            }
            Err(item) => {
                lot.items.insert(id, (deadline, item));
                None
            }
        }
    }

    /// Takes every item whose deadline is at or before `now`, oldest deadline first.
    pub fn expire(&self, now: Instant) -> Vec<T> {
        let mut lot = self.lock();
        let mut expired = Vec::new();
        while let Some(&(deadline, id)) = lot.deadlines.first() {
            if deadline > now {
                break;
            }
            lot.deadlines.pop_first();
            if let Some((_, item)) = lot.items.remove(&id) {
                expired.push(item);
            }
        }
        expired
    }

    /// Takes the item parked with `ticket`, if it has not left yet (the publisher went away).
    #[cfg(test)]
    pub fn cancel(&self, ticket: ParkTicket) -> Option<T> {
        let mut lot = self.lock();
        let (deadline, item) = lot.items.remove(&ticket.id)?;
        lot.deadlines.remove(&(deadline, ticket.id));
        Some(item)
    }

    /// Takes every item, oldest first (shutdown).
    pub fn drain(&self) -> Vec<T> {
        let mut lot = self.lock();
        lot.deadlines.clear();
        std::mem::take(&mut lot.items)
            .into_values()
            .map(|(_, item)| item)
            .collect()
    }

    /// The earliest deadline of any parked item: when [`expire`](Self::expire) next has work.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.lock().deadlines.first().map(|(d, _)| *d)
    }

    /// Items parked now (more than `capacity` only after the bound was lowered).
    pub fn len(&self) -> usize {
        self.lock().items.len()
    }

    /// Whether nothing is parked.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The most items parked at once.
    #[cfg(test)]
    pub fn capacity(&self) -> usize {
        self.lock().capacity
    }

    /// Changes the bound. Lowered below what is parked, nothing is handed back: the items
    /// parked stay until they leave as usual, and [`park`](Self::park) refuses until fewer
    /// than `capacity` remain.
    pub fn set_capacity(&self, capacity: usize) {
        self.lock().capacity = capacity;
    }

    fn lock(&self) -> crate::loom::sync::MutexGuard<'_, Lot<T>> {
        self.lot.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(all(test, not(weir_loom)))]
mod tests {
    use std::time::Duration;

    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn bounded_fifo_hands_back_what_does_not_fit() {
        let t0 = Instant::now();
        let lot = ParkingLot::new(2);
        assert!(lot.park(1, t0 + MS).unwrap().is_earliest());
        assert!(!lot.park(2, t0 + 2 * MS).unwrap().is_earliest());
        assert_eq!(lot.park(3, t0 + 3 * MS), Err(Full(3)));
        assert_eq!(lot.len(), 2);
        assert_eq!(lot.unpark_next(), Some(1));
        lot.park(3, t0 + 3 * MS).unwrap();
        assert_eq!(lot.unpark_next(), Some(2));
        assert_eq!(lot.unpark_next(), Some(3));
        assert_eq!(lot.unpark_next(), None);
        assert!(lot.is_empty());
    }

    #[test]
    fn unpark_next_if_looks_only_at_the_oldest() {
        let t0 = Instant::now();
        let lot = ParkingLot::new(4);
        lot.park(100, t0).unwrap();
        lot.park(1, t0).unwrap();
        assert_eq!(lot.unpark_next_if(|n| *n < 10), None, "no overtaking");
        assert_eq!(lot.len(), 2);
        assert_eq!(lot.unpark_next_if(|n| *n < 1_000), Some(100));
        assert_eq!(lot.unpark_next_if(|n| *n < 10), Some(1));
    }

    #[test]
    fn a_hand_off_that_fails_leaves_the_item_first_with_its_deadline_and_ticket() {
        let t0 = Instant::now();
        let lot = ParkingLot::new(2);
        let first = lot.park("first", t0 + MS).unwrap();
        lot.park("second", t0 + 2 * MS).unwrap();
        assert_eq!(lot.unpark_next_with(Err::<(), _>), None);
        assert_eq!((lot.len(), lot.next_deadline()), (2, Some(t0 + MS)));
        assert_eq!(lot.park("third", t0), Err(Full("third")), "still full");
        assert_eq!(
            lot.unpark_next_with(|item| Ok::<_, &str>(item.len())),
            Some(5)
        );
        assert_eq!(lot.cancel(first), None, "it left");
        assert_eq!(lot.next_deadline(), Some(t0 + 2 * MS));
        assert_eq!(lot.unpark_next_with(Ok::<_, &str>), Some("second"));
        assert_eq!(lot.unpark_next_with(Ok::<_, &str>), None);
    }

    #[test]
    fn expire_takes_every_passed_deadline_wherever_it_sits() {
        let t0 = Instant::now();
        let lot = ParkingLot::new(8);
        lot.park("late", t0 + 50 * MS).unwrap();
        let early = lot.park("early", t0 + 10 * MS).unwrap();
        assert!(
            early.is_earliest(),
            "an earlier deadline behind a later one"
        );
        lot.park("middle", t0 + 20 * MS).unwrap();
        lot.park("exact", t0 + 30 * MS).unwrap();
        assert_eq!(lot.next_deadline(), Some(t0 + 10 * MS));
        assert_eq!(lot.expire(t0 + 5 * MS), Vec::<&str>::new());
        assert_eq!(lot.expire(t0 + 30 * MS), vec!["early", "middle", "exact"]);
        assert_eq!(lot.next_deadline(), Some(t0 + 50 * MS));
        assert_eq!(lot.unpark_next(), Some("late"));
        assert_eq!(lot.next_deadline(), None);
    }

    #[test]
    fn equal_deadlines_expire_in_parking_order() {
        let t0 = Instant::now();
        let lot = ParkingLot::new(8);
        for i in 0..5 {
            lot.park(i, t0).unwrap();
        }
        assert_eq!(lot.expire(t0), vec![0, 1, 2, 3, 4]);
    }

    #[test]
    fn cancel_takes_the_ticket_s_item_once() {
        let t0 = Instant::now();
        let lot = ParkingLot::new(4);
        let a = lot.park('a', t0).unwrap();
        let b = lot.park('b', t0 + MS).unwrap();
        assert_eq!(lot.cancel(a), Some('a'));
        assert_eq!(lot.cancel(a), None);
        assert_eq!(lot.unpark_next(), Some('b'));
        assert_eq!(lot.cancel(b), None, "already unparked");
        assert_eq!(lot.expire(t0 + MS), Vec::<char>::new());
    }

    #[test]
    fn drain_takes_everything_oldest_first() {
        let t0 = Instant::now();
        let lot = ParkingLot::new(4);
        lot.park(1, t0 + 9 * MS).unwrap();
        lot.park(2, t0).unwrap();
        assert_eq!(lot.drain(), vec![1, 2]);
        assert_eq!((lot.len(), lot.next_deadline()), (0, None));
        assert_eq!(lot.capacity(), 4);
    }

    #[test]
    fn a_lowered_capacity_keeps_what_is_parked_and_refuses_until_below_it() {
        let t0 = Instant::now();
        let lot = ParkingLot::new(3);
        for i in 0..3 {
            lot.park(i, t0 + MS).unwrap();
        }
        lot.set_capacity(1);
        assert_eq!(lot.len(), 3, "nothing parked is handed back");
        assert_eq!(lot.park(9, t0 + MS), Err(Full(9)));
        assert_eq!(lot.unpark_next(), Some(0));
        assert_eq!(lot.unpark_next(), Some(1));
        assert_eq!(
            lot.park(9, t0 + MS),
            Err(Full(9)),
            "still one parked: at the bound"
        );
        assert_eq!(lot.unpark_next(), Some(2));
        assert!(lot.park(9, t0 + MS).is_ok());
        lot.set_capacity(2);
        assert!(
            lot.park(10, t0 + MS).is_ok(),
            "a raised bound takes more at once"
        );
    }

    #[test]
    fn a_zero_capacity_lot_parks_nothing() {
        let lot = ParkingLot::new(0);
        assert_eq!(lot.park((), Instant::now()), Err(Full(())));
    }
}
