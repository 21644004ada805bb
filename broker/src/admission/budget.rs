//! One memory budget for every buffer the broker holds on behalf of clients: payloads awaiting
//! their commit, parked publishes, cached payloads, outbound deliveries, read buffers. Over it,
//! work is refused or paused — overload becomes a refusal, never an OOM.
//!
//! A budget can be divided: a [`MemoryBudget::child`] takes every byte it holds from its
//! parents too, and [`MemoryBudget::joint`] makes a budget with several parents. The broker's
//! budget (`memory_budget_bytes`) has two halves — *inbound* (what clients sent: read buffers,
//! publishes until committed, caches) and *outbound* (deliveries until written) — so neither
//! direction can take the other's room; and each connection has a *share*
//! (`max_connection_memory_bytes`) that its inbound and outbound bytes both count against, so
//! no connection can take its neighbours' room. Every level reports the bound that refused.
//!
//! Holders draw from a budget in three ways, by what refusing them would do:
//! - **strict** ([`MemoryBudget::try_acquire`], [`MemoryPermit::try_grow`]): bytes are taken only
//!   if every level stays within its capacity; otherwise nothing is taken and the [`MemoryFull`]
//!   level is named — publishes, deliveries, read buffers past their base;
//! - **yielding** ([`MemoryPermit::try_grow_within`] with a lower ceiling): caches only take
//!   bytes below that ceiling and shed what they hold when others push `used` past it;
//! - **always** ([`MemoryBudget::charge`]): the first bytes of a read buffer, so a connection
//!   can always read the small frames (acks, credit) that let memory drain. Bounded by their own
//!   knob; while they hold a level over its capacity, strict requests at that level are refused.

use crate::loom::sync::atomic::{AtomicU64, Ordering};
use crate::loom::sync::Arc;

/// The configuration name under which the broker's budget, and its halves, refuse.
pub const BUDGET_LIMIT: &str = "memory_budget_bytes";

/// A byte budget. Cheap to clone (clones share the budget).
///
/// Bytes are held through [`MemoryPermit`]s and given back when they drop. At its bound a
/// strict request that would take `used` past `capacity` — here or at any parent — is refused
/// ([`try_acquire`] returns [`MemoryFull`], [`MemoryPermit::try_grow`] returns `false`) and nothing is
/// taken: no strict call ever takes `used` past a capacity, and `used` never underflows,
/// whatever the threads do. Only [`charge`] can take `used` past a capacity.
///
/// [`try_acquire`]: MemoryBudget::try_acquire
/// [`charge`]: MemoryBudget::charge
#[derive(Debug, Clone)]
pub struct MemoryBudget {
    inner: Arc<Inner>,
}

/// The level of a budget that refused a strict request: its configuration name and value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryFull {
    /// The configuration name of the bound, e.g. `max_connection_memory_bytes`.
    pub name: &'static str,
    /// The configured value of the bound.
    pub value: u64,
}

#[derive(Debug)]
struct Inner {
    /// The bound this level refuses with.
    limit: MemoryFull,
    capacity: u64,
    /// The sum of every live permit's bytes at this level (its children's included).
    used: AtomicU64,
    high_water: AtomicU64,
    /// Levels every byte held here is also held by.
    parents: Vec<Arc<Inner>>,
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
    /// A budget of `capacity` bytes, none used, refusing as `memory_budget_bytes`.
    pub fn new(capacity: u64) -> MemoryBudget {
        Self::level(
            MemoryFull {
                name: BUDGET_LIMIT,
                value: capacity,
            },
            capacity,
            Vec::new(),
        )
    }

    /// A budget of `capacity` bytes whose every byte is also taken from this one; it refuses as
    /// `limit` at its own level (its parent refuses as itself).
    pub fn child(&self, limit: MemoryFull, capacity: u64) -> MemoryBudget {
        Self::joint(limit, capacity, &[self])
    }

