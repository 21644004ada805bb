//! One memory budget for every buffer the broker holds on behalf of clients: payloads awaiting
//! their commit, parked publishes, cached payloads, outbound deliveries, read buffers. Over it,
//! new publishes are refused with `Rejected{Overloaded}` — overload becomes a refusal, never an
//! OOM.
//!
//! Holders draw from it in three ways, by what refusing them would do:
//! - **publishes** ([`MemoryBudget::try_acquire`]) take bytes only while `used` stays within the
//!   capacity; otherwise they are refused;
//! - **caches** ([`MemoryPermit::try_grow_within`] with a lower ceiling) only take bytes below
//!   that ceiling and shed what they hold when others push `used` past it: a cache yields, it
//!   never causes a refusal;
//! - **draining buffers** ([`MemoryBudget::charge`]) — deliveries the consumers asked for with
//!   their credit, read buffers — are always counted, even past the capacity, because holding
//!   them back is what would stop memory from draining. They are bounded by their own knobs
//!   (credit, `max_frame_bytes`); while they hold `used` over the capacity, publishes are
//!   refused and connections stop reading new frames.

use crate::loom::sync::atomic::{AtomicU64, Ordering};
use crate::loom::sync::Arc;

/// A byte budget shared by the whole broker. Cheap to clone (clones share the budget).
///
/// Bytes are held through [`MemoryPermit`]s and given back when they drop. At its bound a
/// request that would take `used` past `capacity` is refused ([`try_acquire`] returns `None`,
/// [`MemoryPermit::try_grow`] returns `false`) and nothing is taken: no `try_` call ever takes
/// `used` past its ceiling, and `used` never underflows, whatever the threads do. Only
/// [`charge`] can take `used` past the capacity (see the module docs for who may).
///
/// [`try_acquire`]: MemoryBudget::try_acquire
/// [`charge`]: MemoryBudget::charge
#[derive(Debug, Clone)]
pub struct MemoryBudget {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    capacity: u64,
    /// The sum of every live permit's bytes.
    used: AtomicU64,
    high_water: AtomicU64,
}

/// Bytes held from a [`MemoryBudget`]; given back when dropped, on whichever thread drops it.
///
/// A permit can be split (one payload's share handed to another holder), merged back,
/// shrunk (bytes given back early, e.g. once a payload is written) or grown (if the budget has
/// room). A permit of 0 bytes holds nothing and is free to create and drop.
#[derive(Debug)]
pub struct MemoryPermit {
    inner: Arc<Inner>,
    bytes: u64,
}

impl MemoryBudget {
    /// A budget of `capacity` bytes, none used.
    pub fn new(capacity: u64) -> MemoryBudget {
        MemoryBudget {
            inner: Arc::new(Inner {
                capacity,
                used: AtomicU64::new(0),
                high_water: AtomicU64::new(0),
            }),
        }
    }

    /// Takes `bytes` from the budget, or `None` (taking nothing) if `used + bytes` would pass
    /// the capacity.
    pub fn try_acquire(&self, bytes: u64) -> Option<MemoryPermit> {
        let mut permit = self.empty_permit();
        permit.try_grow(bytes).then_some(permit)
    }

    /// Takes `bytes` whatever the budget holds — for buffers that drain memory (see the module
    /// docs). `used` may pass the capacity; publishes are refused until it is back under.
    pub fn charge(&self, bytes: u64) -> MemoryPermit {
        let mut permit = self.empty_permit();
        permit.charge(bytes);
        permit
    }

    /// An empty permit of this budget, to grow or merge into later.
    pub fn empty_permit(&self) -> MemoryPermit {
        MemoryPermit {
            inner: self.inner.clone(),
            bytes: 0,
        }
    }

    /// Bytes held now, by every permit together.
    pub fn used(&self) -> u64 {
        self.inner.used.load(Ordering::Acquire)
    }

    /// Bytes that can still be acquired now (0 when charges took `used` past the capacity).
    pub fn available(&self) -> u64 {
        self.inner.capacity.saturating_sub(self.used())
    }

