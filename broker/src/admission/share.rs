//! [`ConnectionMemory`]: the memory one connection may hold — its read buffer, its publishes
//! until they are committed (queued or parked), its deliveries until they are written — counted
//! against its own share (`max_connection_memory_bytes`) *and* against the broker's inbound or
//! outbound half. At its share a connection is paused or refused; its neighbours are not: they
//! draw on shares of their own, and the halves keep the sum within `memory_budget_bytes`.

use super::budget::{MemoryBudget, MemoryFull};

/// The configuration name a connection's share refuses with.
pub const SHARE_LIMIT: &str = "max_connection_memory_bytes";

/// One connection's memory. Cheap to clone (clones share the accounting).
#[derive(Debug, Clone)]
pub struct ConnectionMemory {
    share: MemoryBudget,
    inbound: MemoryBudget,
    outbound: MemoryBudget,
}

impl ConnectionMemory {
    /// A connection's memory of `share` bytes, its inbound bytes also drawn from `inbound` and
    /// its outbound bytes from `outbound`.
    pub fn new(inbound: &MemoryBudget, outbound: &MemoryBudget, share: u64) -> ConnectionMemory {
        let limit = MemoryFull {
            name: SHARE_LIMIT,
            value: share,
        };
        let whole = MemoryBudget::joint(limit, share, &[]);
        // The share first: a connection at its share is refused before it reserves anything
        // in the halves its neighbours draw from (a reservation undone would still have
        // refused a neighbour meanwhile).
        ConnectionMemory {
            inbound: MemoryBudget::joint(limit, u64::MAX, &[&whole, inbound]),
            outbound: MemoryBudget::joint(limit, u64::MAX, &[&whole, outbound]),
            share: whole,
        }
    }

    /// What the connection's read buffer and publishes draw from.
    pub fn inbound(&self) -> &MemoryBudget {
        &self.inbound
    }

    /// What the connection's deliveries draw from until written.
    pub fn outbound(&self) -> &MemoryBudget {
        &self.outbound
    }

    /// Everything the connection holds, against its share.
    pub fn share(&self) -> &MemoryBudget {
        &self.share
    }

    /// Bytes of the share still free (0 when the connection holds all of it).
    pub fn room(&self) -> u64 {
        self.share.available()
    }
}

#[cfg(all(test, not(weir_loom)))]
mod tests {
    use super::*;

    #[test]
    fn inbound_and_outbound_bytes_share_one_bound_and_draw_from_their_halves() {
        let global = MemoryBudget::new(1_000);
        let half = global.limit();
        let (inbound, outbound) = (global.child(half, 500), global.child(half, 500));
        let a = ConnectionMemory::new(&inbound, &outbound, 100);
        let b = ConnectionMemory::new(&inbound, &outbound, 100);
        let read = a.inbound().try_acquire(60).unwrap();
        let sent = a.outbound().try_acquire(40).unwrap();
        assert_eq!(a.room(), 0);
        let refused = a.outbound().try_acquire(1).unwrap_err();
        assert_eq!(refused.name, SHARE_LIMIT, "the offender is refused");
        let neighbour = b.inbound().try_acquire(100).unwrap();
        assert_eq!(neighbour.bytes(), 100, "its neighbour is not");
        assert_eq!(
            (inbound.used(), outbound.used(), global.used()),
            (160, 40, 200)
        );
        drop((read, sent, neighbour));
        assert_eq!(global.used(), 0);
    }
}