    /// A budget of `capacity` bytes whose every byte is also taken from each of `parents`, in
    /// order (which must not share an ancestor, or that ancestor would count the byte twice).
    /// Put the most particular level first: a request refused there never reserves anything,
    /// even for a moment, in the levels others share.
    pub fn joint(limit: MemoryFull, capacity: u64, parents: &[&MemoryBudget]) -> MemoryBudget {
        let parents = parents.iter().map(|p| p.inner.clone()).collect();
        Self::level(limit, capacity, parents)
    }

    fn level(limit: MemoryFull, capacity: u64, parents: Vec<Arc<Inner>>) -> MemoryBudget {
        MemoryBudget {
            inner: Arc::new(Inner {
                limit,
                capacity,
                used: AtomicU64::new(0),
                high_water: AtomicU64::new(0),
                parents,
            }),
        }
    }

    /// Takes `bytes` from the budget, or names the level that has no room (taking nothing).
    pub fn try_acquire(&self, bytes: u64) -> Result<MemoryPermit, MemoryFull> {
        let mut permit = self.empty_permit();
        let capacity = self.inner.capacity;
        self.inner.take(bytes, capacity)?;
        permit.bytes = bytes;
        Ok(permit)
    }

    /// Takes `bytes` whatever the budget holds — for buffers that drain memory (see the module
    /// docs). `used` may pass the capacity; strict requests are refused until it is back under.
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

    /// Bytes held now at this level, by every permit of it and of its children.
    pub fn used(&self) -> u64 {
        self.inner.used.load(Ordering::Acquire)
    }

    /// Bytes that can still be acquired at this level now (0 when charges took `used` past the
    /// capacity); a parent may have less.
    pub fn available(&self) -> u64 {
        self.inner.capacity.saturating_sub(self.used())
    }

    /// Whether charges have taken `used` past the capacity.
    pub fn is_over(&self) -> bool {
        self.used() > self.inner.capacity
    }

    /// The budget: strict requests never take `used` past it.
    pub fn capacity(&self) -> u64 {
        self.inner.capacity
    }

    /// The bound this level refuses with.
    pub fn limit(&self) -> MemoryFull {
        self.inner.limit
    }

    /// The most bytes ever held at once (above the capacity only through charges).
    pub fn high_water(&self) -> u64 {
        self.inner.high_water.load(Ordering::Relaxed)
    }
}

impl Inner {
    /// Adds `bytes` to `used` here if the result stays within `ceiling`, then at every parent
    /// within its capacity; on any refusal, undoes what it took and names the level.
    fn take(&self, bytes: u64, ceiling: u64) -> Result<(), MemoryFull> {
        if bytes == 0 {
            return Ok(());
        }
        let mut used = self.used.load(Ordering::Relaxed);
        loop {
            let Some(want) = used.checked_add(bytes).filter(|w| *w <= ceiling) else {
                return Err(self.limit);
            };
            match self
                .used
                .compare_exchange_weak(used, want, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => {
                    self.high_water.fetch_max(want, Ordering::Relaxed);
                    break;
                }
                Err(now) => used = now,
            }
        }
        for (i, parent) in self.parents.iter().enumerate() {
            if let Err(full) = parent.take(bytes, parent.capacity) {
                for taken in &self.parents[..i] {
                    taken.give(bytes);
                }
                self.give_here(bytes);
                return Err(full);
            }
        }
        Ok(())
    }

    /// Adds `bytes` to `used` here and at every parent, whatever the capacities.
    fn charge(&self, bytes: u64) {
        if bytes > 0 {
            let now = self.used.fetch_add(bytes, Ordering::AcqRel) + bytes;
            self.high_water.fetch_max(now, Ordering::Relaxed);
            for parent in &self.parents {
                parent.charge(bytes);
            }
        }
    }

    /// Gives back `bytes` that a permit held, here and at every parent.
    fn give(&self, bytes: u64) {
        if bytes > 0 {
            self.give_here(bytes);
            for parent in &self.parents {
                parent.give(bytes);
            }
        }
    }

