//! Connection slots: the broker-wide `max_connections` and the per-client-IP
//! `max_connections_per_ip`, taken together when a connection is accepted and given back when it
//! closes.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use weir_protocol::Limit;

/// The connection slots of one broker. Cheap to clone.
#[derive(Clone)]
pub struct ConnectionSlots {
    total: Arc<Semaphore>,
    max_total: u32,
    per_ip: Arc<Mutex<HashMap<IpAddr, u32>>>,
    max_per_ip: u32,
}

/// One taken slot; dropping it frees the slot (and the IP's share).
pub struct Slot {
    _total: OwnedSemaphorePermit,
    ip: IpAddr,
    per_ip: Arc<Mutex<HashMap<IpAddr, u32>>>,
}

impl ConnectionSlots {
    /// Slots for at most `max_total` connections, at most `max_per_ip` from one address. The
    /// per-IP map holds only addresses with an open connection, so it is bounded by
    /// `max_total` entries.
    pub fn new(max_total: u32, max_per_ip: u32) -> ConnectionSlots {
        ConnectionSlots {
            total: Arc::new(Semaphore::new(max_total as usize)),
            max_total,
            per_ip: Arc::new(Mutex::new(HashMap::new())),
            max_per_ip,
        }
    }

    /// Takes a slot for a connection from `ip`, or names the limit that is full.
    pub fn try_acquire(&self, ip: IpAddr) -> Result<Slot, Limit> {
        let total = self
            .total
            .clone()
            .try_acquire_owned()
            .map_err(|_| Limit::new("max_connections", u64::from(self.max_total)))?;
        let mut per_ip = self.per_ip.lock().unwrap_or_else(|p| p.into_inner());
        let open = per_ip.entry(ip).or_insert(0);
        if *open >= self.max_per_ip {
            return Err(Limit::new(
                "max_connections_per_ip",
                u64::from(self.max_per_ip),
            ));
        }
        *open += 1;
        drop(per_ip);
        Ok(Slot {
            _total: total,
            ip,
            per_ip: self.per_ip.clone(),
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut per_ip = self.per_ip.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(open) = per_ip.get_mut(&self.ip) {
            *open -= 1;
            if *open == 0 {
                per_ip.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_bounds_hold_and_slots_come_back() {
        let slots = ConnectionSlots::new(3, 2);
        let a: IpAddr = [10, 0, 0, 1].into();
        let b: IpAddr = [10, 0, 0, 2].into();
        let a1 = slots.try_acquire(a).unwrap();
        let _a2 = slots.try_acquire(a).unwrap();
        assert_eq!(
            slots.try_acquire(a).err().map(|l| l.name),
            Some("max_connections_per_ip".to_string())
        );
        let _b1 = slots.try_acquire(b).unwrap();
        assert_eq!(
            slots.try_acquire(b).err().map(|l| l.name),
            Some("max_connections".to_string())
        );
        drop(a1);
        let _b2 = slots.try_acquire(b).unwrap();
        assert_eq!(slots.per_ip.lock().unwrap().len(), 2);
    }
}