    /// Whether charges have taken `used` past the capacity.
    pub fn is_over(&self) -> bool {
        self.used() > self.inner.capacity
    }

    /// The budget: `used` never passes it.
    pub fn capacity(&self) -> u64 {
        self.inner.capacity
    }

    /// The most bytes ever held at once (above the capacity only through charges).
    pub fn high_water(&self) -> u64 {
        self.inner.high_water.load(Ordering::Relaxed)
    }
}

impl Inner {
    /// Adds `bytes` to `used` if the result stays within `ceiling`.
    fn take(&self, bytes: u64, ceiling: u64) -> bool {
        if bytes == 0 {
            return true;
        }
        let mut used = self.used.load(Ordering::Relaxed);
        loop {
            let Some(want) = used.checked_add(bytes).filter(|w| *w <= ceiling) else {
                return false;
            };
            match self
                .used
                .compare_exchange_weak(used, want, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => {
                    self.high_water.fetch_max(want, Ordering::Relaxed);
                    return true;
                }
                Err(now) => used = now,
            }
        }
    }

    /// Adds `bytes` to `used`, whatever the capacity.
    fn charge(&self, bytes: u64) {
        if bytes > 0 {
            let now = self.used.fetch_add(bytes, Ordering::AcqRel) + bytes;
            self.high_water.fetch_max(now, Ordering::Relaxed);
        }
    }

    /// Gives back `bytes` that a permit held (so `used >= bytes`).
    fn give(&self, bytes: u64) {
        if bytes > 0 {
            let before = self.used.fetch_sub(bytes, Ordering::AcqRel);
            debug_assert!(before >= bytes, "memory budget underflow");
        }
    }
}

impl MemoryPermit {
    /// Bytes this permit holds.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Moves `bytes` of this permit into a new one (no change to the budget's `used`), or
    /// `None` (and no change) if this permit holds fewer than `bytes`.
    pub fn split(&mut self, bytes: u64) -> Option<MemoryPermit> {
        self.bytes = self.bytes.checked_sub(bytes)?;
        Some(MemoryPermit {
            inner: self.inner.clone(),
            bytes,
        })
    }

    /// Absorbs `other` (no change to the budget's `used`). A permit of a different budget is
    /// handed back untouched as `Err`.
    pub fn merge(&mut self, mut other: MemoryPermit) -> Result<(), MemoryPermit> {
        if !Arc::ptr_eq(&self.inner, &other.inner) {
            return Err(other);
        }
        self.bytes += std::mem::take(&mut other.bytes);
        Ok(())
    }

    /// Gives back up to `bytes` now, keeping the rest; returns how many were given back
    /// (`min(bytes, self.bytes())`).
    pub fn shrink(&mut self, bytes: u64) -> u64 {
        let give = bytes.min(self.bytes);
        self.bytes -= give;
        self.inner.give(give);
        give
    }

    /// Takes `bytes` more from the budget into this permit; `false` (and no change) if the
    /// budget has no room for them.
    pub fn try_grow(&mut self, bytes: u64) -> bool {
        let capacity = self.inner.capacity;
        self.try_grow_within(bytes, capacity)
    }

    /// Takes `bytes` more only if the budget's `used` stays within `ceiling` (at most the
    /// capacity) — how a cache keeps room for publishes; `false` (and no change) otherwise.
    pub fn try_grow_within(&mut self, bytes: u64, ceiling: u64) -> bool {
        if !self.inner.take(bytes, ceiling.min(self.inner.capacity)) {
            return false;
        }
        self.bytes += bytes;
        true
    }

    /// Takes `bytes` more whatever the budget holds (see [`MemoryBudget::charge`]).
    pub fn charge(&mut self, bytes: u64) {
        self.inner.charge(bytes);
        self.bytes += bytes;
    }
}

impl Drop for MemoryPermit {
    fn drop(&mut self) {
        self.inner.give(self.bytes);
    }
}

#[cfg(all(test, not(weir_loom)))]
mod tests {
    use super::*;