    fn give_here(&self, bytes: u64) {
        let before = self.used.fetch_sub(bytes, Ordering::AcqRel);
        debug_assert!(before >= bytes, "memory budget underflow");
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
    /// budget, or a parent, has no room for them.
    pub fn try_grow(&mut self, bytes: u64) -> bool {
        self.try_grow_named(bytes).is_ok()
    }

    /// [`MemoryPermit::try_grow`], naming the level that refused.
    pub fn try_grow_named(&mut self, bytes: u64) -> Result<(), MemoryFull> {
        let capacity = self.inner.capacity;
        self.inner.take(bytes, capacity)?;
        self.bytes += bytes;
        Ok(())
    }

    /// Takes `bytes` more only if the budget's `used` stays within `ceiling` (at most the
    /// capacity) — how a cache keeps room for publishes; `false` (and no change) otherwise.
    pub fn try_grow_within(&mut self, bytes: u64, ceiling: u64) -> bool {
        if self
            .inner
            .take(bytes, ceiling.min(self.inner.capacity))
            .is_err()
        {
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
        assert!(budget.try_acquire(41).is_err());
        let b = budget.try_acquire(40).unwrap();
        assert_eq!((budget.used(), budget.available()), (100, 0));
        assert!(budget.try_acquire(1).is_err());
        drop(a);
        assert_eq!(budget.used(), 40);
        drop(b);
        assert_eq!((budget.used(), budget.high_water()), (0, 100));
        assert!(budget.try_acquire(u64::MAX).is_err(), "no overflow");
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
            budget.try_acquire(1).is_err(),
            "over the budget, publishes are refused"
        );
        let mut cache = budget.empty_permit();
        assert!(!cache.try_grow_within(1, 50));
        drop(publish);
        assert!(!budget.is_over());
        assert!(budget.try_acquire(30).is_ok());
        assert!(budget.try_acquire(31).is_err());
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
    fn a_child_takes_from_its_parent_and_each_level_names_its_bound() {
        let global = MemoryBudget::new(100);
        let share = MemoryFull {
            name: "max_connection_memory_bytes",
            value: 40,
        };
        let conn = global.child(share, 40);
        let a = conn.try_acquire(30).unwrap();
        assert_eq!((conn.used(), global.used()), (30, 30));
        assert_eq!(
            conn.try_acquire(11).unwrap_err(),
            share,
            "the share refuses"
        );
        let other = global.try_acquire(65).unwrap();
        assert_eq!(
            conn.try_acquire(6).unwrap_err().name,
            BUDGET_LIMIT,
            "the parent refuses, and the child took nothing"
        );
        assert_eq!((conn.used(), global.used()), (30, 95));
        drop((a, other));
        assert_eq!((conn.used(), global.used()), (0, 0));
    }

    #[test]
    fn a_joint_budget_takes_from_every_parent_or_from_none() {
        let global = MemoryBudget::new(100);
        let half = MemoryFull {
            name: BUDGET_LIMIT,
            value: 100,
        };
        let (inbound, outbound) = (global.child(half, 50), global.child(half, 50));
        let share_limit = MemoryFull {
            name: "max_connection_memory_bytes",
            value: 30,
        };
        let share = MemoryBudget::joint(share_limit, 30, &[]);
        let conn_in = MemoryBudget::joint(share_limit, u64::MAX, &[&inbound, &share]);
        let conn_out = MemoryBudget::joint(share_limit, u64::MAX, &[&outbound, &share]);
        let read = conn_in.try_acquire(20).unwrap();
        let sent = conn_out.try_acquire(10).unwrap();
        assert_eq!(
            (share.used(), inbound.used(), outbound.used()),
            (30, 20, 10)
        );
        assert_eq!(global.used(), 30, "each byte counted once at the top");
        assert_eq!(conn_out.try_acquire(1).unwrap_err(), share_limit);
        assert_eq!((outbound.used(), global.used()), (10, 30), "nothing taken");
        let mut charged = conn_out.charge(5);
        assert!(share.is_over());
        assert!(!charged.try_grow(1));
        drop((read, sent));
        charged.shrink(5);
        assert_eq!(
            (share.used(), inbound.used(), outbound.used(), global.used()),
            (0, 0, 0, 0)
        );
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
