//! One memory budget for every buffer the broker holds on behalf of clients: payloads awaiting
//! their commit, parked publishes, cached payloads. Over it, new publishes are refused with
//! `Rejected{Overloaded}` — overload becomes a refusal, never an OOM.

use std::sync::Arc;

use crate::loom::sync::atomic::{AtomicU64, Ordering};

/// A byte budget shared by the whole broker. Cheap to clone.
#[derive(Debug, Clone)]
pub struct MemoryBudget {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    capacity: u64,
    used: AtomicU64,
    high_water: AtomicU64,
}

/// Bytes held from a [`MemoryBudget`]; given back when dropped.
#[derive(Debug)]
pub struct MemoryPermit {
    inner: Arc<Inner>,
    bytes: u64,
}

impl MemoryBudget {
    /// A budget of `capacity` bytes.
    pub fn new(capacity: u64) -> MemoryBudget {
        MemoryBudget {
            inner: Arc::new(Inner {
                capacity,
                used: AtomicU64::new(0),
                high_water: AtomicU64::new(0),
            }),
        }
    }

    /// Takes `bytes` from the budget, or `None` if that would pass its capacity.
    pub fn try_acquire(&self, bytes: u64) -> Option<MemoryPermit> {
        let inner = &self.inner;
        let mut used = inner.used.load(Ordering::Relaxed);
        loop {
            let want = used.checked_add(bytes).filter(|w| *w <= inner.capacity)?;
            match inner
                .used
                .compare_exchange_weak(used, want, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => {
                    inner.high_water.fetch_max(want, Ordering::Relaxed);
                    return Some(MemoryPermit {
                        inner: inner.clone(),
                        bytes,
                    });
                }
                Err(now) => used = now,
            }
        }
    }

    /// Bytes held now.
    pub fn used(&self) -> u64 {
        self.inner.used.load(Ordering::Relaxed)
    }

    /// The budget.
    pub fn capacity(&self) -> u64 {
        self.inner.capacity
    }

    /// The most bytes ever held at once.
    pub fn high_water(&self) -> u64 {
        self.inner.high_water.load(Ordering::Relaxed)
    }
}

impl MemoryPermit {
    /// Bytes this permit holds.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }
}

impl Drop for MemoryPermit {
    fn drop(&mut self) {
        self.inner.used.fetch_sub(self.bytes, Ordering::AcqRel);
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
        assert_eq!(budget.used(), 100);
        assert!(budget.try_acquire(1).is_none());
        drop(a);
        assert_eq!(budget.used(), 40);
        drop(b);
        assert_eq!((budget.used(), budget.high_water()), (0, 100));
        assert!(budget.try_acquire(u64::MAX).is_none());
    }
}