    #[test]
    fn never_passes_capacity_and_gives_everything_back() {
        let budget = MemoryBudget::new(100);
        let a = budget.try_acquire(60).unwrap();
        assert!(budget.try_acquire(41).is_none());
        let b = budget.try_acquire(40).unwrap();
        assert_eq!((budget.used(), budget.available()), (100, 0));
        assert!(budget.try_acquire(1).is_none());
        drop(a);
        assert_eq!(budget.used(), 40);
        drop(b);
        assert_eq!((budget.used(), budget.high_water()), (0, 100));
        assert!(budget.try_acquire(u64::MAX).is_none(), "no overflow");
        assert_eq!(budget.used(), 0);
    }

    #[test]
    fn zero_byte_permits_always_succeed_even_when_full() {
        let budget = MemoryBudget::new(10);
        let full = budget.try_acquire(10).unwrap();
        let zero = budget.try_acquire(0).unwrap();
        assert_eq!(zero.bytes(), 0);
        drop((full, zero));
        assert_eq!(budget.used(), 0);
    }

    #[test]
    fn split_and_merge_move_bytes_without_touching_the_budget() {
        let budget = MemoryBudget::new(100);
        let mut a = budget.try_acquire(70).unwrap();
        let b = a.split(30).unwrap();
        assert_eq!((a.bytes(), b.bytes(), budget.used()), (40, 30, 70));
        assert!(a.split(41).is_none());
        assert_eq!(a.bytes(), 40, "a refused split changes nothing");
        drop(b);
        assert_eq!(budget.used(), 40);
        let c = budget.try_acquire(10).unwrap();
        a.merge(c).unwrap();
        assert_eq!((a.bytes(), budget.used()), (50, 50));
        drop(a);
        assert_eq!(budget.used(), 0);
    }

    #[test]
    fn a_permit_of_another_budget_is_not_merged() {
        let (one, two) = (MemoryBudget::new(10), MemoryBudget::new(10));
        let mut a = one.try_acquire(5).unwrap();
        let b = two.try_acquire(5).unwrap();
        let b = a.merge(b).unwrap_err();
        assert_eq!((a.bytes(), b.bytes(), one.used(), two.used()), (5, 5, 5, 5));
    }

    #[test]
    fn charges_pass_the_capacity_and_then_refuse_publishes_until_back_under() {
        let budget = MemoryBudget::new(100);
        let publish = budget.try_acquire(60).unwrap();
        let delivery = budget.charge(70);
        assert!(budget.is_over());
        assert_eq!((budget.used(), budget.available()), (130, 0));
        assert!(
            budget.try_acquire(1).is_none(),
            "over the budget, publishes are refused"
        );
        let mut cache = budget.empty_permit();
        assert!(!cache.try_grow_within(1, 50));
        drop(publish);
        assert!(!budget.is_over());
        assert!(budget.try_acquire(30).is_some());
        assert!(budget.try_acquire(31).is_none());
        assert!(
            !cache.try_grow_within(1, 50),
            "70 used is past the cache's ceiling of 50"
        );
        drop(delivery);
        assert!(cache.try_grow_within(50, 50));
        assert!(!cache.try_grow_within(1, 50));
        assert!(
            cache.try_grow_within(1, 1_000),
            "a ceiling above the capacity is the capacity"
        );
        drop(cache);
        assert_eq!((budget.used(), budget.high_water()), (0, 130));
    }

    #[test]
    fn shrink_gives_back_early_and_grow_takes_only_what_fits() {
        let budget = MemoryBudget::new(100);
        let mut p = budget.try_acquire(80).unwrap();
        assert_eq!(p.shrink(30), 30);
        assert_eq!((p.bytes(), budget.used()), (50, 50));
        assert_eq!(p.shrink(1_000), 50, "never gives back more than it holds");
        assert_eq!((p.bytes(), budget.used()), (0, 0));
        assert!(p.try_grow(100));
        assert!(!p.try_grow(1));
        assert_eq!((p.bytes(), budget.used()), (100, 100));
        let mut e = budget.empty_permit();
        assert!(!e.try_grow(1));
        drop(p);
        assert!(e.try_grow(1));
        drop(e);
        assert_eq!((budget.used(), budget.high_water()), (0, 100));
    }
}
